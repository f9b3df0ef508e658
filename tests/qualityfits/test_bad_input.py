"""Bad input: every case raises its typed error with a precise message.

Each message must name the input at fault (file, extension or
parameter) and the value that is wrong, because a command line, a UWS
``errorSummary`` or a log shows it as it is.  A mosaic with one bad CCD
is not an error: the report says which CCD failed and why.
"""

from __future__ import annotations

import gc
import gzip
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

import qualityfits
from qualityfits.cliutil import config_from_pairs
from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.errors import (
    EmptyImageError,
    InvalidImageError,
    InvalidParameterError,
    NoImageDataError,
    NoStarsError,
    NotScienceError,
    QualityFitsError,
    ShapeMismatchError,
    UnsupportedImageError,
)
from qualityfits.io import ImageSource
from qualityfits.parameters import QualityParameters

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)


@pytest.fixture(scope="module")
def sim():
    return simulate_image(SMALL, seed=501)


@pytest.fixture(scope="module")
def image(tmp_path_factory, sim):
    """A valid single-image file."""
    path = tmp_path_factory.mktemp("good") / "good.fits"
    fits.PrimaryHDU(sim.data, sim.header).writeto(path)
    return path


def write(path, data, header=None):
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def assess_error(exc_type, *args, **kwargs):
    """Assess, expecting ``exc_type``; return its code and message."""
    with warnings.catch_warnings():
        # files left open on errors are TestNoLeaks' business: do not let
        # them surface in whichever later test the garbage collector hits
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises(exc_type) as info:
            qualityfits.assess(*args, jobs=1, **kwargs)
        code, message = info.value.code, str(info.value)
        del info
        gc.collect()
    assert "\n" not in message
    return code, message


