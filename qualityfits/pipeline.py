"""`assess`: the whole assessment of an image, one extension at a time.

Each image extension (CCD) is read, measured and released in turn, in a
pool of worker processes (``jobs``), so that a 36-CCD, 700 MB mosaic is
never held in memory at once, let alone as float64.  A failing extension
does not stop the others: the report says which failed and why.  Only
when no extension at all could be assessed does `assess` raise.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
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
from threadpoolctl import threadpool_limits

from qualityfits import errors
from qualityfits._version import __version__
from qualityfits.background import (
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
from qualityfits.cosmics import find_cosmic_rays
from qualityfits.detection import (
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
from qualityfits.metrics import METRICS, qa_flags
from qualityfits.mosaic import aggregate, celestial_wcs
from qualityfits.parameters import QualityParameters
from qualityfits.psf import PsfResult, measure_psf
from qualityfits.report import (
    ErrorInfo,
    ExtensionReport,
    Preview,
    QualityReport,
)
from qualityfits.weights import (
    PixelMaps,
    bin_mean,
    flag_counts,
    flag_map,
    normalise_flat,
    weight_map,
    write_map_pieces,
)

log = logging.getLogger(__name__)

#: Processing steps of one extension, in order (progress reports these).
STEPS: tuple[str, ...] = (
    "read", "background", "cosmic_rays", "detection", "psf",
    "classification", "weights", "metrics",
)

#: Pixels per side of the blocks of the binned previews.
PREVIEW_BINNING = 8

ZEROPOINT_KEYS = ("PHOTZP", "MAGZERO", "MAGZPT", "MAGZP", "ZEROPT", "ZP")
PIXSCALE_KEYS = ("PIXSCAL1", "PIXSCALE", "SECPIX", "SECPIX1")
GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one extension started (or the extension finished).

    ``step`` is one of `STEPS`, or ``"done"`` / ``"failed"`` when the
    extension has finished.
    """

    extension: str
    index: int
    step: str
    step_number: int
    n_steps: int


ProgressCallback = Callable[[ProgressEvent], None]


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


# -- one extension ------------------------------------------------------------
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


def _cosmic_rays(sub: NDArray[np.float32], rms: NDArray[np.float32],
                 bad: NDArray[np.bool_], *, gain: float | None,
                 read_noise: float | None, saturation: float | None,
                 sky: float, metrics: dict[str, float],
                 ) -> NDArray[np.bool_]:
    """Find the cosmic rays of a CCD; fill NCR and CR_FRAC."""
    global _OPENMP_USED  # noqa: PLW0603 - a fact about this process
    _OPENMP_USED = True
    found = find_cosmic_rays(
        sub, rms, bad, gain=gain, read_noise=read_noise,
        saturation=None if saturation is None else saturation - sky)
    # Cosmic rays, not the noise peaks that stay in the mask.
    metrics["NCR"] = found.n_significant
    metrics["CR_FRAC"] = float(np.count_nonzero(found.mask)
                               / found.mask.size)
    return found.mask


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


