"""The source catalogue of a report as a `Product`: every source of every CCD.

The rows are the ``sources`` tables of the extensions, in file order
(failed extensions contribute the sources measured before the failure,
if any), preceded by ``EXTNAME`` and ``HDU`` columns.  Columns are those
of the pipeline's tables (SExtractor names, ``docs/metrics.md``), their
union over the extensions: a column some extension lacks (``ALPHA_J2000``
without a WCS) is null there.  Four columns are added:

* ``FWHM_RH``: 2 x FLUX_RADIUS, the FWHM of every source as PSFEx's
  ``FWHM_FromFluxRadius`` (exact for a Gaussian profile);
* ``ELLIP_ISO``: (A_IMAGE - B_IMAGE) / (A_IMAGE + B_IMAGE), the
  isophotal ellipticity of every source in the project's convention;
* ``FWHM_FIT`` and ``ELLIP_FIT``: the pixel-free Moffat FWHM and
  ellipticity of the PSF stars (``psf_stars``), null for other sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from astropy.table import Column as TableColumn
from astropy.table import Table
from numpy.typing import NDArray

from qualityfits.report import ExtensionReport, QualityReport
from votable._model import (
    Column,
    Group,
    Product,
    TableSpec,
    image_param,
    report_product,
    vounit,
)

#: Source column -> (UCD, description).
SOURCE_COLUMNS: Final[Mapping[str, tuple[str, str]]] = {
    "NUMBER": ("meta.record",
               "Source number within its extension (SExtractor NUMBER)"),
    "X_IMAGE": ("pos.cartesian.x;instr.det",
                "Position along x, FITS 1-based pixel coordinates"),
    "Y_IMAGE": ("pos.cartesian.y;instr.det",
                "Position along y, FITS 1-based pixel coordinates"),
    "FLUX_AUTO": ("phot.count",
                  "Background-subtracted flux in the Kron (AUTO) aperture"),
    "FLUXERR_AUTO": ("stat.error;phot.count", "RMS error of FLUX_AUTO"),
    "MAG_AUTO": ("phot.mag",
                 ("ZEROPOINT - 2.5 log10(FLUX_AUTO); null where FLUX_AUTO "
                 "is not positive")),
    "MAGERR_AUTO": ("stat.error;phot.mag", "RMS error of MAG_AUTO"),
    "SNR": ("stat.snr", "FLUX_AUTO / FLUXERR_AUTO"),
    "FLUX_RADIUS": ("phys.size.radius;instr.det",
                    "Radius enclosing half of the flux (half-light radius)"),
    "A_IMAGE": ("phys.size.smajAxis;instr.det",
                "Isophotal semi-major axis (second moments)"),
    "B_IMAGE": ("phys.size.sminAxis;instr.det",
                "Isophotal semi-minor axis (second moments)"),
    "THETA_IMAGE": ("pos.posAng;instr.det",
                    ("Position angle of the major axis, counter-clockwise "
                    "from +x")),
    "KRON_RADIUS": ("arith.factor",
                    ("Kron radius of the AUTO aperture, in units of A_IMAGE "
                    "and B_IMAGE")),
    "BACKGROUND": ("instr.skyLevel", "Local background at the source"),
    "FLUX_MAX": ("phot.count;stat.max",
                 "Peak pixel value above the background"),
    "FLAGS": ("meta.code.qual",
              ("Extraction flags: 1 NEIGHBOURS, 2 BLENDED, 4 SATURATED, "
              "8 TRUNCATED, 16 BAD_PIXELS, 32 APER_CORRUPT "
              "(docs/metrics.md)")),
    "CLASS": ("src.class", "star, galaxy or artefact (docs/pipeline.md)"),
    "SPREAD_MODEL": ("src.class.starGalaxy",
                     ("Star/galaxy discriminator: S minus its median over "
                     "the PSF stars (about 0 for a point source)")),
    "SPREADERR_MODEL": ("stat.error;src.class.starGalaxy",
                        ("Standard error of SPREAD_MODEL; null where not "
                        "measured")),
    "PSF_STAR": ("meta.code;instr.det.psf",
                 "True for the PSF stars whose pixel-free fit was kept"),
    "ALPHA_J2000": ("pos.eq.ra;meta.main",
                    ("Right ascension from the image WCS; null without a "
                    "celestial WCS")),
    "DELTA_J2000": ("pos.eq.dec;meta.main",
                    ("Declination from the image WCS; null without a "
                    "celestial WCS")),
    "FWHM_RH": ("phys.size;instr.det",
                ("2 x FLUX_RADIUS: full width at half maximum of a "
                 "Gaussian source with this half-light radius")),
    "ELLIP_ISO": ("src.ellipticity",
                  ("(A_IMAGE - B_IMAGE) / (A_IMAGE + B_IMAGE): isophotal "
                  "ellipticity")),
    "FWHM_FIT": ("instr.det.psf;stat.fit",
                 ("FWHM of the pixel-free Moffat fit of a PSF star; null "
                 "for other sources")),
    "ELLIP_FIT": ("src.ellipticity;instr.det.psf",
                  ("(A - B)/(A + B) of the pixel-free Moffat fit of a PSF "
                  "star; null for other sources")),
}

#: psf_stars column -> catalogue column.
_FROM_PSF_STARS: Final = (("FWHM", "FWHM_FIT"), ("ELLIPTICITY", "ELLIP_FIT"))


def _unit(column: TableColumn) -> str:
    return "" if column.unit is None else vounit(column.unit.to_string())


def _with_derived(ext: ExtensionReport, sources: Table) -> Table:
    """Add FWHM_RH, ELLIP_ISO and the PSF-star fit columns to a table."""
    table = Table(sources, copy=False)
    names = set(table.colnames)
    if "FLUX_RADIUS" in names and "FWHM_RH" not in names:
        table["FWHM_RH"] = 2.0 * np.asarray(table["FLUX_RADIUS"],
                                            dtype=np.float64)
        table["FWHM_RH"].unit = "pix"
    if {"A_IMAGE", "B_IMAGE"} <= names and "ELLIP_ISO" not in names:
        a = np.asarray(table["A_IMAGE"], dtype=np.float64)
        b = np.asarray(table["B_IMAGE"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            table["ELLIP_ISO"] = (a - b) / (a + b)
    stars = ext.psf_stars
    for star_col, name in _FROM_PSF_STARS:
        if name in names:
            continue
        values = np.full(len(table), np.nan)
        unit = None
        if (stars is not None and len(stars) and len(table)
                and star_col in stars.colnames
                and "NUMBER" in table.colnames):
            numbers = np.asarray(table["NUMBER"])
            order = np.argsort(numbers, kind="stable")
            wanted = np.asarray(stars["NUMBER"])
            pos = np.minimum(np.searchsorted(numbers[order], wanted),
                             len(order) - 1)
            found = numbers[order][pos] == wanted
            values[order[pos[found]]] = np.asarray(
                stars[star_col], dtype=np.float64)[found]
            unit = stars[star_col].unit
        table[name] = values
        table[name].unit = unit
    return table


def _concatenate(name: str,
                 tables: list[Table]) -> tuple[NDArray[Any], int | None]:
    """One column over all extensions; missing or masked values null.

    Nulls are NaN for floating-point columns, the smallest value of the
    type for integer ones (returned as the null), False for booleans and
    "" for strings.
    """
    present = [np.asarray(t[name]) for t in tables if name in t.colnames]
    dtype = np.result_type(*present)
    if dtype.kind in "iu":
        dtype = np.result_type(dtype, np.int16)  # room for a negative null
    null = int(np.iinfo(dtype).min) if dtype.kind == "i" else None
    fill: Any = {"f": np.nan, "b": False, "U": "", "S": b""}.get(
        dtype.kind, null)
    parts = []
    for table in tables:
        if name not in table.colnames:
            parts.append(np.full(len(table), fill, dtype=dtype))
            continue
        values = np.asarray(np.ma.filled(table[name], fill))
        parts.append(values.astype(dtype, copy=False))
    values = np.concatenate(parts) if parts else np.zeros(0, dtype)
    if null is not None and not np.any(values == null):
        null = None
    return values, null


def sources_table(report: QualityReport) -> TableSpec:
    """Build the ``sources`` table: every source of every extension."""
    pairs = [(e, e.sources) for e in report.extensions
             if e.sources is not None]
    exts = [e for e, _ in pairs]
    tables = [_with_derived(e, sources) for e, sources in pairs]
    sizes = [len(t) for t in tables]
    columns = [
        Column("EXTNAME",
               np.repeat(np.array([e.name for e in exts], dtype=np.str_),
                         sizes),
               ucd="meta.id;instr.det",
               description="Extension (CCD) the source was found on"),
        Column("HDU",
               np.repeat(np.array([e.index for e in exts], dtype=np.int32),
                         sizes),
               ucd="meta.id.part;instr.det",
               description="Index of that extension's HDU in the input "
                           "file"),
    ]
    names: list[str] = []
    for table in tables:
        names += [n for n in table.colnames if n not in names]
    for name in names:
        values, null = _concatenate(name, tables)
        present = [t[name] for t in tables if name in t.colnames]
        first = next((c for c in present if c.unit is not None),
                     present[0])
        ucd, description = SOURCE_COLUMNS.get(
            name, ("", str(first.description or "")))
        columns.append(Column(name, values, _unit(first), ucd,
                              description, null))
    return TableSpec(
        "sources", "SOURCES",
        "Every source detected on every extension, with its class",
        tuple(columns))


def catalogue_product(report: QualityReport) -> Product:
    """Collect the source catalogue of a report, for either format."""
    return report_product(
        report, "source catalogue",
        groups=(Group("input", "The input image", (image_param(report),)),),
        tables=(sources_table(report),))
