"""`assess`: the whole assessment of an image, one extension at a time.

Each image extension (CCD) is read, measured and released in turn, in a
pool of worker processes (``jobs``, see `qualityfits.parallel`), so
that a 36-CCD, 700 MB mosaic is never held in memory at once, let alone
as float64.  A failing extension does not stop the others: the report
says which failed and why.  Only when no extension at all could be
assessed does `assess` raise.

One CCD is measured by `assess_extension`, one function per step of
`STEPS` over a small per-CCD state (`_Ccd`); each step sets the metrics
it measures:

========================  ==============================================
step (function)           metrics
========================  ==============================================
``background``            ZEROPOINT, PIXSCALE, GAIN, EXPTIME, SATLEV
(`_prepare`,              (header and pixels); the sky itself is
`_background`)            summarised after detection (`_sky_metrics`:
                          SKY_*)
``cosmic_rays``           NCR, CR_FRAC, STAR_CR_FRAC
``detection``             SKY_* (with the sources masked), NOBJ
``psf``                   NSTAR_PSF, NSTAR_FIT, FWHM_*,
                          ELLIPTICITY, ELONGATION, THETA, E1, E2,
                          ELLIP_PSFEX, ELONG, PSF_*; SATLEV when inferred
``classification``        NSTAR, NGAL, NARTEFACT, MAG_TURNOVER,
                          MAGLIM_5SIG
``weights``               FRAC_W0, W_MEAN, NFLAG_*
``metrics``               the QA flags
========================  ==============================================
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import scipy
import sep
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from numpy.typing import NDArray
from scipy import ndimage

from qualityfits import errors, verdicts
from qualityfits._version import __version__
from qualityfits.background import (
    Background,
    masked_sky,
    sep_background,
    summarise_background,
)
from qualityfits.classify import (
    CLASS_NAMES,
    Classification,
    SourceClass,
    classify,
    counts,
    flux_limit,
    turnover,
)
from qualityfits.config import QualityConfig
from qualityfits.cosmics import estimate_fwhm, find_cosmic_rays
from qualityfits.detection import (
    DetectionOverflowError,
    SourceFlag,
    Sources,
    configure_sep,
    extract,
    infer_saturation,
    measure,
    measure_saturation,
    object_mask,
)
from qualityfits.io import (
    HduRole,
    ImageExtension,
    ImageInput,
    ImageSource,
    MaskConvention,
    check_pixels,
    header_number,
    mask_to_bad,
    match_extensions,
    resolve_mask_convention,
)
from qualityfits.metrics import METRICS, qa_flags, withhold
from qualityfits.mosaic import aggregate, celestial_wcs, sip_note
from qualityfits.observation import observation
from qualityfits.parallel import (
    Poster,
    ProgressCallback,
    ProgressEvent,
    default_jobs,
    open_input,
    run_tasks,
)
from qualityfits.parameters import QualityParameters
from qualityfits.psf import (
    FAR_FROM_MOFFAT,
    FWHM_NOISE,
    PROFILE_MIN_FWHM,
    PROFILE_MODEL_ERROR,
    PsfResult,
    elongation_note,
    fwhm_error,
    galaxy_contamination,
    measure_psf,
    no_candidate_reason,
    shared_elongation,
    undersampled_size,
)
from qualityfits.report import (
    ErrorInfo,
    ExtensionReport,
    Preview,
    QualityReport,
)
from qualityfits.weights import (
    PixelMaps,
    WeightType,
    bin_mean,
    flag_counts,
    flag_map,
    inverse_variance,
    normalise_flat,
    weight_map,
    write_map_pieces,
)

__all__ = ["STEPS", "ProgressCallback", "ProgressEvent", "assess",
           "assess_extension"]

#: Processing steps of one extension, in order (progress reports these).
STEPS: tuple[str, ...] = (
    "read", "background", "cosmic_rays", "detection", "psf",
    "classification", "weights", "metrics",
)

#: The least side of an image that is assessed [px]: a strip of a few
#: rows holds no star's core and wings, and no background to measure.
MIN_SIDE = 16

#: Pixels per side of the blocks of the binned previews.
PREVIEW_BINNING = 8

ZEROPOINT_KEYS = ("PHOTZP", "MAGZERO", "MAGZPT", "MAGZP", "ZEROPT", "ZP")
PIXSCALE_KEYS = ("PIXSCAL1", "PIXSCALE", "SECPIX", "SECPIX1")
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
#: The two amplifiers' gains of a CCD read through both (DECam): their
#: mean is the CCD's when no GAIN keyword gives one.
AMP_GAIN_KEYS = ("GAINA", "GAINB")
RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")

#: Sky noise per pixel [pixel unit] between which the same frame in any
#: unit was measured to give the same results (1e-12 to 1e12 times
#: frames of 16 and 61 ADU RMS, `tests/qualityfits/test_units.py`).
_UNIT_SAFE = (1e-10, 1e13)

#: Without a gain, the cosmic-ray finder takes the sources' photon
#: noise at the gain the sky implies (`_sky_gain`), the sky taken at
#: least this many RMS (625 photo-electrons, the sky of a broadband
#: exposure of a few minutes).
_SKY_GAIN_MIN_SNR = 25.0


@dataclass(frozen=True)
class _Context:
    """What an extension's measurement needs besides its pixels."""

    zeropoint: float | None
    pixscale: float | None
    config: QualityConfig
    maps_dir: Path | None = None


def _versions() -> dict[str, str]:
    return {
        "qualityfits": __version__, "numpy": np.__version__,
        "astropy": astropy.__version__, "sep": sep.__version__,
        "scipy": scipy.__version__,
    }


# -- helpers of the steps ----------------------------------------------------
def _pixscale(header: fits.Header, wcs: WCS | None, given: float | None,
              notes: list[str]) -> float | None:
    if wcs is not None:
        try:
            scales = wcs.proj_plane_pixel_scales()
            scale = float(np.sqrt(scales[0].to_value("deg")
                                  * scales[1].to_value("deg")) * 3600.0)
        except (ValueError, AttributeError):
            scale = math.nan
        if math.isfinite(scale) and scale > 0:
            if given and abs(given / scale - 1.0) > 0.05:
                notes.append(
                    f"pixel scale {scale:.4f} arcsec from the WCS used; "
                    f"the {given:g} given differs"
                )
            return scale
    if given:
        return given
    keyword = header_number(header, *PIXSCALE_KEYS)
    if keyword is not None:
        notes.append(f"pixel scale {keyword:g} arcsec from the header "
                     "(no celestial WCS)")
        return keyword
    notes.append("no pixel scale (no WCS, none given): sizes in pixels "
                 "only, no FWHM_ARCSEC, SKY_MAG or counts per deg2")
    return None


#: BUNIT values (lower case, no spaces, a rate's "/s" taken off) of
#: pixels in detector counts and in electrons.
_COUNT_UNITS = frozenset({"adu", "adus", "count", "counts", "cts", "dn"})
_ELECTRON_UNITS = frozenset({"electron", "electrons", "e-", "e"})
#: Words of physical units, in which the GAIN keyword is not the gain.
_PHYSICAL_UNITS = ("jy", "maggy", "maggies", "mag", "erg", "w/", "w.",
                   "/sr", "photon", "flam", "fnu")


def _pixel_gain(header: fits.Header, exptime: float | None,
                notes: list[str]) -> float | None:
    """Return the gain of the pixels as they are: e- per pixel unit.

    The GAIN keyword is the detector's, electrons per ADU; BUNIT says
    whether the pixels are still ADU.  Without BUNIT, or in ADU, counts
    or DN, the keyword is the gain.  In electrons (HST's ACS and
    WFC3/UVIS ``_flt``, whose primary header's CCDGAIN is the ADC's)
    it is 1; in electrons per second (WFC3/IR, drizzled products)
    EXPTIME; in ADU per second GAIN x EXPTIME; in Spitzer's MJy/sr,
    GAIN x EXPTIME / FLUXCONV.  In another physical unit (Jy,
    nanomaggies, erg...) it is unknown (None).  A BUNIT not understood
    leaves the keyword, with a note.
    """
    gain = header_number(header, *GAIN_KEYS)
    amps = {key: amp for key in AMP_GAIN_KEYS
            if (amp := header_number(header, key)) is not None}
    if gain is None and len(amps) == len(AMP_GAIN_KEYS):
        # Both amplifiers' gains (DECam): their mean.
        gain = sum(amps.values()) / len(amps)
        notes.append(f"gain {gain:.4g} e-/ADU, the mean of "
                     + " and ".join(f"{k} {v:.4g}" for k, v in amps.items()))
    raw = header.get("BUNIT")
    unit = str(raw or "").strip().lower().replace(" ", "")
    for tail in ("/sec", "/second", "s**-1", "s^-1", "s-1"):
        if unit.endswith(tail):
            unit = unit.removesuffix(tail).removesuffix(".") + "/s"
    rate = unit.endswith("/s")
    base = unit.removesuffix("/s")
    if not unit or (base in _COUNT_UNITS and not rate):
        return gain
    said = f"pixels in {str(raw).strip()} (BUNIT)"
    value: float | None = None
    if base in _ELECTRON_UNITS:
        value, how = (exptime, "EXPTIME") if rate else (1.0, "1")
    elif base in _COUNT_UNITS:  # a rate: counts are handled above
        how = "GAIN x EXPTIME"
        if gain is not None and exptime is not None:
            value = gain * exptime
    elif unit == "mjy/sr":
        how = "GAIN x EXPTIME / FLUXCONV"
        fluxconv = header_number(header, "FLUXCONV")
        if gain is not None and exptime is not None and fluxconv:
            value = gain * exptime / fluxconv
    elif not any(word in unit for word in _PHYSICAL_UNITS):
        if gain is not None:
            notes.append(f"{said}, a unit not understood: the GAIN "
                         "keyword is taken as e- per pixel unit")
        return gain
    if value is None:
        notes.append(f"{said}: the gain of these pixels is unknown (a "
                     "GAIN keyword is the detector's, per ADU)")
    else:
        notes.append(f"{said}: gain {how} = {value:g} e- per pixel unit")
    return value


