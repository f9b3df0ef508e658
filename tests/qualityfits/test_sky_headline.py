"""The headline sky (SKY_MEAN, SKY_RMS) is the source-masked estimate.

Issue 15, item 5: in crowded fields and with large PSFs SExtractor's
mesh background (the headline before) was +0.16 to +0.25 sigma and its
RMS +19 to +23 % too high; the source-masked estimate is right, and
never worse elsewhere (`docs/metrics.md`).  The images are drawn here,
not by `qualityfits.datasets`: Moffat stars with a power-law flux
distribution reaching far below the detection limit, on a flat sky.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from qualityfits import background
from qualityfits.background import _noise_correlation
from qualityfits.pipeline import assess_extension

SKY = 800.0
NOISE = 12.0
GAIN = 2.0
SHAPE = (1024, 1024)


def _field(n_stars: int, fwhm: float, beta: float, seed: int,
           gradient: float = 0.0, noise: str = "white") -> np.ndarray:
    """Sky plus stars plus noise; the sky is SKY at the centre.

    ``noise``: white, or correlated as `_smoothed_noise` makes it.
    """
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    model = np.zeros(SHAPE)
    half = math.ceil(3 * fwhm)
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sub = (np.arange(2) + 0.5) / 2 - 0.5
    # dN/dF ~ F^-2 from 1.5 (the detection threshold) to 2000 sigma of
    # peak: most are faint.
    u = rng.uniform(0, 1, n_stars)
    lo, hi = 1.5, 2000.0
    peaks = NOISE / (1 / lo - u * (1 / lo - 1 / hi))
    xs = rng.uniform(-half, nx + half, n_stars)
    ys = rng.uniform(-half, ny + half, n_stars)
    for x, y, peak in zip(xs, ys, peaks, strict=True):
        i0, j0 = round(x), round(y)
        jj, ii = np.mgrid[j0 - half:j0 + half + 1, i0 - half:i0 + half + 1]
        dy = jj[..., None, None] + sub[:, None] - y
        dx = ii[..., None, None] + sub[None, :] - x
        stamp = ((1 + (dx**2 + dy**2) / alpha**2) ** -beta).mean(
            axis=(2, 3))
        stamp *= peak / stamp.max()
        inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx)
        np.add.at(model, (jj[inside], ii[inside]), stamp[inside])
    y, x = np.mgrid[0:ny, 0:nx]
    sky = SKY * (1 + gradient * ((x + y) / (nx + ny) - 0.5))
    unit = (rng.normal(0.0, 1.0, SHAPE) if noise == "white"
            else _smoothed_noise(noise, seed))
    data = sky + model + unit * np.sqrt(NOISE**2 + model / GAIN)
    return np.asarray(data, dtype=np.float32)


def _assess(data: np.ndarray) -> dict[str, float]:
    header = fits.Header({"GAIN": GAIN, "SATURATE": 1e6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = assess_extension(data, header, name="sim")
    assert report.status == "ok", report.error
    return dict(report.metrics)


@pytest.mark.parametrize(
    ("label", "n_stars", "fwhm", "beta", "seed", "mesh_off"), [
        ("crowded", 3000, 3.5, 2.8, 61, True),
        ("crowded, undersampled", 3000, 1.8, 3.0, 65, False),
        ("large PSF", 1500, 9.0, 3.5, 62, True),
    ])
def test_sky_headline_right_where_the_mesh_is_biased(
        label: str, n_stars: int, fwhm: float, beta: float,
        seed: int, mesh_off: bool) -> None:
    """SKY_MEAN within 0.1 sigma and SKY_RMS within 5 % of the truth.

    3000 stars per 1024² is the issue's 12 000 per 2048².
    """
    m = _assess(_field(n_stars, fwhm, beta, seed))
    if mesh_off:
        # SExtractor's figures (the headline before) miss the target.
        assert (m["SKY_MEAN_MESH"] - SKY > 0.1 * NOISE
                or m["SKY_RMS_MESH"] > 1.05 * NOISE), label
    assert abs(m["SKY_MEAN"] - SKY) < 0.1 * NOISE, (label, m["SKY_MEAN"])
    assert abs(m["SKY_RMS"] / NOISE - 1) < 0.05, (label, m["SKY_RMS"])
    assert m["SKY_MEAN_MASKED"] == m["SKY_MEAN"]


@pytest.mark.parametrize(("n_stars", "gradient", "seed"),
                         [(600, 0.0, 63), (600, 0.2, 64)])
def test_sky_headline_no_worse_on_ordinary_fields(
        n_stars: int, gradient: float, seed: int) -> None:
    """Sparse fields, with and without a gradient: as good as the mesh.

    Both are within a few hundredths of sigma and 2 % there.
    """
    m = _assess(_field(n_stars, 3.5, 2.8, seed, gradient=gradient))
    err = abs(m["SKY_MEAN"] - SKY)
    assert err < 0.1 * NOISE
    assert err <= abs(m["SKY_MEAN_MESH"] - SKY) + 0.03 * NOISE
    assert abs(m["SKY_RMS"] / NOISE - 1) < 0.05
    assert (abs(m["SKY_RMS"] / NOISE - 1)
            <= abs(m["SKY_RMS_MESH"] / NOISE - 1) + 0.025)


def _smoothed_noise(kind: str, seed: int) -> np.ndarray:
    """Unit noise, white or correlated as resampling correlates it."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, SHAPE)
    if kind == "neighbours":  # correlated with the next pixel only
        taps = np.array([0.2, 1.0, 0.2])
        noise = ndimage.convolve1d(ndimage.convolve1d(noise, taps, axis=0),
                                   taps, axis=1)
    elif kind.startswith("gauss"):
        noise = ndimage.gaussian_filter(noise, float(kind[5:]))
    return noise / noise.std()


