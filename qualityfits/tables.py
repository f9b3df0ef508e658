"""The report's tables: a `QualityReport` as `votable` documents.

Two products of a report, described column by column in
``docs/products-tables.md``:

* the statistics (`summary_document`, written by
  `write_summary_votable` and `write_summary_fits`): ``extensions`` (one
  row per CCD: identification, every metric of
  `qualityfits.metrics.METRICS`, QA flags, notes, error) and ``exposure``
  (one row: for every metric its median over the assessed CCDs,
  ``_MIN`` and ``_MAX`` columns, ``_TOTAL`` for counts, and the exposure
  QA flags), with the input parameters and configuration as parameter
  groups;
* the source catalogue (`catalogue_document`, written by
  `write_catalogue_votable` and `write_catalogue_fits`): the ``sources``
  tables of the extensions, in file order (failed extensions contribute
  the sources measured before the failure, if any), preceded by
  ``EXTNAME`` and ``HDU`` columns.  Columns are those of the pipeline's
  tables (SExtractor names, ``docs/metrics.md``), their union over the
  extensions: a column some extension lacks (``ALPHA_J2000`` without a
  WCS) is null there.  Four columns are added:

  - ``FWHM_RH``: 2 x FLUX_RADIUS, the FWHM of every source as PSFEx's
    ``FWHM_FromFluxRadius`` (exact for a Gaussian profile);
  - ``ELLIP_ISO``: (A_IMAGE - B_IMAGE) / (A_IMAGE + B_IMAGE), the
    isophotal ellipticity of every source in the project's convention;
  - ``FWHM_FIT`` and ``ELLIP_FIT``: the pixel-free Moffat FWHM and
    ellipticity of the PSF stars (``psf_stars``), null for other sources.

This module maps the report to generic tables; `votable` (a leaf that
knows nothing of qualityfits) writes them as VOTable 1.4 (statistics as
TABLEDATA, catalogue as BINARY2) and as FITS (parameters in the primary
header, one BINTABLE per table with ``TUNITn``, ``TCOMMn``, ``TUCDn``).
Metric UCDs pass through `metric_ucd`, the one place where spellings of
`qualityfits.metrics` that are not valid UCD1+ are corrected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from astropy.table import Column as TableColumn
from astropy.table import Table
from numpy.typing import NDArray

from qualityfits.metrics import METRICS, Metric
from qualityfits.report import ExtensionReport, QualityReport
from votable import (
    Column,
    Document,
    Group,
    Param,
    TableSpec,
    param_datatype,
    ucd_with,
    votable_bytes,
    vounit,
    write_fits,
    write_votable,
)

__all__ = [
    "INT_NULL",
    "METRIC_UCD_FIXES",
    "SOURCE_COLUMNS",
    "catalogue_document",
    "metric_ucd",
    "summary_document",
    "summary_votable_bytes",
    "write_catalogue_fits",
    "write_catalogue_votable",
    "write_summary_fits",
    "write_summary_votable",
]

#: Metrics whose UCD in `qualityfits.metrics` breaks the UCD1+ syntax (a
#: word that may only be secondary comes first): name -> (the UCD there,
#: the valid UCD written instead).  A fix applies only while the metric
#: still has the UCD it corrects.
METRIC_UCD_FIXES: Final[Mapping[str, tuple[str, str]]] = {
    "FWHM_MIN": ("stat.min;instr.det.psf", "instr.det.psf;stat.min"),
    "FWHM_MAX": ("stat.max;instr.det.psf", "instr.det.psf;stat.max"),
    "PIXSCALE": ("instr.pixel", "instr.scale;instr.pixel"),
    "CR_FRAC": ("arith.ratio;phys.particle", "stat.filling;phys.particle"),
    "STAR_CR_FRAC": ("arith.ratio;phys.particle",
                     "meta.number;arith.ratio;phys.particle"),
    "FRAC_W0": ("arith.ratio;instr.det", "stat.filling;instr.det"),
    "W_MEAN": ("stat.mean;instr.det", "stat.weight;stat.mean"),
}


def metric_ucd(name: str, ucd: str) -> str:
    """Return a UCD1+-valid UCD for a metric ("" stays "")."""
    bad, good = METRIC_UCD_FIXES.get(name, ("", ""))
    return good if bad and ucd == bad else ucd


def _image_param(report: QualityReport) -> Param:
    """Return the ``IMAGE`` parameter: the input file of a report."""
    return Param("IMAGE", "IMAGE", report.image, "char",
                 ucd="meta.id;meta.file",
                 description="Input image (file name)")


def _document(report: QualityReport, what: str,
                   groups: tuple[Group, ...],
                   tables: tuple[TableSpec, ...]) -> Document:
    """Collect a report's versions with the groups and tables given.

    The description reads "QualityFITS <what> of <image>".
    """
    return Document(
        description=f"QualityFITS {what} of {report.image}",
        versions=dict(report.versions),
        groups=groups,
        tables=tables,
    )


#: Null of the integer columns (counts are never negative).
INT_NULL: Final = -1

#: report.parameters key -> (name, datatype, unit, UCD, description).
_INPUTS: Final[Mapping[str, tuple[str, str, str, str, str]]] = {
    "flat": ("FLAT", "char", "", "meta.id;meta.file",
             "Master flat given (file name); null: none"),
    "mask": ("MASK", "char", "", "meta.id;meta.file",
             "User mask given (file name); null: none"),
    "zeropoint": ("ZEROPOINT", "double", "mag", "phot.mag;arith.zp",
                  ("Zero point given by the caller; null: read from the "
                  "header (the ZEROPOINT column holds the value used)")),
    "pixscale": ("PIXSCALE", "double", "arcsec", "instr.scale;instr.pixel",
                 ("Pixel scale given by the caller; null: from the WCS or "
                 "header (the PIXSCALE column holds the value used)")),
    "mask_convention": ("MASK_CONVENTION", "char", "", "meta.code",
                        ("Mask values marking bad pixels: zero or nonzero "
                        "(auto when no mask is given)")),
    "weight": ("WEIGHT", "char", "", "meta.id;meta.file",
               "Weight map given (file name); null: none"),
    "weight_type": ("WEIGHT_TYPE", "char", "", "meta.code",
                    ("What the weight map holds: MAP_WEIGHT, MAP_VAR or "
                     "MAP_RMS (SExtractor's WEIGHT_TYPE)")),
}


def _input_group(report: QualityReport) -> Group:
    params = [_image_param(report)]
    for key, value in report.parameters.items():
        name, datatype, unit, ucd, description = _INPUTS.get(
            key, (key.upper(), "", "", "", f"Input parameter {key}"))
        if not datatype:
            datatype = "char" if value is None else param_datatype(value)
        params.append(Param(name, name, value, datatype, unit, ucd,
                            description))
    return Group("input", "The inputs of the assessment, as given",
                 tuple(params))


def _config_group(report: QualityReport) -> Group:
    params = []
    for key, value in report.config.to_dict().items():
        datatype = "char" if value is None else param_datatype(value)
        params.append(Param(
            key, f"CONFIG {key.upper()}", value, datatype,
            description=(f"QualityConfig.{key}: see "
                         "docs/configuration.md")))
    return Group("config", "The configuration used (QualityConfig)",
                 tuple(params))


def _int_values(values: Sequence[float]) -> NDArray[np.signedinteger]:
    """Return counts as int32 (int64 if one does not fit), null INT_NULL."""
    ints = [int(v) if math.isfinite(v) else INT_NULL for v in values]
    wide = any(abs(v) >= 2**31 for v in ints)
    return np.array(ints, dtype=np.int64 if wide else np.int32)


def _metric_values(metric: Metric,
                   values: Sequence[float]) -> tuple[NDArray[Any],
                                                     int | None]:
    if metric.integer:
        return _int_values(values), INT_NULL
    return np.array(values, dtype=np.float64), None


def _text(name: str, values: Sequence[str], ucd: str,
          description: str) -> Column:
    return Column(name, np.array(list(values), dtype=np.str_), ucd=ucd,
                  description=description)


def extensions_table(report: QualityReport) -> TableSpec:
    """Build ``extensions``: one row per CCD, metrics, flags, error."""
    exts = report.extensions
    columns = [
        _text("EXTNAME", [e.name for e in exts], "meta.id;instr.det",
              "Extension name (EXTNAME; PRIMARY or HDU<n> without one)"),
        Column("HDU", np.array([e.index for e in exts], dtype=np.int32),
               ucd="meta.id.part;instr.det",
               description="Index of the HDU in the input file "
                           "(0: primary)"),
        _text("STATUS", [e.status for e in exts], "meta.code.status",
              "ok: assessed; failed: see ERROR_CODE and ERROR (metrics "
              "measured before the failure are kept)"),
        Column("NAXIS1", np.array([e.shape[1] for e in exts],
                                  dtype=np.int32),
               unit="pix", ucd="meta.number;instr.pixel",
               description="Pixels along x of the data assessed"),
        Column("NAXIS2", np.array([e.shape[0] for e in exts],
                                  dtype=np.int32),
               unit="pix", ucd="meta.number;instr.pixel",
               description="Pixels along y of the data assessed"),
    ]
    for metric in METRICS:
        values, null = _metric_values(
            metric, [e.metrics.get(metric.name, math.nan) for e in exts])
        columns.append(Column(
            metric.name, values, vounit(metric.unit),
            metric_ucd(metric.name, metric.ucd), metric.description, null))
    columns += [
        _text("QA_FLAGS", [",".join(e.flags) for e in exts],
              "meta.code.qual",
              "QA flags raised, comma-separated (docs/metrics.md)"),
        _text("NOTES", ["; ".join(e.notes) for e in exts], "meta.note",
              "What the reader should know (zero point or pixel scale "
              "source...), semicolon-separated"),
        _text("ERROR_CODE",
              ["" if e.error is None else e.error.code for e in exts],
              "meta.code",
              "Why the extension failed, as a stable code; empty if "
              "assessed"),
        _text("ERROR",
              ["" if e.error is None else e.error.message for e in exts],
              "meta.note",
              "Why the extension failed, in words; empty if assessed"),
    ]
    return TableSpec(
        "extensions", "EXTENSIONS",
        "Statistics of each extension (CCD) of the image, one row each",
        tuple(columns))


#: Statistic of the exposure aggregate -> (column suffix, UCD word,
#: description prefix).  The median is the unsuffixed column.
_AGGREGATES: Final = (
    ("median", "", "stat.median", "Median over the assessed CCDs of"),
    ("min", "_MIN", "stat.min", "Minimum over the assessed CCDs of"),
    ("max", "_MAX", "stat.max", "Maximum over the assessed CCDs of"),
    ("total", "_TOTAL", "arith.sum", "Sum over the assessed CCDs of"),
)


def exposure_table(report: QualityReport) -> TableSpec:
    """Build ``exposure``: every metric's median, minimum, maximum, total.

    Medians are floating point (the median of an even number of counts
    may end in .5); minima, maxima and totals of integer metrics are
    integers.  ``_TOTAL`` columns exist for the metrics the aggregate
    sums (the counts).
    """
    n_failed = len(report.failed)
    columns = [
        Column("N_EXTENSIONS",
               np.array([len(report.extensions)], dtype=np.int32),
               ucd="meta.number;instr.det",
               description="Extensions (CCDs) in the image"),
        Column("N_FAILED", np.array([n_failed], dtype=np.int32),
               ucd="meta.number;instr.det",
               description="Extensions that could not be assessed"),
    ]
    for metric in METRICS:
        stats = report.exposure.metrics.get(metric.name, {})
        for key, suffix, word, prefix in _AGGREGATES:
            if key not in stats and key != "median":
                continue
            value = float(stats.get(key, math.nan))
            if metric.integer and key != "median":
                values: NDArray[Any] = _int_values([value])
                null: int | None = INT_NULL
            else:
                values, null = np.array([value], dtype=np.float64), None
            columns.append(Column(
                metric.name + suffix, values, vounit(metric.unit),
                ucd_with(metric_ucd(metric.name, metric.ucd), word),
                f"{prefix} {metric.name} ({metric.description})", null))
    columns.append(_text(
        "QA_FLAGS", [",".join(report.exposure.flags)], "meta.code.qual",
        "Exposure QA flags, comma-separated (docs/metrics.md)"))
    grade = report.exposure.grade
    columns.append(_text(
        "GRADE", [grade.letter], "meta.code.qual",
        "Grade of the exposure: A good, B usable with a defect, C poor, "
        "D unusable (docs/metrics.md, Grades)"))
    columns.append(_text(
        "GRADE_REASONS", ["; ".join(grade.reasons)], "meta.note",
        "Why the grade is below A, worst first, semicolon-separated"))
    return TableSpec(
        "exposure", "EXPOSURE",
        "Aggregate over the assessed extensions of the exposure, one row",
        tuple(columns))


def summary_document(report: QualityReport) -> Document:
    """Collect the statistics of a report, for either format."""
    return _document(
        report, "statistics",
        groups=(_input_group(report), _config_group(report)),
        tables=(extensions_table(report), exposure_table(report)))


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


def catalogue_document(report: QualityReport) -> Document:
    """Collect the source catalogue of a report, for either format."""
    return _document(
        report, "source catalogue",
        groups=(Group("input", "The input image", (_image_param(report),)),),
        tables=(sources_table(report),))


# -- the four files --------------------------------------------------------
def summary_votable_bytes(report: QualityReport) -> bytes:
    """Return the statistics of a report as a VOTable 1.4 document.

    Parameters
    ----------
    report : QualityReport
        The assessment.

    Returns
    -------
    bytes
        The UTF-8 document, TABLEDATA serialisation.
    """
    return votable_bytes(summary_document(report))


def write_summary_votable(report: QualityReport, path: str | Path) -> Path:
    """Write the statistics of a report as a VOTable 1.4 file.

    One ``RESOURCE type="results"``: software versions (INFO), the
    ``input`` and ``config`` groups of PARAMs, the ``extensions`` table
    (one row per CCD) and the ``exposure`` table (one row), TABLEDATA.

    Parameters
    ----------
    report : QualityReport
        The assessment.
    path : str or Path
        Output file; overwritten if it exists.

    Returns
    -------
    Path
        The file written.
    """
    return write_votable(summary_document(report), path)


def write_summary_fits(report: QualityReport, path: str | Path) -> Path:
    """Write the statistics of a report as a FITS file.

    The primary HDU (no data) carries the versions, inputs and
    configuration as keywords; BINTABLEs ``EXTENSIONS`` and ``EXPOSURE``
    hold the same columns as the VOTable.

    Parameters
    ----------
    report : QualityReport
        The assessment.
    path : str or Path
        Output file; overwritten if it exists.

    Returns
    -------
    Path
        The file written.
    """
    return write_fits(summary_document(report), path)


def write_catalogue_votable(report: QualityReport,
                            path: str | Path) -> Path:
    """Write the source catalogue of a report as a VOTable 1.4 file.

    One ``RESOURCE type="results"`` with the versions, the image name and
    the ``sources`` table, BINARY2 serialisation (base64).

    Parameters
    ----------
    report : QualityReport
        The assessment.
    path : str or Path
        Output file; overwritten if it exists.

    Returns
    -------
    Path
        The file written.
    """
    return write_votable(catalogue_document(report), path, binary=True)


def write_catalogue_fits(report: QualityReport, path: str | Path) -> Path:
    """Write the source catalogue of a report as a FITS file.

    The primary HDU carries the versions and image name; the BINTABLE
    ``SOURCES`` the same columns as the VOTable.

    Parameters
    ----------
    report : QualityReport
        The assessment.
    path : str or Path
        Output file; overwritten if it exists.

    Returns
    -------
    Path
        The file written.
    """
    return write_fits(catalogue_document(report), path)