def _zeropoint(header: fits.Header, given: float | None,
               notes: list[str]) -> float | None:
    if given is not None:
        return given
    for key in ZEROPOINT_KEYS:
        value = header_number(header, key)
        if value is not None:
            notes.append(f"zero point {value:g} from header {key}")
            return value
    notes.append("no zero point (none given, none in the header): "
                 "instrumental magnitudes (zero point 0), no SKY_MAG")
    return None


def _sources_table(src: Sources, klass: Classification,
                   psf_index: NDArray[np.intp], zp: float,
                   wcs: WCS | None, origin: tuple[int, int]) -> Table:
    """All sources, SExtractor column names, positions 1-based."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(src.flux > 0, zp - 2.5 * np.log10(src.flux), np.nan)
        magerr = np.where(src.flux > 0,
                          1.0857 * src.flux_err / src.flux, np.nan)
    is_psf = np.zeros(len(src), dtype=bool)
    is_psf[psf_index] = True
    table = Table({
        "NUMBER": np.arange(1, len(src) + 1, dtype=np.int32),
        "X_IMAGE": src.x + 1.0,
        "Y_IMAGE": src.y + 1.0,
        "FLUX_AUTO": src.flux,
        "FLUXERR_AUTO": src.flux_err,
        "MAG_AUTO": mag,
        "MAGERR_AUTO": magerr,
        "SNR": src.snr,
        "FLUX_RADIUS": src.r_half,
        "A_IMAGE": src.a,
        "B_IMAGE": src.b,
        "THETA_IMAGE": np.degrees(src.theta),
        "KRON_RADIUS": src.kron_radius,
        "BACKGROUND": src.background,
        "FLUX_MAX": src.peak,
        "FLAGS": src.flags.astype(np.int16),
        "CLASS": np.array([CLASS_NAMES[SourceClass(c)] for c in klass.cls],
                          dtype="U8"),
        "SPREAD_MODEL": klass.spread,
        "SPREADERR_MODEL": klass.spread_err,
        "PSF_STAR": is_psf,
    })
    for name, unit in (("X_IMAGE", "pix"), ("Y_IMAGE", "pix"),
                       ("FLUX_AUTO", "adu"), ("FLUXERR_AUTO", "adu"),
                       ("MAG_AUTO", "mag"), ("MAGERR_AUTO", "mag"),
                       ("FLUX_RADIUS", "pix"), ("A_IMAGE", "pix"),
                       ("B_IMAGE", "pix"), ("THETA_IMAGE", "deg"),
                       ("BACKGROUND", "adu"), ("FLUX_MAX", "adu")):
        table[name].unit = unit
    if wcs is not None and len(src):
        ra, dec = wcs.all_pix2world(src.x + origin[0], src.y + origin[1],
                                    0)
        table["ALPHA_J2000"] = ra
        table["DELTA_J2000"] = dec
        table["ALPHA_J2000"].unit = table["DELTA_J2000"].unit = "deg"
    return table


def _stars_table(psf: PsfResult) -> Table:
    s = psf.stars
    table = Table({
        "NUMBER": (s.index + 1).astype(np.int32),
        "X_IMAGE": s.x + 1.0,
        "Y_IMAGE": s.y + 1.0,
        "FLUX": s.flux,
        "SNR": s.snr,
        "FLUX_RADIUS": s.r_half,
        "FWHM": s.fwhm,
        "FWHM_MAJOR": s.fwhm_major,
        "FWHM_MINOR": s.fwhm_minor,
        "ELLIPTICITY": s.ellipticity,
        "THETA": s.theta,
        "E1": s.e1,
        "E2": s.e2,
        "BETA": s.beta,
        "CHI2": s.chi2,
        "ELONGATION_ISO": s.elongation_iso,
    })
    for name in ("X_IMAGE", "Y_IMAGE", "FLUX_RADIUS", "FWHM",
                 "FWHM_MAJOR", "FWHM_MINOR"):
        table[name].unit = "pix"
    table["THETA"].unit = "deg"
    table["FLUX"].unit = "adu"
    return table


def _require_noise(name: str, rms: float) -> None:
    """Raise `EmptyImageError` unless the sky has some noise."""
    if not rms > 0:
        raise errors.EmptyImageError(
            f"{name}: no noise in the sky (background RMS is {rms:g}): a "
            "synthetic or constant image?")


def _core_hit(cosmic: NDArray[np.bool_], x: NDArray[np.float64],
              y: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Whether a cosmic-ray pixel lies in the 3x3 core about each (x, y)."""
    ny, nx = cosmic.shape
    ix = np.rint(x).astype(np.intp)
    iy = np.rint(y).astype(np.intp)
    hit = np.zeros(ix.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            jx = np.clip(ix + dx, 0, nx - 1)
            jy = np.clip(iy + dy, 0, ny - 1)
            hit |= cosmic[jy, jx]
    return hit


def _flat_notes(flat_bad: NDArray[np.bool_], median: float) -> list[str]:
    """Say what the report should note about a flat's bad pixels."""
    frac = float(np.count_nonzero(flat_bad) / flat_bad.size)
    notes = []
    if frac > 0.5:
        notes.append(f"{100 * frac:.0f} % of the flat's pixels are bad "
                     "(outside flat_min/flat_max times its median "
                     f"{median:g}, or not positive): is it a flat?")
    return notes


def _clipped_mean(values: NDArray[np.float64], kappa: float = 3.0,
                  weights: NDArray[np.float64] | None = None,
                  ) -> tuple[float, float]:
    """Return the clipped mean and its standard error.

    Values more than ``kappa`` robust sigmas from the median are
    clipped.  Without ``weights`` the error is std / sqrt(n); with them
    the mean is weighted and its error is the sandwich estimate
    sqrt(sum w^2 (x - mean)^2) / sum w, honest whatever the weights.
    """
    keep = np.isfinite(values)
    for _ in range(5):
        if keep.sum() < 3:
            break
        med = np.median(values[keep])
        sig = 1.4826 * np.median(np.abs(values[keep] - med))
        if not sig > 0:
            break
        new = np.isfinite(values) & (np.abs(values - med) <= kappa * sig)
        if np.array_equal(new, keep):
            break
        keep = new
    kept = values[keep]
    if kept.size == 0:
        return math.nan, math.nan
    if weights is None:
        err = (float(np.std(kept, ddof=1) / math.sqrt(kept.size))
               if kept.size > 1 else math.nan)
        return float(np.mean(kept)), err
    w = weights[keep]
    mean = float(np.sum(w * kept) / np.sum(w))
    if kept.size < 2:
        return mean, math.nan
    # n/(n-1): the sandwich's small-sample correction (ddof=1 above).
    err = math.sqrt(float(np.sum((w * (kept - mean)) ** 2))
                    * kept.size / (kept.size - 1)) / float(np.sum(w))
    return mean, err


#: Floor of a PSF star's ellipticity-component error in the weights of
#: the CCD's mean: the PSF's own variation over the CCD (1 %, as the
#: FWHM trend's weights).
ELLIP_WEIGHT_FLOOR = 0.01


def _median_error(values: NDArray[np.float64]) -> float:
    """Return the standard error of a median, 1.2533 x 1.4826 MAD / √n."""
    v = values[np.isfinite(values)]
    if v.size < 2:
        return math.nan
    mad = float(np.median(np.abs(v - np.median(v))))
    return 1.2533 * 1.4826 * mad / math.sqrt(v.size)


# -- the steps of one CCD -----------------------------------------------------
@dataclass
class _Ccd:
    """What the steps of one CCD share.

    The record (``metrics``, ``notes``, ``parts``: the report's tables
    and pictures) grows step by step; the pixels are dropped as soon as
    the last step that needs them is done.
    """

    name: str
    config: QualityConfig
    origin: tuple[int, int]
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict)
    #: The image, sky included (cosmic-ray pixels get the sky's value).
    image: NDArray[np.float32] | None = None
    #: The image minus SExtractor's background (cosmic rays zeroed).
    sky_sub: NDArray[np.float32] | None = None
    #: The background RMS map.
    sky_rms: NDArray[np.float32] | None = None
    #: Pixels every measurement ignores.
    bad: NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros((0, 0), bool))
    #: Not finite, or blank (0 where the sky is far above 0).
    nodata: NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros((0, 0), bool))
    user_bad: NDArray[np.bool_] | None = None
    #: Why the PSF stars are not stars (`galaxy_contamination`), or "".
    psf_contaminated: str = ""
    #: The relative inverse variance of the weight map given (0: bad).
    ivar: NDArray[np.float32] | None = None
    #: Where the weight map given is 0.
    zero_weight: NDArray[np.bool_] | None = None
    #: Per-pixel noise from the weight map, scaled to the sky noise
    #: (detection thresholds and flux errors); None: the RMS map.
    noise: NDArray[np.float32] | None = None
    flat_norm: NDArray[np.float32] | None = None
    flat_bad: NDArray[np.bool_] | None = None
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    zeropoint: float | None = None
    scale: float | None = None
    wcs: WCS | None = None
    preview: NDArray[np.float32] | None = None
    #: The header (what kind of frame it says this is).
    header: fits.Header | None = None
    saturation_source: str = ""

    @property
    def pix(self) -> NDArray[np.float32]:
        """The image (an error once it was dropped)."""
        assert self.image is not None, "pixels already dropped"
        return self.image

    @property
    def sub(self) -> NDArray[np.float32]:
        """The background-subtracted image."""
        assert self.sky_sub is not None, "pixels already dropped"
        return self.sky_sub

    @property
    def rms(self) -> NDArray[np.float32]:
        """The background RMS map."""
        assert self.sky_rms is not None, "pixels already dropped"
        return self.sky_rms