@pytest.mark.parametrize(("kind", "low", "high"), [
    ("white", -0.02, 0.02), ("neighbours", -0.02, 0.05),
    ("gauss0.7", 0.08, 0.2), ("gauss1.0", 0.3, 0.45)])
def test_noise_correlation_two_pixels_apart(kind: str, low: float,
                                            high: float) -> None:
    """0 for white noise, whatever smooth light; >0 once resampled.

    A gradient of 3 sigma across the image and a source mask do not
    move it; noise correlated with the next pixel alone (inter-pixel
    capacitance, charge diffusion) stays near 0 as well.
    """
    x = np.arange(SHAPE[1])[None, :]
    data = (_smoothed_noise(kind, 71) + 3.0 * x / SHAPE[1]).astype(
        np.float32)
    exclude = np.zeros(SHAPE, dtype=bool)
    exclude[100:300, 200:700] = True
    assert low <= _noise_correlation(data, exclude) <= high


@pytest.mark.parametrize("kind", ["gauss0.7", "gauss1.0"])
def test_sky_headline_unbiased_on_resampled_noise(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Correlated noise keeps the plain faint-light rule: within 0.05σ.

    The white rule (forced on, its skew test too) would keep the
    sampled pixels whose neighbours - hence, through the correlation,
    themselves - happen to be low: it reads 0.07-0.2σ too low.
    """
    data = _field(600, 3.5, 2.8, 72, noise=kind)
    m = _assess(data)
    assert abs(m["SKY_MEAN"] - SKY) < 0.05 * NOISE, m["SKY_MEAN"]
    monkeypatch.setattr(background, "_WHITE_NOISE", math.inf)
    monkeypatch.setattr(background, "_LIGHT_SKEW", -math.inf)
    forced = _assess(data)
    assert forced["SKY_MEAN"] - SKY < -0.07 * NOISE, forced["SKY_MEAN"]


@pytest.mark.parametrize("scale", [6.0, 12.0])
def test_sky_headline_not_fooled_by_structure_below_the_map(
        scale: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Residual structure as much below the background map as above.

    Flat-field or bias residuals (here a Gaussian random field of
    0.3 sigma on scales of 6-12 px) are not skewed to the bright side
    as diffuse light is: the plain faint-light rule stays, within
    0.05 sigma.  The white rule forced on keeps the low half and reads
    0.1 sigma or more too low.
    """
    rng = np.random.default_rng(75)
    structure = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), scale)
    structure *= 0.3 * NOISE / structure.std()
    data = (_field(600, 3.5, 2.8, 75) + structure).astype(np.float32)
    m = _assess(data)
    assert abs(m["SKY_MEAN"] - SKY) < 0.05 * NOISE, m["SKY_MEAN"]
    monkeypatch.setattr(background, "_LIGHT_SKEW", -math.inf)
    forced = _assess(data)
    assert forced["SKY_MEAN"] - SKY < -0.1 * NOISE, forced["SKY_MEAN"]