def resource_warnings(func):
    """Call ``func``; return the unclosed-file warnings it leaves behind."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        func()
        gc.collect()
    return [str(w.message) for w in caught
            if issubclass(w.category, ResourceWarning)]


def test_error_codes_are_stable():
    assert {cls.__name__: cls.code for cls in (
        InvalidImageError, NoImageDataError, EmptyImageError, NoStarsError,
        NotScienceError, ShapeMismatchError, InvalidParameterError,
        UnsupportedImageError)} == {
        "InvalidImageError": "invalid-image",
        "NoImageDataError": "no-image-data",
        "EmptyImageError": "empty-image",
        "NoStarsError": "no-stars",
        "NotScienceError": "not-science",
        "ShapeMismatchError": "shape-mismatch",
        "InvalidParameterError": "invalid-parameter",
        "UnsupportedImageError": "unsupported-image",
    }


# -- unreadable files --------------------------------------------------------
class TestUnreadable:
    def test_not_fits(self, tmp_path):
        path = tmp_path / "notes.fits"
        path.write_text("SIMPLE is not how this text file starts\n")
        _, message = assess_error(InvalidImageError, path)
        assert "notes.fits" in message
        assert "not a FITS file" in message

    def test_missing_file(self, tmp_path):
        _, message = assess_error(InvalidImageError, tmp_path / "gone.fits")
        assert "gone.fits" in message
        assert "no such file" in message

    def test_truncated_mid_data(self, tmp_path, image):
        raw = image.read_bytes()
        cut = len(raw) // 2 + 123
        path = tmp_path / "cut.fits"
        path.write_bytes(raw[:cut])
        _, message = assess_error(InvalidImageError, path)
        assert "cut.fits" in message
        assert "truncated" in message
        assert str(cut) in message  # the size found
        assert str(len(raw)) in message  # the size needed

    def test_truncated_in_the_header(self, tmp_path, image):
        path = tmp_path / "head.fits"
        path.write_bytes(image.read_bytes()[:1000])
        _, message = assess_error(InvalidImageError, path)
        assert "head.fits" in message

    def test_truncated_in_the_last_extension_header(self, tmp_path):
        # Two complete CCDs, then the file stops inside the header of
        # the third: a broken file, not a two-CCD exposure.
        full = tmp_path / "full.fits"
        hdus = [fits.PrimaryHDU()]
        hdus += [simulate_image(SMALL, seed=510 + k).to_hdu(name=f"c{k}")
                 for k in range(3)]
        fits.HDUList(hdus).writeto(full)
        with fits.open(full) as hdul:
            start = hdul[3].fileinfo()["hdrLoc"]
        path = tmp_path / "short.fits"
        path.write_bytes(full.read_bytes()[:start + 1000])
        _, message = assess_error(InvalidImageError, path)
        assert "short.fits" in message
        assert "truncated" in message

    def test_truncated_gzip(self, tmp_path, image):
        packed = gzip.compress(image.read_bytes())
        path = tmp_path / "cut.fits.gz"
        path.write_bytes(packed[:len(packed) // 2])
        _, message = assess_error(InvalidImageError, path)
        assert "cut.fits.gz" in message
        assert "truncated" in message

    def test_only_a_table(self, tmp_path):
        path = tmp_path / "catalog.fits"
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns(
                [fits.Column(name="MAG", format="E", array=[20.0, 21.0])]),
        ]).writeto(path)
        _, message = assess_error(NoImageDataError, path)
        assert "catalog.fits" in message
        assert "BinTableHDU" in message

    def test_one_dimensional_data(self, tmp_path):
        path = write(tmp_path / "spectrum.fits",
                     np.arange(100, dtype=np.float32))
        _, message = assess_error(NoImageDataError, path)
        assert "spectrum.fits" in message


# -- images without anything to measure --------------------------------------
class TestNothingToMeasure:
    def test_constant_image(self, tmp_path):
        path = write(tmp_path / "const.fits",
                     np.full((256, 256), 5.0, np.float32))
        code, message = assess_error(EmptyImageError, path)
        assert code == "empty-image"
        assert "const.fits" in message
        assert "constant" in message
        assert re.search(r"\b5\b", message)

    def test_all_nan_image(self, tmp_path):
        path = write(tmp_path / "blank.fits",
                     np.full((256, 256), np.nan, np.float32))
        _, message = assess_error(EmptyImageError, path)
        assert "NaN" in message  # not "masked": the user gave no mask
        assert "blank.fits" in message

    def test_all_masked_image(self, tmp_path, image):
        mask = write(tmp_path / "dead.fits", np.zeros((512, 512), np.int16))
        _, message = assess_error(EmptyImageError, image, mask=mask,
                                  parameters=QualityParameters(
                                      mask_convention="zero"))
        assert "good.fits" in message
        assert "masked" in message

    def test_pure_noise(self, tmp_path):
        rng = np.random.default_rng(5)
        noise = rng.normal(1000.0, 10.0, (512, 512)).astype(np.float32)
        path = write(tmp_path / "noise.fits", noise)
        code, message = assess_error(NoStarsError, path)
        assert code == "no-stars"
        assert "noise.fits" in message
        assert re.search(r"no star .* among \d+ sources", message)

    @pytest.mark.realdata
    def test_real_bias_frame(self):
        # Refused as what it is (tests/qualityfits/test_verdicts.py).
        path = shared_file("ntt_susi_bias_raw.fits.gz")
        code, message = assess_error(NotScienceError, path)
        assert code == "not-science"
        assert "ntt_susi_bias_raw.fits.gz" in message
        assert "a bias frame, not a sky exposure" in message


    @pytest.mark.realdata
    def test_real_frame_with_a_dead_third(self, tmp_path):
        # A source on the edge of the zeroed columns had degenerate
        # moments: sep refused the CCD's photometry, an internal error.
        packed = shared_file("saao1m_ste3_raw_a8280271.fits.gz")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(packed) as hdul:
                data = hdul[0].data.astype(np.float32)
                header = hdul[0].header.copy()
        data[:, : data.shape[1] // 3] = 0.0
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        path = write(tmp_path / "dead_third.fits", data, header)
        code, message = assess_error(NoStarsError, path)
        assert code == "no-stars"
        assert re.search(r"no star usable for the PSF among \d+ sources",
                         message), message


# -- flats and masks ---------------------------------------------------------
class TestFlatAndMask:
    def test_flat_of_another_shape(self, tmp_path, image):
        flat = write(tmp_path / "small_flat.fits",
                     np.ones((100, 120), np.float32))
        _, message = assess_error(ShapeMismatchError, image, flat=flat)
        assert "small_flat.fits" in message
        assert "100x120" in message
        assert "good.fits" in message
        assert "512x512" in message

    def test_mask_with_the_wrong_extension_count(self, tmp_path, image):
        mask = tmp_path / "mef_mask.fits"
        fits.HDUList([fits.PrimaryHDU()] + [
            fits.ImageHDU(np.ones((512, 512), np.int16)) for _ in range(2)
        ]).writeto(mask)
        _, message = assess_error(ShapeMismatchError, image, mask=mask)
        assert "mef_mask.fits" in message
        assert "2 image extension" in message
        assert "good.fits" in message
        assert "has 1" in message

    def test_flat_with_zeros_and_negatives(self, tmp_path, image):
        values = np.ones((512, 512), np.float32)
        values[100:228, 100:228] = 0.0
        values[300:428, 300:428] = -1.0
        values[0:50, 400:512] = np.nan
        flat = write(tmp_path / "holes.fits", values)
        plain = qualityfits.assess(image, jobs=1).extensions[0]
        ext = qualityfits.assess(image, flat=flat, jobs=1).extensions[0]
        assert ext.status == "ok"
        x = np.asarray(ext.sources["X_IMAGE"]) - 1
        y = np.asarray(ext.sources["Y_IMAGE"]) - 1
        for lo, hi in ((100, 228), (300, 428)):
            inside = (x >= lo) & (x < hi) & (y >= lo) & (y < hi)
            assert not inside.any()
        assert ext.metrics["NOBJ"] < plain.metrics["NOBJ"]

    def test_flat_of_zeros(self, tmp_path, image):
        flat = write(tmp_path / "zero_flat.fits",
                     np.zeros((512, 512), np.float32))
        _, message = assess_error(EmptyImageError, image, flat=flat)
        assert "zero_flat.fits" in message
        assert "no positive pixel" in message


# -- parameters --------------------------------------------------------------
class TestParameters:
    @pytest.mark.parametrize("value", [-1.0, -25.3])
    def test_negative_zeropoint(self, value):
        with pytest.raises(InvalidParameterError) as info:
            QualityParameters(zeropoint=value)
        assert str(info.value) == f"zeropoint: {value:g} is outside [0, 50]"

    @pytest.mark.parametrize("value", [0.0, -0.2, float("nan")])
    def test_bad_pixel_scale(self, value):
        with pytest.raises(InvalidParameterError) as info:
            QualityParameters(pixscale=value)
        assert str(info.value).startswith("pixscale: ")
        assert f"{value:g}" in str(info.value)

    def test_parameter_error_is_a_value_error(self):
        with pytest.raises(ValueError, match="zeropoint"):
            QualityParameters(zeropoint=-1.0)

    def test_zero_zeropoint_is_assessed(self, image):
        # maggies: a zero point of 0 is legitimate
        report = qualityfits.assess(
            image, parameters=QualityParameters(zeropoint=0.0), jobs=1)
        assert report.parameters["zeropoint"] == 0.0
        assert report.extensions[0].metrics["ZEROPOINT"] == 0.0

    def test_unknown_config_key(self):
        with pytest.raises(InvalidParameterError, match="no_such_key"):
            QualityConfig.from_dict({"no_such_key": 1})

    @pytest.mark.parametrize(("pair", "named"), [
        ("no_such_key=1", "no_such_key"),
        ("detect_thresh", "detect_thresh"),
        ("detect_thresh=abc", "abc"),
        ("detect_thresh=-1", "detect_thresh"),
    ])
    def test_bad_set_option(self, pair, named):
        # what the command line (and a UWS parameter) turns --set into
        with pytest.raises(InvalidParameterError) as info:
            config_from_pairs([pair])
        assert named in str(info.value)

    def test_bad_set_option_is_a_quality_error(self):
        with pytest.raises(QualityFitsError, match="no_such_key"):
            config_from_pairs(["no_such_key=1"])


# -- one bad CCD in a mosaic -------------------------------------------------
@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.fits"
    hdus = [fits.PrimaryHDU()]
    for k in range(3):
        hdu = simulate_image(SMALL, seed=520 + k).to_hdu(name=f"ccd{k:02d}")
        if k == 1:
            hdu.data = np.full((512, 512), 7.0, np.float32)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return path, qualityfits.assess(path, jobs=1)


class TestOneBadCcd:
    def test_the_others_are_assessed(self, mosaic):
        _, report = mosaic
        assert [(e.name, e.status) for e in report.extensions] == [
            ("ccd00", "ok"), ("ccd01", "failed"), ("ccd02", "ok")]
        for ext in (report.extensions[0], report.extensions[2]):
            assert ext.error is None
            assert ext.metrics["NOBJ"] > 50
            assert np.isfinite(ext.metrics["FWHM_PIX"])

    def test_the_failure_is_explained(self, mosaic):
        _, report = mosaic
        bad = report.extensions[1]
        assert report.failed == (bad,)
        assert not bad.ok
        assert bad.error.type == "EmptyImageError"
        assert bad.error.code == "empty-image"
        assert "ccd01" in bad.error.message
        assert "constant" in bad.error.message
        assert np.isnan(bad.metrics["FWHM_PIX"])

    def test_the_exposure_says_a_ccd_is_missing(self, mosaic):
        _, report = mosaic
        assert "MISSING_CCD" in report.exposure.flags
        assert report.exposure.ccd_flags["MISSING_CCD"] == ("ccd01",)
        nobj = [report.extensions[k].metrics["NOBJ"] for k in (0, 2)]
        agg = report.exposure.metrics["NOBJ"]
        assert (agg["min"], agg["max"]) == (min(nobj), max(nobj))
        assert agg["median"] == pytest.approx(np.median(nobj))

    def test_every_ccd_bad_raises(self, tmp_path):
        path = tmp_path / "dead.fits"
        fits.HDUList([fits.PrimaryHDU()] + [
            fits.ImageHDU(np.full((64, 64), float(k), np.float32),
                          name=f"ccd{k}") for k in range(2)
        ]).writeto(path)
        _, message = assess_error(EmptyImageError, path)
        assert "dead.fits" in message
        assert "all 2 extensions failed" in message


# -- nothing left behind on errors -------------------------------------------
def table_only(path):
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.BinTableHDU.from_columns(
            [fits.Column(name="MAG", format="E", array=[20.0, 21.0])]),
    ]).writeto(path)
    return path


class TestNoLeaks:
    def test_no_image_data_closes_the_file(self, tmp_path):
        path = table_only(tmp_path / "catalog.fits")

        def run():
            with pytest.raises(NoImageDataError):
                qualityfits.assess(path, jobs=1)

        assert resource_warnings(run) == []

    def test_no_image_data_removes_the_gzip_copy(self, tmp_path):
        plain = table_only(tmp_path / "catalog.fits")
        packed = tmp_path / "catalog.fits.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        work = tmp_path / "work"
        work.mkdir()

        def run():
            with pytest.raises(NoImageDataError):
                ImageSource(packed, tmpdir=work)

        assert resource_warnings(run) == []
        assert list(work.iterdir()) == []

    def test_bad_mask_closes_the_flat(self, tmp_path, image):
        flat = write(tmp_path / "flat.fits", np.ones((512, 512), np.float32))
        mask = tmp_path / "mask.fits"
        mask.write_text("no mask here\n")

        def run():
            with pytest.raises(InvalidImageError, match=r"mask\.fits"):
                qualityfits.assess(image, flat=flat, mask=mask, jobs=1)

        assert resource_warnings(run) == []


class TestOneImageCube:
    """A cube of one plane whose WCS has two axes (and a TPV distortion).

    wcslib reads such a WCS as three axes and cannot copy it (a
    ``RuntimeError``, not a ``ValueError``): it once ended the run in a
    traceback.  The image's two axes are read instead.
    """

    def test_its_wcs_is_read(self, tmp_path, sim):
        header = sim.header.copy()
        assert header["CTYPE1"].endswith("-TAN")
        header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
        header["PV1_1"], header["PV2_1"] = 1.0, 1.0  # TPV's identity
        flat = write(tmp_path / "image.fits", sim.data, header)
        cube = write(tmp_path / "cube.fits", sim.data[None], header)
        assert fits.getheader(cube)["NAXIS"] == 3
        one = qualityfits.assess(flat, jobs=1).extensions[0]
        other = qualityfits.assess(cube, jobs=1).extensions[0]
        assert other.status == "ok", other.error
        assert other.metrics["PIXSCALE"] > 0
        assert other.metrics["PIXSCALE"] == one.metrics["PIXSCALE"]


@pytest.mark.parametrize("shape", [(1, 500), (15, 512), (512, 8)])
def test_a_strip_is_too_small(tmp_path, sim, shape):
    # A one-row strip of a real-looking image was called a flat field
    # ("a smooth illumination varying 137538 times the noise").
    data = np.ascontiguousarray(sim.data[:shape[0], :shape[1]])
    path = write(tmp_path / "strip.fits", data, sim.header)
    code, message = assess_error(EmptyImageError, path)
    assert code == "empty-image"
    assert (f"{shape[0]} x {shape[1]} pixels, too small to assess (at "
            "least 16 on each side)") in message


def test_sixteen_pixels_a_side_are_assessed_or_refused_for_stars(
        tmp_path, sim):
    path = write(tmp_path / "small.fits",
                 np.ascontiguousarray(sim.data[:16, :16]), sim.header)
    with pytest.raises(NoStarsError):
        qualityfits.assess(path, jobs=1)


class TestBlankBlocks:
    """Exact zeros in blocks are blanks, whatever the sky level.

    The rule for a sky far above zero (every exact 0 is blank) missed a
    sky-subtracted frame's empty areas (SWarp fills them with 0) and a
    frame whose sky is near its RMS: the KPNO frame with a third of it
    zeroed had SKY_RMS 0.19 instead of ~10.
    """

    def _subtracted(self, sim):
        data = (sim.data - np.median(sim.data)).astype(np.float32)
        header = sim.header.copy()
        header["SATURATE"] = header["SATURATE"] - float(np.median(sim.data))
        return data, header

    def test_an_empty_area_is_blank(self, tmp_path, sim):
        data, header = self._subtracted(sim)
        base = qualityfits.assess(write(tmp_path / "base.fits", data,
                                        header), jobs=1).extensions[0]
        holed = data.copy()
        holed[:, :128] = 0.0
        report = qualityfits.assess(write(tmp_path / "holed.fits", holed,
                                          header), jobs=1).extensions[0]
        assert report.metrics["NFLAG_NODATA"] == 128 * data.shape[0]
        assert report.metrics["SKY_RMS"] == pytest.approx(
            base.metrics["SKY_RMS"], rel=0.05)

    def test_isolated_zeros_of_an_integer_sky_are_data(self, tmp_path, sim):
        data, header = self._subtracted(sim)
        counts = np.round(data / 4.0).astype(np.int16)  # zeros scattered
        assert np.count_nonzero(counts == 0) > 10_000
        report = qualityfits.assess(write(tmp_path / "int.fits", counts,
                                          header), jobs=1).extensions[0]
        assert report.status == "ok", report.error
        assert report.metrics["NFLAG_NODATA"] < 50
