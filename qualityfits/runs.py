"""A run: the exposures of a night (or of any set), judged together.

Observers judge a night, not an image: which exposures to keep, when
the seeing went bad, whether one CCD drifts.  A run is a list of
assessed exposures — each given by its summary (`QualityReport.to_dict`,
the ``<stem>.summary.json`` product) — and this module turns it into

* the run's tables (`run_document`, written by `write_run_votable` and
  `write_run_fits`): ``exposures``, one row per exposure (when, filter,
  exposure time, airmass from the header; median FWHM in pixels and
  arcsec with the spread over the CCDs, ellipticity, sky, depth,
  cosmic rays, QA flags, the grade and its reasons), and ``ccds``, one
  row per CCD of every exposure;
* its pictures (`write_run_plots`): the trends against time (FWHM,
  ellipticity, sky brightness, depth; one point per exposure with the
  CCDs' spread as a bar) and a focal-plane strip (the FWHM of every
  CCD, one line per exposure).

The same code serves the command line (``qualityfits run``, a folder)
and the service (``/runs/{runid}``, the jobs sharing a RUNID), so the
two show the same numbers.  An exposure not yet assessed (a job still
running, or one that ended in error) is a row with its phase and null
numbers: the table says what is missing rather than hiding it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from qualityfits.metrics import METRIC_BY_NAME
from qualityfits.tables import metric_ucd
from votable import (
    Column,
    Document,
    Group,
    Param,
    TableSpec,
    ucd_with,
    votable_bytes,
    vounit,
    write_fits,
    write_votable,
)

#: Exposure metrics of the run table: median over the CCDs, with the
#: minimum and maximum of those whose spread tells something.
RUN_METRICS: Final = (
    ("FWHM_PIX", True), ("FWHM_ARCSEC", True), ("ELLIPTICITY", True),
    ("SKY_MEAN", False), ("SKY_MAG", True), ("MAGLIM_5SIG", True),
    ("CR_FRAC", False), ("STAR_CR_FRAC", False), ("NSTAR_FIT", False),
)

#: CCD metrics of the ``ccds`` table.
CCD_METRICS: Final = ("FWHM_PIX", "FWHM_ARCSEC", "ELLIPTICITY",
                      "SKY_MEAN", "SKY_MAG", "MAGLIM_5SIG", "NSTAR_FIT",
                      "CR_FRAC")

#: Integer nulls (counts are never negative).
_INT_NULL: Final = -1


@dataclass(frozen=True)
class RunExposure:
    """One exposure of a run.

    Attributes
    ----------
    image : str
        The image's file name.
    summary : Mapping or None
        Its summary (`QualityReport.to_dict`); None when it has none
        (still running, or failed).
    job_id : str
        The UWS job (empty on the command line).
    phase : str
        The job's phase (``COMPLETED`` on the command line); ``ERROR``
        rows carry ``error``.
    error : str
        Why it has no summary, when it failed.
    link : str
        Where a person sees it (its results page or report), or empty.
    """

    image: str
    summary: Mapping[str, Any] | None
    job_id: str = ""
    phase: str = "COMPLETED"
    error: str = ""
    link: str = ""

    @property
    def observation(self) -> Mapping[str, Any]:
        """When, where and how it was taken (empty without a summary)."""
        obs: Mapping[str, Any] = (self.summary or {}).get(
            "observation") or {}
        return obs

    def median(self, metric: str, stat: str = "median") -> float:
        """Return an exposure aggregate of a metric (NaN: not measured)."""
        if self.summary is None:
            return math.nan
        value = (self.summary.get("exposure", {}).get("metrics", {})
                 .get(metric, {}).get(stat))
        return math.nan if value is None else float(value)

    @property
    def mjd(self) -> float:
        """MJD of the exposure's start (NaN: the header does not say)."""
        value = self.observation.get("mjd_obs")
        return math.nan if value is None else float(value)

    @property
    def grade(self) -> Mapping[str, Any]:
        """The grade (``letter``, ``reasons``), empty without a summary."""
        if self.summary is None:
            return {}
        return self.summary.get("exposure", {}).get("grade") or {}

    @property
    def flags(self) -> tuple[str, ...]:
        """The exposure QA flags."""
        if self.summary is None:
            return ()
        return tuple(self.summary.get("exposure", {}).get("flags", ()))

    @property
    def ccds(self) -> list[Mapping[str, Any]]:
        """The summary's extensions (empty without a summary)."""
        if self.summary is None:
            return []
        return list(self.summary.get("extensions", ()))


def in_time_order(exposures: Sequence[RunExposure]) -> list[RunExposure]:
    """Sort by MJD-OBS; exposures without one keep their order, last."""
    dated = sorted((e for e in exposures if math.isfinite(e.mjd)),
                   key=lambda e: e.mjd)
    return dated + [e for e in exposures if not math.isfinite(e.mjd)]


def _text(name: str, values: Sequence[str], ucd: str,
          description: str) -> Column:
    return Column(name, np.array(list(values), dtype=np.str_), ucd=ucd,
                  description=description)


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values],
                    dtype=np.float64)