class _Clock:
    """Time each step and tell the caller which one starts."""

    def __init__(self, post: Callable[[str], None] | None) -> None:
        self.timings: dict[str, float] = {}
        self._post = post
        self._step: str | None = None
        self._start = time.perf_counter()

    def begin(self, step: str | None) -> None:
        """End the current step (if any) and start ``step`` (if any)."""
        now = time.perf_counter()
        if self._step is not None:
            self.timings[self._step] = now - self._start
        self._step, self._start = step, now
        if step is not None and self._post is not None:
            self._post(step)


def _prepare(data: NDArray[Any], header: fits.Header, *, ccd: _Ccd,
             bad: NDArray[np.bool_] | None,
             flat: NDArray[np.floating] | None,
             zeropoint: float | None, pixscale: float | None,
             overwrite_input: bool) -> None:
    """Pixels to float32, the bad-pixel mask, and the header's facts.

    Sets ZEROPOINT, PIXSCALE, GAIN, EXPTIME and SATLEV.
    """
    name, config, notes = ccd.name, ccd.config, ccd.notes
    verdicts.header_verdict(header, name)
    ccd.header = header
    pix = np.array(data, dtype=np.float32, order="C",
                   copy=not overwrite_input)
    nonfinite = np.isfinite(pix)
    np.logical_not(nonfinite, out=nonfinite)
    n_nonfinite = int(np.count_nonzero(nonfinite))
    if n_nonfinite == pix.size:
        raise errors.EmptyImageError(
            f"{name}: every pixel is NaN or infinite")
    verdicts.colour_verdict(header, pix, name)
    if n_nonfinite:
        pix[nonfinite] = 0.0
    if flat is not None:
        ccd.flat_norm, ccd.flat_bad, flat_median = normalise_flat(
            flat, config.flat_min, config.flat_max)
        if not math.isfinite(flat_median):
            raise errors.EmptyImageError(
                f"{name}: the flat has no positive pixel (all zero, "
                "negative or NaN)")
        notes.extend(_flat_notes(ccd.flat_bad, flat_median))
    badmask = nonfinite.copy()
    for other in (bad, ccd.flat_bad):
        if other is not None:
            badmask |= other
    check_pixels(pix, badmask, name=name)
    if min(pix.shape) < MIN_SIDE:
        raise errors.EmptyImageError(
            f"{name}: {pix.shape[0]} x {pix.shape[1]} pixels, too small to "
            f"assess (at least {MIN_SIDE} on each side)")
    ccd.image, ccd.bad, ccd.nodata, ccd.user_bad = pix, badmask, nonfinite, bad
    exptime = header_number(header, "EXPTIME", "EXPOSURE", "ITIME")
    ccd.gain = gain = _pixel_gain(header, exptime, notes)
    ccd.read_noise = header_number(header, *RDNOISE_KEYS)
    ccd.wcs = celestial_wcs(header)
    if ccd.wcs is not None and (sip := sip_note(header)):
        notes.append(sip)
    ccd.scale = scale = _pixscale(header, ccd.wcs, pixscale, notes)
    ccd.zeropoint = zp = _zeropoint(header, zeropoint, notes)
    saturation = header_number(header, "SATURATE", "SATLEVEL",
                               "SATURATION")
    ccd.saturation_source = "header SATURATE"
    if saturation is None:
        saturation = measure_saturation(pix, badmask)
        ccd.saturation_source = "read off the pixels"
        if saturation is not None:
            notes.append(f"saturation level {saturation:g} ADU read "
                         "off the pixels (no SATURATE keyword)")
    if saturation is not None:
        verdicts.saturation_verdict(
            pix, badmask, saturation, margin=config.saturation_margin,
            source=ccd.saturation_source, name=name)
    ccd.saturation = saturation
    if gain is None:
        notes.append("no gain (no GAIN keyword, or pixels not in ADU): "
                     "flux errors and S/N from the background noise only")
    ccd.metrics.update(
        ZEROPOINT=zp if zp is not None else math.nan,
        PIXSCALE=scale or math.nan,
        GAIN=gain or math.nan,
        EXPTIME=exptime or math.nan,
        SATLEV=saturation or math.nan,
    )


def _use_weight(ccd: _Ccd, ivar: NDArray[np.float32]) -> None:
    """Take a weight map's inverse variance: its zeros are bad pixels."""
    if ivar.shape != ccd.pix.shape:
        raise errors.ShapeMismatchError(
            f"{ccd.name}: the weight map has shape {ivar.shape[0]}x"
            f"{ivar.shape[1]}, the image {ccd.pix.shape[0]}x"
            f"{ccd.pix.shape[1]}")
    ccd.ivar = ivar
    ccd.zero_weight = ivar == 0
    ccd.bad |= ccd.zero_weight
    check_pixels(ccd.pix, ccd.bad, name=ccd.name)


def _noise_from_weight(ccd: _Ccd, bkg: sep.Background,
                       weight_type: WeightType) -> None:
    """Per-pixel noise from the weight map, as SExtractor makes it.

    MAP_WEIGHT and MAP_VAR maps are relative: scaled so that their
    mean variance over the good pixels is the sky's, as sep measured it
    (SExtractor scales them on the background too); MAP_RMS is in ADU
    and used as it is.  Bad pixels get the global sky RMS (they are
    masked anyway).
    """
    assert ccd.ivar is not None
    good = ~ccd.bad
    with np.errstate(divide="ignore"):
        sigma = np.zeros(ccd.ivar.shape, np.float32)
        np.sqrt(ccd.ivar, out=sigma)
        np.divide(1.0, sigma, out=sigma, where=good)
    # The sky variance of a mesh is the mean of its pixels' variances:
    # the scale matches the means (pixels 100 times the median variance
    # left out, the wings of bright stars in an absolute weight map).
    step = 4 if good[::4, ::4].sum() >= 1000 else 1
    var = np.square(sigma[::step, ::step][good[::step, ::step]],
                    dtype=np.float64)
    sky = np.square(ccd.rms[::step, ::step][good[::step, ::step]],
                    dtype=np.float64)
    keep = var <= 100.0 * np.median(var)
    scale = math.sqrt(float(np.mean(sky[keep]) / np.mean(var[keep])))
    if weight_type == "MAP_RMS":
        if not 0.5 < scale < 2.0:
            ccd.notes.append(
                f"the MAP_RMS weight map's noise is {1 / scale:.3g} "
                "times the sky noise measured on the image: is it in "
                "the image's units?")
        scale = 1.0
    else:
        ccd.notes.append(
            f"detection thresholds from the {weight_type} weight map, "
            f"scaled to the sky noise (x {scale:.4g})")
    sigma *= np.float32(scale)
    sigma[~good] = np.float32(bkg.globalrms)
    ccd.noise = sigma


