"""Elongated PSFs are measured, and a CCD without PSF candidates says why.

PSFEx's candidate rule keeps sources of isophotal ellipticity <= 0.3
about a round shape.  Where the PSF itself is elongated (trailed or
shaken stars, the optics) the bright sources share one elongation, and
the window is centred on it (`qualityfits.psf._candidate_rules`): before,
a PSF of ellipticity 0.5 kept 4-12 of ~60 PSF stars on 1024² CCDs and
was withheld.  Where no source passes the rules, the error says which
rule stopped them (`qualityfits.psf.no_candidate_reason`).

The fields are drawn with seeds and angles not used in developing the
rule; the trail is a real frame (the NTT frame of ``../shared/data``)
averaged along a line; the fields without candidates are built with
numpy, not with the project's simulator.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage
from testkit import shared_file

from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.grades import ELONGATED_UNMEASURED, grade_exposure
from qualityfits.pipeline import assess_extension

NOTE = "the bright sources share an elongation"


def _field(ellipticity: float, theta: float, seed: int):
    params = SimulationParams(
        shape=(1024, 1024), ellipticity=ellipticity, theta=theta,
        fwhm=3.5, beta=3.5, n_stars=300, n_galaxies=300, n_cr_hits=20,
        n_cr_tracks=2)
    return simulate_image(params, seed=seed)


@pytest.mark.parametrize(("ellipticity", "theta", "seed"), [
    (0.45, 50.0, 71), (0.5, -35.0, 72), (0.4, 85.0, 73)])
def test_an_elongated_psf_is_measured(ellipticity, theta, seed):
    """FWHM, ellipticity and angle of PSFs beyond PSFEx's 0.3 window."""
    sim = _field(ellipticity, theta, seed)
    report = assess_extension(sim.data, sim.header, name="elongated")
    m = report.metrics
    assert report.status == "ok"
    assert m["NSTAR_FIT"] >= QualityConfig().psf_min_stars
    assert m["FWHM_PIX"] == pytest.approx(3.5, rel=0.015)
    assert m["ELLIPTICITY"] == pytest.approx(ellipticity, abs=0.01)
    turn = (m["THETA"] - theta + 90.0) % 180.0 - 90.0
    assert abs(turn) < 1.0
    assert "ELONGATED" in report.flags
    [note] = [n for n in report.notes if n.startswith(NOTE)]
    said = float(note.split(" along ")[1].split(" deg")[0])
    assert abs((said - theta + 90.0) % 180.0 - 90.0) < 5.0


def test_a_mildly_elongated_psf_keeps_psfex_window():
    """At 0.15 (the issue's range) nothing is said and nothing moves."""
    sim = _field(0.15, 20.0, 74)
    report = assess_extension(sim.data, sim.header, name="mild")
    assert not [n for n in report.notes if n.startswith(NOTE)]
    assert 0.05 < report.metrics["ELLIP_SOURCES"] < 0.15
    assert report.metrics["ELLIPTICITY"] == pytest.approx(0.15, abs=0.005)


def _trailed(path, length: float, angle: float) -> np.ndarray:
    """The frame averaged along a line: every source trailed alike."""
    data = fits.getdata(path).astype(np.float32)
    steps = np.linspace(-length / 2, length / 2, int(4 * length) + 1)
    acc = np.zeros(data.shape, np.float64)
    for s in steps:
        acc += ndimage.shift(data, (s * math.sin(math.radians(angle)),
                                    s * math.cos(math.radians(angle))),
                             order=1, mode="nearest")
    return (acc / steps.size).astype(np.float32)


def test_a_trailed_real_frame_is_said_trailed():
    """The NTT frame trailed by 8 px at 60 deg: the note gives the angle."""
    path = shared_file("ntt_emmi_R_galaxies.fits.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = fits.getheader(path)
        report = assess_extension(_trailed(path, 8.0, 60.0), header,
                                  name="trailed")
    [note] = [n for n in report.notes if n.startswith(NOTE)]
    said = float(note.split(" along ")[1].split(" deg")[0])
    assert abs(said - 60.0) < 5.0
    # Trailed stars are not Moffats: the PSF is withheld, and the image
    # is still flagged elongated, from the shape the sources share.
    assert not math.isfinite(report.metrics["ELLIPTICITY"])
    assert report.metrics["ELLIP_SOURCES"] > 0.15
    assert "ELONGATED" in report.flags
    # The untouched frame is round enough for PSFEx's window.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = assess_extension(fits.getdata(path).astype(np.float32),
                                 header, name="plain")
    assert not [n for n in plain.notes if n.startswith(NOTE)]
    assert plain.metrics["ELLIP_SOURCES"] < 0.05
    assert "ELONGATED" not in plain.flags


def test_an_exposure_trailed_without_a_psf_is_graded_d():
    grade = grade_exposure({"ELLIPTICITY": math.nan, "FWHM_ARCSEC": 1.0},
                           flags=["ELONGATED", "PSF_WITHHELD"], n_ccds=1,
                           n_failed=0)
    assert grade.letter == "D"
    assert ELONGATED_UNMEASURED in grade.reasons
    measured = grade_exposure({"ELLIPTICITY": 0.03, "FWHM_ARCSEC": 1.0},
                              flags=[], n_ccds=1, n_failed=0)
    assert ELONGATED_UNMEASURED not in measured.reasons


