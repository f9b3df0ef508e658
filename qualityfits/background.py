"""Sky background: SExtractor-style mesh background, its map and histogram.

The estimator is SExtractor's, as implemented by sep: per mesh of
``back_size`` pixels, the pixel histogram is clipped at ±3σ about its
median until it converges, and the background is the mode estimate
2.5 median − 1.5 mean (the median when the two disagree by more than
0.3σ); meshes are median-filtered and interpolated with a bicubic spline.

This is SExtractor's background to within rounding (SKY_MEAN_MESH,
SKY_RMS_MESH); the pipeline repeats it with the detected sources masked
(`masked_sky`: SKY_MEAN, SKY_RMS), which removes the upward bias that
faint galaxies and wings give the mode and the RMS in crowded fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import sep
from numpy.typing import NDArray
from scipy import ndimage

from qualityfits.config import QualityConfig
from qualityfits.weights import block_sum

FloatArray = NDArray[np.float64]


#: `masked_sky` also masks the faint light: bins of this many pixels a
#: side (its sampling step: one bin per sampled pixel), smoothed 3 x 3,
#: above this many times their noise ...
_FAINT_BIN: Final = 4
_FAINT_NSIGMA: Final = 3.0
#: ... or, where the noise is white (`_noise_correlation` at most
#: `_WHITE_NOISE`), above this many times the noise of bins made of the
#: pixels two or more pixels away from every sampled one, so that no
#: sampled pixel's own noise decides whether it is kept (`_faint_light`).
_FAINT_NSIGMA_WHITE: Final = 0.5
_WHITE_NOISE: Final = 0.05
#: ... and where the smoothed bins (plain rule) are skewed to the
#: bright side this much (`_faint_light`): 1.71-1.89 on GalSim's 9 px
#: fields, 1.56-1.58 crowded, 1.12-1.37 on its others, 0.70-1.09 on
#: the real images of ../shared/data (residual flat-field, bias and
#: row structure).
_LIGHT_SKEW: Final = 1.5
#: `_noise_correlation` compares differences of pixels this far apart,
#: on about this many pairs (the ratio's noise ~0.01).
_NOISE_LAGS: Final = (2, 6)
_CORR_PAIRS: Final = 100_000
#: `masked_sky` needs this many sampled sky pixels (the white rule
#: `_MIN_WHITE_PIXELS`: it keeps 13-19 % of them, and below this many
#: the noise of their mode, ~2.1 sigma / sqrt(n), passes 0.03 sigma) ...
_MIN_FREE_PIXELS: Final = 1000
_MIN_WHITE_PIXELS: Final = 5000
#: ... and uses at most this many for the mode.
_MODE_SAMPLE: Final = 200_000


def _clipped_std() -> float:
    """Return the std of a unit Gaussian clipped at ±3σ repeatedly.

    SExtractor's mesh statistics clip at ±3 times the standard deviation
    of what is left, until it converges: the fixed point of
    ``s² = 1 − 2 k φ(k) / (2 Φ(k) − 1)`` with ``k = 3 s``.
    """
    s = 1.0
    for _ in range(50):
        k = 3.0 * s
        phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
        inside = math.erf(k / math.sqrt(2.0))
        s = math.sqrt(1.0 - 2.0 * k * phi / inside)
    return s


#: The clipped RMS of pure noise is this fraction of its sigma (0.985);
#: with the sources in the meshes their light hides the deficit, with
#: the sources masked `masked_sky` divides it out.
_CLIPPED_STD: Final = _clipped_std()


@dataclass(frozen=True)
class Background:
    """The sky of one CCD.

    Attributes
    ----------
    mean : float
        Median of the mesh background values [ADU]; in the pipeline's
        report, SKY_MEAN (the sources masked, `masked_sky`).
    rms : float
        Median of the mesh RMS values [ADU]; in the report, SKY_RMS.
    mesh_x, mesh_y : ndarray
        Pixel coordinates (0-based) of the mesh centres along x and y.
    mesh_back : ndarray, shape (len(mesh_y), len(mesh_x))
        The background map at the mesh centres [ADU].
    mesh_rms : ndarray
        The RMS map at the mesh centres [ADU].
    hist_counts : ndarray of int
        Histogram of the values of the unmasked pixels not in a source.
    hist_edges : ndarray
        Its bin edges [ADU], from mean − 5 rms to mean + 5 rms.
    gradient : float
        SKY_GRAD: (max − min) / mean of the mesh map.
    lumpiness : float
        SKY_LUMPINESS: robust standard deviation of the mesh map about a
        plane fit, in units of SKY_RMS / back_size (the noise of a mesh
        mean), so that a smooth sky gives about 1.
    """

    mean: float
    rms: float
    mesh_x: FloatArray
    mesh_y: FloatArray
    mesh_back: FloatArray
    mesh_rms: FloatArray
    hist_counts: NDArray[np.int64]
    hist_edges: FloatArray
    gradient: float
    lumpiness: float



def sep_mask(bad: NDArray[np.bool_]) -> NDArray[np.bool_] | None:
    """Return ``bad`` for sep, or None when no pixel is bad.

    sep reads a mask pixel by pixel: without one, a whole-CCD pass is
    ~15 % faster.
    """
    return bad if bad.any() else None

def _mesh_centres(n: int, size: int) -> NDArray[np.intp]:
    """Integer pixel positions of the mesh centres along one axis."""
    nmesh = max(1, int(np.ceil(n / size)))
    centres = (np.arange(nmesh) + 0.5) * size - 0.5
    return np.clip(np.round(centres).astype(np.intp), 0, n - 1)


def sep_background(
    data: NDArray[np.float32],
    bad: NDArray[np.bool_],
    config: QualityConfig,
) -> sep.Background:
    """Run sep's mesh background with the configured mesh and filter."""
    size = min(config.back_size, *data.shape)
    return sep.Background(
        data, mask=sep_mask(bad), bw=size, bh=size,
        fw=config.back_filtersize, fh=config.back_filtersize,
    )