def _clipped_mean(values: NDArray[np.float64], kappa: float = 3.0) -> float:
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
    return float(np.mean(values[keep])) if keep.any() else math.nan


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

    Returns
    -------
    ExtensionReport
        With ``status="failed"`` and the error when the extension could
        not be assessed; metrics measured before the failure are kept.
    """
    config = config or QualityConfig()
    configure_sep()
    notes: list[str] = []
    metrics: dict[str, float] = {m.name: math.nan for m in METRICS}
    timings: dict[str, float] = {}
    parts: dict[str, Any] = {}
    current: list[Any] = [None, time.perf_counter()]

    def begin(stepname: str | None) -> None:
        now = time.perf_counter()
        if current[0] is not None:
            timings[current[0]] = now - current[1]
        current[0], current[1] = stepname, now
        if stepname is not None and step is not None:
            step(stepname)

    try:
        begin("background")
        pix = np.array(data, dtype=np.float32, order="C",
                       copy=not overwrite_input)
        nonfinite = np.isfinite(pix)
        np.logical_not(nonfinite, out=nonfinite)
        n_nonfinite = int(np.count_nonzero(nonfinite))
        if n_nonfinite == pix.size:
            raise errors.EmptyImageError(
                f"{name}: every pixel is NaN or infinite")
        if n_nonfinite:
            pix[nonfinite] = 0.0
        user_bad = bad
        flat_norm = flat_bad = None
        if flat is not None:
            flat_norm, flat_bad, flat_median = normalise_flat(
                flat, config.flat_min, config.flat_max)
            if not math.isfinite(flat_median):
                raise errors.EmptyImageError(
                    f"{name}: the flat has no positive pixel (all zero, "
                    "negative or NaN)")
            notes.extend(_flat_notes(flat_bad, flat_median))
        badmask = nonfinite.copy()
        for other in (user_bad, flat_bad):
            if other is not None:
                badmask |= other
        check_pixels(pix, badmask, name=name)
        gain = header_number(header, *GAIN_KEYS)
        rdnoise = header_number(header, *RDNOISE_KEYS)
        exptime = header_number(header, "EXPTIME", "EXPOSURE", "ITIME")
        wcs = celestial_wcs(header)
        scale = _pixscale(header, wcs, pixscale, notes)
        zp = _zeropoint(header, zeropoint, notes)
        saturation = header_number(header, "SATURATE", "SATLEVEL",
                                   "SATURATION")
        if saturation is None:
            saturation = measure_saturation(pix, badmask)
            if saturation is not None:
                notes.append(f"saturation level {saturation:g} ADU read "
                             "off the pixels (no SATURATE keyword)")
        if gain is None:
            notes.append("no GAIN keyword: flux errors and S/N from the "
                         "background noise only")
        metrics.update(
            ZEROPOINT=zp if zp is not None else math.nan,
            PIXSCALE=scale or math.nan,
            GAIN=gain or math.nan,
            EXPTIME=exptime or math.nan,
            SATLEV=saturation or math.nan,
        )
        # SExtractor's background (sep reproduces it exactly), used for
        # detection and photometry as SExtractor uses it.  (sep subtracts
        # in place: no full-size background map is made.)
        preview = bin_mean(pix, PREVIEW_BINNING,
                           ~badmask if badmask.any() else None)
        bkg = sep_background(pix, badmask, config)
        sub = pix.copy()
        bkg.subfrom(sub)
        rms = bkg.rms()
        _require_noise(name, bkg.globalrms)
        # Exactly 0 where the sky is far above 0: a blank pixel.
        nodata = nonfinite
        del nonfinite
        if bkg.globalback > 5.0 * bkg.globalrms:
            nodata |= pix == 0
            badmask |= nodata

        begin("cosmic_rays")
        cosmic = None
        if config.cosmic_rays:
            cosmic = _cosmic_rays(sub, rms, badmask, gain=gain,
                                  read_noise=rdnoise, saturation=saturation,
                                  sky=bkg.globalback, metrics=metrics)
            # Ignored from here on, as bad pixels; zero in the
            # background-subtracted image, so that the light the
            # detection filter spreads around them is not detected.
            # The image keeps its background there (the sky map is
            # image minus subtracted image).
            pix[cosmic] -= sub[cosmic]
            sub[cosmic] = 0.0
            badmask |= cosmic

        begin("detection")
        objects, segmap = extract(sub, rms, badmask, config)
        # A second estimate with the sources masked: closer to the true
        # sky in crowded fields; the difference measures the light of
        # faint sources and wings in the meshes.
        exclude = badmask | object_mask(objects, segmap)
        masked = masked_sky(pix, exclude, config)
        background = summarise_background(pix, sub, bkg, rms, exclude,
                                          config)
        del exclude
        parts["background"] = background
        metrics.update(
            SKY_MEAN=background.mean, SKY_RMS=background.rms,
            SKY_MEAN_MASKED=masked,
            SKY_GRAD=background.gradient,
            SKY_LUMPINESS=background.lumpiness,
        )
        if zp is not None and scale and background.mean > 0:
            metrics["SKY_MAG"] = zp - 2.5 * math.log10(
                background.mean / scale**2)
        _require_noise(name, background.rms)
        src = measure(sub, pix, rms, badmask, objects, segmap, gain=gain,
                      saturation=saturation, config=config)
        del objects
        metrics["NOBJ"] = len(src)

        begin("psf")
        psf = measure_psf(sub, badmask, src, gain=gain, config=config)
        stars = psf.stars
        metrics["NSTAR_PSF"] = psf.n_candidates
        metrics["NSTAR_FIT"] = len(stars)
        if cosmic is not None and len(stars):
            metrics["STAR_CR_FRAC"] = float(np.mean(
                _core_hit(cosmic, stars.x, stars.y)))
        if len(stars) == 0:
            raise errors.NoStarsError(
                f"{name}: no star usable for the PSF among {len(src)} "
                f"sources ({psf.n_candidates} bright, unflagged and "
                "compact enough to be candidates)"
            )
        if saturation is None:
            saturation = infer_saturation(src, stars.index,
                                          config.saturation_margin)
            if saturation is not None:
                notes.append(f"saturation level {saturation:.0f} ADU "
                             "inferred from flat-topped bright stars (no "
                             "SATURATE keyword)")
                metrics["SATLEV"] = saturation
                hit = (src.peak + src.background
                       >= config.saturation_margin * saturation)
                src = replace(src, flags=np.where(
                    hit, src.flags | SourceFlag.SATURATED, src.flags))
        parts["psf_grid"] = psf.grid
        parts["psf_model"] = psf.model
        parts["psf_stars"] = _stars_table(psf)
        # The PSF field at the stars, not their median: compact galaxies
        # left among them (one-sided) cannot pull it up.
        assert psf.field is not None
        fwhm = float(np.median(psf.field.fwhm_at(stars.x, stars.y)))
        t2 = np.radians(2.0 * stars.theta)
        eps1 = _clipped_mean(stars.ellipticity * np.cos(t2))
        eps2 = _clipped_mean(stars.ellipticity * np.sin(t2))
        ell = math.hypot(eps1, eps2)
        metrics.update(
            FWHM_PIX=fwhm,
            FWHM_ARCSEC=fwhm * scale if scale else math.nan,
            FWHM_MIN=float(np.nanmin(psf.grid.fwhm)),
            FWHM_MAX=float(np.nanmax(psf.grid.fwhm)),
            # PSFEx's counterparts, on PSFEx's sample: the locus stars.
            FWHM_RH=2.0 * float(np.median(src.r_half[psf.locus])),
            ELLIPTICITY=ell,
            ELONGATION=(1.0 + ell) / (1.0 - ell),
            THETA=0.5 * math.degrees(math.atan2(eps2, eps1)),
            E1=_clipped_mean(stars.e1),
            E2=_clipped_mean(stars.e2),
            ELONG=float(np.median(src.a[psf.locus] / src.b[psf.locus])),
            PSF_BETA=float(np.median(stars.beta)),
            PSF_CHI2=float(np.median(stars.chi2)),
        )
        if psf.model is not None:
            metrics.update(
                FWHM_MOFFAT=psf.model.fwhm,
                ELLIP_PSFEX=psf.model.ellipticity,
                PSF_RESID=psf.model.residual,
                PSF_ASYM=psf.model.asymmetry,
                PSF_AREA=psf.model.area,
            )

        begin("classification")
        klass = classify(sub, badmask, src, psf, gain=gain,
                         config=config)
        del sub
        zp_used = zp if zp is not None else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = np.where(src.flux > 0, zp_used - 2.5 * np.log10(src.flux),
                           np.nan)
        area_deg2 = None
        if scale:
            good_pix = badmask.size - int(np.count_nonzero(badmask))
            area_deg2 = good_pix * (scale / 3600.0) ** 2
        cnt = counts(mag, klass.cls, area_deg2=area_deg2, config=config)
        parts["counts"] = cnt
        parts["sources"] = _sources_table(src, klass, stars.index, zp_used,
                                          wcs, origin)
        metrics.update(
            NSTAR=int(np.sum(klass.cls == SourceClass.STAR)),
            NGAL=int(np.sum(klass.cls == SourceClass.GALAXY)),
            NARTEFACT=int(np.sum(klass.cls == SourceClass.ARTEFACT)),
            MAG_TURNOVER=turnover(cnt),
        )
        if psf.model is not None:
            flim = flux_limit(psf.model.area, background.rms, gain)
            metrics["MAGLIM_5SIG"] = zp_used - 2.5 * math.log10(flim)

        begin("weights")
        saturated = None
        if saturation is not None:
            saturated = pix >= config.saturation_margin * saturation
        flagmap = flag_map(pix.shape, bad_flat=flat_bad, cosmic_ray=cosmic,
                           saturated=saturated, user_mask=user_bad,
                           no_data=nodata)
        del saturated, pix
        source = "flat" if flat_norm is not None else "rms"
        weight = weight_map(flagmap, flat_norm, rms)
        del flat_norm, rms
        metrics.update(flag_counts(flagmap))
        metrics["FRAC_W0"] = float(np.count_nonzero(weight == 0)
                                   / weight.size)
        metrics["W_MEAN"] = float(np.mean(weight, dtype=np.float64))
        if source == "rms":
            notes.append("no flat: the weight map is (median RMS / RMS)^2 "
                         "of the background RMS map")
        parts["preview"] = Preview(
            image=preview, weight=bin_mean(weight, PREVIEW_BINNING),
            binning=PREVIEW_BINNING, weight_source=source)
        if maps is not None:
            maps(PixelMaps(
                weight=weight, flags=flagmap,
                cosmic=(cosmic if cosmic is not None
                        else np.zeros(weight.shape, bool)),
                weight_source=source))
        del weight, flagmap

        begin("metrics")
        flags = qa_flags(metrics, double_locus=psf.double_locus,
                         read_noise=rdnoise, config=config)
        begin(None)
    except errors.QualityFitsError as exc:
        begin(None)
        return ExtensionReport(
            index=index, name=name, shape=data.shape, status="failed",
            error=ErrorInfo(type(exc).__name__, exc.code, str(exc)),
            metrics=metrics, notes=tuple(notes), timings=timings, **parts,
        )
    return ExtensionReport(
        index=index, name=name, shape=data.shape, status="ok",
        metrics=metrics, flags=tuple(flags), notes=tuple(notes),
        timings=timings, **parts,
    )


# -- workers ---------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    ext: ImageExtension
    image: Path | NDArray[np.float32] | None  # None: read when submitted
    flat: tuple[Path | NDArray[np.float32], ImageExtension] | None
    mask: tuple[Path | NDArray[np.float32], ImageExtension] | None
    mask_convention: MaskConvention
    context: _Context
    flat_label: str = "flat"
    mask_label: str = "mask"


_EVENTS: Any = None  # the queue a worker posts progress events to
_IN_WORKER = False  # True in the pool's worker processes


def _init_worker(events: Any) -> None:
    global _EVENTS, _IN_WORKER  # noqa: PLW0603 - per worker process
    _EVENTS = events
    _IN_WORKER = True
    warnings.simplefilter("ignore")
    _keep_freed_memory()
    # One CCD per core: a worker's native libraries (astroscrappy's
    # OpenMP median filters, BLAS) must not start a thread per core each,
    # which left the cosmic-ray step 3 times slower, spinning.
    threadpool_limits(1)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed CCD-size buffers instead of returning them.

    Each CCD allocates and frees many full-size arrays; by default glibc
    maps and unmaps each one, and faulting the fresh pages in again cost
    ~15 % of a worker's CPU in the benchmark.  Worker processes only;
    harmless where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2**31 - 1)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt codes
_SOURCES: dict[Path, ImageSource] = {}  # a worker's open inputs


def _open_cached(path: Path) -> ImageSource:
    """Open an input once per worker process (its headers parsed once).

    A 36-CCD file costs ~25 ms to open; each worker reads many of its
    extensions.  The few most recent inputs stay open.
    """
    source = _SOURCES.get(path)
    if source is None:
        while len(_SOURCES) >= 4:
            _SOURCES.pop(next(iter(_SOURCES))).close()
        source = _SOURCES[path] = ImageSource(path)
    return source


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


def _queue_poster(ext: ImageExtension) -> Callable[[str], None] | None:
    """Progress poster of a worker process (None without a queue)."""
    if _EVENTS is None:
        return None
    events = _EVENTS

    def post(stepname: str) -> None:
        events.put((ext.index, ext.name, stepname))

    return post


def _internal_failure(ext: ImageExtension, why: str) -> ExtensionReport:
    """Report a failure that is not the input's fault."""
    log.error("extension %s: internal error: %s", ext.name, why)
    return ExtensionReport(
        index=ext.index, name=ext.name, shape=ext.data_shape,
        status="failed",
        error=ErrorInfo("InternalError", "internal-error",
                        f"{ext.name}: internal error: {why}"),
    )


