"""PSF accuracy at the edges: undersampled, non-Moffat, large, elongated.

Issue 15.

The fields are drawn by `benchmarks/psf_edges.py`, not by
`qualityfits.datasets`: stars with a power-law flux distribution on a
flat sky, each pixel the mean of the profile over 10 x 10 sub-pixel
points (not Gauss-Legendre nodes), with profiles the pipeline does not
model (a Gaussian, an Airy disc) beside Moffat ones.  Seeds differ
from those the fixes were measured on (`benchmarks/README.md`, "PSF at
undersampling").
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from numpy.typing import NDArray

from qualityfits.pipeline import assess_extension

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import psf_edges  # noqa: E402

#: The benchmark's fields, smaller: drawn without `qualityfits.datasets`.
SHAPE = (768, 768)


def _field(kind: str, fwhm: float, seed: int, *, beta: float = 3.0,
           n_stars: int = 300, ellipticity: float = 0.0,
           theta: float = 0.0) -> NDArray[np.float32]:
    return psf_edges.field(kind, fwhm, n_stars, seed, shape=SHAPE,
                           beta=beta, ellipticity=ellipticity, theta=theta)


def _assess(data: NDArray[np.float32]) -> dict[str, float]:
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(data, header, name="sim")
    assert report.status == "ok", report.error
    return dict(report.metrics)


@pytest.mark.parametrize(("fwhm", "beta", "seed"), [
    (1.2, 1.7, 81), (1.4, 3.0, 82), (1.6, 2.2, 83)])
def test_undersampled_moffat_fwhm_within_1_5_percent(
        fwhm: float, beta: float, seed: int) -> None:
    """Moffat PSFs of 1.2-1.6 px: FWHM_PIX within 1.5 % of the truth.

    1.2 px with beta 1.7 is what the Spitzer GLIMPSE mosaic measures
    (the same beta and half-light radius).  Pixel integrals with 2
    nodes per axis gave -0.9 to -2.0 % there.
    """
    m = _assess(_field("moffat", fwhm, seed, beta=beta))
    assert m["NSTAR_FIT"] >= 20
    assert abs(m["FWHM_PIX"] / fwhm - 1) < 0.015, m["FWHM_PIX"]
    assert abs(m["PSF_BETA"] - beta) < 0.15 * beta
    assert m["ELLIPTICITY"] < 0.01


@pytest.mark.parametrize(("kind", "fwhm", "seed", "tolerance"), [
    ("gauss", 3.0, 84, 0.007), ("gauss", 5.5, 86, 0.007),
    ("airy", 3.0, 85, 0.075)])
def test_gaussian_like_cores_keep_their_beta(
        kind: str, fwhm: float, seed: int, tolerance: float) -> None:
    """A Gaussian or Airy core drives beta beyond the free fits' range.

    Those stars are the PSF, not runaway fits: beta goes on towards the
    Gaussian limit (`qualityfits.psf.scan_beta`; it fell back to 3
    before, giving an Airy FWHM -19 % off, then stopped at 22.5, a
    Gaussian -1.7 %).  A Moffat cannot be an Airy disc: even a Gaussian,
    its best fit, is 6-7 % narrower (PSFEx 9 %), which is what the
    tolerance allows.
    """
    m = _assess(_field(kind, fwhm, seed))
    assert m["PSF_BETA"] > 40.0
    assert abs(m["FWHM_PIX"] / fwhm - 1) < tolerance, m["FWHM_PIX"]


@pytest.mark.parametrize(("kind", "fwhm", "seed"), [
    ("kolmogorov", 2.2, 90), ("kolmogorov", 5.0, 91), ("dgauss", 3.5, 92),
    ("kolmogorov", 1.8, 93)])
def test_profiles_no_moffat_fits_get_their_fwhm(
        kind: str, fwhm: float, seed: int) -> None:
    """Kolmogorov seeing, a core with a halo: FWHM_PIX within 1 %.

    Their best Moffat reads them 1.4-3.9 % narrow (PSFEx 1.2-3.1 %);
    `qualityfits.psf.profile_scale` measures what it misses from the
    stars' residuals (FWHM_CORR, significantly above 1).
    """
    m = _assess(_field(kind, fwhm, seed))
    assert abs(m["FWHM_PIX"] / fwhm - 1) < 0.01, m["FWHM_PIX"]
    assert m["FWHM_CORR"] > 1.0 + 3 * m["FWHM_CORR_ERR"]
    assert m["FWHM_CORR_ERR"] < 0.005


@pytest.mark.parametrize(("beta", "fwhm", "seed"), [
    (2.5, 2.4, 94), (3.5, 4.5, 95), (6.0, 3.0, 96)])
def test_moffat_profiles_need_no_correction(
        beta: float, fwhm: float, seed: int) -> None:
    """On Moffat PSFs FWHM_CORR is 1 within its error (and 0.6 %)."""
    m = _assess(_field("moffat", fwhm, seed, beta=beta))
    assert abs(m["FWHM_CORR"] - 1) < max(3 * m["FWHM_CORR_ERR"], 0.002)
    assert abs(m["FWHM_CORR"] - 1) < 0.006
    assert abs(m["FWHM_PIX"] / fwhm - 1) < 0.01, m["FWHM_PIX"]


def test_large_psf_fwhm_and_beta() -> None:
    """A 9.5 px PSF: FWHM_PIX within 1.5 %, beta within 10 %.

    Its beta rests on the wings, which the fitting stamp must hold
    (`qualityfits.psf.STAMP_MAX_RADIUS`).
    """
    m = _assess(_field("moffat", 9.5, 103, beta=3.0, n_stars=200,
                       ellipticity=0.05, theta=20.0))
    assert m["NSTAR_FIT"] >= 20
    assert abs(m["FWHM_PIX"] / 9.5 - 1) < 0.015, m["FWHM_PIX"]
    assert abs(m["PSF_BETA"] / 3.0 - 1) < 0.10, m["PSF_BETA"]
    assert abs(m["ELLIPTICITY"] - 0.05) < 0.003


@pytest.mark.parametrize("seed", [106, 107, 108])
def test_elongated_psf_ellipticity_within_0_003(seed: int) -> None:
    """Ellipticity 0.15 from 50-60 PSF stars: within 0.003, and 4 errors.

    The stars' ellipticity vectors are averaged with weights from their
    S/N; unweighted, these CCDs gave errors up to 0.0028 with twice the
    standard error.
    """
    m = _assess(_field("moffat", 4.0, seed, n_stars=100, ellipticity=0.15,
                       theta=-35.0))
    err = abs(m["ELLIPTICITY"] - 0.15)
    assert err < 0.003, m["ELLIPTICITY"]
    assert err < 4 * m["ELLIPTICITY_ERR"] + 1e-4
    assert abs(m["THETA"] + 35.0) < 1.0


@pytest.mark.parametrize(("kind", "fwhm", "seed"), [
    ("gauss", 1.2, 86), ("airy", 1.6, 88)])
def test_undersampled_non_moffat_psf_is_withheld_with_the_reason(
        kind: str, fwhm: float, seed: int) -> None:
    """Below 2 r_h = 2 px no FWHM goes out, and the report says why.

    There the bright point sources are under ``psf_fwhm_range``; with
    that limit lowered a Moffat fit reads these PSFs 10-29 % low.
    """
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(_field(kind, fwhm, seed), header,
                                  name="sim")
    said = (report.error.message if report.error is not None
            else " ".join(report.notes))
    assert "an undersampled PSF" in said
    assert "below psf_fwhm_range's 2 px" in said
    fwhm_pix = report.metrics.get("FWHM_PIX", math.nan)
    assert not math.isfinite(fwhm_pix)
    if report.status == "ok":
        assert "PSF_WITHHELD" in report.flags


def test_well_sampled_fields_are_not_called_undersampled() -> None:
    """A 1.4 px Moffat (2 r_h above 2 px) gets its FWHM, no such note."""
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(_field("moffat", 1.4, 89), header,
                                  name="sim")
    assert report.status == "ok"
    assert not any("undersampled" in note for note in report.notes)
    assert math.isfinite(report.metrics["FWHM_PIX"])
    # Its core is too few pixels across for the profile correction.
    assert not math.isfinite(report.metrics["FWHM_CORR"])
    assert any(note.startswith("FWHM_CORR not measured")
               and "under 1.5 px" in note for note in report.notes)


@pytest.mark.parametrize("seed", [97, 98])
def test_undersampled_stars_are_not_called_compact_galaxies(
        seed: int) -> None:
    """A 1.0 px Moffat field of stars only keeps its FWHM.

    The windowed centroid of so sharp a source is pulled towards its
    pixel's centre; S then followed the pixel phase, scattered ~9 times
    its noise over the PSF stars, and the galaxy guard withheld the PSF
    as "likely compact galaxies".  Such sources are now centred by a
    PSF fit (`qualityfits.classify.FIT_CENTRE_FWHM`).
    """
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(
            _field("moffat", 1.0, seed, beta=1.7, n_stars=500), header,
            name="sim")
    assert report.status == "ok"
    assert not any("compact galaxies" in note for note in report.notes)
    assert "PSF_WITHHELD" not in report.flags
    assert abs(report.metrics["FWHM_PIX"] - 1.0) < 0.03


def test_a_profile_far_from_a_moffat_is_said() -> None:
    """An Airy disc's FWHM rests on a 10 % correction: a note says so,
    and its error counts the correction's own inaccuracy."""
    header = fits.Header({"GAIN": psf_edges.GAIN, "SATURATE": 1e7})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        airy = assess_extension(_field("airy", 3.5, 99), header, name="a")
        kolmo = assess_extension(_field("kolmogorov", 3.5, 99), header,
                                 name="k")
    said = [n for n in airy.notes if "far from a Moffat" in n]
    assert len(said) == 1
    assert f"FWHM_CORR {airy.metrics['FWHM_CORR']:.3f}" in said[0]
    assert not any("far from a Moffat" in n for n in kolmo.notes)
    # The correction overshoots an Airy disc by ~3 %: the error says so
    # (a third of the correction), and stays small on Kolmogorov seeing.
    m = airy.metrics
    assert abs(m["FWHM_PIX"] / 3.5 - 1) > 0.015
    assert abs(m["FWHM_PIX"] - 3.5) < 1.5 * m["FWHM_PIX_ERR"]
    assert abs(m["FWHM_PIX"] / 3.5 - 1) < 0.05
    assert kolmo.metrics["FWHM_PIX_ERR"] / 3.5 < 0.01
