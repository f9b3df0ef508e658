"""Cosmic rays: L.A.Cosmic on small tiles around cheap candidates.

L.A.Cosmic (van Dokkum 2001, PASP 113, 1420), as astroscrappy implements
it, flags the pixels whose Laplacian is high against the noise (sharper
than any PSF) unless they belong to a compact bright structure (the
"fine structure" test keeps stars out).  Over a whole 2048 x 4612 CCD,
with astroscrappy's four iterations, it costs ~17 s, nearly all of it on
sky pixels far from any cosmic ray.  `find_cosmic_rays` runs the same
tests where they can succeed:

1. **Candidates**, in one pass over the image by blocks of rows.  A pixel
   passes L.A.Cosmic's test ``S' > sigclip`` only if its Laplacian
   ``L+`` exceeds ``2 sigclip`` times the *sky* RMS (``S'`` is at most
   ``S = L+ / (2 N)`` and the noise ``N`` at least the sky RMS).  ``L+``
   is evaluated at the pixels above ``sigclip - 2`` sky sigmas only, and
   the candidates that hardly stand above the median of their 3 x 3
   neighbourhood (smooth peaks of stars and galaxies, which the fine
   structure test would reject) are dropped.
2. **Tiles.**  The image is cut into 8 x 8 tiles; each tile holding a
   candidate is processed in a 28 x 28 window (10 pixels of context on
   each side, the reach of L.A.Cosmic's filters).  The windows are
   stacked into one strip and processed at once with astroscrappy's
   separable median filters, as astroscrappy does by default
   (``sepmed=True``; `_sepmed` computes their values, faster): the
   noise model (sky variance plus the photons of sources, from a
   median so that a cosmic ray does not raise it),
   ``L+``, ``S' = S - med(S)``, the fine structure ``F``, detection where
   ``S' > sigclip`` and ``S' / F > objlim``, growth into neighbours with
   ``S' > sigclip`` then ``S' > sigfrac sigclip``, and the cleaning of
   the pixels found before the next of `NITER` iterations.  The sky
   noise is the RMS map, kept within a range about the pixel-to-pixel
   noise measured in the window.
3. **Growth.**  L.A.Cosmic misses the faint edges of tracks and hits
   (beside a bright pixel the Laplacian is negative).  The mask grows, as
   a hysteresis threshold, into the connected pixels that stand
   `GROW_NSIGMA` above the local smooth level of the cleaned image (its
   5 x 5 separable median), then by one ring of 4-connected neighbours
   above `EDGE_NSIGMA`.  It never enters a pixel of a compact bright
   structure (a fine structure above one sigma and more than ``1 /
   objlim`` of the pixel's excess), which keeps star cores out.  Where
   the mask reaches beyond a tile, the neighbouring tile is processed in
   turn, so tracks are followed across tiles.

Saturated star cores (saturated pixels in a bright neighbourhood,
astroscrappy's rule) and the 4 pixels around them are never flagged, nor
are bad pixels, which are replaced by a local median before filtering.
Units: ``sub`` and ``rms`` in ADU, ``gain`` in e-/ADU, ``read_noise`` in
electrons (the usual unit of the ``RDNOISE`` keyword).

On simulated MegaCam CCDs (2048 x 4612, 330 hits and tracks) this takes
~0.26 s of one core with `estimate_fwhm`, ~65 times less than
astroscrappy at its defaults, and finds more of the cosmic-ray pixels
(98 % against 88 %); ``benchmarks/bench_cosmics.py`` measures both.
astroscrappy's dilation uses OpenMP; `find_cosmic_rays` runs it on one
thread whatever ``OMP_NUM_THREADS`` says (more made astroscrappy's
filters slower, see `_FILTER_THREADS`).

>>> import numpy as np
>>> from qualityfits.cosmics import find_cosmic_rays
>>> rng = np.random.default_rng(0)
>>> sub = rng.normal(0.0, 10.0, (200, 200)).astype(np.float32)
>>> sub[50, 60] += 500.0
>>> crs = find_cosmic_rays(sub, 10.0, None, gain=1.5, read_noise=5.0,
...                        saturation=None)
>>> bool(crs.mask[50, 60])
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np
from astroscrappy.utils import dilate3
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import ndimage
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from threadpoolctl import ThreadpoolController

from qualityfits.moffat import SIGMA_TO_FWHM

__all__ = [
    "EDGE_NSIGMA",
    "EVENT_SIGCLIP",
    "GROW_NSIGMA",
    "NITER",
    "OBJLIM",
    "SIGCLIP",
    "SIGFRAC",
    "CosmicRays",
    "PsfPeaks",
    "estimate_fwhm",
    "find_cosmic_rays",
    "psf_core_ratio",
]

FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]
IndexArray = NDArray[np.intp]
_T = TypeVar("_T", bound=np.generic)

#: L.A.Cosmic's detection limit on the Laplacian-to-noise ratio ``S'``
#: (astroscrappy's default).
SIGCLIP: Final = 4.5
#: Minimum contrast between ``S'`` and the fine structure (astroscrappy's
#: default); higher keeps more star cores out.
OBJLIM: Final = 5.0
#: Neighbours of cosmic-ray pixels join them down to ``S' > SIGFRAC *
#: sigclip`` (astroscrappy's default).
SIGFRAC: Final = 0.3
#: L.A.Cosmic iterations.  astroscrappy runs 4; the growth finds what the
#: third and fourth would add, and more.
NITER: Final = 2
#: Hysteresis growth: connected pixels this many sigmas above the local
#: smooth level join the mask ...
GROW_NSIGMA: Final = 2.5
#: ... then one ring of 4-connected neighbours this many sigmas above it
#: (the partly covered pixels along a track).
EDGE_NSIGMA: Final = 0.5
#: A value of ``event_sigclip`` that removes nearly all the noise peaks
#: and no simulated cosmic ray (see `find_cosmic_rays`).
EVENT_SIGCLIP: Final = 5.5

#: Side of a tile, pixels.
_TILE: Final = 8
#: Context around a tile in its window, pixels.
_HALO: Final = 10
#: Results are kept this far inside a window, the reach of the filters:
#: ``S'`` needs the noise 6 pixels away, ``F`` the image 6 pixels away,
#: and the two growth steps one pixel each.
_RIM: Final = 8
#: Rows per block of the candidate pass.
_BLOCK_ROWS: Final = 256
#: Candidates are searched above ``sigclip - _CANDIDATE_MARGIN`` sky
#: sigmas: ``L+ / 2`` exceeds the pixel value only by what its
#: neighbours fall below the sky, rarely 2 sigmas.
_CANDIDATE_MARGIN: Final = 2.0
#: A candidate must exceed the median of its 3 x 3 neighbourhood by this
#: fraction of that median.  The core of a star barely does (FWHM 4 px:
#: 0.2; 2 px: 1.0), a cosmic ray by far.  This only saves work: the
#: fine-structure test decides.
_SHARPNESS: Final = 0.5
#: Pixels at or above this fraction of the saturation level are
#: saturated.
_SATURATED_FRACTION: Final = 0.95
#: When the saturation level is unknown, pixels above this fraction of
#: the brightest pixel count as saturated (a summed image has no plateau
#: to read the level off, and its brightest stars may be saturated).
_UNKNOWN_SATURATION: Final = 0.5
#: A saturated pixel whose 7-pixel separable median exceeds this fraction
#: of the saturation level belongs to a star (astroscrappy's rule: a
#: saturated cosmic ray has a dark neighbourhood) ...
_SATURATED_STAR_LEVEL: Final = 0.1
#: ... which is protected out to this many pixels.
_SATURATED_GROW: Final = 4
#: Gain assumed when it is unknown, e-/ADU (astroscrappy's default), for
#: the photon noise of sources.
_DEFAULT_GAIN: Final = 1.0
#: The noise is never taken below this fraction of the pixel-to-pixel
#: noise (where the RMS map falls to zero and no local measurement
#: bounds it): relative, so that the pixels' unit does not matter.
_NOISE_FLOOR: Final = 1e-6
#: Rounds of tiles added to follow cosmic rays across tiles.
_MAX_ROUNDS: Final = 64
#: Growth never enters a pixel whose fine structure exceeds this many
#: sigmas unless its excess is ``objlim`` times larger (star cores: the
#: excess of a star's core over its 5 x 5 median is about its fine
#: structure for FWHM 4 px, twice it for FWHM 2 px).
_FINE_FLOOR: Final = 1.0
#: The sky noise is the RMS map clipped to this range of multiples of
#: the pixel-to-pixel noise measured in each window (where it can be):
#: sep's map can fall to zero in a corner, or be several times too high
#: where a galaxy fills the meshes.
_LOCAL_FLOOR: Final = 0.7
_LOCAL_CEILING: Final = 1.5
#: Residuals below this fraction of the RMS map do not count in that
#: measurement: they come from blanks filled with constants or ramps.
_TINY_RESIDUAL: Final = 0.05
#: The candidates' RMS is clipped to between this fraction and
#: `_LOCAL_CEILING` times the pixel-to-pixel noise of the whole image
#: (a map near zero would make every pixel a candidate).
_CANDIDATE_FLOOR: Final = 0.5
#: The pixel-to-pixel noise of the image is measured on every this many
#: rows.
_NOISE_ROW_STEP: Final = 16
#: From the MAD of a pixel minus the mean of its 4 neighbours to the
#: sigma of white noise (that difference has a variance of 1.25 sigma²).
_MAD_TO_SIGMA: Final = 1.4826 / math.sqrt(1.25)

#: OpenMP threads of astroscrappy's filters (its 3 x 3 dilation; the
#: median filters were too, see `_sepmed`).  They run on strips of a
#: few hundred 28 x 28 windows: a second thread saves little when a core
#: is idle and, when it is not (another worker, another program), its
#: spin-waits made the step 1.5-2.5 times slower (2 s instead of 0.85 s
#: per 2048 x 4612 CCD in ``assess(jobs=1)``, where nothing else limits
#: the threads).
_FILTER_THREADS: Final = 1

#: Median-selection networks of 5, 7 and 9 values (N. Devillard's
#: ``opt_med5/7/9``, which astroscrappy's C filters use): compare-
#: exchanges (i, j) that leave the smaller value in i and the larger in
#: j, and the index that holds the median at the end.
_MEDIAN_NETWORKS: Final[dict[int, tuple[tuple[tuple[int, int], ...], int]]] = {
    5: (((0, 1), (3, 4), (0, 3), (1, 4), (1, 2), (2, 3), (1, 2)), 2),
    7: (((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3),
         (3, 6), (4, 5), (1, 4), (1, 3), (3, 4)), 3),
    9: (((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5),
         (7, 8), (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7),
         (4, 2), (6, 4), (4, 2)), 4),
}
#: Rows of a strip filtered at a time by `_sepmed` (its temporaries,
#: ~0.5 MB each for 28 columns, then stay in the cache).
_SEPMED_ROWS: Final = 4096

#: A local maximum is protected as the core of a PSF-like source when
#: its neighbours reach this fraction of the least a Gaussian of the
#: estimated FWHM gives them, and the pixels 2 away stay below the most
#: it gives them over this fraction (`psf_core_ratio`, `_psf_cores`).
#: Half: the margin for the noise of a faint core, a Moffat's wings and
#: an error of the FWHM estimate.
_PSF_MARGIN: Final = 0.5
#: ... less this many times the noise of the pixels compared.
_PSF_NOISE: Final = 1.5
#: `estimate_fwhm` measures the FWHM on the local maxima this many sky
#: sigmas high, and lists as star cores those above the lower level
#: (about the peak of a star at S/N 20 with FWHM 1.7 px) ...
_FWHM_PEAK_NSIGMA: Final = 20.0
_CORE_PEAK_NSIGMA: Final = 10.0
#: ... whose 4 neighbours all stand this many sigmas above the sky (a
#: single-pixel or linear cosmic ray has dark neighbours) ...
_FWHM_NEIGHBOUR_NSIGMA: Final = 3.0
#: ... and whose widths along rows and columns agree within this
#: fraction (tracks and blends do not); it needs this many of them.
_FWHM_ROUNDNESS: Final = 0.3
_FWHM_MIN_PEAKS: Final = 5
#: Bins of the histogram of log10(FWHM) whose mode is the estimate, and
#: the half width of the window about the mode whose median it returns.
_FWHM_BIN_DEX: Final = 0.02
_FWHM_WINDOW_DEX: Final = 0.06
#: The range of FWHM it can return, pixels.
_FWHM_RANGE: Final = (0.8, 20.0)

#: 8- and 4-connectivity within each window of a stack, none across.
_STACK_EIGHT: Final = np.zeros((3, 3, 3), dtype=bool)
_STACK_EIGHT[1] = True
_STACK_FOUR: Final = np.zeros((3, 3, 3), dtype=bool)
_STACK_FOUR[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class CosmicRays:
    """The cosmic rays of one CCD.

    Attributes
    ----------
    mask : ndarray of bool
        Cosmic-ray pixels, same shape as the image.
    n_events : int
        Connected groups of cosmic-ray pixels (8-connectivity).
    n_significant : int
        Those of them with a pixel at ``S' >= EVENT_SIGCLIP``: the count
        of cosmic rays, without the noise peaks that pass L.A.Cosmic's
        4.5-sigma test (~17 per million pixels), which stay in the mask.
    """

    mask: BoolArray
    n_events: int
    n_significant: int = 0


def find_cosmic_rays(
    sub: FloatArray,
    rms: FloatArray | float,
    bad: BoolArray | None,
    *,
    gain: float | None,
    read_noise: float | None,
    saturation: float | None,
    sigclip: float = SIGCLIP,
    objlim: float = OBJLIM,
    event_sigclip: float | None = None,
    psf_fwhm: float | None = None,
    pixel_noise: float | None = None,
) -> CosmicRays:
    """Find the cosmic rays of a background-subtracted CCD image.

    Parameters
    ----------
    sub : ndarray of float32
        Background-subtracted pixels, ADU.  Not modified.
    rms : ndarray of float32 or float
        Background RMS, ADU: a map of the image's shape, or one value.
    bad : ndarray of bool or None
        Pixels to ignore (masked; non-finite pixels already zeroed):
        never flagged, and replaced by a local median before filtering.
    gain : float or None
        Gain, e-/ADU, for the photon noise of sources (L.A.Cosmic's
        noise model: sky variance plus source counts over the gain).
        When None, 1 e-/ADU is assumed, as astroscrappy does.
    read_noise : float or None
        Read noise in **electrons** (the unit of the usual ``RDNOISE``
        keyword).  The background RMS already includes it, so it only
        sets a floor on the noise (with ``gain``).
    saturation : float or None
        Saturation level *above the sky*, ADU (``SATURATE`` minus the
        sky level).  Saturated star cores and the 4 pixels around them
        are never cosmic rays.  When None, pixels above half the
        brightest pixel are treated as possibly saturated.
    sigclip : float
        Detection limit on L.A.Cosmic's Laplacian-to-noise ratio;
        default `SIGCLIP`.
    objlim : float
        Minimum contrast between the Laplacian and the fine structure;
        default `OBJLIM`.  Raise it if the cores of stars in an
        undersampled image are flagged.
    event_sigclip : float or None
        When set above ``sigclip``, a group of pixels is kept only if one
        of them reaches ``S' >= event_sigclip`` (a hysteresis: the others
        join it down to ``sigclip``).  None, the default, keeps every
        group, as L.A.Cosmic does.  L.A.Cosmic's 4.5-sigma test passes
        ~17 noise peaks per million pixels (~160 groups on a 2048 x 4612
        CCD, against ~330 cosmic rays in a 300 s MegaCam exposure);
        `EVENT_SIGCLIP` removes nearly all of them and no simulated
        cosmic ray, so that ``n_events`` counts cosmic rays, but it also
        drops the single-pixel events of 4.5 to 5.5 sigma that
        astroscrappy flags on real frames.
    psf_fwhm : float or None
        FWHM of the PSF, pixels (`estimate_fwhm` measures it).  When
        given, the cores of PSF-like sources are never flagged: a local
        maximum whose 4 neighbours and 4 diagonal neighbours are as
        bright, relative to it, as the PSF makes them (`psf_core_ratio`,
        with a margin for the noise), and the pixels around it.  On
        undersampled images (FWHM below ~2.5 px) L.A.Cosmic's fine
        structure test alone flags many star cores.  None: no such
        protection (L.A.Cosmic's tests only).
    pixel_noise : float or None
        The pixel-to-pixel noise of ``sub`` outside ``bad``, ADU, as
        `estimate_fwhm` measured it on the same pixels (`PsfPeaks`'s
        ``noise``): it is not measured a second time.  None: measured
        here.

    Returns
    -------
    CosmicRays
        The mask and the number of its connected groups.

    Raises
    ------
    ValueError
        If ``sub`` is not two-dimensional, a map does not have its
        shape, or a number is not positive and finite (``pixel_noise``:
        not negative and finite).
    """
    image, noise_map, badmask = _check(sub, rms, bad)
    if pixel_noise is not None and not (math.isfinite(pixel_noise)
                                        and pixel_noise >= 0):
        raise ValueError("pixel_noise must be finite and not negative or "
                         f"None, got {pixel_noise!r}")
    for name, value in (
        ("gain", gain),
        ("read_noise", read_noise),
        ("saturation", saturation),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be positive and finite or None, got {value!r}"
            )
    for name, value in (
        ("sigclip", sigclip),
        ("objlim", objlim),
        ("event_sigclip", sigclip if event_sigclip is None else event_sigclip),
        ("psf_fwhm", 1.0 if psf_fwhm is None else psf_fwhm),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be positive and finite, got {value!r}"
            )
    if saturation is None:
        top = float(image.max() if badmask is None else image[~badmask].max())
        if top > 0:
            saturation = _UNKNOWN_SATURATION * top / _SATURATED_FRACTION
    if pixel_noise is None:
        pixel_noise = _pixel_noise(image, badmask)
    tiler = _Tiler(
        image,
        noise_map,
        badmask,
        gain=gain,
        read_noise=read_noise,
        saturation=saturation,
        sigclip=sigclip,
        objlim=objlim,
        psf_fwhm=psf_fwhm,
        noise_floor=_NOISE_FLOOR * pixel_noise if pixel_noise > 0
        else float(np.finfo(np.float32).tiny),
    )
    # The candidates' RMS is kept within the range the windows will
    # allow about the pixel-to-pixel noise (see _Tiler._noise), so that
    # they remain a superset of what the windows can find.
    high = _LOCAL_CEILING * pixel_noise if pixel_noise > 0 else math.inf
    seeds = _candidates(
        image,
        noise_map,
        badmask,
        sigclip,
        rms_range=(_CANDIDATE_FLOOR * pixel_noise, high),
    )
    todo = tiler.tiles_of(seeds)
    done = np.zeros(tiler.n_tiles, dtype=bool)
    # One OpenMP thread for astroscrappy's filters, whatever the caller
    # set: see _FILTER_THREADS.  Only the OpenMP libraries are limited
    # and then restored: `threadpool_limits` would restore every
    # library's limit, and setting OpenBLAS's (even to its own value)
    # starts its thread pools again in a forked worker, which spin.
    openmp = ThreadpoolController().select(user_api="openmp")
    with openmp.limit(limits=_FILTER_THREADS):
        for _ in range(_MAX_ROUNDS):
            if todo.size == 0:
                break
            done[todo] = True
            reached = tiler.tiles_of(tiler.process(todo))
            todo = reached[~done[reached]]
    if event_sigclip is None or event_sigclip <= sigclip:
        *_, best = _group_peaks(tiler.mask, tiler.peaks)
        return CosmicRays(
            mask=tiler.mask, n_events=best.size,
            n_significant=int(np.count_nonzero(best >= EVENT_SIGCLIP)))
    return _keep_significant(tiler.mask, tiler.peaks, event_sigclip)


def psf_core_ratio(fwhm: float) -> tuple[float, float]:
    """Ratios of a PSF's pixels about its peak pixel to that pixel.

    For a Gaussian of FWHM ``fwhm`` (pixels) integrated over pixels:
    the mean of the two neighbours along a row when the PSF is centred
    on the peak pixel (the least it can be: off centre, one neighbour
    gains more than the other loses; a Moffat of the same FWHM has
    brighter wings), and, when it is centred on the pixel's edge, the
    fainter neighbour, which is also the brighter of the two pixels 2
    away (the least a single neighbour can be, the most a pixel 2 away
    can be).  The Gaussian is separable: a diagonal neighbour's ratio
    is the product of a row's and a column's.

    >>> [round(r, 3) for r in psf_core_ratio(1.7)]
    [0.441, 0.192]
    """
    sigma = fwhm / SIGMA_TO_FWHM
    scale = math.sqrt(2.0) * sigma

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / scale))

    centred = (cdf(1.5) - cdf(0.5)) / (2.0 * cdf(0.5) - 1.0)
    return centred, (cdf(2.0) - cdf(1.0)) / (cdf(1.0) - cdf(0.0))


@dataclass(frozen=True)
class PsfPeaks:
    """The star-like peaks of an image and the FWHM they give.

    Attributes
    ----------
    fwhm : float or None
        The FWHM estimate, pixels (None: too few peaks).
    x, y : ndarray of int
        Column and row of the peak pixel of each star-like peak (those
        whose width is within `_FWHM_WINDOW_DEX` of the mode).
    noise : float
        The pixel-to-pixel noise of the image, ADU (what the peaks'
        thresholds are in units of; `find_cosmic_rays` takes it as
        ``pixel_noise``).
    """

    fwhm: float | None
    x: IndexArray
    y: IndexArray
    noise: float = 0.0


def estimate_fwhm(
    sub: FloatArray,
    bad: BoolArray | None,
    *,
    saturation: float | None,
) -> PsfPeaks:
    """Estimate the PSF FWHM of a background-subtracted image, cheaply.

    For `find_cosmic_rays`, before any source is detected.  Each local
    maximum `_FWHM_PEAK_NSIGMA` sigmas above the sky (the pixel-to-pixel
    noise), below half the saturation level, with no bad pixel in its
    3 x 3 box and its 4 neighbours above `_FWHM_NEIGHBOUR_NSIGMA`
    sigmas, gives a width along the rows and one along the columns from
    the curvature of the logarithm of the three pixels (exact for a
    Gaussian whatever its centring; 1/12 px² is taken off for the
    pixel's width).  Round ones (the two widths within
    `_FWHM_ROUNDNESS`) give ``2.355 sigma``; stars make the mode of
    those values, cosmic rays fall below it (or have a dark neighbour),
    galaxies above.  Returns the median of the values within
    `_FWHM_WINDOW_DEX` of the mode, or None with fewer than
    `_FWHM_MIN_PEAKS` such maxima there.  For a Moffat profile this is
    the FWHM of the Gaussian with the same core (~7 % smaller for
    beta 2.5-3).

    Parameters
    ----------
    sub : ndarray of float32
        Background-subtracted pixels, ADU.
    bad : ndarray of bool or None
        Pixels to ignore.
    saturation : float or None
        Saturation level above the sky, ADU; None: the brightest pixel
        is taken as saturated.

    Returns
    -------
    PsfPeaks
        The FWHM (pixels, in `_FWHM_RANGE`) and the peaks near the mode:
        star cores, found before any cosmic ray is masked.
    """
    image = np.ascontiguousarray(sub, dtype=np.float32)
    badmask = None if bad is None or not bad.any() else bad
    ny, nx = image.shape
    noise = _pixel_noise(image, badmask)
    none = PsfPeaks(None, np.zeros(0, np.intp), np.zeros(0, np.intp),
                    noise)
    if ny < 3 or nx < 3 or not noise > 0:
        return none
    if saturation is None:
        top = float(image.max() if badmask is None
                    else image[~badmask].max())
        saturation = top
    pieces = []
    threshold = np.float32(_CORE_PEAK_NSIGMA * noise)
    for j0 in range(1, ny - 1, _BLOCK_ROWS):
        j1 = min(ny - 1, j0 + _BLOCK_ROWS)
        # Whole rows and flat indices (a 2-d np.nonzero is 4x slower);
        # the first and last columns are not peaks.
        above = image[j0:j1] > threshold
        above[:, 0] = above[:, -1] = False
        pieces.append(np.flatnonzero(above) + j0 * nx)
    idx = np.concatenate(pieces)
    value = image.ravel()[idx]
    keep = value < np.float32(0.5 * saturation)
    idx, value = idx[keep], value[keep]
    flat = image.ravel()
    offsets = [dj * nx + di for dj in (-1, 0, 1) for di in (-1, 0, 1)
               if dj or di]
    for off in offsets:
        keep = flat[idx + off] <= value
        if badmask is not None:
            keep &= ~badmask.ravel()[idx + off]
        idx, value = idx[keep], value[keep]
    if badmask is not None:
        keep = ~badmask.ravel()[idx]
        idx, value = idx[keep], value[keep]
    floor = np.float32(_FWHM_NEIGHBOUR_NSIGMA * noise)
    sides = [flat[idx + off] for off in (-nx, nx, -1, 1)]
    keep = np.all([side > floor for side in sides], axis=0)
    idx = idx[keep]
    logs = [np.log(side[keep].astype(np.float64)) for side in sides]
    log_peak = np.log(value[keep].astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        var_y = -1.0 / (logs[0] + logs[1] - 2.0 * log_peak) - 1.0 / 12
        var_x = -1.0 / (logs[2] + logs[3] - 2.0 * log_peak) - 1.0 / 12
        ok = (np.isfinite(var_x) & np.isfinite(var_y) & (var_x > 0)
              & (var_y > 0))
        var_x, var_y, idx = var_x[ok], var_y[ok], idx[ok]
        round_ = (np.abs(var_x - var_y)
                  < _FWHM_ROUNDNESS * 0.5 * (var_x + var_y))
    fwhm = SIGMA_TO_FWHM * np.sqrt(0.5 * (var_x + var_y)[round_])
    idx = idx[round_]
    lo, hi = _FWHM_RANGE
    inside = (fwhm >= lo) & (fwhm <= hi)
    fwhm, idx = fwhm[inside], idx[inside]
    bright = flat[idx] > np.float32(_FWHM_PEAK_NSIGMA * noise)
    if np.count_nonzero(bright) < _FWHM_MIN_PEAKS:
        return none
    log_f = np.log10(fwhm)
    edges = np.arange(math.log10(lo), math.log10(hi) + _FWHM_BIN_DEX,
                      _FWHM_BIN_DEX)
    hist, _ = np.histogram(log_f[bright], bins=edges)
    width = max(1, round(_FWHM_WINDOW_DEX / _FWHM_BIN_DEX))
    smooth = np.convolve(hist, np.ones(2 * width + 1), mode="same")
    mode = edges[int(np.argmax(smooth))] + 0.5 * _FWHM_BIN_DEX
    near = np.abs(log_f - mode) <= _FWHM_WINDOW_DEX
    if np.count_nonzero(near & bright) < _FWHM_MIN_PEAKS:
        return none
    y, x = np.divmod(idx[near], nx)
    return PsfPeaks(float(np.median(fwhm[near & bright])), x, y, noise)


def _psf_cores(img: FloatArray, noise: FloatArray, stack: _Stack,
               ratio: tuple[float, float]) -> BoolArray:
    """Cores of PSF-like sources in a stack of windows, and around them.

    ``ratio`` is `psf_core_ratio`'s.  A local maximum is a PSF's when,
    relative to it, the means of its two neighbours along the row and
    along the column reach ``_PSF_MARGIN`` times the centred ratio, the
    mean of each pair of opposite diagonal neighbours ``_PSF_MARGIN``
    times its square, each neighbour ``_PSF_MARGIN`` times the edge
    ratio, and none of the 4 pixels 2 away along the row and the column
    exceeds the edge ratio over ``_PSF_MARGIN``: a PSF is
    bright all around its peak and falls off; a cosmic-ray hit is dark
    on one side or one diagonal, a track is dark on one side or stays
    bright along it.  Each bound is loosened by `_PSF_NOISE` times the
    noise of the pixels it compares (faint star cores).  Its 3 x 3 box
    is protected.
    """
    centred, edge = ratio
    pad = np.pad(img, ((0, 0), (2, 2), (2, 2)), mode="edge")
    ny, nx = img.shape[1:]

    def at(dj: int, di: int) -> FloatArray:
        view: FloatArray = pad[:, 2 + dj:2 + dj + ny, 2 + di:2 + di + nx]
        return view

    core = img > 0
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            if dj or di:
                core &= img >= at(dj, di)
    if not core.any():
        return core
    slack = np.float32(_PSF_NOISE) * noise
    low = np.float32(_PSF_MARGIN * edge) * img - slack
    for dj, di in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        core &= at(dj, di) >= low
    high = np.float32(min(1.0, edge / _PSF_MARGIN)) * img + slack
    for dj, di in ((0, -2), (0, 2), (-2, 0), (2, 0)):
        core &= at(dj, di) <= high
    slack *= np.float32(math.sqrt(2.0))
    side = np.float32(2.0 * _PSF_MARGIN * centred) * img - slack
    diag = np.float32(2.0 * _PSF_MARGIN * centred * centred) * img - slack
    core &= at(0, -1) + at(0, 1) >= side
    core &= at(-1, 0) + at(1, 0) >= side
    core &= at(-1, -1) + at(1, 1) >= diag
    core &= at(-1, 1) + at(1, -1) >= diag
    if not core.any():
        return core
    return stack.dilate(core)


def _check(
    sub: FloatArray, rms: FloatArray | float, bad: BoolArray | None
) -> tuple[FloatArray, FloatArray | float, BoolArray | None]:
    """Validate the arrays; return them as the code needs them."""
    image = np.asarray(sub)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"sub must be a non-empty 2-d image, got shape {image.shape}"
        )
    image = np.ascontiguousarray(image, dtype=np.float32)
    noise_map: FloatArray | float
    if np.ndim(rms) == 0:
        noise_map = float(rms)
        if not (math.isfinite(noise_map) and noise_map > 0):
            raise ValueError(
                f"rms must be positive and finite, got {noise_map!r}"
            )
    else:
        noise_map = np.ascontiguousarray(rms, dtype=np.float32)
        if noise_map.shape != image.shape:
            raise ValueError(
                f"rms has shape {noise_map.shape}, the image {image.shape}"
            )
    badmask = None
    if bad is not None:
        badmask = np.ascontiguousarray(bad, dtype=bool)
        if badmask.shape != image.shape:
            raise ValueError(
                f"bad has shape {badmask.shape}, the image {image.shape}"
            )
        if badmask.all():
            raise ValueError("every pixel is bad")
        if not badmask.any():
            badmask = None
    return image, noise_map, badmask


def _candidates(
    image: FloatArray,
    rms: FloatArray | float,
    bad: BoolArray | None,
    sigclip: float,
    *,
    rms_range: tuple[float, float],
) -> IndexArray:
    """Flat indices of the pixels that may pass L.A.Cosmic's tests.

    ``rms`` is clipped to ``rms_range`` first.
    """
    ny, nx = image.shape
    level = max(sigclip - _CANDIDATE_MARGIN, 1.0)
    low, high = (np.float32(v) for v in rms_range)
    if isinstance(rms, float):
        rms = float(np.clip(rms, low, high))
    pieces = []
    for j0 in range(0, ny, _BLOCK_ROWS):
        j1 = min(ny, j0 + _BLOCK_ROWS)
        threshold = (
            level * rms
            if isinstance(rms, float)
            else level * np.clip(rms[j0:j1], low, high)
        )
        above = image[j0:j1] > threshold
        if bad is not None:
            above &= ~bad[j0:j1]
        pieces.append(np.flatnonzero(above) + j0 * nx)
    idx = np.concatenate(pieces)
    flat = image.ravel()
    value = flat[idx]
    j, i = np.divmod(idx, nx)
    # Only the pixels of the image's edge need their neighbours mirrored.
    at_edge = (j == 0) | (j == ny - 1) | (i == 0) | (i == nx - 1)
    edge = np.flatnonzero(at_edge)

    def around(dj: int, di: int) -> FloatArray:
        """Return the neighbour at (dj, di) of every candidate, mirrored."""
        k = idx + (dj * nx + di)
        if edge.size:
            k[edge] = (_mirror(j[edge] + dj, ny) * nx
                       + _mirror(i[edge] + di, nx))
        out = flat[k]
        if bad is not None:
            # A bad neighbour counts as equal to the pixel.
            out = np.where(bad.ravel()[k], value, out)
        return out

    lap = _laplace_plus(
        value, around(-1, 0), around(1, 0), around(0, -1), around(0, 1)
    )
    sky = (
        rms if isinstance(rms, float) else np.clip(rms.ravel()[idx], low, high)
    )
    keep = lap > (2 * sigclip) * sky
    idx, j, i, value = idx[keep], j[keep], i[keep], value[keep]
    edge = np.flatnonzero(at_edge[keep])
    box = np.stack([around(dj, di) for dj in (-1, 0, 1) for di in (-1, 0, 1)])
    median = np.median(box, axis=0)
    sharp = value - median > _SHARPNESS * np.maximum(median, 0)
    return idx[sharp]


def _mirror(k: IndexArray, n: int) -> IndexArray:
    """Reflect indices into ``[0, n)`` about the edge pixels."""
    if n == 1:
        return np.zeros_like(k)
    period = 2 * (n - 1)
    k = np.abs(k) % period
    return np.where(k >= n, period - k, k)


def _sepmed(image: FloatArray, width: int) -> FloatArray:
    """Separable median filter, as astroscrappy's ``sepmedfilt5/7/9``.

    The median of ``width`` pixels along each row, then of ``width`` of
    those along each column; the border of ``width // 2`` pixels is the
    input's, as astroscrappy leaves it.  The same values as
    astroscrappy's C functions (a median of an odd number of values is
    one of them, picked by the same comparisons; ``test_cosmics`` checks
    it), 5-10 times faster on the strips of `_Stack`: Devillard's
    networks applied to whole shifted views with ``np.minimum`` and
    ``np.maximum`` instead of value by value with a branch each.  The
    pixels must be finite (a NaN spreads here, not in astroscrappy's).

    Each block of rows is filtered as one flat run of pixels: a shift
    by one column is a shift by one pixel, by one row a shift by a
    row's length, so every view is contiguous (the rows of a strip are
    28 pixels: row by row, the loops' per-row start cost 30-40 % of the
    time).  Medians that straddle two rows are computed and dropped.
    """
    out = image.copy()
    half = width // 2
    ny, nx = image.shape
    if ny <= 2 * half or nx <= 2 * half:
        return out
    inner = nx - 2 * half
    for j0 in range(half, ny - half, _SEPMED_ROWS):
        j1 = min(ny - half, j0 + _SEPMED_ROWS)
        run = image[j0 - half:j1 + half].reshape(-1)
        # Along rows: pixel p of `along` is the median of run[p:p + width]
        # (row r, column c of the block at p = r * nx + c, c < inner).
        n = run.size - 2 * half
        along = _median_of([run[k:k + n] for k in range(width)], width)
        # Along columns: the same `width` rows apart.
        m = (j1 - j0 - 1) * nx + inner
        both = np.empty((j1 - j0) * nx, dtype=out.dtype)
        both[:m] = _median_of(
            [along[k * nx:k * nx + m] for k in range(width)], width)
        out[j0:j1, half:nx - half] = both.reshape(j1 - j0, nx)[:, :inner]
    return out


def _median_of(values: list[FloatArray], width: int) -> FloatArray:
    """Element-wise median of ``width`` arrays (not modified).

    Only the compare-exchanges and the halves of them that lead to the
    median are computed (`_median_plan`).
    """
    steps, result = _median_plan(width)
    p = list(values)
    own = [False] * width  # p[k] is a temporary of ours, writable
    for i, j, low, high in steps:
        a, b = p[i], p[j]
        if low and high:
            p[i] = np.minimum(a, b)
            p[j] = np.maximum(a, b, out=b if own[j] else None)
            own[i] = own[j] = True
        elif low:
            p[i] = np.minimum(a, b, out=a if own[i] else None)
            own[i] = True
        else:
            p[j] = np.maximum(a, b, out=b if own[j] else None)
            own[j] = True
    return p[result]


@functools.cache
def _median_plan(
    width: int,
) -> tuple[tuple[tuple[int, int, bool, bool], ...], int]:
    """`_MEDIAN_NETWORKS`' steps for ``width`` with the outputs needed.

    Each step is (i, j, the minimum is needed, the maximum is needed);
    a compare-exchange none of whose outputs leads to the median is
    left out.
    """
    network, result = _MEDIAN_NETWORKS[width]
    live = {result}
    steps = []
    for i, j in reversed(network):
        low, high = i in live, j in live
        if low or high:
            steps.append((i, j, low, high))
            live |= {i, j}
    return tuple(reversed(steps)), result


def _laplace_plus(
    v: FloatArray,
    up: FloatArray,
    down: FloatArray,
    left: FloatArray,
    right: FloatArray,
) -> FloatArray:
    """L.A.Cosmic's ``L+`` from pixels and their four neighbours.

    The Laplacian of the image subsampled 2 x 2, clipped at zero and
    averaged back over each pixel: in each quarter of a pixel it is
    twice the pixel minus the two neighbours that quarter touches.
    """
    twice = 2 * v
    out = np.zeros_like(v)
    for a in (up, down):
        for b in (left, right):
            part = twice - a
            part -= b
            np.maximum(part, 0, out=part)
            out += part
    out *= np.float32(0.25)
    return out


def _pixel_noise(image: FloatArray, bad: BoolArray | None) -> float:
    """Robust pixel-to-pixel noise of the image, from a subset of rows."""
    ny, nx = image.shape
    if ny < 3 or nx < 3:
        return 0.0
    rows = np.arange(1, ny - 1, _NOISE_ROW_STEP)
    resid = _four_residual(
        image[rows, 1:-1],
        image[rows - 1, 1:-1],
        image[rows + 1, 1:-1],
        image[rows, :-2],
        image[rows, 2:],
    )
    if bad is not None:
        near = (
            bad[rows, 1:-1]
            | bad[rows - 1, 1:-1]
            | bad[rows + 1, 1:-1]
            | bad[rows, :-2]
            | bad[rows, 2:]
        )
        resid = resid[~near]
    if resid.size == 0:
        return 0.0
    return _MAD_TO_SIGMA * float(np.median(np.abs(resid - np.median(resid))))


def _local_sigma(
    img: FloatArray, good: BoolArray, scale: FloatArray
) -> FloatArray:
    """Robust pixel-to-pixel noise of each window of a stack.

    Residuals smaller than `_TINY_RESIDUAL` times ``scale`` (the RMS
    map's value in each window) are left out: a blank filled with a
    constant or a quantised ramp is not noise, and would pull the
    estimate down (white noise loses a few per cent of its residuals
    and gains as much in the estimate).  NaN where fewer than half the
    residuals are usable.
    """
    resid = _four_residual(
        img[:, 1:-1, 1:-1],
        img[:, :-2, 1:-1],
        img[:, 2:, 1:-1],
        img[:, 1:-1, :-2],
        img[:, 1:-1, 2:],
    ).reshape(img.shape[0], -1)
    tiny = np.float32(_TINY_RESIDUAL) * scale[:, None]
    usable = np.abs(resid) > tiny
    if not good.all():
        ok = good[:, 1:-1, 1:-1] & good[:, :-2, 1:-1] & good[:, 2:, 1:-1]
        ok &= good[:, 1:-1, :-2] & good[:, 1:-1, 2:]
        usable &= ok.reshape(resid.shape)
    enough = usable.mean(axis=1) >= 0.5
    out = np.full(img.shape[0], np.nan, dtype=np.float32)
    if not enough.any():
        return out
    sample = np.where(usable[enough], resid[enough], np.inf)
    count = np.count_nonzero(usable[enough], axis=1)
    centre = _row_median(sample, count)
    deviation = np.abs(sample - centre[:, None])
    out[enough] = _row_median(deviation, count) * _MAD_TO_SIGMA
    return out


def _row_median(rows: FloatArray, count: IndexArray) -> FloatArray:
    """Median of the first ``count`` smallest values of each row.

    The values left out are +inf, so they sort last (``np.nanmedian``
    does the same job several times slower).
    """
    ordered = np.sort(rows, axis=1)
    lo = np.take_along_axis(ordered, ((count - 1) // 2)[:, None], axis=1)
    hi = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)
    return np.asarray(0.5 * (lo[:, 0] + hi[:, 0]), dtype=np.float32)


def _four_residual(
    v: FloatArray,
    up: FloatArray,
    down: FloatArray,
    left: FloatArray,
    right: FloatArray,
) -> FloatArray:
    """Pixels minus the mean of their four neighbours.

    Smooth structure cancels; white noise of sigma s leaves a variance of
    1.25 s².
    """
    out = up + down
    out += left
    out += right
    out *= np.float32(-0.25)
    out += v
    return out


class _Stack:
    """A stack of square windows seen as one 2-d strip by the filters.

    astroscrappy's filters work on 2-d C-contiguous float32 arrays (and
    `_sepmed` works as its median filters); with the windows stacked
    vertically, a filter mixes two windows only in their halos, which
    are discarded.
    """

    def __init__(self, n: int, size: int) -> None:
        self.shape = (n, size, size)
        self.flat_shape = (n * size, size)

    def sepmed(self, array: FloatArray, width: int) -> FloatArray:
        """Separable median filter of ``array`` (shaped like the stack)."""
        strip = np.asarray(array, dtype=np.float32).reshape(self.flat_shape)
        return _sepmed(strip, width).reshape(self.shape)

    def dilate(self, mask: BoolArray) -> BoolArray:
        """Dilate ``mask`` by one pixel, 8-connected."""
        strip = np.ascontiguousarray(mask).reshape(self.flat_shape)
        out: BoolArray = dilate3(strip).astype(bool)
        return out.reshape(self.shape)


class _Tiler:
    """The tiles of one image, their windows and the mask found so far."""

    def __init__(
        self,
        image: FloatArray,
        rms: FloatArray | float,
        bad: BoolArray | None,
        *,
        gain: float | None,
        read_noise: float | None,
        saturation: float | None,
        sigclip: float,
        objlim: float,
        psf_fwhm: float | None = None,
        noise_floor: float,
    ) -> None:
        self.image = image
        self.noise_floor = np.float32(noise_floor)
        self.rms = rms
        self.bad = bad
        self.gain = gain
        self.read_noise = read_noise
        self.saturation = saturation
        self.sigclip = sigclip
        self.objlim = objlim
        self.core_ratio = (None if psf_fwhm is None
                           else psf_core_ratio(psf_fwhm))
        ny, nx = image.shape
        self.shape = (ny, nx)
        self.tiles_x = -(-nx // _TILE)
        self.n_tiles = -(-ny // _TILE) * self.tiles_x
        self.size = _TILE + 2 * _HALO
        self.mask = np.zeros((ny, nx), dtype=bool)
        #: (flat index, S') of the pixels detected, round by round.
        self.peaks: list[tuple[IndexArray, FloatArray]] = []

    def tiles_of(self, flat: IndexArray) -> IndexArray:
        """Return the sorted tiles that hold the pixels ``flat``."""
        j, i = np.divmod(flat, self.shape[1])
        return np.unique((j // _TILE) * self.tiles_x + i // _TILE)

    def process(self, tiles: IndexArray) -> IndexArray:
        """Search ``tiles``; return the pixels newly added to the mask."""
        tj, ti = np.divmod(tiles, self.tiles_x)
        offsets = np.arange(self.size) - _HALO
        rows = tj[:, None] * _TILE + offsets
        cols = ti[:, None] * _TILE + offsets
        img = self._windows(self.image, rows, cols)
        stack = _Stack(tiles.size, self.size)
        good = np.ones(img.shape, dtype=bool)
        if self.bad is not None:
            good = np.logical_not(self._windows(self.bad, rows, cols))
            if not good.all():
                img[~good] = 0.0
                img[~good] = stack.sepmed(img, 5)[~good]
        # The local level, a median so that a cosmic ray does not raise
        # it: for the photon noise of sources, and the saturation test.
        level = stack.sepmed(img, 7)
        noise = self._noise(img, level, good, rows, cols)
        if self.saturation is not None:
            good &= ~self._saturated_stars(img, level, self.saturation)
        if self.core_ratio is not None:
            good &= ~_psf_cores(img, noise, stack, self.core_ratio)
        crmask = self._windows(self.mask, rows, cols) & good
        lacosmic = _LACosmic(
            img,
            noise,
            good,
            crmask,
            stack,
            sigclip=self.sigclip,
            objlim=self.objlim,
        )
        lacosmic.run()
        # Keep the valid part of each window, inside the image.
        inner = slice(_RIM, self.size - _RIM)
        r = rows[:, inner]
        c = cols[:, inner]
        inside = ((r >= 0) & (r < self.shape[0]))[:, :, None] & (
            (c >= 0) & (c < self.shape[1])
        )[:, None, :]
        t, a, b = np.nonzero(lacosmic.crmask[:, inner, inner] & inside)
        rr, cc = r[t, a], c[t, b]
        peak = lacosmic.peak[:, inner, inner][t, a, b]
        hit = peak > 0
        self.peaks.append(
            (rr[hit] * self.shape[1] + cc[hit], peak[hit].astype(np.float32))
        )
        new = ~self.mask[rr, cc]
        rr, cc = rr[new], cc[new]
        self.mask[rr, cc] = True
        flat: IndexArray = rr * self.shape[1] + cc
        return flat

    def _windows(
        self, array: NDArray[_T], rows: IndexArray, cols: IndexArray
    ) -> NDArray[_T]:
        """Stack of windows of ``array``, mirrored beyond the edges.

        ``rows`` and ``cols`` are runs of consecutive indices: a window
        inside the image is one block, copied row by row from a
        sliding-window view (2-4 times faster than gathering it pixel
        by pixel, as the few windows that reach beyond an edge are).
        """
        ny, nx = self.shape
        size = rows.shape[1]
        r0, c0 = rows[:, 0], cols[:, 0]
        inside = (r0 >= 0) & (r0 + size <= ny) & (c0 >= 0) & (c0 + size <= nx)
        out = np.empty((rows.shape[0], size, size), dtype=array.dtype)
        if inside.any():
            blocks = sliding_window_view(array, (size, size))
            out[inside] = blocks[r0[inside], c0[inside]]
        edge = ~inside
        if edge.any():
            r = _mirror(rows[edge], ny)
            c = _mirror(cols[edge], nx)
            out[edge] = array[r[:, :, None], c[:, None, :]]
        return out

    def _noise(
        self,
        img: FloatArray,
        level: FloatArray,
        good: BoolArray,
        rows: IndexArray,
        cols: IndexArray,
    ) -> FloatArray:
        """L.A.Cosmic's noise: sky variance plus the sources' photons."""
        if isinstance(self.rms, float):
            sigma = np.full(img.shape, self.rms, dtype=np.float32)
        else:
            sigma = self._windows(self.rms, rows, cols)
        # The RMS map is trusted within a range about the pixel-to-pixel
        # noise measured in each window: a background spline can fall to
        # zero, or below, in a corner, and the meshes of a frame filled
        # by a galaxy can overestimate the noise several times.
        local = _local_sigma(
            img, good, np.median(sigma.reshape(len(sigma), -1), axis=1)
        )
        valid = np.isfinite(local)
        low = np.where(valid, local * _LOCAL_FLOOR, 0)
        high = np.where(valid, local * _LOCAL_CEILING, np.inf)
        np.clip(
            sigma,
            low.astype(np.float32)[:, None, None],
            high.astype(np.float32)[:, None, None],
            out=sigma,
        )
        var = sigma
        var *= sigma
        gain = _DEFAULT_GAIN if self.gain is None else self.gain
        var += np.maximum(level, 0) / np.float32(gain)
        if self.gain is not None and self.read_noise is not None:
            read = np.float32((self.read_noise / self.gain) ** 2)
            np.maximum(var, read, out=var)
        np.sqrt(var, out=var)
        np.maximum(var, self.noise_floor, out=var)
        return var

    def _saturated_stars(
        self, img: FloatArray, level: FloatArray, saturation: float
    ) -> BoolArray:
        """Saturated star cores and their surroundings, astroscrappy's way."""
        sat = img >= np.float32(_SATURATED_FRACTION * saturation)
        out = np.zeros(img.shape, dtype=bool)
        which = np.flatnonzero(sat.any(axis=(1, 2)))
        if which.size == 0:
            return out
        star = sat[which] & (
            level[which] > np.float32(_SATURATED_STAR_LEVEL * saturation)
        )
        out[which] = ndimage.binary_dilation(
            star, structure=_STACK_EIGHT, iterations=_SATURATED_GROW
        )
        return out


