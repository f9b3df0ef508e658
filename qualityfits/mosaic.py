"""The exposure aggregate: statistics over CCDs and the mosaic PSF map.

CCDs are placed in one frame so that the FWHM and ellipticity maps of all
of them form one picture of the focal plane:

* ``"wcs"``: every CCD has a celestial WCS; positions are gnomonic
  (tangent-plane) offsets in arcmin about the mean pointing, X towards
  east, Y towards north;
* ``"detsec"``: every CCD has a DETSEC keyword; positions are detector
  pixels of the mosaic;
* ``"none"``: CCD-local pixels (a single image, or nothing to go by).

Whisker angles are carried into that frame through the local Jacobian of
the placement, so flips and rotations of the CCDs are accounted for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from astropy import log as astropy_log
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from numpy.typing import NDArray

from qualityfits.config import QualityConfig
from qualityfits.grades import grade_exposure
from qualityfits.io import ImageExtension, parse_section
from qualityfits.metrics import METRICS
from qualityfits.report import ExposureReport, ExtensionReport

FloatArray = NDArray[np.float64]
Mapper = Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]]

_COUNT_METRICS = {m.name for m in METRICS if m.integer}


def celestial_wcs(header: object) -> WCS | None:
    """Return the celestial part of a header's WCS, or None.

    Only the first two axes are read: the image's, also when it is a
    cube of one plane (``NAXIS3 = 1`` with a two-axis WCS, which wcslib
    cannot copy when read as three axes).  A WCS that wcslib cannot
    read is no WCS.
    """
    level = astropy_log.level
    try:
        # astropy.wcs logs (INFO, 15 lines, each time) a SIP distortion
        # under a CTYPE without '-SIP'; the pipeline notes it once
        # (`sip_note`).
        astropy_log.setLevel("WARNING")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2).celestial
    except (ValueError, KeyError, TypeError, MemoryError, RuntimeError):
        return None
    finally:
        astropy_log.setLevel(level)
    if wcs.naxis != 2 or not wcs.has_celestial:
        return None
    return wcs


def sip_note(header: fits.Header) -> str:
    """Say that SIP distortion terms sit under a CTYPE without '-SIP'.

    astropy applies them (plate solvers write such headers); empty when
    the header has none, or says '-SIP'.
    """
    ctype = str(header.get("CTYPE1", ""))
    if "A_ORDER" not in header or ctype.endswith("-SIP"):
        return ""
    return (f"the WCS has SIP distortion terms (A_ORDER = "
            f"{header['A_ORDER']}) under CTYPE1 = {ctype.strip()!r}, "
            "without '-SIP': they are applied, as astropy does")


def _tangent(ra: FloatArray, dec: FloatArray, ra0: float,
             dec0: float) -> tuple[FloatArray, FloatArray]:
    """Gnomonic projection about (ra0, dec0); arcmin, X east, Y north."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(
        a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (math.cos(d0) * np.sin(d)
           - math.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(xi) * 60.0, np.degrees(eta) * 60.0


def _wcs_mappers(exts: Sequence[ImageExtension]) -> list[Mapper] | None:
    wcss = [celestial_wcs(e.header) for e in exts]
    if any(w is None for w in wcss):
        return None
    centres = []
    for ext, w in zip(exts, wcss, strict=True):
        assert w is not None
        ny, nx = ext.shape
        ra, dec = w.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
        centres.append((float(ra[0]), float(dec[0])))
    vec = np.mean([
        (math.cos(math.radians(d)) * math.cos(math.radians(r)),
         math.cos(math.radians(d)) * math.sin(math.radians(r)),
         math.sin(math.radians(d))) for r, d in centres
    ], axis=0)
    ra0 = math.degrees(math.atan2(vec[1], vec[0])) % 360.0
    dec0 = math.degrees(math.atan2(vec[2], math.hypot(vec[0], vec[1])))

    def make(ext: ImageExtension, w: WCS) -> Mapper:
        y0, x0 = (ext.datasec[0], ext.datasec[2]) if ext.datasec else (0, 0)

        def mapper(x: FloatArray, y: FloatArray) -> tuple[FloatArray,
                                                          FloatArray]:
            ra, dec = w.all_pix2world(np.asarray(x) + x0,
                                      np.asarray(y) + y0, 0)
            return _tangent(ra, dec, ra0, dec0)
        return mapper

    return [make(e, w) for e, w in zip(exts, wcss, strict=True)
            if w is not None]


def _detsec_mappers(exts: Sequence[ImageExtension]) -> list[Mapper] | None:
    mappers = []
    for ext in exts:
        sec = parse_section(ext.header.get("DETSEC"))
        if sec is None:
            return None
        x1, x2, y1, y2 = sec
        ny, nx = ext.data_shape
        sx = (x2 - x1 + (1 if x2 >= x1 else -1)) / nx
        sy = (y2 - y1 + (1 if y2 >= y1 else -1)) / ny
        mappers.append(_detsec_mapper(x1, y1, sx, sy))
    return mappers


def _detsec_mapper(x1: int, y1: int, sx: float, sy: float) -> Mapper:
    """Data-section pixel -> detector pixel (1-based, like DETSEC)."""
    def mapper(x: FloatArray, y: FloatArray) -> tuple[FloatArray,
                                                      FloatArray]:
        return (x1 + (np.asarray(x) + 0.5) * sx - 0.5 * np.sign(sx),
                y1 + (np.asarray(y) + 0.5) * sy - 0.5 * np.sign(sy))
    return mapper


def _local_mappers(exts: Sequence[ImageExtension]) -> list[Mapper]:
    def mapper(x: FloatArray, y: FloatArray) -> tuple[FloatArray,
                                                      FloatArray]:
        return np.asarray(x, float) + 1.0, np.asarray(y, float) + 1.0
    return [mapper for _ in exts]


def placement(exts: Sequence[ImageExtension]) -> tuple[str, list[Mapper]]:
    """How to map CCD pixels (0-based, data section) to the mosaic."""
    if len(exts) > 1 or (exts and celestial_wcs(exts[0].header)):
        mappers = _wcs_mappers(exts)
        if mappers is not None:
            return "wcs", mappers
        mappers = _detsec_mappers(exts)
        if mappers is not None and len(exts) > 1:
            return "detsec", mappers
    return "none", _local_mappers(exts)


def _angle(mapper: Mapper, x: FloatArray, y: FloatArray,
           theta: FloatArray) -> FloatArray:
    """Carry position angles (deg) at (x, y) into the mosaic frame."""
    t = np.radians(theta)
    x0, y0 = mapper(x, y)
    x1, y1 = mapper(x + np.cos(t), y + np.sin(t))
    return np.asarray(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def mosaic_psf(kind: str, mappers: Sequence[Mapper],
               reports: Sequence[ExtensionReport]) -> Table:
    """Place the PSF map cells of every assessed CCD in the mosaic."""
    rows: dict[str, list[object]] = {k: [] for k in (
        "EXTNAME", "X", "Y", "FWHM", "ELLIPTICITY", "THETA", "NSTARS")}
    for mapper, rep in zip(mappers, reports, strict=True):
        grid = rep.psf_grid
        if not rep.ok or grid is None:
            continue
        gx, gy = np.meshgrid(grid.x, grid.y)
        mx, my = mapper(gx.ravel(), gy.ravel())
        theta = _angle(mapper, gx.ravel(), gy.ravel(), grid.theta.ravel())
        theta = (theta + 90.0) % 180.0 - 90.0
        n = gx.size
        rows["EXTNAME"] += [rep.name] * n
        rows["X"] += list(np.asarray(mx, float))
        rows["Y"] += list(np.asarray(my, float))
        rows["FWHM"] += list(grid.fwhm.ravel())
        rows["ELLIPTICITY"] += list(grid.ellipticity.ravel())
        rows["THETA"] += list(theta)
        rows["NSTARS"] += list(grid.nstars.ravel())
    table = Table({
        "EXTNAME": np.array(rows["EXTNAME"], dtype=str),
        "X": np.array(rows["X"], dtype=float),
        "Y": np.array(rows["Y"], dtype=float),
        "FWHM": np.array(rows["FWHM"], dtype=float),
        "ELLIPTICITY": np.array(rows["ELLIPTICITY"], dtype=float),
        "THETA": np.array(rows["THETA"], dtype=float),
        "NSTARS": np.array(rows["NSTARS"], dtype=np.int64),
    })
    unit = {"wcs": "arcmin", "detsec": "pix", "none": "pix"}[kind]
    table["X"].unit = table["Y"].unit = unit
    table["FWHM"].unit = "pix"
    table["THETA"].unit = "deg"
    return table


def layout(kind: str, mappers: Sequence[Mapper],
           exts: Sequence[ImageExtension]) -> Table:
    """Corners of every CCD's data section in the mosaic frame."""
    cols: dict[str, list[float]] = {k: [] for k in (
        "X00", "Y00", "X10", "Y10", "X01", "Y01")}
    for ext, mapper in zip(exts, mappers, strict=True):
        ny, nx = ext.data_shape
        mx, my = mapper(np.array([-0.5, nx - 0.5, -0.5]),
                        np.array([-0.5, -0.5, ny - 0.5]))
        for i, corner in enumerate(("00", "10", "01")):
            cols["X" + corner].append(float(mx[i]))
            cols["Y" + corner].append(float(my[i]))
    table = Table({
        "EXTNAME": np.array([e.name for e in exts], dtype=str),
        "NAXIS1": np.array([e.data_shape[1] for e in exts], dtype=np.int32),
        "NAXIS2": np.array([e.data_shape[0] for e in exts], dtype=np.int32),
        **{k: np.array(v, dtype=float) for k, v in cols.items()},
    })
    unit = "arcmin" if kind == "wcs" else "pix"
    for name in cols:
        table[name].unit = unit
    return table


def aggregate(exts: Sequence[ImageExtension],
              reports: Sequence[ExtensionReport],
              config: QualityConfig) -> ExposureReport:
    """Aggregate the CCDs of an exposure.

    Median, min and max of each metric over the assessed CCDs (those
    where it is null, e.g. withheld, left out), the mosaic PSF map, and
    the exposure QA flags.
    """
    ok = [r for r in reports if r.ok]
    metrics: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        vals = np.array([r.metrics.get(metric.name, np.nan) for r in ok],
                        dtype=float)
        vals = vals[np.isfinite(vals)]
        stats = {"median": math.nan, "min": math.nan, "max": math.nan}
        if vals.size:
            stats = {"median": float(np.median(vals)),
                     "min": float(vals.min()), "max": float(vals.max())}
        if metric.name in _COUNT_METRICS:
            stats["total"] = float(vals.sum()) if vals.size else math.nan
        metrics[metric.name] = stats
    kind, mappers = placement(exts)
    table = mosaic_psf(kind, mappers, reports)
    ccd_flags: dict[str, list[str]] = {}
    for rep in reports:
        for flag in rep.flags:
            ccd_flags.setdefault(flag, []).append(rep.name)
    flags = []
    med = {k: v["median"] for k, v in metrics.items()}
    if med["FWHM_ARCSEC"] > config.poor_seeing_arcsec:
        flags.append("POOR_SEEING")
    if med["ELLIPTICITY"] > config.elongated_ellipticity or (
            not math.isfinite(med["ELLIPTICITY"])
            and "ELONGATED" in ccd_flags):
        # Without a measured PSF, the CCDs' sources elongated alike.
        flags.append("ELONGATED")
    if not med["NSTAR_FIT"] >= config.few_psf_stars:
        flags.append("FEW_PSF_STARS")
    if "PSF_WITHHELD" in ccd_flags:
        # Its CCDs' PSF numbers are null, and left out of the medians.
        flags.append("PSF_WITHHELD")
    sky = metrics["SKY_MEAN"]
    if "BKG_ANOMALY" in ccd_flags or (
            len(ok) > 1 and sky["median"] > 0
            and (sky["max"] - sky["min"]) / sky["median"]
            > config.bkg_gradient):
        flags.append("BKG_ANOMALY")
    fwhm = table["FWHM"][np.isfinite(table["FWHM"])]
    if fwhm.size and med["FWHM_PIX"] > 0 and (
            (fwhm.max() - fwhm.min()) / med["FWHM_PIX"] > config.psf_varies):
        flags.append("PSF_VARIES")
    if "DOUBLE_PSF" in ccd_flags:
        flags.append("DOUBLE_PSF")
    if med["STAR_CR_FRAC"] > config.cr_heavy:
        flags.append("CR_HEAVY")
    if len(ok) < len(reports):
        flags.append("MISSING_CCD")
        ccd_flags["MISSING_CCD"] = [r.name for r in reports if not r.ok]
    grade = grade_exposure(med, flags=flags, n_ccds=len(reports),
                           n_failed=len(reports) - len(ok), config=config)
    return ExposureReport(
        metrics=metrics,
        flags=tuple(flags),
        grade=grade,
        ccd_flags={k: tuple(v) for k, v in ccd_flags.items()},
        placement=kind,
        mosaic_psf=table,
        layout=layout(kind, mappers, exts),
    )
