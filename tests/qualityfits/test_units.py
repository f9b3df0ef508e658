"""The measurements do not depend on the units of the pixels.

The same frame in ADU, in e-/s, in nanomaggies or times a constant
holds the same stars, galaxies and cosmic rays: only the sky level and
noise follow the scale.  Without a GAIN keyword the cosmic-ray finder
once assumed 1 e-/ADU for the sources' photon noise, whatever the
units: the NTT frame times 1e-4 lost 60 % of its cosmic rays and its
FWHM moved by 5 %.  It now takes the gain the sky implies
(`qualityfits.pipeline._sky_gain`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from testkit import shared_file

import qualityfits
from qualityfits.datasets import SimulationParams, simulate_image

COUNTS = ("NCR", "NOBJ", "NSTAR", "NGAL", "NSTAR_PSF")
SCALES = (1e-12, 1e-4, 1e3, 1e12)


def _scaled(data: np.ndarray, header: fits.Header, factor: float,
            path) -> object:
    header = header.copy()
    for key in ("SATURATE", "SATLEVEL"):
        if isinstance(header.get(key), (int, float)):
            header[key] = header[key] * factor
    fits.PrimaryHDU((data * factor).astype(np.float32),
                    header).writeto(path)
    return qualityfits.assess(path, jobs=1).extensions[0]


def _check_invariant(data: np.ndarray, header: fits.Header, tmp_path,
                     note: str = "the sky level over its variance") -> None:
    base = _scaled(data, header, 1.0, tmp_path / "x1.fits")
    assert base.status == "ok", base.error
    assert base.metrics["NCR"] > 10  # cosmic rays to find
    for factor in SCALES:
        other = _scaled(data, header, factor, tmp_path / f"x{factor}.fits")
        assert other.status == "ok", (factor, other.error)
        for key in COUNTS:
            assert other.metrics[key] == base.metrics[key], (factor, key)
        for key in ("FWHM_PIX", "FWHM_RH"):
            assert other.metrics[key] == pytest.approx(
                base.metrics[key], rel=1e-3), (factor, key)
        assert other.metrics["ELLIPTICITY"] == pytest.approx(
            base.metrics["ELLIPTICITY"], abs=1e-4), factor
        assert other.metrics["SKY_RMS"] == pytest.approx(
            factor * base.metrics["SKY_RMS"], rel=1e-4), factor
        gain_notes = [n for n in other.notes if "cosmic-ray finder" in n]
        assert len(gain_notes) == 1, other.notes
        assert note in gain_notes[0], gain_notes


def test_a_simulation_without_gain_keyword(tmp_path):
    # Not the project's usual field: a broader, low-beta PSF, more sky.
    sim = simulate_image(SimulationParams(
        shape=(768, 768), fwhm=3.4, beta=2.2, sky=1600.0, n_stars=220,
        n_galaxies=250, n_cr_hits=60, n_cr_tracks=4), seed=811)
    header = sim.header.copy()
    del header["GAIN"]
    _check_invariant(sim.data.astype(np.float64), header, tmp_path)


def _ntt() -> tuple[Path, np.ndarray, fits.Header]:
    """The NTT frame of ../shared/data (no GAIN keyword): path, pixels."""
    path = shared_file("ntt_emmi_R_galaxies.fits.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its ESO-LOG cards
        with fits.open(path) as hdul:
            return (path, hdul[0].data.astype(np.float64),
                    hdul[0].header.copy())


@pytest.mark.realdata
def test_a_real_frame_without_gain_keyword(tmp_path):
    _, data, header = _ntt()
    assert "GAIN" not in header
    _check_invariant(data, header, tmp_path)


def test_a_sky_subtracted_frame_is_unit_free_too(tmp_path):
    """Near zero the sky says nothing: it is taken at 25 RMS."""
    sim = simulate_image(SimulationParams(
        shape=(640, 640), n_stars=250, n_galaxies=150, n_cr_hits=40),
        seed=812)
    header = sim.header.copy()
    del header["GAIN"]
    data = sim.data - np.median(sim.data)
    _check_invariant(data, header, tmp_path, note="a sky of 25 RMS over "
                     "its variance (the sky is ")


# -- BUNIT: the GAIN keyword is the detector's, per ADU ----------------------
#: (BUNIT, pixel value per ADU, extra keywords, the gain of the pixels)
#: for a frame of GAIN 2.5 and EXPTIME 120 s.
GAIN, EXPTIME, FLUXCONV = 2.5, 120.0, 0.1418
UNITS = (
    ("ELECTRONS", GAIN, {}, 1.0),  # HST ACS, WFC3/UVIS _flt
    ("ELECTRONS/S", GAIN / EXPTIME, {}, EXPTIME),  # WFC3/IR, drizzled
    ("ADU/s", 1.0 / EXPTIME, {}, GAIN * EXPTIME),
    ("MJy/sr", FLUXCONV / EXPTIME, {"FLUXCONV": FLUXCONV},  # Spitzer
     GAIN * EXPTIME / FLUXCONV),
)


@pytest.fixture(scope="module")
def frame_in_adu():
    sim = simulate_image(SimulationParams(
        shape=(768, 768), fwhm=2.9, beta=3.2, sky=900.0, gain=GAIN,
        read_noise=4.0, exptime=EXPTIME, n_stars=240, n_galaxies=200,
        n_cr_hits=50, n_cr_tracks=4), seed=813)
    assert sim.header["GAIN"] == GAIN
    assert sim.header["EXPTIME"] == EXPTIME
    return sim.data.astype(np.float64), sim.header.copy()


@pytest.mark.parametrize(("unit", "per_adu", "extra", "gain"), UNITS,
                         ids=[u[0] for u in UNITS])
def test_the_gain_follows_bunit(tmp_path, frame_in_adu, unit, per_adu,
                                extra, gain):
    """The frame in electrons, e-/s, ADU/s or MJy/sr, GAIN kept.

    The same measurements as in ADU.  With the GAIN keyword taken as
    the pixels' gain, the frame in e-/s lost 12 of its 54 cosmic rays,
    in ADU/s 23 and in MJy/sr 44 (in electrons, one more star).
    """
    data, header = frame_in_adu
    path = tmp_path / "adu.fits"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    base = qualityfits.assess(path, jobs=1).extensions[0]
    assert base.status == "ok", base.error
    assert base.metrics["GAIN"] == GAIN
    assert base.metrics["NCR"] > 10
    converted = header.copy()
    converted["BUNIT"] = unit
    converted["SATURATE"] = header["SATURATE"] * per_adu
    converted.update(extra)  # GAIN 2.5 stays: the detector's, per ADU
    path = tmp_path / "converted.fits"
    fits.PrimaryHDU((data * per_adu).astype(np.float32),
                    converted).writeto(path)
    other = qualityfits.assess(path, jobs=1).extensions[0]
    assert other.status == "ok", other.error
    for key in COUNTS:
        assert other.metrics[key] == base.metrics[key], key
    for key in ("FWHM_PIX", "FWHM_RH", "PSF_BETA"):
        assert other.metrics[key] == pytest.approx(
            base.metrics[key], rel=1e-3), key
    assert other.metrics["ELLIPTICITY"] == pytest.approx(
        base.metrics["ELLIPTICITY"], abs=1e-4)
    assert other.flags == base.flags
    assert other.metrics["GAIN"] == pytest.approx(gain, rel=1e-12)
    assert any(f"pixels in {unit} (BUNIT): gain" in n
               for n in other.notes), other.notes


def test_a_physical_unit_without_its_conversion_has_no_gain(
        tmp_path, frame_in_adu):
    data, header = frame_in_adu
    header = header.copy()
    header["BUNIT"] = "nanomaggy"
    path = tmp_path / "nmgy.fits"
    fits.PrimaryHDU((data * 0.01).astype(np.float32), header).writeto(path)
    report = qualityfits.assess(path, jobs=1).extensions[0]
    assert report.status == "ok", report.error
    assert np.isnan(report.metrics["GAIN"])
    assert any("pixels in nanomaggy (BUNIT): the gain of these pixels is "
               "unknown" in n for n in report.notes), report.notes


def test_a_noise_beyond_the_measured_range_is_noted(tmp_path,
                                                    frame_in_adu):
    data, header = frame_in_adu
    header = header.copy()
    del header["GAIN"]
    header["SATURATE"] = header["SATURATE"] * 1e-18
    path = tmp_path / "tiny.fits"
    fits.PrimaryHDU((data * 1e-18).astype(np.float32), header).writeto(path)
    report = qualityfits.assess(path, jobs=1).extensions[0]
    assert report.status == "ok", report.error
    notes = [n for n in report.notes if "where the results do not depend "
             "on the pixels' unit" in n]
    assert len(notes) == 1, report.notes
    assert notes[0].startswith("a sky noise of 1.")
    assert "e-17 per pixel: outside 1e-10 to 1e+13" in notes[0]
    base = tmp_path / "adu.fits"
    fits.PrimaryHDU(data.astype(np.float32), frame_in_adu[1]).writeto(base)
    assert not any("pixels' unit" in n for n in
                   qualityfits.assess(base, jobs=1).extensions[0].notes)


def test_two_amplifier_gains_make_the_ccds(tmp_path, frame_in_adu):
    """GAINA and GAINB (DECam) without GAIN: their mean is the gain."""
    data, header = frame_in_adu
    path = tmp_path / "gain.fits"
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    base = qualityfits.assess(path, jobs=1).extensions[0]
    amps = header.copy()
    del amps["GAIN"]
    amps["GAINA"], amps["GAINB"] = GAIN - 0.125, GAIN + 0.125
    path = tmp_path / "amps.fits"
    fits.PrimaryHDU(data.astype(np.float32), amps).writeto(path)
    other = qualityfits.assess(path, jobs=1).extensions[0]
    assert other.metrics["GAIN"] == GAIN
    assert "gain 2.5 e-/ADU, the mean of GAINA 2.375 and GAINB 2.625" \
        in other.notes
    for key in (*COUNTS, "FWHM_PIX", "PSF_BETA", "MAGLIM_5SIG"):
        assert other.metrics[key] == base.metrics[key], key


@pytest.mark.realdata
def test_a_real_ccds_gains_agree_with_its_noise():
    """The DECam CP CCD: GAINA/GAINB against sky / RMS² (within 1 %)."""
    path = shared_file("decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz")
    report = qualityfits.assess(path, jobs=1).extensions[0]
    m = report.metrics
    assert m["GAIN"] == pytest.approx(3.8767, abs=1e-4)
    assert m["SKY_MEAN"] / m["SKY_RMS"] ** 2 == pytest.approx(m["GAIN"],
                                                               rel=0.01)


@pytest.mark.realdata
def test_a_real_frame_with_its_sky_subtracted(tmp_path):
    """The NTT frame with its sky 5 RMS below zero or 10 above.

    Without a gain and a sky, the finder takes a sky of 25 RMS: the
    cosmic rays of the PSF stars are found as with the frame's own sky
    (a floor of 5 RMS lost them: FWHM +5.5 %).  (The sky subtracted
    exactly would turn this frame's bad areas, set to its median, into
    blocks of zeros: blanks, another frame.)
    """
    path, data, header = _ntt()
    base = qualityfits.assess(path, jobs=1).extensions[0]
    sky = float(np.median(data))
    rms = base.metrics["SKY_RMS"]
    for offset in (sky + 5.0 * rms, sky - 10.0 * rms):
        target = tmp_path / f"minus{offset:.0f}.fits"
        fits.PrimaryHDU((data - offset).astype(np.float32),
                        header).writeto(target)
        other = qualityfits.assess(target, jobs=1).extensions[0]
        assert other.metrics["FWHM_PIX"] == pytest.approx(
            base.metrics["FWHM_PIX"], rel=1e-3)
        assert other.metrics["NCR"] == base.metrics["NCR"]
        assert other.metrics["NSTAR_FIT"] == base.metrics["NSTAR_FIT"]
        assert any("a sky of 25 RMS over its variance" in n
                   for n in other.notes), other.notes
