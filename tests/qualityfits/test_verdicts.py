"""Frames that are not sky exposures are refused in one line.

Flats, biases, darks (said by the header, or read off the pixels),
frames saturated over most of their pixels, and tile-compressed files
with a corrupt tile: a typed error (`NotScienceError`, code
``not-science``; `InvalidImageError` for the corrupt tile), exit 2 on
the command line, never an internal error or a traceback.  The science
frames of ``../shared/data`` are not refused.  The calibration frames
here are built with numpy (not the project's simulator) or from the
real NOT flat and NTT bias.
"""

from __future__ import annotations

import gc
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

import qualityfits
from qualityfits import cli, verdicts
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.errors import (
    InvalidImageError,
    NoStarsError,
    NotScienceError,
    UnsupportedImageError,
)
from qualityfits.io import ImageSource

SMALL = SimulationParams(
    shape=(384, 384), n_stars=120, n_galaxies=120, n_cr_hits=10,
    n_cr_tracks=1,
)
SCIENCE = (
    "ntt_emmi_R_galaxies.fits.gz", "kpno_m51_B_devpix.fits.gz",
    "saao1m_ste3_raw_a8280271.fits.gz",
    "megacam_1616687p_ccd10_cutout.fits.gz",
    "megacam_1616681p_ccd21_cutout.fits.gz",
    "decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz",
    "spitzer_irac_ch2_glimpse_example.fits.gz",
)