def _background(ccd: _Ccd) -> sep.Background:
    """SExtractor's background: its model, the image minus it, its RMS.

    Used for detection and photometry as SExtractor uses it (sep
    reproduces it exactly, and subtracts in place: no full-size
    background map is made).  The sky metrics wait for the detected
    sources (`_sky_metrics`).  Also bins the image for the preview and
    marks the blank pixels.
    """
    pix, badmask = ccd.pix, ccd.bad
    # Blocks of exact zeros are blanks whatever the sky (a dead
    # amplifier; SWarp's empty areas around a sky-subtracted coadd): a
    # noisy sky near zero has isolated zeros, not 3 x 3 blocks of them.
    blank = _zero_blocks(pix)
    if blank is not None:
        ccd.nodata |= blank
        badmask |= blank
        check_pixels(pix, badmask, name=ccd.name)
    ccd.preview = bin_mean(pix, PREVIEW_BINNING,
                           ~badmask if badmask.any() else None)
    bkg = sep_background(pix, badmask, ccd.config)
    sub = pix.copy()
    bkg.subfrom(sub)
    rms = bkg.rms()
    ccd.sky_sub, ccd.sky_rms = sub, rms
    verdicts.sky_verdict(bkg.globalback, ccd.saturation,
                         source=ccd.saturation_source, name=ccd.name)
    _require_noise(ccd.name, bkg.globalrms)
    if not _UNIT_SAFE[0] <= bkg.globalrms <= _UNIT_SAFE[1]:
        ccd.notes.append(
            f"a sky noise of {bkg.globalrms:.3g} per pixel: outside "
            f"{_UNIT_SAFE[0]:g} to {_UNIT_SAFE[1]:g}, where the results "
            "do not depend on the pixels' unit (float32 squares lose "
            "precision: beta moved by 0.6 % at 1e-15 times a frame in "
            "ADU); the image in ADU or e-/s is measured exactly")
    # Exactly 0 where the sky is far above 0: a blank pixel.
    if bkg.globalback > 5.0 * bkg.globalrms:
        ccd.nodata |= pix == 0
        badmask |= ccd.nodata
    return bkg


def _zero_blocks(pix: NDArray[np.float32]) -> NDArray[np.bool_] | None:
    """Pixels exactly 0 in a 3 x 3 block of zeros (None: there are none).

    The blocks and their edges: each zero that is part of a block.
    """
    zero = pix == 0
    if not zero.any():
        return None
    eight = np.ones((3, 3), dtype=bool)
    core = ndimage.binary_erosion(zero, structure=eight, border_value=1)
    if not core.any():
        return None
    return ndimage.binary_dilation(core, structure=eight) & zero


def _sky_gain(ccd: _Ccd, sky: float, rms: float) -> float | None:
    """Return the gain the sky's noise implies (no GAIN keyword gives one).

    sky / RMS² [e-/ADU] is the gain at which the sky's photons alone
    would make its noise: a lower bound on the true gain (read noise
    and dark current add variance), so the sources' photon noise it
    gives the cosmic-ray finder errs high, on the side that spares
    sources.  Unlike a fixed 1 e-/ADU (astroscrappy's default) it
    follows the image's units: the same frame in e-/s, in nanomaggies
    or times 1e-4 gets the same cosmic rays.  A sky below
    `_SKY_GAIN_MIN_SNR` RMS is taken at that many: subtracted, the sky
    says nothing of the gain, and a lower one is read-noise limited,
    where sky / RMS² is the loosest bound (at 5 RMS, the NTT frame
    with its sky 5 RMS below zero lost the cosmic rays of its PSF stars
    and its FWHM moved by +5.5 %; at 25 it keeps them, whatever sky
    is left).  None only without a usable RMS.
    """
    if not (math.isfinite(sky) and math.isfinite(rms) and rms > 0):
        return None
    level = max(sky, _SKY_GAIN_MIN_SNR * rms)
    gain = level / (rms * rms)
    how = ("the sky level over its variance" if level == sky else
           f"a sky of {_SKY_GAIN_MIN_SNR:g} RMS over its variance (the "
           f"sky is {sky / rms:.1f} RMS: sky-subtracted?)")
    ccd.notes.append(
        f"no gain: the cosmic-ray finder takes the sources' photon noise "
        f"at {gain:.3g} e-/ADU, {how}, a lower bound on the gain")
    return gain


def _cosmic_rays(ccd: _Ccd, sky: float,
                 sky_rms: float) -> NDArray[np.bool_] | None:
    """Find the cosmic rays of a CCD (None when off); NCR, CR_FRAC, ...

    ... and STAR_CR_FRAC: the fraction of the star cores (`PsfPeaks`,
    found before the cosmic rays are masked: a star whose core is
    masked is not detected afterwards) with a cosmic-ray pixel in their
    3 x 3 core (`_core_hit`).

    Their pixels are ignored from here on, as bad pixels; zero in the
    background-subtracted image, so that the light the detection filter
    spreads around them is not detected.  The image keeps its
    background there (the sky map is image minus subtracted image).
    The cores of sources shaped like the PSF, whose FWHM is estimated
    from the brightest round peaks, are never flagged (unless
    ``cr_protect_psf_cores`` is off).
    """
    if not ccd.config.cosmic_rays:
        return None
    sub = ccd.sub
    saturation = (None if ccd.saturation is None
                  else ccd.saturation - sky)
    gain = ccd.gain if ccd.gain is not None else _sky_gain(ccd, sky,
                                                           sky_rms)
    peaks = estimate_fwhm(sub, ccd.bad, saturation=saturation)
    found = find_cosmic_rays(
        sub, ccd.rms, ccd.bad, gain=gain, read_noise=ccd.read_noise,
        saturation=saturation,
        psf_fwhm=peaks.fwhm if ccd.config.cr_protect_psf_cores else None,
        pixel_noise=peaks.noise)
    if peaks.x.size:
        ccd.metrics["STAR_CR_FRAC"] = float(np.mean(_core_hit(
            found.mask, peaks.x.astype(np.float64),
            peaks.y.astype(np.float64))))
    # Cosmic rays, not the noise peaks that stay in the mask.
    ccd.metrics["NCR"] = found.n_significant
    ccd.metrics["CR_FRAC"] = float(np.count_nonzero(found.mask)
                                   / found.mask.size)
    cosmic = found.mask
    # By flat index: a few thousand pixels, not three passes of the mask.
    where = np.flatnonzero(cosmic)
    ccd.pix.flat[where] -= sub.flat[where]
    sub.flat[where] = 0.0
    ccd.bad |= cosmic
    return cosmic


def _detection(ccd: _Ccd,
               bkg: sep.Background) -> tuple[Sources, Background]:
    """Detect and measure the sources; the sky metrics, NOBJ."""
    sub = ccd.sub
    # With a weight map, SExtractor's thresholds: per pixel, from it.
    rms = ccd.noise if ccd.noise is not None else ccd.rms
    try:
        objects, segmap = extract(sub, rms, ccd.bad, ccd.config)
    except DetectionOverflowError as exc:
        raise errors.NotScienceError(f"{ccd.name}: {exc}") from None
    # A second estimate with the sources masked: closer to the true
    # sky in crowded fields; the difference measures the light of
    # faint sources and wings in the meshes.
    exclude = ccd.bad | object_mask(objects, segmap)
    background = _sky_metrics(ccd, bkg, exclude)
    del exclude
    _require_noise(ccd.name, background.rms)
    src = measure(sub, ccd.pix, rms, ccd.bad, objects, segmap,
                  gain=ccd.gain, saturation=ccd.saturation,
                  config=ccd.config)
    ccd.noise = None
    ccd.metrics["NOBJ"] = len(src)
    return src, background


def _sky_metrics(ccd: _Ccd, bkg: sep.Background,
                 exclude: NDArray[np.bool_]) -> Background:
    """Summarise the sky (SKY_*), the sources masked.

    SKY_MEAN and SKY_RMS are SExtractor's estimator on the pixels
    outside the sources (`masked_sky`: the offset of the background
    map from the sky there, added to the median of the mesh values;
    the mesh figures when too few pixels are free): never further from
    the truth than
    with the sources in the meshes (SKY_MEAN_MESH, SKY_RMS_MESH,
    SExtractor's figures), much nearer in crowded fields and with large
    PSFs (`docs/metrics.md`).  The record's mean and RMS are those.
    """
    pix, config = ccd.pix, ccd.config
    mesh = summarise_background(pix, ccd.sub, bkg, ccd.rms, exclude,
                                config)
    found = masked_sky(ccd.sub, exclude, config)
    masked, masked_rms = mesh.mean, mesh.rms
    if found is not None:
        masked, masked_rms = mesh.mean + found[0], found[1]
    background = replace(mesh, mean=masked, rms=masked_rms)
    ccd.parts["background"] = background
    ccd.metrics.update(
        SKY_MEAN=masked, SKY_RMS=masked_rms,
        SKY_MEAN_MASKED=masked,
        SKY_MEAN_MESH=mesh.mean, SKY_RMS_MESH=mesh.rms,
        SKY_GRAD=background.gradient,
        SKY_LUMPINESS=background.lumpiness,
    )
    zp, scale = ccd.zeropoint, ccd.scale
    if zp is not None and scale and background.mean > 0:
        ccd.metrics["SKY_MAG"] = zp - 2.5 * math.log10(
            background.mean / scale**2)
    return background