def _broken_pool_reason() -> str:
    """Why worker processes died, as far as the parent can tell."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and (
            getattr(main, "__file__", None) is not None):
        # A script run by path is re-imported by every new worker: without
        # the guard, each worker tries to start workers itself and dies.
        return ("the worker processes died; a script that calls assess() "
                "with jobs > 1 must do so under 'if __name__ == "
                "\"__main__\":' (or use jobs=1); otherwise they were "
                "killed or ran out of memory")
    return "the worker process died (killed, or out of memory)"


def _run_pooled(task: _Task) -> ExtensionReport:
    """`_run_task` in a worker process, posting progress to the queue."""
    return _run_task(task, _queue_poster(task.ext))


def _run_task(task: _Task,
              post: Callable[[str], None] | None) -> ExtensionReport:
    """Read one extension and its flat/mask, and assess it."""
    ext = task.ext
    start = time.perf_counter()
    if post is not None:
        post("read")
    try:
        if isinstance(task.image, Path):
            if _IN_WORKER:
                data = _open_cached(task.image).read(ext)
            else:
                with ImageSource(task.image) as source:
                    data = source.read(ext)
        else:
            assert task.image is not None
            data = task.image
        bad = flat = None
        if task.mask is not None:
            values = _read_ref(task.mask[0], task.mask[1], ext, "mask")
            bad = mask_to_bad(
                values, task.mask_convention,
                name=f"{task.mask_label}, extension {task.mask[1].name}")
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
            flat=flat, maps=_map_writer(task),
            zeropoint=task.context.zeropoint,
            pixscale=task.context.pixscale, config=task.context.config,
            step=post, origin=(x0, y0),
            # A buffer read for this task alone; not a caller's array.
            overwrite_input=isinstance(task.image, Path),
        )
        rep = replace(rep, timings={"read": read, **rep.timings})
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


def _default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_DONE = None  # sentinel that ends the progress pump


@contextmanager
def _progress_pump(callback: ProgressCallback | None,
                   events: Any) -> Iterator[None]:
    """Deliver worker events to the callback, in order, from one thread.

    Every event -- steps, and "done"/"failed" -- goes through the one
    queue, so the callback sees each extension's events in order and is
    never called from two threads at once; on exit the queue is drained
    before `assess` returns.
    """
    if callback is None or events is None:
        yield
        return

    def pump() -> None:
        while True:
            try:
                item = events.get()
            except (EOFError, OSError):
                return
            if item is _DONE:
                return
            index, name, stepname = item
            number = (STEPS.index(stepname) + 1 if stepname in STEPS
                      else len(STEPS))
            callback(ProgressEvent(name, index, stepname, number,
                                   len(STEPS)))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        events.put(_DONE)
        thread.join()


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
    parameters: QualityParameters | None = None,
    config: QualityConfig | None = None,
    jobs: int | None = None,
    progress: ProgressCallback | None = None,
    maps_dir: str | Path | None = None,
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
    parameters : QualityParameters, optional
        The zero point, the pixel scale and the mask convention (which
        mask values mark bad pixels, see `qualityfits.io.mask_to_bad`),
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
        src = stack.enter_context(ImageSource(image))
        flat_src = (stack.enter_context(ImageSource(flat, label="flat"))
                    if flat is not None else None)
        mask_src = (stack.enter_context(ImageSource(mask, label="mask"))
                    if mask is not None else None)
        flats = _refs(flat_src, src) if flat_src else {}
        masks = _refs(mask_src, src) if mask_src else {}
        convention: MaskConvention = parameters.mask_convention
        if mask_src is not None and convention == "auto":
            convention = resolve_mask_convention(mask_src)
        tasks = [
            _Task(ext=ext, image=src.path, flat=flats.get(ext.index),
                  mask=masks.get(ext.index), mask_convention=convention,
                  context=context,
                  flat_label=flat_src.display if flat_src else "flat",
                  mask_label=mask_src.display if mask_src else "mask")
            for ext in src.extensions
        ]
        reports = _run(tasks, src, jobs or _default_jobs(), progress)
        exts = src.extensions
        display = src.display
    exposure = aggregate(exts, reports, config)
    report = QualityReport(
        image=name,
        extensions=tuple(reports),
        exposure=exposure,
        config=config,
        parameters={
            "flat": None if flat is None else _input_name(flat),
            "mask": None if mask is None else _input_name(mask),
            "zeropoint": zeropoint, "pixscale": pixscale,
            "mask_convention": convention,
        },
        versions=_versions(),
    )
    if not any(r.ok for r in reports):
        _raise_all_failed(reports, display)
    return report


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
    if len(reports) == 1:
        raise cls(f"{display}, extension {first.message}")
    if len(kinds) > 1 and cls is not errors.InternalError:
        cls = errors.QualityFitsError
    raise cls(
        f"{display}: all {len(reports)} extensions failed; first: "
        f"extension {first.message}"
    )


def _run(tasks: list[_Task], source: ImageSource, jobs: int,
         progress: ProgressCallback | None) -> list[ExtensionReport]:
    """Run the tasks, in worker processes when that helps.

    Tasks of an in-memory input get their pixels only when submitted, so
    that few extensions are copied at a time.
    """
    n_steps = len(STEPS)

    def ready(task: _Task) -> _Task:
        if task.image is None:
            return replace(task, image=source.read(task.ext))
        return task

    if jobs == 1 or len(tasks) == 1:
        reports = []
        for task in tasks:
            post = None
            if progress is not None:
                def post(stepname: str, ext: ImageExtension = task.ext,
                         ) -> None:
                    assert progress is not None
                    number = (STEPS.index(stepname) + 1
                              if stepname in STEPS else n_steps)
                    progress(ProgressEvent(ext.name, ext.index, stepname,
                                           number, n_steps))
            try:
                rep = _run_task(ready(task), post)
            except errors.QualityFitsError:
                raise
            except Exception as exc:
                log.exception("extension %s failed", task.ext.name)
                rep = _internal_failure(task.ext,
                                        f"{type(exc).__name__}: {exc}")
                if post is not None:
                    post("failed")
            reports.append(rep)
        return reports
    ctx = _pool_context()
    events = ctx.Queue() if progress is not None else None
    results: dict[int, ExtensionReport] = {}
    pending: dict[Future[ExtensionReport], _Task] = {}
    limit = 2 * jobs
    todo = list(tasks)

    def submit_more(pool: ProcessPoolExecutor) -> None:
        while todo and len(pending) < limit:
            task = ready(todo.pop(0))
            pending[pool.submit(_run_pooled, task)] = task

    with ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)), mp_context=ctx,
            initializer=_init_worker, initargs=(events,)) as pool:
        # The first submission starts the workers (all of them, under
        # "fork"): before the progress thread exists.
        submit_more(pool)
        with _progress_pump(progress, events):
            try:
                while pending:
                    done, _ = wait(list(pending),
                                   return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        results[task.ext.index] = _result(future, task,
                                                          events)
                    submit_more(pool)
            finally:
                # Workers gone, every event they posted is in the queue
                # ahead of the pump's end marker.
                pool.shutdown(wait=True, cancel_futures=True)
    return [results[t.ext.index] for t in tasks]


def _result(future: Future[ExtensionReport], task: _Task,
            events: Any) -> ExtensionReport:
    """Return a worker's report, or one saying why it could not give it."""
    try:
        return future.result()
    except BrokenProcessPool:
        rep = _internal_failure(task.ext, _broken_pool_reason())
    except Exception as exc:  # noqa: BLE001 - reported below
        rep = _internal_failure(task.ext, f"{type(exc).__name__}: {exc}")
    # The worker could not say it failed: say it for it.
    if events is not None:
        events.put((task.ext.index, task.ext.name, "failed"))
    return rep


