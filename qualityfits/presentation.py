"""What the report pages show: the per-CCD table and the pictures.

One definition for the two pages that present a product set: the static
``index.html`` (`qualityfits.html`) and the UWS service's results page
(``uws/web.py``).  Both build the per-CCD table with `ccd_table` from the
summary in its JSON form (`QualityReport.to_dict`, the product
``<stem>.summary.json``, id ``summary_json``), and both show the pictures
of `PICTURES`, in that order, with those captions.  Each page only
renders (lxml for one, Jinja2 for the other).

Adding a column to both pages is one entry of `CCD_COLUMNS`; a picture,
one entry of `PICTURES`.

Every HDU of the image file is listed with its role and why
(`hdu_lines`: sky image assessed, mask, weight, table...) on both pages
and by the command line.

Magnitudes measured without a zero point are instrumental; `instrumental`
says so for a CCD, from its metrics, for every place that shows a
magnitude (these pages, the command line's table, the plots).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from qualityfits.metrics import METRIC_BY_NAME

#: Shown where a value is missing (not measured, not finite).
MISSING: Final = "–"
#: Appended to a magnitude of a CCD without a zero point when other
#: CCDs have one (when none has, the column's heading says it).
INSTRUMENTAL_MARK: Final = " (instr.)"
#: Appended to the exposure's median of a magnitude over CCDs of which
#: some have a zero point and some have not.
MIXED_MARK: Final = " (mixed)"
#: Why magnitudes are instrumental, and what it means.
INSTRUMENTAL_WHY: Final = (
    "no zero point was given (zeropoint parameter) or found in the "
    "header (PHOTZP, MAGZERO, ...), so they are -2.5 log10(ADU) "
    "(zero point 0)")


def is_magnitude(metric: str) -> bool:
    """Say whether a metric is a magnitude (its unit starts with mag).

    The zero point itself is not: it is what calibrates the others.
    """
    return (metric != "ZEROPOINT"
            and METRIC_BY_NAME[metric].unit.startswith("mag"))


def instrumental(metrics: Mapping[str, Any]) -> bool:
    """Say whether a CCD's magnitudes are instrumental.

    The pipeline records the zero point it used as the metric
    ``ZEROPOINT`` (given, or read from the header); without one it is
    NaN (``None`` in the JSON summary) and magnitudes are instrumental,
    ``-2.5 log10(ADU)``.  A zero point of 0 (an image in maggies) is a
    zero point.

    Parameters
    ----------
    metrics : mapping
        A CCD's metrics (`ExtensionReport.metrics`, or ``"metrics"`` of
        an extension of the JSON summary).
    """
    zp = metrics.get("ZEROPOINT")
    return (isinstance(zp, bool) or not isinstance(zp, int | float)
            or not math.isfinite(zp))


def instrumental_note(instrumental_ccds: Sequence[str], n_ccds: int,
                      what: str = "Magnitudes", *,
                      marks: tuple[str, str] = (INSTRUMENTAL_MARK,
                                                MIXED_MARK),
                      ) -> str | None:
    """One sentence on the instrumental magnitudes of a report, or None.

    Parameters
    ----------
    instrumental_ccds : sequence of str
        The assessed CCDs whose magnitudes are instrumental.
    n_ccds : int
        The number of assessed CCDs.
    what : str
        What the sentence is about (``"MLIM5"``, ``"Magnitudes"``).
    marks : (str, str)
        How the values of those CCDs, and the exposure's median, are
        marked when only some CCDs have no zero point.
    """
    if not instrumental_ccds:
        return None
    if len(instrumental_ccds) >= n_ccds:
        return f"{what} are instrumental: {INSTRUMENTAL_WHY}."
    own, mixed = (m.strip() for m in marks)
    return (f"{what} of {', '.join(instrumental_ccds)} are instrumental "
            f"(marked {own}): {INSTRUMENTAL_WHY}; the exposure's median "
            f"mixes them with calibrated ones (marked {mixed}).")


@dataclass(frozen=True)
class CcdColumn:
    """One metric column of the per-CCD table.

    Attributes
    ----------
    metric : str
        The metric's name (`qualityfits.metrics.METRICS`).
    heading : str
        The column's heading, without the unit.
    digits : int
        Digits after the decimal point.
    """

    metric: str
    heading: str
    digits: int

    @property
    def label(self) -> str:
        """The heading with the metric's unit: ``FWHM [arcsec]``."""
        return self.label_for(instrumental=False)

    @property
    def title(self) -> str:
        """The metric's name and description (a heading's tooltip)."""
        return f"{self.metric}: {METRIC_BY_NAME[self.metric].description}"

    @property
    def magnitude(self) -> bool:
        """The column holds magnitudes (see `is_magnitude`)."""
        return is_magnitude(self.metric)

    def label_for(self, *, instrumental: bool) -> str:
        """Write the heading with the unit (``instrumental mag`` if so)."""
        unit = METRIC_BY_NAME[self.metric].unit
        if instrumental and self.magnitude:
            unit = f"instrumental {unit}"
        return f"{self.heading} [{unit}]" if unit else self.heading

    def format(self, value: Any) -> str:
        """Write a value with the column's digits (`MISSING` if none)."""
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value)):
            return MISSING
        return f"{value:.{self.digits}f}"