# -- no candidate: the reason -----------------------------------------------
def _stars(shape, xy, fwhm, peaks, sky=500.0, noise=10.0, seed=0,
           saturation=None):
    """Round Gaussian stars on a noisy sky, built with numpy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.full(shape, sky)
    sigma = fwhm / 2.3548
    for (x, y), peak in zip(xy, peaks, strict=True):
        img += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2)
                             / (2 * sigma**2))
    img += rng.normal(0.0, noise, shape)
    if saturation is not None:
        img = np.minimum(img, saturation)
    return img.astype(np.float32)


def _grid(n, shape, margin=40):
    side = math.ceil(math.sqrt(n))
    xs = np.linspace(margin, shape[1] - margin, side)
    ys = np.linspace(margin, shape[0] - margin, side)
    return [(x, y) for y in ys for x in xs][:n]


def _failure(data, **cards):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    report = assess_extension(data, header, name="ccd")
    assert report.status == "failed"
    assert report.error is not None
    return report.error.message


def test_faint_sources_say_none_is_bright_enough():
    shape = (300, 300)
    xy = _grid(25, shape)
    # Peak 12 sigma at FWHM 3 px: S/N ~ 12 x 3.4 / 2 ~ 20 at most for
    # the brightest; most are fainter.
    peaks = np.linspace(25.0, 60.0, len(xy))
    message = _failure(_stars(shape, xy, 3.0, peaks))
    assert "none has S/N >= 20 (psf_min_snr; the brightest " in message
    best = float(message.rsplit("the brightest ", 1)[1].rstrip(")"))
    assert 5.0 < best < 20.0


def test_saturated_sources_say_they_are_all_flagged():
    shape = (300, 300)
    xy = _grid(25, shape)
    data = _stars(shape, xy, 3.0, np.full(len(xy), 2e5), saturation=60000.0)
    message = _failure(data, SATURATE=60000.0)
    assert "are all flagged (25 saturated" in message


def test_streaks_in_every_direction_say_so():
    """Elongated sources pointing every way: no shared shape to centre on."""
    shape = (400, 400)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(500.0, 10.0, shape)
    for (x, y), angle in zip(_grid(25, shape, margin=50),
                             rng.uniform(0, np.pi, 25), strict=True):
        u = (xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)
        v = -(xx - x) * np.sin(angle) + (yy - y) * np.cos(angle)
        img += 3000.0 * np.exp(-0.5 * ((u / 5.0) ** 2 + (v / 1.2) ** 2))
    message = _failure(img.astype(np.float32))
    assert "all elongated (median ellipticity" in message
    assert "in various directions" in message


def test_no_source_no_reason():
    """Nothing detected: the count says it; no rule to blame."""
    rng = np.random.default_rng(4)
    message = _failure(rng.normal(500.0, 10.0, (200, 200)).astype(
        np.float32))
    assert "among 0 sources" in message
    assert ";" not in message.split("candidates)", 1)[1]


def test_sources_of_a_psf_size_but_faint_peaks_say_so():
    """Round, unflagged, sized, yet not significant enough: the last rule.

    Broad low-surface-brightness blobs (FWHM 12 px): bright in total
    (S/N >= 20) but whose peak stands under 20 sigma.
    """
    shape = (400, 400)
    xy = _grid(16, shape, margin=60)
    message = _failure(_stars(shape, xy, 12.0, np.full(len(xy), 45.0)))
    assert "whose peak stands less than 20 sigma above the sky" in message


def test_one_flagged_source_is_said_in_the_singular():
    shape = (200, 200)
    data = _stars(shape, [(100.0, 100.0)], 3.0, [2e5], saturation=60000.0)
    message = _failure(data, SATURATE=60000.0)
    assert "among 1 source (" in message
    assert "the 1 source of S/N >= 20 is flagged (1 saturated" in message


def _pairs(separation, ratio, aligned, seed=5):
    """Stars in pairs: a doubled image (aligned) or close neighbours."""
    rng = np.random.default_rng(seed)
    shape = (500, 500)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(500.0, 10.0, shape)
    sigma = 3.5 / 2.3548
    for _ in range(40):
        x, y = rng.uniform(40, 460, 2)
        flux = rng.uniform(2e4, 2e5)
        angle = math.radians(37.0) if aligned else rng.uniform(0, math.pi)
        for dx, dy, share in ((0.0, 0.0, 1.0),
                              (separation * math.cos(angle),
                               separation * math.sin(angle), ratio)):
            img += share * flux / (2 * math.pi * sigma**2) * np.exp(
                -((xx - x - dx) ** 2 + (yy - y - dy) ** 2)
                / (2 * sigma**2))
    return img.astype(np.float32)


def test_doubled_stars_say_why_their_fits_were_dropped():
    """Every star with a second image 4 px away (a guiding jump)."""
    message = _failure(_pairs(4.0, 0.6, aligned=True))
    assert re.search(r"the candidates dropped: \d+ with a spike in the "
                     r"fit's residual \(a cosmic ray on it, or a second "
                     r"peak: doubled stars\)", message), message
    said = float(message.split(" along ")[1].split(" deg")[0])
    assert abs(said - 37.0) < 5.0