def _psf(ccd: _Ccd, src: Sources) -> tuple[PsfResult, Sources]:
    """Measure the PSF: stars, map, model; FWHM_*, ELL*, PSF_*, ...

    Returns the PSF and the sources, flagged SATURATED when the
    saturation level had to be inferred from the stars.
    """
    metrics, config = ccd.metrics, ccd.config
    psf = measure_psf(ccd.sub, ccd.bad, src, gain=ccd.gain, config=config)
    stars = psf.stars
    metrics["NSTAR_PSF"] = psf.n_candidates
    metrics["NSTAR_FIT"] = len(stars)
    why = ""
    if len(stars) < config.psf_min_stars:
        small = undersampled_size(src, config)
        if small is not None:
            why = (f"the bright point sources have 2 r_h {small:.2f} px, "
                   f"below psf_fwhm_range's {config.psf_fwhm_range[0]:g}"
                   " px: an undersampled PSF, whose FWHM a Moffat fit "
                   "cannot measure honestly (a 1.2 px Gaussian reads 10 %"
                   " low, 1.4-1.6 px Airy discs 26-29 %)")
    common = shared_elongation(src, config)
    metrics["ELLIP_SOURCES"] = abs(common)
    elongated = elongation_note(common, config)
    if len(stars) == 0:
        assert ccd.header is not None
        background: Background = ccd.parts["background"]
        verdicts.no_star_verdict(
            ccd.header, name=ccd.name, n_sources=len(src),
            sky_rms=background.rms, mesh_back=background.mesh_back,
            gain=ccd.gain, read_noise=ccd.read_noise)
        if not why and psf.n_candidates == 0:
            why = no_candidate_reason(src, config)
        elif not why and psf.rejected:
            why = "the candidates dropped: " + ", ".join(psf.rejected)
        why = "; ".join(part for part in (why, elongated) if part)
        raise errors.NoStarsError(
            f"{ccd.name}: no star usable for the PSF among {len(src)} "
            f"source{'' if len(src) == 1 else 's'} ({psf.n_candidates} "
            "bright, unflagged and "
            "compact enough to be candidates)" + (f"; {why}" if why
                                                   else "")
        )
    if why:
        ccd.notes.append(f"PSF withheld: {why}")
    if elongated:
        ccd.notes.append(elongated)
    if ccd.saturation is None:
        src = _infer_saturation(ccd, src, psf)
    ccd.parts["psf_grid"] = psf.grid
    ccd.parts["psf_model"] = psf.model
    ccd.parts["psf_stars"] = _stars_table(psf)
    # The PSF field at the stars, not their median: compact galaxies
    # left among them (one-sided) cannot pull it up.
    assert psf.field is not None
    field = psf.field.psf_fwhm_at(stars.x, stars.y)
    fwhm = float(np.median(field))
    fwhm_rel_err = fwhm_error(stars.x, stars.y, stars.fwhm, stars.snr,
                              psf.shape)
    corr = corr_err = math.nan
    if psf.model is not None and math.isfinite(psf.model.profile_scale):
        corr, corr_err = psf.model.profile_scale, psf.model.profile_scale_err
        fwhm_rel_err = math.hypot(fwhm_rel_err, corr_err / corr,
                                  PROFILE_MODEL_ERROR * (corr - 1.0) / corr)
        if abs(corr - 1.0) > FAR_FROM_MOFFAT:
            ccd.notes.append(
                f"the PSF's profile is far from a Moffat's: its FWHM is "
                f"the best Moffat's times FWHM_CORR {corr:.3f}, uncertain "
                f"by a third of that correction (in FWHM_PIX_ERR; +3 % "
                "on an Airy disc, +6-7 % on an obscured one, within "
                "0.5 % on Kolmogorov and Gaussian PSFs: docs/metrics.md)")
    elif psf.model is not None:
        ccd.notes.append(
            "FWHM_CORR not measured: the PSF's core is taken to be a "
            "Moffat's" + (f" (FWHM {fwhm:.2f} px, under "
                          f"{PROFILE_MIN_FWHM} px: too few pixels across "
                          "the core)" if fwhm < PROFILE_MIN_FWHM else ""))
    # The stars' ellipticity vectors weighted by their precision (noise
    # FWHM_NOISE/SNR, floored at the PSF's variation): an unweighted mean
    # gave the S/N 30 stars the weight of the S/N 1000 ones, and their
    # scatter (and the odd faint neighbour) moved a 0.15 ellipticity by
    # -0.0035, three times its error.
    weight = 1.0 / ((FWHM_NOISE / np.maximum(stars.snr, 1.0)) ** 2
                    + ELLIP_WEIGHT_FLOOR**2)
    t2 = np.radians(2.0 * stars.theta)
    eps1, s1 = _clipped_mean(stars.ellipticity * np.cos(t2),
                             weights=weight)
    eps2, s2 = _clipped_mean(stars.ellipticity * np.sin(t2),
                             weights=weight)
    ell = math.hypot(eps1, eps2)
    ell_err, theta_err = _ellipticity_errors(eps1, eps2, s1, s2)
    e1, e1_err = _clipped_mean(stars.e1, weights=weight)
    e2, e2_err = _clipped_mean(stars.e2, weights=weight)
    r_h = 2.0 * src.r_half[psf.locus]
    elong = src.a[psf.locus] / src.b[psf.locus]
    scale = ccd.scale
    metrics.update(
        FWHM_PIX=fwhm,
        FWHM_PIX_ERR=fwhm * fwhm_rel_err,
        FWHM_ARCSEC=fwhm * scale if scale else math.nan,
        FWHM_ARCSEC_ERR=fwhm * fwhm_rel_err * scale if scale else math.nan,
        FWHM_CORR=corr,
        FWHM_CORR_ERR=corr_err,
        FWHM_MIN=float(np.nanmin(psf.grid.fwhm)),
        FWHM_MAX=float(np.nanmax(psf.grid.fwhm)),
        # PSFEx's counterparts, on PSFEx's sample: the locus stars.
        FWHM_RH=float(np.median(r_h)),
        FWHM_RH_ERR=_median_error(r_h),
        ELLIPTICITY=ell,
        ELLIPTICITY_ERR=ell_err,
        ELONGATION=(1.0 + ell) / (1.0 - ell),
        ELONGATION_ERR=2.0 * ell_err / (1.0 - ell) ** 2,
        THETA=0.5 * math.degrees(math.atan2(eps2, eps1)),
        THETA_ERR=theta_err,
        E1=e1, E1_ERR=e1_err,
        E2=e2, E2_ERR=e2_err,
        ELONG=float(np.median(elong)),
        ELONG_ERR=_median_error(elong),
        PSF_BETA=float(np.median(stars.beta)),
        PSF_BETA_ERR=psf.field.beta_err,
        PSF_CHI2=float(np.median(stars.chi2)),
    )
    if psf.model is not None:
        model = psf.model
        metrics.update(
            FWHM_MOFFAT=model.fwhm,
            FWHM_MOFFAT_ERR=model.fwhm * fwhm_rel_err,
            ELLIP_PSFEX=model.ellipticity,
            ELLIP_PSFEX_ERR=ell_err,
            PSF_RESID=model.residual,
            PSF_ASYM=model.asymmetry,
            PSF_AREA=model.area,
            PSF_AREA_ERR=2.0 * model.area * fwhm_rel_err,
        )
    return psf, src


def _ellipticity_errors(eps1: float, eps2: float, s1: float,
                        s2: float) -> tuple[float, float]:
    """Errors of the modulus and angle (deg) of an ellipticity vector.

    Propagated from the errors ``s1``, ``s2`` of its components; the
    angle's is at most 180/sqrt(12) deg, that of an angle uniform over
    180 deg (a round PSF has none).
    """
    ell = math.hypot(eps1, eps2)
    if not ell > 0:
        return math.sqrt(0.5 * (s1 * s1 + s2 * s2)), _THETA_ERR_MAX
    ell_err = math.hypot(eps1 * s1, eps2 * s2) / ell
    theta_err = 0.5 * math.degrees(math.hypot(eps2 * s1, eps1 * s2)
                                   / ell**2)
    return ell_err, min(theta_err, _THETA_ERR_MAX)


_THETA_ERR_MAX = 180.0 / math.sqrt(12.0)