def _native_threads() -> int:
    """Threads of this process, native ones included (0 if unknown)."""
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:  # not Linux
        return 0


#: Threads when the pipeline was loaded (numpy's BLAS starts its own,
#: which are safe to fork: the library re-creates them in the child).
_BASE_THREADS = _native_threads()


#: True once this process has run astroscrappy's OpenMP code (a CCD
#: assessed here, not in a worker): its thread pool is then alive.
_OPENMP_USED = False


def _single_threaded() -> bool:
    """Say whether no thread was started since the pipeline was loaded.

    Python's own count misses the threads of native libraries: an
    OpenMP pool (astroscrappy's median filters start one when this
    process assessed a CCD itself) whose lock a forked child inherits
    held deadlocks the child.
    """
    return (threading.active_count() == 1 and not _OPENMP_USED
            and _native_threads() <= _BASE_THREADS)


def _pool_context() -> Any:
    """Pick how worker processes start.

    "fork" when this process runs no other thread: the workers start at
    once with the pipeline already loaded (~0.5 s sooner, and ~2 s of
    CPU less over a MegaCam exposure).  Forking a process with other
    threads can deadlock (a lock held by one of them stays held in the
    child), so otherwise "forkserver", preloaded with the pipeline.
    """
    if (_single_threaded()
            and "fork" in mp.get_all_start_methods()):
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["qualityfits.pipeline"])
    return ctx
