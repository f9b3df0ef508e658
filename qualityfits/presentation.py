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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from qualityfits.metrics import METRIC_BY_NAME

#: Shown where a value is missing (not measured, not finite).
MISSING: Final = "–"


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
        unit = METRIC_BY_NAME[self.metric].unit
        return f"{self.heading} [{unit}]" if unit else self.heading

    @property
    def title(self) -> str:
        """The metric's name and description (a heading's tooltip)."""
        return f"{self.metric}: {METRIC_BY_NAME[self.metric].description}"

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

    @property
    def headings(self) -> tuple[str, ...]:
        """Every heading, the name, status and QA flags included."""
        return ("CCD", "Status", *(c.label for c in self.columns),
                "QA flags")

    @property
    def titles(self) -> tuple[str, ...]:
        """Each heading's tooltip (the metric's description; or "")."""
        return ("", "", *(c.title for c in self.columns), "")


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

    Raises
    ------
    KeyError, TypeError
        ``summary`` is not in that form.
    """
    extensions = summary["extensions"]
    columns = tuple(c for c in CCD_COLUMNS if any(
        c.format(e["metrics"].get(c.metric)) != MISSING
        for e in extensions)) or CCD_COLUMNS[:1]
    rows = []
    for ext in extensions:
        cells = tuple(c.format(ext["metrics"].get(c.metric))
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
        cells = tuple(c.format(exposure["metrics"].get(c.metric, {})
                               .get("median")) for c in columns)
        flags = ", ".join(exposure["flags"])
        rows.append(CcdRow("median", "median", cells, flags or "none",
                           flagged=bool(flags), failed=False, median=True))
    return CcdTable(columns, tuple(rows))


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