def _infer_saturation(ccd: _Ccd, src: Sources, psf: PsfResult) -> Sources:
    """Read the saturation off flat-topped bright stars (SATLEV)."""
    margin = ccd.config.saturation_margin
    saturation = infer_saturation(src, psf.stars.index, margin)
    if saturation is None:
        return src
    ccd.saturation = saturation
    ccd.notes.append(f"saturation level {saturation:.0f} ADU "
                     "inferred from flat-topped bright stars (no "
                     "SATURATE keyword)")
    ccd.metrics["SATLEV"] = saturation
    hit = src.peak + src.background >= margin * saturation
    return replace(src, flags=np.where(
        hit, src.flags | SourceFlag.SATURATED, src.flags))


def _classification(ccd: _Ccd, src: Sources, psf: PsfResult,
                    background: Background) -> None:
    """Stars, galaxies, artefacts; the counts; N*, MAG_*.

    The background-subtracted image is dropped here.
    """
    metrics, config = ccd.metrics, ccd.config
    klass = classify(ccd.sub, ccd.bad, src, psf, gain=ccd.gain,
                     config=config)
    # The PSF stars checked against the spread S their own model gives.
    found = galaxy_contamination(src, klass.spread, klass.spread_err,
                                 psf.stars.index, klass.spread_ref)
    if found is not None:
        ccd.psf_contaminated = (
            f"{found.n_sharp} bright sources are sharper than the PSF "
            f"model and the PSF stars' spread S scatters {found.chi:.1f} "
            "times its noise: the PSF stars are likely compact galaxies "
            "(or stars whose profile the Moffat model does not follow: "
            "trailed stars, a photographic plate's)")
    ccd.sky_sub = None
    zp_used = ccd.zeropoint if ccd.zeropoint is not None else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(src.flux > 0, zp_used - 2.5 * np.log10(src.flux),
                       np.nan)
    area_deg2 = None
    if ccd.scale:
        good_pix = ccd.bad.size - int(np.count_nonzero(ccd.bad))
        area_deg2 = good_pix * (ccd.scale / 3600.0) ** 2
    cnt = counts(mag, klass.cls, area_deg2=area_deg2, config=config)
    ccd.parts["counts"] = cnt
    ccd.parts["sources"] = _sources_table(src, klass, psf.stars.index,
                                          zp_used, ccd.wcs, ccd.origin)
    metrics.update(
        NSTAR=int(np.sum(klass.cls == SourceClass.STAR)),
        NGAL=int(np.sum(klass.cls == SourceClass.GALAXY)),
        NARTEFACT=int(np.sum(klass.cls == SourceClass.ARTEFACT)),
        MAG_TURNOVER=turnover(cnt),
    )
    if psf.model is not None:
        flim = flux_limit(psf.model.area, background.rms, ccd.gain)
        metrics["MAGLIM_5SIG"] = zp_used - 2.5 * math.log10(flim)


def _weights(ccd: _Ccd, cosmic: NDArray[np.bool_] | None,
             maps: Callable[[PixelMaps], None] | None) -> None:
    """Make the flag and weight maps and previews; FRAC_W0, W_MEAN, ...

    The image is dropped before the weight map is made, the RMS map
    and the flat once it is.
    """
    saturated = None
    if ccd.saturation is not None:
        saturated = ccd.pix >= ccd.config.saturation_margin * ccd.saturation
    flagmap = flag_map(ccd.pix.shape, bad_flat=ccd.flat_bad,
                       cosmic_ray=cosmic, saturated=saturated,
                       user_mask=ccd.user_bad, no_data=ccd.nodata,
                       zero_weight=ccd.zero_weight)
    del saturated
    ccd.image = None
    source = ("input weight" if ccd.ivar is not None
              else "flat" if ccd.flat_norm is not None else "rms")
    weight = weight_map(flagmap, ccd.flat_norm, ccd.rms, ccd.ivar)
    ccd.flat_norm = ccd.sky_rms = ccd.ivar = None
    ccd.metrics.update(flag_counts(flagmap))
    ccd.metrics["FRAC_W0"] = float(np.count_nonzero(weight == 0)
                                   / weight.size)
    ccd.metrics["W_MEAN"] = float(np.mean(weight, dtype=np.float64))
    if source == "rms":
        ccd.notes.append("no flat: the weight map is (median RMS / RMS)^2 "
                         "of the background RMS map")
    assert ccd.preview is not None
    ccd.parts["preview"] = Preview(
        image=ccd.preview, weight=bin_mean(weight, PREVIEW_BINNING),
        binning=PREVIEW_BINNING, weight_source=source)
    if maps is not None:
        maps(PixelMaps(
            weight=weight, flags=flagmap,
            cosmic=(cosmic if cosmic is not None
                    else np.zeros(weight.shape, bool)),
            weight_source=source))


def _withhold(ccd: _Ccd) -> None:
    """Withhold the PSF numbers that rest on too few stars ...

    ... or on PSF stars that are largely compact galaxies
    (``psf_contaminated``, `galaxy_contamination`).  The metrics
    (`qualityfits.metrics.withhold`) become NaN, the PSF model and map
    are not published, and a note says why.
    """
    notes = withhold(ccd.metrics, ccd.config,
                     contaminated=ccd.psf_contaminated)
    if notes:
        ccd.notes.extend(notes)
    n_fit = ccd.metrics["NSTAR_FIT"]
    if ccd.psf_contaminated or (math.isfinite(n_fit)
                                and n_fit < ccd.config.psf_min_stars):
        ccd.parts.pop("psf_grid", None)
        ccd.parts.pop("psf_model", None)


def assess_extension(
    data: NDArray[np.float32],
    header: fits.Header,
    *,
    name: str,
    index: int = 0,
    bad: NDArray[np.bool_] | None = None,
    flat: NDArray[np.floating] | None = None,
    zeropoint: float | None = None,
    pixscale: float | None = None,
    config: QualityConfig | None = None,
    step: Callable[[str], None] | None = None,
    origin: tuple[int, int] = (0, 0),
    overwrite_input: bool = False,
    maps: Callable[[PixelMaps], None] | None = None,
    ivar: NDArray[np.float32] | None = None,
    weight_type: WeightType = "MAP_WEIGHT",
) -> ExtensionReport:
    """Assess one CCD held in memory.

    Parameters
    ----------
    data : ndarray
        The pixels (any float or integer dtype; copied to float32 unless
        ``overwrite_input``).
    header : astropy.io.fits.Header
        Its header (GAIN, SATURATE, EXPTIME, WCS, zero point...).
    name : str
        Extension name used in messages.
    index : int
        HDU index, recorded in the report.
    bad : ndarray of bool, optional
        Pixels to ignore (the user mask).
    flat : ndarray, optional
        The master flat (same shape): the weight map; its pixels outside
        [``flat_min``, ``flat_max``] times its median are ignored.
    zeropoint, pixscale : float, optional
        Override or supply the zero point and pixel scale.
    config : QualityConfig, optional
    step : callable, optional
        Called with each step name of `STEPS` as it starts.
    origin : tuple of int
        (x, y) of pixel (0, 0) of ``data`` in the frame of the header's
        WCS (the data section's offset when the HDU was cropped).
    overwrite_input : bool
        Let a C-contiguous float32 ``data`` be used as the work buffer
        (its values are lost) instead of copied.
    maps : callable, optional
        Given the weight, flag and cosmic-ray maps (`PixelMaps`) once
        they are made (to write them); they are not kept in the report.
    ivar : ndarray, optional
        The weight map's relative inverse variance (same shape;
        `qualityfits.weights.inverse_variance`): it sets the detection
        thresholds pixel by pixel and is the product weight map; its
        zeros are bad pixels (flag ZERO_WEIGHT).
    weight_type : {"MAP_WEIGHT", "MAP_VAR", "MAP_RMS"}
        What the weight map was: MAP_RMS noise is absolute (ADU), the
        others are scaled to the sky noise.

    Returns
    -------
    ExtensionReport
        With ``status="failed"`` and the error when the extension could
        not be assessed; metrics measured before the failure are kept.
    """
    config = config or QualityConfig()
    configure_sep()
    ccd = _Ccd(name=name, config=config, origin=origin,
               metrics={m.name: math.nan for m in METRICS})
    clock = _Clock(step)
    try:
        clock.begin("background")
        _prepare(data, header, ccd=ccd, bad=bad, flat=flat,
                 zeropoint=zeropoint, pixscale=pixscale,
                 overwrite_input=overwrite_input)
        if ivar is not None:
            _use_weight(ccd, ivar)
        bkg = _background(ccd)
        if ccd.ivar is not None:
            _noise_from_weight(ccd, bkg, weight_type)
        clock.begin("cosmic_rays")
        cosmic = _cosmic_rays(ccd, bkg.globalback, bkg.globalrms)
        clock.begin("detection")
        src, background = _detection(ccd, bkg)
        clock.begin("psf")
        psf, src = _psf(ccd, src)
        clock.begin("classification")
        _classification(ccd, src, psf, background)
        clock.begin("weights")
        _weights(ccd, cosmic, maps)
        clock.begin("metrics")
        _withhold(ccd)
        flags = qa_flags(ccd.metrics, double_locus=psf.double_locus,
                         read_noise=ccd.read_noise, config=config,
                         psf_contaminated=bool(ccd.psf_contaminated))
        clock.begin(None)
    except errors.QualityFitsError as exc:
        clock.begin(None)
        _withhold(ccd)
        return ExtensionReport(
            index=index, name=name, shape=data.shape, status="failed",
            error=ErrorInfo(type(exc).__name__, exc.code, str(exc)),
            metrics=ccd.metrics, notes=tuple(ccd.notes),
            timings=clock.timings, **ccd.parts,
        )
    return ExtensionReport(
        index=index, name=name, shape=data.shape, status="ok",
        metrics=ccd.metrics, flags=tuple(flags), notes=tuple(ccd.notes),
        timings=clock.timings, **ccd.parts,
    )


