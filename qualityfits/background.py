"""Sky background: SExtractor-style mesh background, its map and histogram.

The estimator is SExtractor's, as implemented by sep: per mesh of
``back_size`` pixels, the pixel histogram is clipped at ±3σ about its
median until it converges, and the background is the mode estimate
2.5 median − 1.5 mean (the median when the two disagree by more than
0.3σ); meshes are median-filtered and interpolated with a bicubic spline.

This is SExtractor's background to within rounding (SKY_MEAN,
SKY_RMS); the pipeline also repeats it with the detected sources masked
(SKY_MEAN_MASKED), which removes the upward bias that faint galaxies and
wings give the mode in crowded fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from numpy.typing import NDArray

from qualityfits.config import QualityConfig

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Background:
    """The sky of one CCD.

    Attributes
    ----------
    mean : float
        SKY_MEAN: median of the mesh background values [ADU].
    rms : float
        SKY_RMS: median of the mesh RMS values [ADU].
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


def masked_sky(data: NDArray[np.float32], exclude: NDArray[np.bool_],
               config: QualityConfig) -> float:
    """SKY_MEAN_MASKED: the mesh background with the sources masked.

    Computed on every fourth row and column (a sixteenth of the pixels,
    meshes of a quarter of the size), which estimates the same sky mode
    much faster; its noise is negligible next to SKY_RMS.
    """
    sub = np.ascontiguousarray(data[::4, ::4])
    mask = np.ascontiguousarray(exclude[::4, ::4])
    size = max(8, min(config.back_size // 4, *sub.shape))
    bkg = sep.Background(sub, mask=mask, bw=size, bh=size,
                         fw=config.back_filtersize,
                         fh=config.back_filtersize)
    return float(bkg.globalback)


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