class _LACosmic:
    """L.A.Cosmic and the growth on a stack of windows."""

    def __init__(
        self,
        img: FloatArray,
        noise: FloatArray,
        good: BoolArray,
        crmask: BoolArray,
        stack: _Stack,
        *,
        sigclip: float,
        objlim: float,
    ) -> None:
        self.img = img
        self.noise = noise
        self.good = good
        self.crmask = crmask
        self.size = stack.shape[1]
        self.sigclip = sigclip
        self.objlim = objlim
        self.work = img.copy()
        # The highest S' each pixel reached where it was detected.
        self.peak = np.zeros(img.shape, dtype=np.float32)
        # Pixels already found (by a neighbouring tile) are cleaned
        # first, as after an iteration.
        started = np.flatnonzero(crmask.any(axis=(1, 2)))
        if started.size:
            self._clean(started)

    def run(self) -> None:
        """Detect (`NITER` iterations), then grow."""
        active = np.arange(self.img.shape[0])
        for _ in range(NITER):
            active = active[self._detect(active)]
            if active.size == 0:
                break
            self._clean(active)
        touched = np.flatnonzero(self.crmask.any(axis=(1, 2)))
        if touched.size:
            self._grow(touched)

    def _detect(self, active: IndexArray) -> BoolArray:
        """Run one L.A.Cosmic pass on the windows ``active``.

        Returns, for each, whether new pixels were found.
        """
        work = self.work[active]
        noise = self.noise[active]
        good = self.good[active]
        stack = _Stack(active.size, self.size)
        padded = np.pad(work, ((0, 0), (1, 1), (1, 1)), mode="edge")
        lap = _laplace_plus(
            work,
            padded[:, :-2, 1:-1],
            padded[:, 2:, 1:-1],
            padded[:, 1:-1, :-2],
            padded[:, 1:-1, 2:],
        )
        del padded
        s = lap / (2 * noise)
        sp = s - stack.sepmed(s, 7)
        med = stack.sepmed(work, 5)
        fine = med - stack.sepmed(med, 9)
        fine /= noise
        np.maximum(fine, np.float32(0.01), out=fine)
        cosmic = (sp > self.sigclip) & (sp > self.objlim * fine) & good
        cosmic = stack.dilate(cosmic) & good & (sp > self.sigclip)
        cosmic = stack.dilate(cosmic) & good & (sp > SIGFRAC * self.sigclip)
        old = self.crmask[active]
        found = np.any(cosmic & ~old, axis=(1, 2))
        self.crmask[active] = old | cosmic
        self.peak[active] = np.maximum(
            self.peak[active], np.where(cosmic, sp, 0)
        )
        return found

    def _clean(self, active: IndexArray) -> None:
        """Replace the mask's pixels by the mean of their 5 x 5 others."""
        img = self.img[active]
        cr = self.crmask[active]
        ok = (self.good[active] & ~cr).astype(np.float32)
        num = ndimage.uniform_filter(img * ok, size=(1, 5, 5), mode="nearest")
        den = ndimage.uniform_filter(ok, size=(1, 5, 5), mode="nearest")
        mean = num / np.maximum(den, np.float32(1e-3))
        mean[den < np.float32(1e-3)] = 0.0
        img[cr] = mean[cr]
        self.work[active] = img

    def _grow(self, active: IndexArray) -> None:
        """Grow by hysteresis, then by one ring, away from star cores."""
        work = self.work[active]
        noise = self.noise[active]
        crmask = self.crmask[active]
        stack = _Stack(active.size, self.size)
        # The smooth level and the fine structure, each the lower of the
        # row-first and the column-first separable medians: a faint track
        # along a row or a column survives one of them, and would
        # otherwise look like the compact structure of a star.
        smooth = stack.sepmed(work, 5)
        fine = smooth - stack.sepmed(smooth, 9)
        flip = np.ascontiguousarray(work.transpose(0, 2, 1))
        smooth_t = stack.sepmed(flip, 5)
        fine_t = smooth_t - stack.sepmed(smooth_t, 9)
        np.minimum(smooth, smooth_t.transpose(0, 2, 1), out=smooth)
        np.minimum(fine, fine_t.transpose(0, 2, 1), out=fine)
        fine /= noise
        excess = self.img[active] - smooth
        excess /= noise
        free = self.good[active] & (
            (fine < _FINE_FLOOR) | (excess > self.objlim * fine)
        )
        grow = free & (excess > GROW_NSIGMA)
        labels, _ = ndimage.label(grow | crmask, structure=_STACK_EIGHT)
        seeds = np.unique(labels[crmask])
        crmask |= np.isin(labels, seeds[seeds > 0])
        ring = ndimage.binary_dilation(crmask, structure=_STACK_FOUR)
        crmask |= ring & free & (excess > EDGE_NSIGMA)
        self.crmask[active] = crmask