# -- reading a CCD and its flat and mask --------------------------------------
@dataclass(frozen=True)
class _Task:
    """One extension to assess, with its flat and mask if any."""

    ext: ImageExtension
    image: Path | NDArray[np.float32] | None  # None: read when submitted
    flat: tuple[Path | NDArray[np.float32], ImageExtension] | None
    mask: tuple[Path | NDArray[np.float32], ImageExtension] | None
    mask_convention: MaskConvention
    context: _Context
    flat_label: str = "flat"
    mask_label: str = "mask"
    weight: tuple[Path | NDArray[np.float32], ImageExtension] | None = None
    weight_type: WeightType = "MAP_WEIGHT"
    weight_label: str = "weight"
    #: The weight is a plane of the image's own file (not the user's):
    #: its NaN and negative values weigh 0 instead of being refused.
    weight_auto: bool = False
    #: The mask's bad bits (a plane of the image's own file that says
    #: which of its bits are bad); None: ``mask_convention``.
    mask_bits: int | None = None
    #: What the report notes about the CCD's inputs (planes used).
    notes: tuple[str, ...] = ()


def _read_ref(ref: Path | NDArray[np.float32], ext: ImageExtension,
              image_ext: ImageExtension, label: str) -> NDArray[np.float32]:
    if not isinstance(ref, Path):
        return ref
    with ImageSource(ref, label=label) as source:
        if ext.shape == image_ext.shape and image_ext.datasec is not None:
            full = source.read(ext, crop=False)
            y0, y1, x0, x1 = image_ext.datasec
            return np.ascontiguousarray(full[y0:y1, x0:x1])
        return source.read(ext, crop=ext.shape != image_ext.data_shape)


def _run_task(task: _Task, post: Poster | None) -> ExtensionReport:
    """Read one extension and its flat/mask, and assess it.

    The work function of `qualityfits.parallel.run_tasks`: it runs in a
    worker process or in this one.
    """
    ext = task.ext
    start = time.perf_counter()
    if post is not None:
        post("read")
    try:
        if isinstance(task.image, Path):
            with open_input(task.image) as source:
                data = source.read(ext)
        else:
            assert task.image is not None
            data = task.image
        bad = flat = ivar = None
        notes = task.notes
        if task.weight is not None:
            try:
                ivar = inverse_variance(
                    _read_ref(task.weight[0], task.weight[1], ext,
                              "weight"),
                    task.weight_type, strict=not task.weight_auto,
                    name=f"{ext.name}: {task.weight_label}, extension "
                    f"{task.weight[1].name}")
            except errors.EmptyImageError:
                if not task.weight_auto:
                    raise
                # The file's own plane says nothing: measure without it.
                unused = (f"weight: the {task.weight[1].name} plane has "
                          "no positive weight: not used")
                notes = (*(n for n in notes
                           if not n.startswith("weight:")), unused)
        if task.mask is not None:
            values = _read_ref(task.mask[0], task.mask[1], ext, "mask")
            if task.mask_bits is not None:
                ints = np.nan_to_num(values, nan=0.0).astype(np.int64)
                bad = (ints & task.mask_bits) != 0
                del ints
            else:
                bad = mask_to_bad(
                    values, task.mask_convention,
                    name=f"{task.mask_label}, extension "
                    f"{task.mask[1].name}")
            if bad.all():
                raise errors.EmptyImageError(
                    f"{ext.name}: every pixel is masked by "
                    f"{task.mask_label}, extension {task.mask[1].name} "
                    f"(convention: {task.mask_convention} is bad)")
        if task.flat is not None:
            flat = _read_ref(task.flat[0], task.flat[1], ext, "flat")
            if not np.any(flat > 0):  # NaN compares False
                raise errors.EmptyImageError(
                    f"{task.flat_label}, extension {task.flat[1].name}: "
                    "the flat has no positive pixel (all zero, negative "
                    "or NaN)")
    except errors.QualityFitsError as exc:
        rep = ExtensionReport(
            index=ext.index, name=ext.name, shape=ext.data_shape,
            status="failed",
            error=ErrorInfo(type(exc).__name__, exc.code, str(exc)),
        )
    else:
        read = time.perf_counter() - start
        x0, y0 = ((ext.datasec[2], ext.datasec[0]) if ext.datasec
                  else (0, 0))
        rep = assess_extension(
            data, ext.header, name=ext.name, index=ext.index, bad=bad,
            flat=flat, ivar=ivar, weight_type=task.weight_type,
            maps=_map_writer(task),
            zeropoint=task.context.zeropoint,
            pixscale=task.context.pixscale, config=task.context.config,
            step=post, origin=(x0, y0),
            # A buffer read for this task alone; not a caller's array.
            overwrite_input=isinstance(task.image, Path),
        )
        rep = replace(rep, timings={"read": read, **rep.timings},
                      notes=tuple(notes) + rep.notes)
    if post is not None:
        post("done" if rep.ok else "failed")
    return rep


def _map_writer(task: _Task) -> Callable[[PixelMaps], None] | None:
    """Where a worker writes the maps of its CCD (None: not wanted)."""
    directory = task.context.maps_dir
    if directory is None:
        return None
    ext = task.ext

    def write(maps: PixelMaps) -> None:
        write_map_pieces(maps, directory, ext.index, extname=ext.name,
                         header=ext.header, shape=ext.shape,
                         datasec=ext.datasec)

    return write

def _with_pixels(source: ImageSource, task: _Task) -> _Task:
    """Give a task its pixels when its input is held in memory."""
    if task.image is None:
        return replace(task, image=source.read(task.ext))
    return task


#: Bits of a Rubin-style mask plane (``MP_<NAME> = bit`` cards) that say
#: something about a pixel but not that it is bad.
_INFORMATIVE_PLANES = frozenset({
    "DETECTED", "DETECTED_NEGATIVE", "NOT_DEBLENDED", "INEXACT_PSF",
    "CLIPPED", "INJECTED", "INJECTED_TEMPLATE"})


def _mask_bits(header: fits.Header) -> tuple[int | None, str]:
    """Return the bad bits of a mask plane and how they were chosen.

    Rubin-style planes name their bits (``MP_BAD = 0``...): all but the
    informative ones (DETECTED...) are bad.  JWST DQ: DO_NOT_USE (bit
    1).  Otherwise None: any non-zero value is bad.
    """
    named = {str(k)[3:]: v for k, v in header.items()
             if str(k).startswith("MP_") and isinstance(v, int)
             and not isinstance(v, bool) and 0 <= v < 63}
    if named:
        bad = sorted(k for k in named if k not in _INFORMATIVE_PLANES)
        bits = 0
        for key in bad:
            bits |= 1 << named[key]
        return bits, f"bits {', '.join(bad)} are bad"
    if str(header.get("TELESCOP", "")).strip().upper() == "JWST":
        return 1, "DO_NOT_USE (bit 1) is bad"
    return None, "non-zero is bad"


@dataclass(frozen=True)
class _Planes:
    """The mask and weight planes of one CCD, from the image's own file."""

    mask: tuple[Path | NDArray[np.float32], ImageExtension] | None = None
    mask_bits: int | None = None
    weight: tuple[Path | NDArray[np.float32], ImageExtension] | None = None
    weight_type: WeightType = "MAP_WEIGHT"
    notes: tuple[str, ...] = ()