#: The metric columns of the per-CCD table, in order.  The table also
#: has the CCD's name and status first and its QA flags last.
CCD_COLUMNS: Final[tuple[CcdColumn, ...]] = (
    CcdColumn("FWHM_ARCSEC", "FWHM", 2),
    CcdColumn("FWHM_PIX", "FWHM", 2),
    CcdColumn("ELLIPTICITY", "Ellipticity", 3),
    CcdColumn("SKY_MEAN", "Sky", 1),
    CcdColumn("SKY_RMS", "Sky RMS", 2),
    CcdColumn("SKY_MAG", "Sky", 2),
    CcdColumn("NSTAR_FIT", "PSF stars", 0),
    CcdColumn("NSTAR", "Stars", 0),
    CcdColumn("NGAL", "Galaxies", 0),
    CcdColumn("NCR", "Cosmic rays", 0),
    CcdColumn("FRAC_W0", "Zero weight", 4),
    CcdColumn("MAGLIM_5SIG", "5σ depth", 2),
)


@dataclass(frozen=True)
class CcdRow:
    """One row of the per-CCD table.

    Attributes
    ----------
    name : str
        The CCD's name (``median`` for the exposure's row).
    status : str
        ``ok`` or ``failed`` (``median`` for the exposure's row).
    cells : tuple of str
        The metric values, formatted, one per column of the table.
    flags : str
        The QA flags, comma-separated; ``none`` when there is none; why
        the CCD failed for a failed one.
    flagged : bool
        QA flags were raised.
    failed : bool
        The CCD could not be assessed.
    median : bool
        The row of the exposure: the medians over the CCDs.
    """

    name: str
    status: str
    cells: tuple[str, ...]
    flags: str
    flagged: bool
    failed: bool
    median: bool = False

    @property
    def texts(self) -> tuple[str, ...]:
        """Every cell's text, in the order of `CcdTable.headings`."""
        return (self.name, self.status, *self.cells, self.flags)


@dataclass(frozen=True)
class CcdTable:
    """The per-CCD table: its metric columns and its rows."""

    columns: tuple[CcdColumn, ...]
    rows: tuple[CcdRow, ...]
    #: The assessed CCDs whose magnitudes are instrumental.
    instrumental: tuple[str, ...] = ()
    #: The number of assessed CCDs.
    n_assessed: int = 0

    @property
    def all_instrumental(self) -> bool:
        """Every assessed CCD's magnitudes are instrumental."""
        return bool(self.instrumental) and (
            len(self.instrumental) >= self.n_assessed)

    @property
    def headings(self) -> tuple[str, ...]:
        """Every heading, the name, status and QA flags included.

        Magnitude columns say ``instrumental mag`` when every CCD's
        magnitudes are instrumental.
        """
        return ("CCD", "Status", *(
            c.label_for(instrumental=self.all_instrumental)
            for c in self.columns), "QA flags")

    @property
    def titles(self) -> tuple[str, ...]:
        """Each heading's tooltip (the metric's description; or "")."""
        return ("", "", *(
            f"{c.title}. Instrumental: {INSTRUMENTAL_WHY}"
            if c.magnitude and self.instrumental else c.title
            for c in self.columns), "")

    @property
    def note(self) -> str | None:
        """Why magnitudes are instrumental, when a shown one is."""
        if not any(c.magnitude for c in self.columns):
            return None
        return instrumental_note(self.instrumental, self.n_assessed)