def _keep_significant(
    mask: BoolArray,
    peaks: list[tuple[IndexArray, FloatArray]],
    limit: float,
) -> CosmicRays:
    """Drop the groups of ``mask`` whose highest ``S'`` is below ``limit``."""
    idx, labels, best = _group_peaks(mask, peaks)
    if idx.size == 0:
        return CosmicRays(mask=mask, n_events=0)
    keep = best >= limit
    mask.ravel()[idx[~keep[labels]]] = False
    n = int(np.count_nonzero(keep))
    return CosmicRays(mask=mask, n_events=n, n_significant=int(
        np.count_nonzero(best >= max(limit, EVENT_SIGCLIP))))


def _group_peaks(
    mask: BoolArray, peaks: list[tuple[IndexArray, FloatArray]]
) -> tuple[IndexArray, IndexArray, FloatArray]:
    """Pixels of ``mask``, their group labels, each group's highest S'."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx, idx, np.zeros(0, dtype=np.float32)
    n, labels = _groups(mask, idx)
    best = np.zeros(n, dtype=np.float32)
    for where, value in peaks:
        np.maximum.at(best, labels[np.searchsorted(idx, where)], value)
    return idx, labels, best


def _groups(mask: BoolArray, idx: IndexArray) -> tuple[int, IndexArray]:
    """Label the 8-connected groups of ``mask``, whose pixels are ``idx``."""
    ny, nx = mask.shape
    j, i = np.divmod(idx, nx)
    src = []
    dst = []
    for dj, di in ((0, 1), (1, -1), (1, 0), (1, 1)):
        jj, ii = j + dj, i + di
        ok = (jj < ny) & (ii >= 0) & (ii < nx)
        k = jj * nx + ii
        hit = np.zeros(idx.size, dtype=bool)
        hit[ok] = mask.ravel()[k[ok]]
        src.append(np.flatnonzero(hit))
        # idx is sorted, so a neighbour is found in it by bisection.
        dst.append(np.searchsorted(idx, k[hit]))
    a = np.concatenate(src)
    b = np.concatenate(dst)
    graph = coo_array(
        (np.ones(a.size, dtype=np.int8), (a, b)),
        shape=(idx.size, idx.size),
    )
    n, labels = connected_components(graph, directed=False)
    return int(n), labels