def _ints(values: Sequence[float]) -> np.ndarray:
    return np.array([int(v) if math.isfinite(v) else _INT_NULL
                     for v in values], dtype=np.int32)


def _metric_column(name: str, values: Sequence[float], stat: str,
                   suffix: str, prefix: str) -> Column:
    metric = METRIC_BY_NAME[name]
    ucd = metric_ucd(name, metric.ucd)
    if stat != "value":
        ucd = ucd_with(ucd, stat)
    if metric.integer and stat in ("value", "stat.min", "stat.max"):
        return Column(name + suffix, _ints(values), vounit(metric.unit),
                      ucd, f"{prefix}{metric.description}", _INT_NULL)
    return Column(name + suffix, np.array(values, dtype=np.float64),
                  vounit(metric.unit), ucd,
                  f"{prefix}{metric.description}")


def exposures_table(exposures: Sequence[RunExposure]) -> TableSpec:
    """Build ``exposures``: one row per exposure of the run."""
    obs = [e.observation for e in exposures]
    columns = [
        _text("JOB_ID", [e.job_id for e in exposures], "meta.id",
              "UWS job of the exposure (empty on the command line)"),
        _text("IMAGE", [e.image for e in exposures], "meta.id;meta.file",
              "Image file name"),
        _text("PHASE", [e.phase for e in exposures], "meta.code.status",
              "Job phase; the numbers are null unless COMPLETED"),
        _text("DATE_OBS", [o.get("date_obs") or "" for o in obs],
              "time.start;obs.exposure",
              "Start of the exposure, ISO 8601 UTC (header MJD-OBS or "
              "DATE-OBS; empty: not in the header)"),
        Column("MJD_OBS", _floats([o.get("mjd_obs") for o in obs]), "d",
               "time.start;obs.exposure",
               "Start of the exposure, modified Julian date (UTC)"),
        _text("FILTER", [o.get("filter") or "" for o in obs],
              "meta.id;instr.filter", "Filter (header BAND, FILTER, ...)"),
        Column("EXPTIME", _floats([o.get("exptime") for o in obs]), "s",
               "time.duration;obs.exposure",
               "Exposure time (header EXPTIME, ...)"),
        Column("AIRMASS", _floats([o.get("airmass") for o in obs]), "",
               "obs.airMass", "Airmass (header AIRMASS, SECZ)"),
        Column("N_CCD", np.array([len(e.ccds) if e.summary else _INT_NULL
                                  for e in exposures], dtype=np.int32),
               ucd="meta.number;instr.det",
               description="Extensions (CCDs) of the exposure",
               null=_INT_NULL),
        Column("N_FAILED", np.array(
            [int(e.summary.get("n_failed", 0)) if e.summary else _INT_NULL
             for e in exposures], dtype=np.int32),
               ucd="meta.number;instr.det",
               description="CCDs that could not be assessed",
               null=_INT_NULL),
    ]
    for name, spread in RUN_METRICS:
        columns.append(_metric_column(
            name, [e.median(name) for e in exposures], "stat.median", "",
            "Median over the assessed CCDs of: "))
        if spread:
            for stat, suffix, word in (("min", "_MIN", "Minimum"),
                                       ("max", "_MAX", "Maximum")):
                columns.append(_metric_column(
                    name, [e.median(name, stat) for e in exposures],
                    f"stat.{stat}", suffix,
                    f"{word} over the assessed CCDs of: "))
    columns += [
        _text("QA_FLAGS", [",".join(e.flags) for e in exposures],
              "meta.code.qual",
              "Exposure QA flags, comma-separated (docs/metrics.md)"),
        _text("GRADE", [str(e.grade.get("letter", "")) for e in exposures],
              "meta.code.qual",
              "Grade: A good, B usable with a defect, C poor, D unusable "
              "(docs/metrics.md, Grades); empty: not assessed"),
        _text("GRADE_REASONS",
              ["; ".join(e.grade.get("reasons", ())) for e in exposures],
              "meta.note",
              "Why the grade is below A, worst first, semicolon-separated"),
        _text("ERROR", [e.error for e in exposures], "meta.note",
              "Why the exposure has no assessment (phase ERROR)"),
    ]
    return TableSpec("exposures", "EXPOSURES",
                     "One row per exposure of the run, in time order",
                     tuple(columns))


