"""Detection and measurement of every source of a CCD.

Detection is SExtractor's (via sep): a 3x3 matched filter, a threshold in
units of the local background RMS, multi-threshold deblending and
cleaning.  Each source is then measured like SExtractor measures it:
isophotal shape (A, B, THETA), Kron "AUTO" flux in the ellipse of
max(2.5 r_Kron, 3.5) times (A, B) -- SExtractor's PHOT_AUTOPARAMS 2.5,
3.5, whose minimum is in units of A and B, not pixels -- half-light radius
relative to the AUTO flux, S/N, and per-source flags.  On the same image
and background, FLUX_AUTO and FLUX_RADIUS equal SExtractor's to 0.1 %.

Coordinates are 0-based inside the pipeline (sep's convention); the
report adds 1 so that its tables follow FITS (SExtractor's X_IMAGE).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import sep
from numpy.typing import NDArray

from qualityfits.background import sep_mask
from qualityfits.config import QualityConfig
from qualityfits.moffat import SIGMA_TO_FWHM

FloatArray = NDArray[np.float64]

# sep keeps these limits per process; each worker sets them once.
PIXSTACK = 3_000_000
SUB_OBJECT_LIMIT = 4096
KRON_FACTOR = 2.5
KRON_MIN_RADIUS = 3.5  # in units of A and B, as SExtractor's


class SourceFlag(IntFlag):
    """Per-source flags (bit values follow SExtractor's FLAGS)."""

    NEIGHBOURS = 1
    """The AUTO aperture holds pixels of other sources or bad pixels."""
    BLENDED = 2
    """Deblended from a larger detection."""
    SATURATED = 4
    """At least one pixel at or above the saturation level."""
    TRUNCATED = 8
    """Touches the image border."""
    BAD_PIXELS = 16
    """Masked (bad) pixels within the AUTO aperture."""
    APER_CORRUPT = 32
    """The AUTO flux is not positive, its aperture is fully masked, or
    the source's second moments are degenerate (measured as a point)."""


@dataclass(frozen=True)
class Sources:
    """Measured sources of one CCD (0-based coordinates, one row each).

    Attributes are arrays of equal length; ``segmap`` is the sep
    segmentation map (0 = sky, i + 1 = source i).
    """

    x: FloatArray
    y: FloatArray
    a: FloatArray
    b: FloatArray
    theta: FloatArray  # radians, counter-clockwise from +x
    npix: NDArray[np.int64]
    peak: FloatArray  # background-subtracted peak pixel [ADU]
    flux: FloatArray  # FLUX_AUTO [ADU]
    flux_err: FloatArray
    snr: FloatArray
    r_half: FloatArray  # FLUX_RADIUS (50 %) [px]
    kron_radius: FloatArray
    background: FloatArray  # local background at (x, y) [ADU]
    noise: FloatArray  # local background RMS at (x, y) [ADU]
    flags: NDArray[np.int64]
    segmap: NDArray[np.int32]

    def __len__(self) -> int:
        """Return the number of sources."""
        return int(self.x.size)


class DetectionOverflowError(ValueError):
    """sep's extraction reached one of its capacity limits.

    Not a crowded field (`configure_sep` raises both limits for crowded
    2k x 4k CCDs): a frame mostly above its background.
    """


def configure_sep() -> None:
    """Raise sep's process-wide limits for crowded 2k x 4k CCDs."""
    sep.set_extract_pixstack(PIXSTACK)
    sep.set_sub_object_limit(SUB_OBJECT_LIMIT)


def gaussian_kernel(fwhm: float, size: int = 7) -> NDArray[np.float64]:
    """Return a normalised size x size Gaussian of FWHM ``fwhm`` [px]."""
    half = size // 2
    sigma = fwhm / SIGMA_TO_FWHM
    g = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel = np.outer(g, g)
    return np.asarray(kernel / kernel.sum(), dtype=np.float64)


def extract(
    data_sub: NDArray[np.float32],
    rms: NDArray[np.float32],
    bad: NDArray[np.bool_],
    config: QualityConfig,
) -> tuple[NDArray[np.void], NDArray[np.int32]]:
    """Detect sources on a background-subtracted image.

    Returns the sep object array and the segmentation map.
    """
    kernel: dict[str, NDArray[np.float64]] = {}
    if config.detect_filter_fwhm > 0:
        kernel["filter_kernel"] = gaussian_kernel(config.detect_filter_fwhm)
    try:
        objects, segmap = sep.extract(
            data_sub,
            config.detect_thresh,
            err=rms,
            mask=sep_mask(bad),
            minarea=config.detect_minarea,
            **kernel,
            deblend_nthresh=config.deblend_nthresh,
            deblend_cont=config.deblend_cont,
            # SExtractor's semantics: the filtered image is compared
            # with the threshold times the RMS of the *unfiltered* image
            # ("matched" lowers the threshold by the filter's noise
            # reduction and turns noise peaks into detections).
            filter_type="conv",
            segmentation_map=True,
        )
    except Exception as exc:  # sep raises Exception with its C message
        text = str(exc)
        if "pixel buffer full" in text:
            raise DetectionOverflowError(
                f"more than {sep.get_extract_pixstack():,} pixels above "
                "the detection threshold in objects at once (sep's pixel "
                "stack): the frame is mostly above its background, not a "
                "sky exposure") from None
        if "deblending overflow" in text:
            raise DetectionOverflowError(
                "a detection splits into more than "
                f"{sep.get_sub_object_limit():,} parts (sep's deblending "
                "limit): the frame is mostly one object above its "
                "background, not a sky exposure") from None
        raise
    return objects, segmap


def measure(
    data_sub: NDArray[np.float32],
    raw: NDArray[np.float32],
    rms: NDArray[np.float32],
    bad: NDArray[np.bool_],
    objects: NDArray[np.void],
    segmap: NDArray[np.int32],
    *,
    gain: float | None,
    saturation: float | None,
    config: QualityConfig,
) -> Sources:
    """Measure every detected source (AUTO flux, r_h, S/N, flags).

    Parameters
    ----------
    data_sub : ndarray
        Background-subtracted image.
    raw : ndarray
        The image before background subtraction.
    rms : ndarray
        Background-RMS map.
    bad : ndarray of bool
        Bad pixels (masked everywhere).
    objects, segmap : ndarray
        The output of `extract`.
    gain : float or None
        e-/ADU, for the Poisson part of flux errors; None ignores it.
    saturation : float or None
        Saturation level [ADU] of the raw (not background-subtracted)
        pixels; None when unknown.
    config : QualityConfig
    """
    n = len(objects)
    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    ids = np.arange(1, n + 1, dtype=np.int32)
    ny, nx = data_sub.shape
    if n == 0:
        empty = np.zeros(0)
        return Sources(
            x=empty, y=empty, a=empty, b=empty, theta=empty,
            npix=np.zeros(0, np.int64), peak=empty, flux=empty,
            flux_err=empty, snr=empty, r_half=empty, kron_radius=empty,
            background=empty, noise=empty, flags=np.zeros(0, np.int64),
            segmap=segmap,
        )
    # A degenerate source is measured in a circle (its aperture's radius
    # its Kron radius, at least KRON_MIN_RADIUS) and its aperture is
    # flagged.
    a, b, theta, degenerate = sep_ellipses(objects)
    kron, kflag = sep.kron_radius(
        data_sub, x, y, a, b, theta, 6.0, mask=bad, seg_id=ids,
        segmap=segmap,
    )
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    scale = np.maximum(KRON_FACTOR * kron, KRON_MIN_RADIUS)
    flux, flux_err, aflag = sep.sum_ellipse(
        data_sub, x, y, a, b, theta, scale, err=rms, gain=gain, mask=bad,
        seg_id=ids, segmap=segmap, subpix=1,
    )
    aflag = aflag.astype(np.int64)
    # Bad pixels inside the aperture: sum the bad-pixel mask itself, in
    # the apertures where sep met a masked pixel (it flags HASMASKED for
    # any masked pixel the aperture reaches, however little of it is
    # inside: no other aperture holds a bad one; ~10 % of them).
    nbad = np.zeros(n)
    met = np.flatnonzero((aflag & sep.APER_HASMASKED) != 0)
    if met.size and bad.any():
        nbad[met], _, _ = sep.sum_ellipse(
            bad, x[met], y[met], a[met], b[met], theta[met], scale[met],
            subpix=1)
    normflux = np.where(flux > 0, flux, np.nan)
    # Half the AUTO flux lies within the AUTO ellipse, hence within the
    # circle of its semi-major axis: no need to search further (6 A,
    # sep's usual choice, costs twice as much for radii within 0.2 %).
    r_half, _ = sep.flux_radius(
        data_sub, x, y, scale * a, 0.5, normflux=normflux, mask=bad,
        seg_id=ids, segmap=segmap, subpix=5,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, 0.0)
    ix = np.clip(np.round(x).astype(np.intp), 0, nx - 1)
    iy = np.clip(np.round(y).astype(np.intp), 0, ny - 1)
    local_back = (raw[iy, ix] - data_sub[iy, ix]).astype(np.float64)
    flags = np.zeros(n, dtype=np.int64)
    flags[(aflag & sep.APER_HASMASKED) != 0] |= SourceFlag.NEIGHBOURS
    flags[(objects["flag"] & sep.OBJ_MERGED) != 0] |= SourceFlag.BLENDED
    flags[((objects["flag"] & sep.OBJ_TRUNC) != 0)
          | ((aflag & sep.APER_TRUNC) != 0)] |= SourceFlag.TRUNCATED
    flags[nbad > 0.5] |= SourceFlag.BAD_PIXELS | SourceFlag.NEIGHBOURS
    flags[(flux <= 0) | ((aflag & sep.APER_ALLMASKED) != 0)
          | ~np.isfinite(flux) | degenerate] |= SourceFlag.APER_CORRUPT
    if saturation is not None:
        sat = np.flatnonzero(raw >= config.saturation_margin * saturation)
        sat_ids = np.unique(np.ravel(segmap).take(sat))
        sat_ids = sat_ids[sat_ids > 0] - 1
        flags[sat_ids] |= SourceFlag.SATURATED
    del kflag
    return Sources(
        x=x, y=y, a=a, b=b, theta=theta,
        npix=objects["npix"].astype(np.int64),
        peak=objects["peak"].astype(np.float64),
        flux=flux, flux_err=flux_err, snr=snr,
        r_half=np.asarray(r_half, dtype=np.float64),
        kron_radius=kron, background=local_back,
        noise=rms[iy, ix].astype(np.float64), flags=flags,
        segmap=segmap,
    )


def measure_saturation(data: NDArray[np.float32],
                       bad: NDArray[np.bool_]) -> float | None:
    """Saturation level read off the pixels, or None if none is seen.

    A saturated image has a plateau: several pixels within 0.5 % of the
    maximum value.  Returns that maximum, else None.
    """
    good = data[~bad]
    if good.size == 0:
        return None
    vmax = float(good.max())
    if vmax <= 0:
        return None
    top = int(np.count_nonzero(good >= 0.995 * vmax))
    return vmax if top >= 5 else None


def infer_saturation(src: Sources, psf_index: NDArray[np.intp],
                     margin: float) -> float | None:
    """Saturation level read off flat-topped bright stars, or None.

    Saturated stars are the brightest compact sources, and their peak
    holds a smaller fraction of their flux than the PSF stars' peaks do
    (the top is cut).  When at least two such sources reach within a
    factor of two of the highest peak, the saturation level is the
    lowest of their peaks (raw pixel values, background included).
    """
    if psf_index.size == 0 or len(src) == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = src.peak / src.flux
    psf_fraction = float(np.median(fraction[psf_index]))
    psf_rh = float(np.median(src.r_half[psf_index]))
    raw_peak = src.peak + src.background
    top = float(np.nanmax(raw_peak))
    flat = (
        (raw_peak >= 0.5 * top)
        & (fraction < 0.8 * psf_fraction)
        & (src.r_half < 2.5 * psf_rh)
        & (src.snr >= 100)
    )
    if int(flat.sum()) < 2:
        return None
    return float(np.min(raw_peak[flat])) / margin


def sep_ellipses(objects: NDArray[np.void]
                 ) -> tuple[FloatArray, FloatArray, FloatArray,
                            NDArray[np.bool_]]:
    """Return the shapes of sep's objects as sep's photometry takes them.

    sep wants a >= b > 0 and |theta| <= pi/2.  Degenerate second
    moments (sep gave b = NaN for a source on the edge of a zeroed
    third of a real frame, and refused the CCD's photometry) become a
    circle, a = b = 1 px; the last array says which they are.
    """
    a = objects["a"].astype(np.float64)
    b = objects["b"].astype(np.float64)
    theta = objects["theta"].astype(np.float64)
    degenerate = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(theta))
    a = np.where(degenerate, 1.0, np.maximum(a, 1e-3))
    b = np.where(degenerate, 1.0, np.clip(b, 1e-3, a))
    theta = np.where(degenerate, 0.0, np.clip(theta, -np.pi / 2, np.pi / 2))
    return a, b, theta, degenerate


def object_mask(objects: NDArray[np.void], segmap: NDArray[np.int32],
                scale: float = 6.0) -> NDArray[np.bool_]:
    """Mask the pixels covered by sources.

    Their segments and ``scale`` times their isophotal ellipses (which
    reach into the wings of bright stars).

    Used to exclude sources from the second background pass.
    """
    mask = segmap > 0
    if len(objects):
        # A degenerate source keeps only its segment (sep masks nothing
        # for an ellipse with a NaN axis or angle).
        a, b, theta, degenerate = sep_ellipses(objects)
        keep = ~degenerate
        sep.mask_ellipse(mask, objects["x"][keep], objects["y"][keep],
                         a[keep], b[keep], theta[keep], r=scale)
    return mask
