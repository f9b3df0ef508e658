"""The statistics of a report as a `Product`: per-extension and exposure.

Two tables, ``extensions`` (one row per CCD: identification, every
metric of `qualityfits.metrics.METRICS`, QA flags, notes, error) and
``exposure`` (one row: for every metric its median over the assessed
CCDs, ``_MIN`` and ``_MAX`` columns, ``_TOTAL`` for counts, and the
exposure QA flags), with the input parameters and configuration as
parameter groups.  ``docs/products-tables.md`` describes every column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from qualityfits.metrics import METRICS, Metric
from qualityfits.report import QualityReport
from votable._model import (
    Column,
    Group,
    Param,
    Product,
    TableSpec,
    image_param,
    metric_ucd,
    param_datatype,
    report_product,
    ucd_with,
    vounit,
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
}


def _input_group(report: QualityReport) -> Group:
    params = [image_param(report)]
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
    return TableSpec(
        "exposure", "EXPOSURE",
        "Aggregate over the assessed extensions of the exposure, one row",
        tuple(columns))


def summary_product(report: QualityReport) -> Product:
    """Collect the statistics of a report, for either format."""
    return report_product(
        report, "statistics",
        groups=(_input_group(report), _config_group(report)),
        tables=(extensions_table(report), exposure_table(report)))
