"""Cosmic rays on undersampled images: star cores kept, STAR_CR_FRAC true.

Issue 15, item 5: with FWHM 1.7-1.8 px, L.A.Cosmic's fine-structure test
flagged 5-8 % of the star cores, and STAR_CR_FRAC said 0.  The images
here are drawn by this module, not by `qualityfits.datasets`: Gaussian
or Moffat stars integrated over 4 x 4 sub-pixels, and cosmic rays as
single pixels, pairs and short diagonal streaks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from qualityfits.background import sep_background
from qualityfits.config import QualityConfig
from qualityfits.cosmics import estimate_fwhm, find_cosmic_rays
from qualityfits.pipeline import assess_extension
from qualityfits.weights import PixelMaps

SKY = 500.0
NOISE = 10.0
GAIN = 2.0
SHAPE = (1024, 1024)


@dataclass
class Scene:
    """An image, its star positions and its cosmic-ray pixels."""

    data: np.ndarray
    star_x: np.ndarray
    star_y: np.ndarray
    star_peak: np.ndarray  # peak pixel above the sky, ADU
    cr: np.ndarray  # bool, the cosmic-ray pixels
    cr_events: list[list[tuple[int, int]]]


def _profile(r2: np.ndarray, fwhm: float, beta: float | None) -> np.ndarray:
    if beta is None:
        return np.exp(-4.0 * math.log(2.0) * r2 / fwhm**2)
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (1.0 + r2 / alpha**2) ** -beta


def _scene(fwhm: float, beta: float | None, seed: int,
           n_stars: int = 900, n_cr: int = 160) -> Scene:
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    model = np.zeros(SHAPE)
    half = max(7, math.ceil(3 * fwhm))
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    xs = rng.uniform(half + 1, nx - half - 1, n_stars)
    ys = rng.uniform(half + 1, ny - half - 1, n_stars)
    # Peak pixels from 8 to 1500 sigma, log-uniform.
    peaks = NOISE * np.exp(rng.uniform(math.log(8), math.log(1500),
                                       n_stars))
    peak_pixel = np.zeros(n_stars)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        i0, j0 = round(x), round(y)
        jj, ii = np.mgrid[j0 - half:j0 + half + 1, i0 - half:i0 + half + 1]
        dy = jj[..., None, None] + sub[:, None] - y
        dx = ii[..., None, None] + sub[None, :] - x
        stamp = _profile(dx**2 + dy**2, fwhm, beta).mean(axis=(2, 3))
        stamp *= peaks[k] / stamp.max()
        model[jj, ii] += stamp
        peak_pixel[k] = peaks[k]
    data = SKY + model
    data += rng.normal(0.0, 1.0, SHAPE) * np.sqrt(
        NOISE**2 + model / GAIN)
    cr = np.zeros(SHAPE, bool)
    events = []
    for _ in range(n_cr):
        j, i = int(rng.integers(20, ny - 20)), int(rng.integers(20, nx - 20))
        amp = NOISE * math.exp(rng.uniform(math.log(15), math.log(400)))
        kind = rng.integers(3)
        if kind == 0:
            pixels = [(j, i)]
        elif kind == 1:
            dj, di = ((0, 1), (1, 0))[int(rng.integers(2))]
            pixels = [(j, i), (j + dj, i + di)]
        else:
            step = (1, 1) if rng.integers(2) else (1, -1)
            n = int(rng.integers(3, 8))
            pixels = [(j + step[0] * t, i + step[1] * t) for t in range(n)]
        for t, (a, b) in enumerate(pixels):
            data[a, b] += amp * (1.0 if t == 0 else rng.uniform(0.4, 1.0))
            cr[a, b] = True
        events.append(pixels)
    return Scene(data.astype(np.float32), xs, ys, peak_pixel, cr, events)


def _inputs(scene: Scene) -> dict[str, Any]:
    pix = scene.data.copy()
    bad = np.zeros(pix.shape, bool)
    bkg = sep_background(pix, bad, QualityConfig())
    sub = pix.copy()
    bkg.subfrom(sub)
    return {"sub": sub, "rms": bkg.rms(), "bad": bad}


def _clean_cores(scene: Scene, min_peak: float) -> tuple[np.ndarray, ...]:
    """Stars above ``min_peak`` sigmas with no cosmic ray within 4 px."""
    far = np.ones(len(scene.star_x), bool)
    j, i = np.nonzero(scene.cr)
    for k, (x, y) in enumerate(zip(scene.star_x, scene.star_y,
                                   strict=True)):
        far[k] = not np.any(np.hypot(i - x, j - y) <= 4.0)
    keep = far & (scene.star_peak > min_peak * NOISE)
    return scene.star_x[keep], scene.star_y[keep]


def _core_fraction(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of the 3 x 3 cores about the nearest pixels in ``mask``."""
    i, j = np.rint(x).astype(int), np.rint(y).astype(int)
    hit = np.zeros(len(x), bool)
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            hit |= mask[j + dj, i + di]
    return float(hit.mean())


