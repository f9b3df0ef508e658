"""Star/galaxy/artefact separation, source counts and depth.

Every source is compared with the PSF at its position: its half-light
radius r_h over the r_h a star would have there (the polynomial locus of
the PSF stars), ``ρ = r_h / r_h,PSF``.  A star has ρ = 1 within its
measurement noise, which grows as 1/(S/N); a galaxy is larger; a cosmic
ray or hot pixel is smaller than any PSF allows and sharper (more of its
flux in its peak pixel).  A faint source that is consistent with a star
but cannot be told from a barely resolved galaxy is called a galaxy:
at high galactic latitude faint sources are mostly galaxies, and star
counts are only quoted where stars are recognisable (as SExtractor's
CLASS_STAR tends to 0.5 there).

Saturated sources are stars (galaxies are rarely saturated and their
shape is unmeasurable anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from qualityfits.config import QualityConfig
from qualityfits.detection import SourceFlag, Sources
from qualityfits.psf import PsfResult

FloatArray = NDArray[np.float64]

# Noise of the r_h ratio of a star: about SIZE_NOISE / (S/N), measured on
# simulated stars (see tests/qualityfits/test_accuracy.py).
SIZE_NOISE = 0.9
_PEAK_FRACTION = 0.88


class SourceClass(IntEnum):
    """Class of a source."""

    STAR = 0
    GALAXY = 1
    ARTEFACT = 2


CLASS_NAMES = {c: c.name.lower() for c in SourceClass}


@dataclass(frozen=True)
class Classification:
    """Class of every source and the quantities it rests on."""

    cls: NDArray[np.int64]
    size_ratio: FloatArray
    size_sigma: FloatArray


def classify(src: Sources, psf: PsfResult,
             config: QualityConfig) -> Classification:
    """Classify every source as star, galaxy or artefact."""
    n = len(src)
    cls = np.full(n, SourceClass.GALAXY, dtype=np.int64)
    if n == 0 or len(psf.stars) == 0:
        nan = np.full(n, np.nan)
        return Classification(cls=cls, size_ratio=nan, size_sigma=nan)
    expected = psf.r_half_at(src.x, src.y)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = src.r_half / expected
        sharp = src.peak / src.flux
    # Scatter of the PSF stars about their locus beyond their noise
    # (PSF variation the polynomial does not follow).
    star_ratio = psf.stars.r_half / psf.r_half_at(psf.stars.x, psf.stars.y)
    noise_stars = SIZE_NOISE / np.maximum(psf.stars.snr, 1.0)
    excess = np.maximum(
        (1.4826 * np.median(np.abs(star_ratio - np.median(star_ratio))))
        ** 2 - np.median(noise_stars) ** 2,
        0.0,
    )
    snr = np.maximum(np.nan_to_num(src.snr), 1e-3)
    sigma = np.sqrt(excess + (SIZE_NOISE / snr) ** 2)
    dev = (ratio - 1.0) / sigma
    k = config.class_nsigma
    fwhm = float(np.median(psf.stars.fwhm))
    sharp_psf = float(np.median(sharp[psf.stars.index]))
    artefact = (
        (np.isfinite(ratio) & (dev < -k) & (ratio < 0.8))
        | (sharp > 1.6 * sharp_psf)
        | (src.r_half < 0.25 * fwhm)
    )
    # A star: consistent with the PSF, and resolvable -- a galaxy just
    # class_min_resolved larger would stand out by k sigma.
    resolvable = config.class_min_resolved / sigma >= 0.5 * k
    star = (
        np.isfinite(ratio) & (np.abs(dev) <= k)
        & (ratio - 1.0 <= config.class_min_resolved + 2.0 * sigma)
        & resolvable
    )
    cls[star] = SourceClass.STAR
    cls[artefact] = SourceClass.ARTEFACT
    saturated = (src.flags & SourceFlag.SATURATED) != 0
    cls[saturated & (ratio < 3.0)] = SourceClass.STAR
    return Classification(cls=cls, size_ratio=ratio, size_sigma=sigma)


@dataclass(frozen=True)
class Counts:
    """Star and galaxy counts per magnitude bin.

    ``per_deg2`` arrays are counts per square degree per bin (NaN
    without a pixel scale).
    """

    mag_edges: FloatArray
    nstar: NDArray[np.int64]
    ngal: NDArray[np.int64]
    nstar_per_deg2: FloatArray
    ngal_per_deg2: FloatArray


def counts(mag: FloatArray, cls: NDArray[np.int64], *,
           area_deg2: float | None, config: QualityConfig) -> Counts:
    """Histogram of star and galaxy magnitudes in fixed-width bins."""
    finite = np.isfinite(mag)
    step = config.count_mag_bin
    if finite.any():
        lo = np.floor(mag[finite].min() / step) * step
        hi = np.ceil(mag[finite].max() / step) * step
        hi = max(hi, lo + step)
        edges = np.arange(lo, hi + step / 2, step)
    else:
        edges = np.array([0.0, step])
    nstar, _ = np.histogram(mag[finite & (cls == SourceClass.STAR)], edges)
    ngal, _ = np.histogram(mag[finite & (cls == SourceClass.GALAXY)], edges)
    scale = 1.0 / area_deg2 if area_deg2 else np.nan
    return Counts(
        mag_edges=edges,
        nstar=nstar.astype(np.int64),
        ngal=ngal.astype(np.int64),
        nstar_per_deg2=nstar * scale,
        ngal_per_deg2=ngal * scale,
    )


def turnover(c: Counts) -> float:
    """MAG_TURNOVER: centre of the most populated galaxy-count bin."""
    if c.ngal.sum() == 0:
        return float("nan")
    i = int(np.argmax(c.ngal))
    return float(0.5 * (c.mag_edges[i] + c.mag_edges[i + 1]))


def flux_limit(area: float, sky_rms: float, gain: float | None,
               snr: float = 5.0) -> float:
    """Flux of a point source detected at ``snr`` by PSF photometry.

    Solves F / sqrt(F/g + A σ²) = snr for F, with A the PSF effective
    area, σ the sky noise per pixel and g the gain (the source's own
    Poisson noise is dropped when the gain is unknown).
    """
    s2 = snr * snr
    if gain:
        return float(0.5 * (s2 / gain + np.sqrt((s2 / gain) ** 2
                                                + 4.0 * s2 * area
                                                * sky_rms**2)))
    return float(snr * sky_rms * np.sqrt(area))