def refused(path, exc_type=NotScienceError, **kwargs):
    """Assess ``path`` expecting ``exc_type``; return its message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(exc_type) as info:
            qualityfits.assess(path, jobs=1, **kwargs)
        assert type(info.value) is exc_type
        message = str(info.value)
        del info
        gc.collect()
    assert "\n" not in message
    return message


def run_cli(path, tmp_path, capsys):
    """Run the command line; return its status and its stderr lines."""
    status = cli.main([str(path), "--summary-only", "--no-progress",
                       "-j", "1", "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return status, captured.err.splitlines()


def header(**cards):
    h = fits.Header()
    for key, value in cards.items():
        h[key.replace("_", " ") if key.startswith("ESO") else key] = value
    return h


# -- the header ----------------------------------------------------------
class TestHeader:
    @pytest.mark.parametrize(("key", "value", "kind"), [
        ("IMAGETYP", "FLAT", "a flat field"),
        ("IMAGETYP", "zero", "a bias frame"),  # IRAF
        ("IMAGETYP", "Flat Field", "a flat field"),  # MaxIm DL
        ("IMAGETYP", "Dark Frame", "a dark frame"),
        ("OBSTYPE", "dome flat", "a flat field"),  # NOIRLab
        ("OBSTYPE", "SKYFLAT", "a flat field"),  # LCO
        ("OBSTYPE", "BIAS", "a bias frame"),  # CFHT
        ("EXPTYPE", "TWIFLAT", "a flat field"),
        ("DATA-TYP", "DOMEFLAT", "a flat field"),  # Subaru
        ("EXP_TYPE", "NRC_DARK", "a dark frame"),  # JWST
        ("ESO_DPR_TYPE", "FLAT,LAMP", "a flat field"),
        ("ESO_OBS_TYPE", "BIAS", "a bias frame"),
    ])
    def test_calibration_types_are_refused(self, key, value, kind):
        h = header(**{key: value, "OBJECT": "NGC 253"})
        with pytest.raises(NotScienceError) as info:
            verdicts.header_verdict(h, "ccd03")
        name = key.replace("_", " ") if key.startswith("ESO") else key
        assert str(info.value) == (
            f"ccd03: {kind}, not a sky exposure ({name} = {value!r})")
        assert info.value.code == "not-science"

    @pytest.mark.parametrize("cards", [
        {"IMAGETYP": "object", "OBJECT": "flat 3"},  # the type rules
        {"OBSTYPE": "OBJECT"},
        {"IMAGETYP": "Light Frame"},
        {"OBJECT": "dark cloud L1544"},  # OBJECT: flat or bias only
        {"OBJECT": "Flatiron field"},
        {"OBJECT": "Zero-point standard SA 95"},
        {"IMAGETYP": "EXT"},  # HST: says nothing
        {},
    ])
    def test_science_and_silent_headers_pass(self, cards):
        verdicts.header_verdict(header(**cards), "ccd03")

    @pytest.mark.parametrize("value", ["FLAT 1", "Dome flat", "bias_07",
                                       "SkyFlat"])
    def test_object_speaks_without_a_type_keyword(self, value):
        with pytest.raises(NotScienceError, match=re.escape(
                f"(OBJECT = {value!r}, and no IMAGETYP/OBSTYPE)")):
            verdicts.header_verdict(header(OBJECT=value), "im1")

    @pytest.mark.realdata
    @pytest.mark.parametrize("name", SCIENCE)
    def test_real_science_frames_pass_every_check(self, name):
        # What refuses before any measurement: the header, and the share
        # of saturated pixels.
        with ImageSource(shared_file(name)) as source:
            for ext in source.extensions:
                verdicts.header_verdict(ext.header, ext.name)
                pix = source.read(ext)
                bad = ~np.isfinite(pix)
                pix[bad] = 0.0
                top = float(pix[~bad].max())
                verdicts.saturation_verdict(
                    pix, bad, top, margin=0.98, source="test",
                    name=ext.name)


@pytest.mark.realdata
@pytest.mark.parametrize("name", SCIENCE[1:6])
def test_real_science_frames_are_assessed(name):
    report = qualityfits.assess(shared_file(name), jobs=1)
    assert all(e.ok for e in report.extensions)


# -- real calibration frames ----------------------------------------------
@pytest.mark.realdata
class TestRealCalibrations:
    def test_not_flat(self):
        path = shared_file("not_alfosc_flat_raw.fits.gz")
        assert refused(path) == (
            "image not_alfosc_flat_raw.fits.gz, extension im1: a flat "
            "field, not a sky exposure (IMAGETYP = 'FLAT')")

    def test_ntt_bias(self, tmp_path, capsys):
        path = shared_file("ntt_susi_bias_raw.fits.gz")
        status, err = run_cli(path, tmp_path, capsys)
        assert status == 2
        assert err == [(
            "qualityfits: error: image ntt_susi_bias_raw.fits.gz, "
            "extension PRIMARY: a bias frame, not a sky exposure "
            "(ESO OBS TYPE = 'BIAS')")]

    def test_not_flat_without_its_keywords(self, tmp_path):
        # The pixels: no star, a smooth illumination (vignetting).
        with fits.open(shared_file("not_alfosc_flat_raw.fits.gz")) as hdul:
            data = hdul[1].data[1000:2052, 100:1100].astype(np.float32)
        path = tmp_path / "anonymous.fits"
        fits.PrimaryHDU(data).writeto(path)
        message = refused(path)
        assert re.fullmatch(
            r"image anonymous\.fits, extension PRIMARY: a flat field, not "
            r"a sky exposure: no star among \d+ sources?, and a smooth "
            r"illumination varying by \d+ % \(\d+ times the noise\) "
            r"across the frame", message), message

    @pytest.fixture
    def bias(self):
        path = shared_file("ntt_susi_bias_raw.fits.gz")
        with fits.open(path) as hdul:
            h = hdul[0].header.copy()
            data = hdul[0].data.astype(np.float32)
        del h["HIERARCH ESO OBS TYPE"]
        for key in ("BZERO", "BSCALE"):
            h.remove(key, ignore_missing=True)
        return h, data

    def test_bias_without_its_type_keyword(self, tmp_path, bias):
        h, data = bias
        path = tmp_path / "b.fits"
        fits.PrimaryHDU(data, h).writeto(path)
        assert refused(path).endswith(
            "PRIMARY: a bias frame, not a sky exposure: EXPTIME = 0 and "
            "no star among 1 source")

    def test_bias_by_its_read_noise(self, tmp_path, bias):
        h, data = bias
        h = h.copy()
        del h["EXPTIME"]
        h["GAIN"], h["RDNOISE"] = 4.0, 10.0  # 2.5 ADU; it scatters 2.2
        path = tmp_path / "b.fits"
        fits.PrimaryHDU(data, h).writeto(path)
        assert re.search(
            r"a bias or dark frame, not a sky exposure: no star among 1 "
            r"source, and a scatter of 2\.\d+ ADU, the read noise alone "
            r"\(RDNOISE / GAIN = 2\.5 ADU\)$", refused(path))

    def test_a_bias_that_says_nothing_has_no_star(self, tmp_path, bias):
        # Nothing tells it from an empty science frame: no star, as
        # before.
        h, data = bias
        h = h.copy()
        del h["EXPTIME"]
        path = tmp_path / "b.fits"
        fits.PrimaryHDU(data, h).writeto(path)
        assert "no star usable for the PSF" in refused(path, NoStarsError)


# -- calibration frames built here ----------------------------------------
def dome_flat(rng, level=30000.0, gain=1.6):
    """A dome flat: vignetting, a gradient, dust rings; Poisson noise."""
    ny, nx = 500, 560
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    r2 = ((x - 300) ** 2 + (y - 230) ** 2) / 400.0**2
    light = level * (1.0 - 0.25 * r2) * (1.0 + 0.04 * x / nx)
    for cx, cy in ((120, 380), (420, 90)):
        d = np.hypot(x - cx, y - cy)
        light *= 1.0 - 0.02 * np.exp(-0.5 * ((d - 12.0) / 3.0) ** 2)
    electrons = rng.poisson(light * gain)
    return (electrons / gain + rng.normal(300.0, 3.0, light.shape)
            ).astype(np.float32)


def ramp(rng, saturated=0.77):
    """A raw twilight flat that climbed past the 16-bit limit."""
    ny, nx = 400, 520
    x = np.arange(nx)[None, :] * np.ones((ny, 1))
    cut = (1.0 - saturated) * nx
    # 65535 reached at column `cut`
    light = 40000.0 + (65535.0 - 900.0 - 40000.0) * x / cut
    data = rng.poisson(light).astype(np.float64) + 900.0
    return np.clip(data, 0, 65535).astype(np.uint16)


class TestBuiltFrames:
    def test_dome_flat(self, tmp_path):
        path = tmp_path / "dome.fits"
        fits.PrimaryHDU(dome_flat(np.random.default_rng(11))).writeto(path)
        message = refused(path)
        assert "PRIMARY: a flat field, not a sky exposure: no star" in (
            message)

    def test_dome_flat_said_to_be_science_has_no_star(self, tmp_path):
        path = tmp_path / "dome.fits"
        fits.PrimaryHDU(dome_flat(np.random.default_rng(12)),
                        header(IMAGETYP="OBJECT")).writeto(path)
        refused(path, NoStarsError)

    def test_bias_from_numpy(self, tmp_path):
        rng = np.random.default_rng(13)
        data = (rng.normal(1000.0, 3.0, (400, 400))
                + np.linspace(0.0, 4.0, 400)[None, :]).astype(np.float32)
        data[rng.integers(0, 400, 40), rng.integers(0, 400, 40)] += 300.0
        path = tmp_path / "bias.fits"
        fits.PrimaryHDU(data, header(GAIN=2.0, RDNOISE=6.0)).writeto(path)
        assert "a bias or dark frame, not a sky exposure" in refused(path)

    @pytest.mark.parametrize(("cards", "source"), [
        ({}, "read off the pixels"), ({"SATURATE": 65535},
                                      "header SATURATE")])
    def test_saturated_sky_flat(self, tmp_path, capsys, cards, source):
        data = ramp(np.random.default_rng(14))
        assert 0.76 < np.mean(data == 65535) < 0.78
        # Saturated: at or above saturation_margin (0.98) times the level.
        share = round(100 * np.mean(data >= 0.98 * 65535))
        assert share == 78
        path = tmp_path / "twilight.fits"
        fits.PrimaryHDU(data, header(**cards)).writeto(path)
        status, err = run_cli(path, tmp_path, capsys)
        assert status == 2
        assert err == [(
            "qualityfits: error: image twilight.fits, extension PRIMARY: "
            f"{share} % of the pixels are at the saturation level 65535 "
            f"({source}): not a science exposure")]

    def test_a_third_saturated_is_measured(self, tmp_path):
        # Below the refusal's 50 %: measured, no crash; no star, and the
        # illumination of a flat.
        data = ramp(np.random.default_rng(15), saturated=0.3)
        path = tmp_path / "twilight.fits"
        fits.PrimaryHDU(data).writeto(path)
        message = refused(path)
        assert "a flat field, not a sky exposure: no star" in message
        assert "saturation" not in message

    def test_saturation_keyword_below_the_sky(self, tmp_path):
        sim = simulate_image(SMALL, seed=530)
        h = sim.header.copy()
        h["SATURATE"] = 0.5 * float(np.median(sim.data))
        path = tmp_path / "wrong_satlevel.fits"
        fits.PrimaryHDU(sim.data, h).writeto(path)
        assert re.search(
            r"PRIMARY: 100 % of the pixels are above the saturation level "
            r"\S+ \(header SATURATE; they reach \S+\): not a science "
            r"exposure, or a wrong saturation level$", refused(path))

    def test_sky_at_saturation(self):
        with pytest.raises(NotScienceError, match=re.escape(
                "ccd07: the sky level 65535 is at or above the saturation "
                "level 65535 (header SATURATE): no usable sky")):
            verdicts.sky_verdict(65535.0, 65535.0, source="header SATURATE",
                                 name="ccd07")
        verdicts.sky_verdict(65534.0, 65535.0, source="x", name="ccd07")
        verdicts.sky_verdict(70000.0, None, source="x", name="ccd07")


# -- multi-extension files -------------------------------------------------
class TestMosaic:
    def test_one_saturated_ccd_fails_alone(self, tmp_path):
        hdus = [fits.PrimaryHDU()]
        for k in range(3):
            hdu = simulate_image(SMALL, seed=540 + k).to_hdu(
                name=f"ccd{k:02d}")
            if k == 1:
                hdu = fits.ImageHDU(ramp(np.random.default_rng(16)))
                hdu.header["EXTNAME"] = "ccd01"
            hdus.append(hdu)
        path = tmp_path / "mosaic.fits"
        fits.HDUList(hdus).writeto(path)
        report = qualityfits.assess(path, jobs=1)
        assert [e.status for e in report.extensions] == [
            "ok", "failed", "ok"]
        error = report.extensions[1].error
        assert (error.type, error.code) == ("NotScienceError", "not-science")
        assert error.message == (
            "ccd01: 78 % of the pixels are at the saturation level 65535 "
            "(read off the pixels): not a science exposure")
        assert report.exposure.ccd_flags["MISSING_CCD"] == ("ccd01",)

    def test_every_ccd_a_flat(self, tmp_path):
        rng = np.random.default_rng(17)
        hdus = [fits.PrimaryHDU(header=header(OBSTYPE="FLAT"))] + [
            fits.ImageHDU(dome_flat(rng), header(EXTNAME=f"ccd{k}"))
            for k in range(2)]
        path = tmp_path / "flats.fits"
        fits.HDUList(hdus).writeto(path)
        assert refused(path) == (
            "image flats.fits: all 2 extensions failed; first: extension "
            "ccd0: a flat field, not a sky exposure (OBSTYPE = 'FLAT')")


# -- corrupt tiles ----------------------------------------------------------
def corrupt_fz(path, good_path=None, n_ccds=1, bad=0):
    """Write a Rice-compressed MEF; scramble the heap of CCD ``bad``."""
    hdus = [fits.PrimaryHDU()]
    for k in range(n_ccds):
        sim = simulate_image(SMALL, seed=550 + k)
        hdus.append(fits.CompImageHDU(
            sim.data, sim.header, name=f"ccd{k:02d}",
            compression_type="RICE_1", tile_shape=(16, 384)))
    fits.HDUList(hdus).writeto(path)
    if good_path is not None:
        good_path.write_bytes(path.read_bytes())
    with fits.open(path, disable_image_compression=True) as hdul:
        table = hdul[bad + 1]
        start = table.fileinfo()["datLoc"]
        heap = start + table.header["NAXIS1"] * table.header["NAXIS2"]
    raw = bytearray(path.read_bytes())
    # Tiles 3 to 6 of the heap, bit-flipped: cfitsio runs off the end.
    for i in range(heap + 3000, heap + 6000):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


class TestCorruptTile:
    def test_refused_in_one_line(self, tmp_path, capsys):
        path = corrupt_fz(tmp_path / "broken.fits.fz",
                          good_path=tmp_path / "whole.fits.fz")
        assert qualityfits.assess(tmp_path / "whole.fits.fz",
                                  jobs=1).extensions[0].ok
        message = refused(path, InvalidImageError)
        assert re.fullmatch(
            r"image broken\.fits\.fz, extension ccd00: corrupt compressed "
            r"tile data \(.+\)", message, re.IGNORECASE), message
        status, err = run_cli(path, tmp_path, capsys)
        assert status == 2
        assert err == [f"qualityfits: error: {message}"]

    def test_one_corrupt_ccd_of_three(self, tmp_path):
        path = corrupt_fz(tmp_path / "mef.fits.fz", n_ccds=3, bad=1)
        report = qualityfits.assess(path, jobs=1)
        assert [e.status for e in report.extensions] == [
            "ok", "failed", "ok"]
        error = report.extensions[1].error
        assert error.type == "InvalidImageError"
        assert "extension ccd01: corrupt compressed tile data" in (
            error.message.lower())


# -- a colour sensor's raw mosaic ---------------------------------------------
def bayer(pix, gains=(0.8, 1.0, 1.0, 0.6)):
    """A monochrome frame seen through a Bayer mosaic (RGGB responses)."""
    out = np.array(pix, dtype=np.float32)
    for (i, j), g in zip(((0, 0), (0, 1), (1, 0), (1, 1)), gains,
                         strict=True):
        out[i::2, j::2] *= g
    return out


class TestColourSensor:
    @pytest.mark.parametrize(("key", "value"), [
        ("BAYERPAT", "RGGB"), ("BAYERPAT", "grbg"), ("FILTER", "RGGB")])
    def test_a_raw_mosaic_is_refused(self, tmp_path, capsys, key, value):
        sim = simulate_image(SMALL, seed=81)
        hdr = sim.header.copy()
        hdr[key] = value
        path = tmp_path / "colour.fits"
        fits.PrimaryHDU(bayer(sim.data), hdr).writeto(path)
        message = refused(path, UnsupportedImageError)
        assert f"a colour sensor's raw frame ({key} = {value!r}" in message
        assert "four 2 x 2 pixel positions read" in message
        status, err = run_cli(path, tmp_path, capsys)
        assert status == 2
        assert err == [f"qualityfits: error: {message}"]

    def test_the_real_ntt_frame_through_a_mosaic(self, tmp_path):
        """A real frame's sky and stars seen through a mosaic: refused;
        the same frame with only the keyword: assessed."""
        path = shared_file("ntt_emmi_R_galaxies.fits.gz")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = fits.getdata(path)
            hdr = fits.getheader(path)
        hdr["BAYERPAT"] = "GBRG"
        mosaic = tmp_path / "mosaic.fits"
        fits.PrimaryHDU(bayer(data, (0.9, 1.0, 1.0, 0.95)),
                        hdr).writeto(mosaic)
        refused(mosaic, UnsupportedImageError)
        # An extracted or debayered plane that kept the keyword.
        left = tmp_path / "left.fits"
        fits.PrimaryHDU(np.asarray(data, np.float32), hdr).writeto(left)
        report = qualityfits.assess(left, jobs=1)
        assert report.extensions[0].ok

    def test_the_threshold_holds_on_every_real_frame(self):
        """The monochrome frames' 2 x 2 positions agree within the noise."""
        for name in SCIENCE:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(shared_file(name)) as hdul:
                    hdu = next(h for h in hdul if h.data is not None
                               and h.data.ndim == 2)
                    hdr = hdu.header.copy()
                    pix = np.asarray(hdu.data, np.float32)
            hdr["BAYERPAT"] = "RGGB"
            verdicts.colour_verdict(hdr, pix, name)  # does not raise