def ccd_table(summary: Mapping[str, Any]) -> CcdTable:
    """Build the per-CCD table of a summary.

    Parameters
    ----------
    summary : mapping
        `QualityReport.to_dict`, or the ``<stem>.summary.json`` it was
        written as.

    Returns
    -------
    CcdTable
        The columns of `CCD_COLUMNS` with a value on some CCD (the first
        if none has), one row per CCD, and a ``median`` row for a mosaic.
        When only some CCDs have a zero point, the magnitudes of the
        others end with `INSTRUMENTAL_MARK` and their median with
        `MIXED_MARK`.

    Raises
    ------
    KeyError, TypeError
        ``summary`` is not in that form.
    """
    extensions = summary["extensions"]
    columns = tuple(c for c in CCD_COLUMNS if any(
        c.format(e["metrics"].get(c.metric)) != MISSING
        for e in extensions)) or CCD_COLUMNS[:1]
    assessed = [e for e in extensions if e["status"] == "ok"]
    inst = tuple(e["name"] for e in assessed if instrumental(e["metrics"]))
    mixed = 0 < len(inst) < len(assessed)

    def marked(column: CcdColumn, text: str, mark: str) -> str:
        if mixed and column.magnitude and text != MISSING:
            return text + mark
        return text

    rows = []
    for ext in extensions:
        mark = INSTRUMENTAL_MARK if ext["name"] in inst else ""
        cells = tuple(marked(c, c.format(ext["metrics"].get(c.metric)), mark)
                      for c in columns)
        flags = ", ".join(ext["flags"])
        if ext["status"] == "ok":
            rows.append(CcdRow(ext["name"], "ok", cells, flags or "none",
                               flagged=bool(flags), failed=False))
        else:
            error = ext.get("error") or {}
            rows.append(CcdRow(ext["name"], ext["status"], cells,
                               error.get("message") or "failed",
                               flagged=False, failed=True))
    if len(extensions) > 1:
        exposure = summary["exposure"]
        cells = tuple(marked(c, c.format(exposure["metrics"]
                                         .get(c.metric, {}).get("median")),
                             MIXED_MARK) for c in columns)
        flags = ", ".join(exposure["flags"])
        rows.append(CcdRow("median", "median", cells, flags or "none",
                           flagged=bool(flags), failed=False, median=True))
    return CcdTable(columns, tuple(rows), instrumental=inst,
                    n_assessed=len(assessed))


@dataclass(frozen=True)
class Picture:
    """A picture of the product set as the pages show it."""

    id: str
    caption: str


#: The pictures, in the order the pages show them, with their captions
#: (``docs/products-plots.md`` says what each shows).
PICTURES: Final[tuple[Picture, ...]] = (
    Picture("mosaic", "The exposure (all CCDs)"),
    Picture("weight_mosaic", "Weight map"),
    Picture("psf_m", "PSF FWHM and ellipticity over the field"),
    Picture("fwhm_histo", "FWHM histogram"),
    Picture("ell", "Ellipticity"),
    Picture("bkg_m", "Sky background map"),
    Picture("bkg_histo", "Sky background histogram"),
    Picture("psf_model", "PSF model"),
    Picture("rhmag", "Half-light radius against magnitude"),
    Picture("rhmag_star", "Stars: half-light radius against magnitude"),
    Picture("rhmag_gal", "Galaxies: half-light radius against magnitude"),
    Picture("star_histo", "Star counts"),
    Picture("gal_histo", "Galaxy counts"),
)
#: Product ids of the CCD previews (``preview_<EXTNAME>``...) start so.
PREVIEW_PREFIX: Final = "preview_"


class _Item(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def description(self) -> str: ...


_P = TypeVar("_P", bound=_Item)


def pictures(items: Sequence[_P]) -> list[tuple[_P, str]]:
    """Pick the pictures out of the products, with their captions.

    Parameters
    ----------
    items : sequence
        Products (anything with an ``id`` and a ``description``: a
        manifest's `Product`, a UWS result).

    Returns
    -------
    list of (item, caption)
        The products of `PICTURES`, in its order, with its captions.
    """
    by_id = {item.id: item for item in items}
    return [(by_id[p.id], p.caption) for p in PICTURES if p.id in by_id]


def previews(items: Sequence[_P]) -> list[tuple[_P, str]]:
    """Pick the CCD previews out of the products, in their order.

    Returns
    -------
    list of (item, caption)
        Each preview with its description as caption.
    """
    return [(item, item.description) for item in items
            if item.id.startswith(PREVIEW_PREFIX)]


def hdu_lines(hdus: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Say what each HDU of the image file is, and why.

    Parameters
    ----------
    hdus : sequence of mapping
        The ``hdus`` of a summary (`qualityfits.io.HduRole.to_dict`).

    Returns
    -------
    tuple of str
        One line per HDU (``HDU 3 DQ,1: mask (EXTNAME DQ), used for
        SCI,1``); runs of HDUs alike (the CCDs of a mosaic) in one line
        (``HDU 1-36 ccd00..ccd35: sky image, assessed (...)``).
    """
    names = {h["index"]: h["name"] for h in hdus}

    def text(h: Mapping[str, Any]) -> str:
        what = h["role"] + (", assessed" if h["role"] == "sky image"
                            else "")
        line = f"{what} ({h['reason']})"
        if h.get("used") and h.get("serves") is not None:
            line += f", used as the {h['role']} of {names[h['serves']]}"
        return line

    lines: list[str] = []
    run: list[Mapping[str, Any]] = []

    def flush() -> None:
        if not run:
            return
        first, last = run[0], run[-1]
        if len(run) == 1:
            lines.append(f"HDU {first['index']} {first['name']}: "
                         f"{text(first)}")
        else:
            lines.append(f"HDU {first['index']}-{last['index']} "
                         f"{first['name']}..{last['name']}: {text(first)}")
        run.clear()

    for h in hdus:
        if run and (text(h) != text(run[-1]) or h.get("used")):
            flush()
        run.append(h)
    flush()
    return tuple(lines)