def _own_planes(src: ImageSource, *, user_mask: bool, user_weight: bool,
                ) -> tuple[dict[int, _Planes], tuple[HduRole, ...]]:
    """Use each CCD's own DQ/MASK and ERR/VAR/WHT planes (unless given).

    Returns the planes by CCD HDU index, and the roles with those that
    the user's file replaces marked as not used.
    """
    planes: dict[int, _Planes] = {}
    roles = []
    for role in src.hdus:
        if not role.used or role.serves is None:
            roles.append(role)
            continue
        given = user_mask if role.role == "mask" else user_weight
        if given:
            roles.append(replace(
                role, used=False,
                reason=f"{role.reason}; not used: --{role.role} given"))
            continue
        roles.append(role)
        ext = src.plane(role.index)
        ref: Path | NDArray[np.float32] = (
            src.path if src.path is not None
            else src.read(ext, crop=False))
        have = planes.get(role.serves, _Planes())
        if role.role == "mask":
            bits, how = _mask_bits(ext.header)
            planes[role.serves] = replace(
                have, mask=(ref, ext), mask_bits=bits,
                notes=(*have.notes, (f"mask: the {role.name} plane of "
                                     f"the file (HDU {role.index}, {how})")))
        else:
            assert role.weight_type is not None
            planes[role.serves] = replace(
                have, weight=(ref, ext), weight_type=role.weight_type,
                notes=(*have.notes, (f"weight: the {role.name} plane "
                                     f"of the file (HDU {role.index}) as "
                                     f"{role.weight_type}")))
    return planes, tuple(roles)


def _refs(source: ImageSource, image: ImageSource,
          ) -> dict[int, tuple[Path | NDArray[np.float32], ImageExtension]]:
    pairs = match_extensions(image, source)
    out: dict[int, tuple[Path | NDArray[np.float32], ImageExtension]] = {}
    for idx, oth in pairs.items():
        if source.path is not None:
            out[idx] = (source.path, oth)
        else:
            out[idx] = (source.read(oth, crop=False), oth)
    return out


def assess(
    image: ImageInput,
    *,
    flat: ImageInput | None = None,
    mask: ImageInput | None = None,
    weight: ImageInput | None = None,
    parameters: QualityParameters | None = None,
    config: QualityConfig | None = None,
    jobs: int | None = None,
    progress: ProgressCallback | None = None,
    maps_dir: str | Path | None = None,
    roles: Sequence[HduRole] | None = None,
) -> QualityReport:
    """Assess the quality of a FITS image.

    Parameters
    ----------
    image : str, Path or astropy.io.fits.HDUList
        A ``.fits``, ``.fits.gz`` or tile-compressed ``.fits.fz`` file,
        single image or multi-extension (every image HDU is a CCD).
    flat : str, Path or HDUList, optional
        Master flat with the same image extensions; pixels outside
        [``flat_min``, ``flat_max``] times its median are ignored.
    mask : str, Path or HDUList, optional
        User mask with the same image extensions.
    weight : str, Path or HDUList, optional
        Weight map with the same image extensions, of the
        ``weight_type`` of ``parameters`` (SExtractor's WEIGHT_TYPE):
        the detection thresholds follow it pixel by pixel, it is the
        product weight map, and its zero-weight pixels are ignored and
        flagged ZERO_WEIGHT.
    parameters : QualityParameters, optional
        The zero point, the pixel scale, the mask convention (which
        mask values mark bad pixels, see `qualityfits.io.mask_to_bad`)
        and the weight type,
        checked when the object was made; default: all taken from the
        image (header zero point, else instrumental magnitudes; WCS or
        header pixel scale) and the mask convention ``auto``.
    config : QualityConfig, optional
        Tunable parameters and QA thresholds.
    jobs : int, optional
        Worker processes (default: all available cores); 1 runs in this
        process.
    progress : callable, optional
        Called with a `ProgressEvent` as each extension and step starts
        and when each extension finishes.
    maps_dir : str or Path, optional
        Where the workers write each CCD's weight, flag and cosmic-ray
        maps (see `qualityfits.weights.write_map_pieces`); by default
        the maps are measured but not written.
    roles : sequence of HduRole, optional
        The role of every HDU of ``image``, as an `ImageSource` of it
        opened with ``roles=True`` decided them (its ``hdus``): a caller
        that has checked the file so hands them on, and they are not
        decided a second time (each integer HDU's pixels are
        looked at to tell a mask).
        Default: decided here.

    Returns
    -------
    QualityReport

    Raises
    ------
    InvalidImageError, NoImageDataError
        The input is not a readable FITS image.
    ShapeMismatchError
        The flat or mask does not match the image.
    InvalidParameterError
        A bad job count (bad parameters and configurations are refused
        when `QualityParameters` and `QualityConfig` are made).
    QualityFitsError
        Every extension failed (the subclass of the first failure when
        there is one extension).
    """
    config = config or QualityConfig()
    parameters = parameters or QualityParameters()
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise errors.InvalidParameterError(
            f"jobs must be a positive integer, got {jobs!r}")
    zeropoint, pixscale = parameters.zeropoint, parameters.pixscale
    context = _Context(zeropoint=zeropoint, pixscale=pixscale, config=config,
                       maps_dir=None if maps_dir is None else Path(maps_dir))
    name = _input_name(image)
    with ExitStack() as stack:
        src = stack.enter_context(ImageSource(
            image, roles=True if roles is None else roles))
        flat_src = (stack.enter_context(ImageSource(flat, label="flat"))
                    if flat is not None else None)
        mask_src = (stack.enter_context(ImageSource(mask, label="mask"))
                    if mask is not None else None)
        weight_src = (stack.enter_context(ImageSource(weight,
                                                      label="weight"))
                      if weight is not None else None)
        flats = _refs(flat_src, src) if flat_src else {}
        masks = _refs(mask_src, src) if mask_src else {}
        weights = _refs(weight_src, src) if weight_src else {}
        convention: MaskConvention = parameters.mask_convention
        if mask_src is not None and convention == "auto":
            convention = resolve_mask_convention(mask_src)
        own, hdus = _own_planes(src, user_mask=mask_src is not None,
                                user_weight=weight_src is not None)
        tasks = [
            _Task(ext=ext, image=src.path, flat=flats.get(ext.index),
                  mask=masks.get(ext.index), mask_convention=convention,
                  context=context,
                  flat_label=flat_src.display if flat_src else "flat",
                  mask_label=mask_src.display if mask_src else "mask",
                  weight=weights.get(ext.index),
                  weight_type=parameters.weight_type,
                  weight_label=(weight_src.display if weight_src
                                else "weight"))
            for ext in src.extensions
        ]
        tasks = [_with_planes(task, own.get(task.ext.index), src.display)
                 for task in tasks]
        reports = run_tasks(
            tasks, _run_task, jobs=jobs or default_jobs(), steps=STEPS,
            prepare=functools.partial(_with_pixels, src),
            progress=progress)
        exts = src.extensions
        display = src.display
    exposure = aggregate(exts, reports, config)
    report = QualityReport(
        image=name,
        hdus=hdus,
        extensions=tuple(reports),
        exposure=exposure,
        config=config,
        parameters={
            "flat": None if flat is None else _input_name(flat),
            "mask": None if mask is None else _input_name(mask),
            "zeropoint": zeropoint, "pixscale": pixscale,
            "mask_convention": convention,
            "weight": None if weight is None else _input_name(weight),
            "weight_type": parameters.weight_type,
        },
        versions=_versions(),
        observation=observation(exts[0].header),
    )
    if not any(r.ok for r in reports):
        _raise_all_failed(reports, display)
    return report


def _with_planes(task: _Task, planes: _Planes | None,
                 display: str) -> _Task:
    """Give a task its CCD's own mask and weight planes, if any."""
    if planes is None:
        return task
    if planes.mask is not None:
        task = replace(task, mask=planes.mask, mask_bits=planes.mask_bits,
                       mask_convention="nonzero",
                       mask_label=f"{display}, its mask plane")
    if planes.weight is not None:
        task = replace(task, weight=planes.weight,
                       weight_type=planes.weight_type, weight_auto=True,
                       weight_label=f"{display}, its weight plane")
    return replace(task, notes=planes.notes)


def _input_name(item: ImageInput) -> str:
    """File name of an input (an HDUList's own, if it has one)."""
    if isinstance(item, fits.HDUList):
        label = item.filename()
        return Path(label).name if label else "HDUList"
    return Path(item).name


_ERROR_TYPES: Mapping[str, type[errors.QualityFitsError]] = {
    cls.__name__: cls for cls in (
        errors.InvalidImageError, errors.NoImageDataError,
        errors.EmptyImageError, errors.NoStarsError,
        errors.NotScienceError, errors.UnsupportedImageError,
        errors.ShapeMismatchError, errors.InvalidParameterError,
        errors.InternalError,
    )
}


def _raise_all_failed(reports: list[ExtensionReport],
                      display: str) -> None:
    """Raise the failure of an input none of whose extensions passed."""
    first = reports[0].error
    assert first is not None
    kinds = {r.error.type for r in reports if r.error is not None}
    cls = _ERROR_TYPES.get(first.type, errors.QualityFitsError)
    # A reading error names the input and extension already.
    where = ("" if first.message.startswith(f"{display}, extension ")
             else "extension ")
    if len(reports) == 1:
        raise cls(f"{display}, {where}{first.message}" if where
                  else first.message)
    if len(kinds) > 1 and cls is not errors.InternalError:
        cls = errors.QualityFitsError
    raise cls(
        f"{display}: all {len(reports)} extensions failed; first: "
        f"{where}{first.message}"
    )