def _events_found(mask: np.ndarray, scene: Scene) -> float:
    found = [any(mask[a, b] for a, b in ev) for ev in scene.cr_events]
    return float(np.mean(found))


@pytest.mark.parametrize(("fwhm", "beta", "seed"), [
    (1.6, None, 101), (1.7, 2.5, 102), (1.8, 4.0, 103), (2.2, 3.0, 104),
])
def test_star_cores_kept_cosmic_rays_found(fwhm: float, beta: float | None,
                                           seed: int) -> None:
    """<= 1 % of star cores flagged; the cosmic rays are still found."""
    scene = _scene(fwhm, beta, seed)
    inputs = _inputs(scene)
    peaks = estimate_fwhm(inputs["sub"], inputs["bad"], saturation=None)
    assert peaks.fwhm is not None
    # A Gaussian's FWHM; a Moffat's core is a narrower Gaussian's.
    assert 0.8 * fwhm < peaks.fwhm < 1.15 * fwhm
    kwargs: dict[str, Any] = {"gain": GAIN, "read_noise": None,
                              "saturation": None}
    x, y = _clean_cores(scene, 8.0)
    assert len(x) > 300
    before = find_cosmic_rays(inputs["sub"], inputs["rms"], inputs["bad"],
                              **kwargs)
    after = find_cosmic_rays(inputs["sub"], inputs["rms"], inputs["bad"],
                             psf_fwhm=peaks.fwhm, **kwargs)
    # As the pipeline calls it: the noise estimate_fwhm measured is
    # not measured again, and nothing changes.
    given = find_cosmic_rays(inputs["sub"], inputs["rms"], inputs["bad"],
                             psf_fwhm=peaks.fwhm, pixel_noise=peaks.noise,
                             **kwargs)
    assert peaks.noise > 0
    assert np.array_equal(given.mask, after.mask)
    assert given.n_significant == after.n_significant
    assert _core_fraction(after.mask, x, y) <= 0.01
    found_before = _events_found(before.mask, scene)
    found_after = _events_found(after.mask, scene)
    assert found_after >= 0.97
    assert found_after >= found_before - 0.01
    if fwhm < 2:
        # The scene is hard: without the PSF L.A.Cosmic flags cores.
        assert _core_fraction(before.mask, x, y) > 0.02


def test_estimate_fwhm_without_stars() -> None:
    """Noise and cosmic rays alone give no FWHM (no protection)."""
    rng = np.random.default_rng(5)
    sub = rng.normal(0.0, NOISE, (512, 512)).astype(np.float32)
    for _ in range(200):
        j, i = rng.integers(2, 510, 2)
        sub[j, i] += 300.0
        sub[j, i + 1] += 150.0
    peaks = estimate_fwhm(sub, None, saturation=None)
    assert peaks.fwhm is None
    assert peaks.x.size == 0


def _assessed(scene: Any,
              config: QualityConfig | None = None) -> tuple[Any, Any]:
    """Assess a scene as a CCD; return the report and its cosmic-ray map."""
    header = fits.Header({"GAIN": GAIN, "RDNOISE": 5.0,
                          "SATURATE": 60000.0})
    maps: list[PixelMaps] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(scene.data, header, name="sim",
                                  config=config, maps=maps.append)
    return report, maps[0].cosmic


@pytest.mark.parametrize(("fwhm", "beta", "seed"), [(1.7, 3.0, 201),
                                                    (4.0, 2.8, 202)])
def test_star_cr_frac_measures_the_cores(fwhm: float, beta: float,
                                         seed: int) -> None:
    """STAR_CR_FRAC: the star cores in the cosmic-ray map, as counted."""
    scene = _scene(fwhm, beta, seed)
    report, cosmic = _assessed(scene)
    assert report.status == "ok"
    x, y = _clean_cores(scene, 10.0)
    truth = _core_fraction(cosmic, x, y)
    assert truth <= 0.01
    frac = report.metrics["STAR_CR_FRAC"]
    assert math.isfinite(frac)
    assert abs(frac - truth) <= 0.01
    assert _events_found(cosmic, scene) >= 0.97


def test_star_cr_frac_without_protection() -> None:
    """With L.A.Cosmic's tests alone, STAR_CR_FRAC sees the flagged cores.

    ``cr_protect_psf_cores`` off, the finder runs without the PSF (as
    before issue 15) and flags undersampled star cores; STAR_CR_FRAC
    reported 0 then.
    """
    scene = _scene(1.6, 3.0, 301)
    report, cosmic = _assessed(
        scene, QualityConfig(cr_protect_psf_cores=False))
    x, y = _clean_cores(scene, 10.0)
    truth = _core_fraction(cosmic, x, y)
    assert truth > 0.02
    assert abs(report.metrics["STAR_CR_FRAC"] - truth) <= 0.3 * truth