def masked_sky(data_sub: NDArray[np.float32], exclude: NDArray[np.bool_],
               config: QualityConfig) -> tuple[float, float] | None:
    """Estimate the sky's offset and RMS with the sources masked.

    ``data_sub`` is the image minus SExtractor's background map.  On
    the pixels outside the detected sources (``exclude``) and outside
    the faint light around and between them (`_faint_light`: the image
    binned `_FAINT_BIN` x `_FAINT_BIN`, smoothed 3 x 3, above a
    threshold in units of its own noise, grown by one bin: the wings of
    stars beyond their isophotes, undetected faint sources), on every
    fourth row and column, SExtractor's estimator (`_clipped_mode`)
    gives the offset of the map from the sky, and the RMS (divided by
    `_CLIPPED_STD`, the loss of the ±3σ clipping on pure noise).

    Where the noise is white two pixels apart (`_noise_correlation`)
    and the light left between the sources is skewed to the bright
    side (diffuse light: `_faint_light`), the faint light is followed
    down to `_FAINT_NSIGMA_WHITE` times the noise of bins that leave
    out the sampled pixels and their neighbours: their noise then does
    not choose them, and a low threshold costs no bias.  Elsewhere
    (resampled images: a sampled pixel's noise is shared with the bins
    around it; residual structure as much below the background map as
    above: a low threshold would keep the pixels that happen to be
    low) the threshold is `_FAINT_NSIGMA` on bins of all the pixels.
    A mask
    that leaves fewer than `_MIN_WHITE_PIXELS` (the white rule) or
    `_MIN_FREE_PIXELS` of the sampled pixels is dropped for the next
    (the white rule, the plain rule, the sources alone); None when
    ``exclude`` leaves too few.  Returns (offset, rms), ADU.
    """
    sub = data_sub[::4, ::4]
    mask = exclude[::4, ::4]
    plain, skew = _faint_light(data_sub, exclude, config)
    choices = [(plain, _MIN_FREE_PIXELS)]
    if (skew >= _LIGHT_SKEW
            and _noise_correlation(data_sub, exclude) <= _WHITE_NOISE):
        white, _ = _faint_light(data_sub, exclude, config, white=True)
        choices.insert(0, (white, _MIN_WHITE_PIXELS))
    for faint, needed in choices:
        h, w = faint.shape
        both = mask.copy()
        both[:h, :w] |= faint
        values = sub[~both]
        if values.size >= needed:
            break
    else:
        values = sub[~mask]
        if values.size < _MIN_FREE_PIXELS:
            return None
    mode, std = _clipped_mode(values)
    return mode, std / _CLIPPED_STD