def ccds_table(exposures: Sequence[RunExposure]) -> TableSpec:
    """Build ``ccds``: one row per CCD of every assessed exposure."""
    rows = [(e, ccd) for e in exposures for ccd in e.ccds]

    def metric(ccd: Mapping[str, Any], name: str) -> float:
        value = ccd.get("metrics", {}).get(name)
        return math.nan if value is None else float(value)

    columns = [
        _text("JOB_ID", [e.job_id for e, _ in rows], "meta.id",
              "UWS job of the exposure"),
        _text("IMAGE", [e.image for e, _ in rows], "meta.id;meta.file",
              "Image file name"),
        Column("MJD_OBS", _floats([e.observation.get("mjd_obs")
                                   for e, _ in rows]), "d",
               "time.start;obs.exposure",
               "Start of the exposure, modified Julian date (UTC)"),
        _text("EXTNAME", [str(c.get("name", "")) for _, c in rows],
              "meta.id;instr.det", "Extension (CCD) name"),
        _text("STATUS", [str(c.get("status", "")) for _, c in rows],
              "meta.code.status", "ok: assessed; failed"),
    ]
    columns += [_metric_column(name, [metric(c, name) for _, c in rows],
                               "value", "", "")
                for name in CCD_METRICS]
    columns.append(_text(
        "QA_FLAGS", [",".join(c.get("flags", ())) for _, c in rows],
        "meta.code.qual", "CCD QA flags, comma-separated"))
    return TableSpec("ccds", "CCDS",
                     "One row per CCD of every assessed exposure",
                     tuple(columns))


def run_document(run_id: str, exposures: Sequence[RunExposure],
                 versions: Mapping[str, str]) -> Document:
    """Collect the run's two tables, exposures in time order."""
    ordered = in_time_order(exposures)
    params = (Param("RUN_ID", "RUNID", run_id, "char", ucd="meta.id",
                    description="The run (UWS RUNID) of these exposures"),
              Param("N_EXPOSURES", "NEXPOSUR", len(ordered), "int",
                    ucd="meta.number",
                    description="Exposures in the run"))
    return Document(
        description=f"QualityFITS run {run_id}: {len(ordered)} exposures",
        versions=dict(versions),
        groups=(Group("run", "The run", params),),
        tables=(exposures_table(ordered), ccds_table(ordered)))


def run_votable_bytes(run_id: str, exposures: Sequence[RunExposure],
                      versions: Mapping[str, str]) -> bytes:
    """Return the run's VOTable 1.4 (TABLEDATA)."""
    return votable_bytes(run_document(run_id, exposures, versions),
                         binary=False)


def write_run_votable(run_id: str, exposures: Sequence[RunExposure],
                      versions: Mapping[str, str], path: Path) -> Path:
    """Write the run's VOTable."""
    return write_votable(run_document(run_id, exposures, versions), path,
                         binary=False)


def write_run_fits(run_id: str, exposures: Sequence[RunExposure],
                   versions: Mapping[str, str], path: Path) -> Path:
    """Write the run's tables as FITS (EXPOSURES and CCDS extensions)."""
    return write_fits(run_document(run_id, exposures, versions), path)


@dataclass(frozen=True)
class RunRow:
    """One exposure as the run pages show it (texts, escaped later)."""

    exposure: RunExposure
    cells: tuple[str, ...]
    grade: str
    reasons: str
    sort_keys: tuple[float | str, ...]


def _cell(value: float, digits: int) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def run_columns(exposures: Sequence[RunExposure]) -> tuple[str, ...]:
    """Return the headings of `run_rows`' cells."""
    arcsec = all(math.isfinite(e.median("FWHM_ARCSEC")) for e in exposures
                 if e.summary is not None)
    return ("Start (UTC)", "Image", "Phase", "Filter", "Exp. [s]",
            "Airmass", "FWHM [″]" if arcsec else "FWHM [px]",
            "FWHM CCD range", "Ellipticity", "Sky [mag/″²]", "5σ depth",
            "CR frac.", "QA flags")


def run_rows(exposures: Sequence[RunExposure]) -> list[RunRow]:
    """Return the exposures in time order as the pages' rows.

    The FWHM is in arcsec when every assessed exposure has a pixel
    scale, else in pixels (`run_columns` says which).
    """
    ordered = in_time_order(exposures)
    arcsec = all(math.isfinite(e.median("FWHM_ARCSEC")) for e in ordered
                 if e.summary is not None)
    fwhm = "FWHM_ARCSEC" if arcsec else "FWHM_PIX"
    rows = []
    for e in ordered:
        obs = e.observation
        date = str(obs.get("date_obs") or "")
        lo, hi = e.median(fwhm, "min"), e.median(fwhm, "max")
        cells = (
            date.replace("T", " ")[:19] or "–", e.image, e.phase,
            str(obs.get("filter") or "–"),
            _cell(float(obs.get("exptime") or math.nan), 1),
            _cell(float(obs.get("airmass") or math.nan), 2),
            _cell(e.median(fwhm), 2),
            f"{_cell(lo, 2)}–{_cell(hi, 2)}" if math.isfinite(lo) else "–",
            _cell(e.median("ELLIPTICITY"), 3),
            _cell(e.median("SKY_MAG"), 2),
            _cell(e.median("MAGLIM_5SIG"), 2),
            _cell(e.median("CR_FRAC"), 5),
            ", ".join(e.flags) or ("none" if e.summary else "–"),
        )
        rows.append(RunRow(
            e, cells, str(e.grade.get("letter", "")),
            "; ".join(e.grade.get("reasons", ())) or e.error,
            (e.mjd, e.image, e.median(fwhm))))
    return rows