def _robust_var(values: NDArray[np.float32]) -> float:
    """Variance from the median absolute deviation (Gaussian scale)."""
    v = np.asarray(values[::max(1, values.size // _MODE_SAMPLE)],
                   dtype=np.float64)
    mad = float(np.median(np.abs(v - np.median(v))))
    return (1.4826 * mad) ** 2


def _noise_correlation(data: NDArray[np.float32],
                       exclude: NDArray[np.bool_]) -> float:
    """How correlated the noise of pixels two apart is, outside sources.

    1 − var(p(x) − p(x + 2)) / var(p(x) − p(x + 6)), robust variances
    of the differences of pixel pairs outside ``exclude`` along rows
    and along columns (evenly spaced ones, about `_CORR_PAIRS` pairs),
    the larger of the two: 0 for white noise, whatever smooth light is
    left (it is nearly the same at both lags; 0.00–0.03 on the
    unresampled images of ../shared/data and GalSim's fields), 0.13
    for noise smoothed by a Gaussian of σ 0.7 px, 0.37 for σ 1 px,
    0.4–0.5 on resampled mosaics.  Infinite when fewer than
    `_MIN_FREE_PIXELS` pairs are free.
    """
    near, far = _NOISE_LAGS
    worst = -math.inf
    for d, e in ((data, exclude), (data.T, exclude.T)):
        step = max(1, d.shape[0] * d.shape[1] // _CORR_PAIRS)
        rows, keep = d[::step], e[::step]
        var = []
        for lag in (near, far):
            free = ~keep[:, :-lag] & ~keep[:, lag:]
            diff = (rows[:, :-lag] - rows[:, lag:])[free]
            if diff.size < _MIN_FREE_PIXELS:
                return math.inf
            var.append(_robust_var(diff))
        if not var[1] > 0:
            return math.inf
        worst = max(worst, 1.0 - var[0] / var[1])
    return worst


def _clipped_mode(values: NDArray[np.float32]) -> tuple[float, float]:
    """SExtractor's mode and clipped standard deviation of ``values``.

    Clipped at ±3σ about the median until the σ converges; the mode is
    2.5 median − 1.5 mean, or the median when the two differ by more
    than 0.3σ.  At most `_MODE_SAMPLE` values are used (evenly taken).
    """
    step = max(1, values.size // _MODE_SAMPLE)
    v = np.asarray(values[::step], dtype=np.float64)
    med = float(np.median(v))
    std = float(np.std(v))
    for _ in range(30):
        kept = v[np.abs(v - med) <= 3.0 * std]
        if kept.size < 3:
            break
        new_std = float(np.std(kept))
        med = float(np.median(kept))
        if abs(new_std - std) <= 1e-4 * std:
            std = new_std
            break
        std = new_std
    kept = v[np.abs(v - med) <= 3.0 * std]
    mean = float(np.mean(kept)) if kept.size else med
    if std > 0 and abs(mean - med) < 0.3 * std:
        return 2.5 * med - 1.5 * mean, std
    return med, std


def _faint_light(data: NDArray[np.float32], exclude: NDArray[np.bool_],
                 config: QualityConfig, *,
                 white: bool = False) -> tuple[NDArray[np.bool_], float]:
    """Bins of faint light outside ``exclude`` (see `masked_sky`).

    Bin (j, i) covers pixels [4j, 4j + 4) x [4i, 4i + 4): pixel
    (4j, 4i) of the image sampled every fourth row and column.  The
    plain rule: a bin is the mean of its pixels, the threshold
    `_FAINT_NSIGMA`.  With ``white``: the mean of the 7 pixels two or
    more pixels away from every sampled pixel (so that neither a
    sampled pixel's noise nor its neighbours' decides whether it is
    kept; the 5 of them that share no row or column with one either
    left the map too noisy: +0.02 ... +0.10 sigma at 9 px instead of
    +0.03 ... +0.09), the threshold `_FAINT_NSIGMA_WHITE`.

    Returns the mask of the bins and the skew of the smoothed bins
    outside the sources: their 84th percentile's distance above their
    median over the 16th's below (1 for noise; more where diffuse light
    lifts some; residual flat-field or bias structure is as much below
    the background map as above; NaN without bins).
    """
    ny, nx = data.shape
    b = _FAINT_BIN
    h, w = ny // b, nx // b
    none = np.zeros((max(h, 0), max(w, 0)), dtype=bool), math.nan
    if h < 8 or w < 8:
        return none
    block = data[:h * b, :w * b]
    if white:
        apart = [(r, c) for r in range(b) for c in range(b)
                 if min(max(r, c), max(b - r, c), max(r, b - c),
                        max(b - r, b - c)) >= 2]
        binned = np.zeros((h, w), dtype=np.float32)
        for r, c in apart:
            binned += block[r::b, c::b]
        binned *= np.float32(1.0 / len(apart))
    else:
        binned = block_sum(block, b, np.float32)
        binned *= np.float32(1.0 / (b * b))
    erow = exclude[:h * b].reshape(h, b, nx)
    ecol = np.logical_or.reduce([erow[:, k] for k in range(b)])
    ecol = ecol[:, :w * b].reshape(h, w, b)
    busy = np.logical_or.reduce([ecol[..., k] for k in range(b)])
    if busy.all():
        return none
    size = max(4, min(config.back_size // b, h, w))
    bkg = sep.Background(binned, mask=np.ascontiguousarray(busy),
                         bw=size, bh=size, fw=config.back_filtersize,
                         fh=config.back_filtersize)
    smooth = ndimage.uniform_filter(binned - bkg.back(), 3)
    # Every 7th free bin is plenty for the noise (and 7 is prime to the
    # row length's usual factors).
    free = smooth[~busy][::7]
    if free.size < 100:
        return none
    low, mid, high = np.percentile(free, [15.87, 50.0, 84.13])
    sigma = 1.4826 * float(np.median(np.abs(free - mid)))
    if not sigma > 0:
        return none
    skew = float((high - mid) / (mid - low)) if mid > low else math.inf
    # Above the threshold, grown by one bin (8-connected).
    nsigma = _FAINT_NSIGMA_WHITE if white else _FAINT_NSIGMA
    core = np.pad(smooth > nsigma * sigma, 1)
    faint = np.zeros((h, w), dtype=bool)
    for dj in range(3):
        for di in range(3):
            faint |= core[dj:dj + h, di:di + w]
    return faint, skew


def summarise_background(
    data: NDArray[np.float32],
    data_sub: NDArray[np.float32],
    bkg: sep.Background,
    rms: NDArray[np.float32],
    exclude: NDArray[np.bool_],
    config: QualityConfig,
) -> Background:
    """Build the `Background` record from a final sep background.

    Parameters
    ----------
    data : ndarray
        The image.
    data_sub : ndarray
        The image minus the background.
    bkg : sep.Background
        The background.
    rms : ndarray
        Its full-resolution RMS map.
    exclude : ndarray of bool
        Pixels left out of the histogram (bad pixels and sources).
    config : QualityConfig
    """
    ny, nx = data.shape
    size = min(config.back_size, ny, nx)
    iy = _mesh_centres(ny, size)
    ix = _mesh_centres(nx, size)
    mesh_back = (data[np.ix_(iy, ix)]
                 - data_sub[np.ix_(iy, ix)]).astype(np.float64)
    mesh_rms = rms[np.ix_(iy, ix)].astype(np.float64)
    mean = float(bkg.globalback)
    sigma = float(bkg.globalrms)
    # Histogram of sky pixels, every fourth row and column (plenty for
    # a plot: ~600 000 pixels on a MegaCam CCD).
    sub = data[::4, ::4]
    keep = ~exclude[::4, ::4]
    edges = np.linspace(mean - 5 * sigma, mean + 5 * sigma, 101)
    counts, _ = np.histogram(sub[keep], bins=edges)
    gradient = (
        float((mesh_back.max() - mesh_back.min()) / mean)
        if mean != 0 else float("nan")
    )
    return Background(
        mean=mean,
        rms=sigma,
        mesh_x=ix.astype(np.float64),
        mesh_y=iy.astype(np.float64),
        mesh_back=mesh_back,
        mesh_rms=mesh_rms,
        hist_counts=counts.astype(np.int64),
        hist_edges=edges,
        gradient=gradient,
        lumpiness=_lumpiness(mesh_back, ix, iy, sigma / size),
    )


def _lumpiness(mesh: FloatArray, ix: NDArray[np.intp],
               iy: NDArray[np.intp], noise: float) -> float:
    """Robust scatter of the mesh map about a plane, in units of noise."""
    if mesh.size < 4 or noise <= 0:
        return float("nan")
    gx, gy = np.meshgrid(ix.astype(float), iy.astype(float))
    design = np.column_stack([np.ones(mesh.size), gx.ravel(), gy.ravel()])
    coef, *_ = np.linalg.lstsq(design, mesh.ravel(), rcond=None)
    resid = mesh.ravel() - design @ coef
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return 1.4826 * mad / noise
