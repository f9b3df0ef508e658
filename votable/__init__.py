"""Writing QualityFITS statistics as VOTable documents and FITS tables.

Four products of a `qualityfits.QualityReport`, described column by
column in ``docs/products-tables.md``:

* the statistics (`write_summary_votable`, `write_summary_fits`): one
  table of per-extension metrics, one row for the exposure aggregate,
  the input parameters, configuration and software versions;
* the source catalogue (`write_catalogue_votable`,
  `write_catalogue_fits`): every source of every extension with its
  class, position, photometry, shape and flags.

VOTable documents are VOTable 1.4 built with lxml (statistics as
TABLEDATA, catalogue as BINARY2); FITS files have the parameters in the
primary header and one BINTABLE per table, with ``TUNITn``, ``TCOMMn``
and ``TUCDn``.

Import boundary: may import ``qualityfits``; never ``uws`` or
``pbs_bridge``.

>>> import qualityfits, votable
>>> report = qualityfits.assess("image.fits")          # doctest: +SKIP
>>> votable.write_summary_votable(report, "summary.vot")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from qualityfits.report import QualityReport
from votable._catalogue import catalogue_product
from votable._fits import write_fits
from votable._summary import summary_product
from votable._xml import (
    VOTABLE_NS,
    VOTABLE_VERSION,
    votable_bytes,
    write_votable,
)

__all__ = [
    "VOTABLE_NS",
    "VOTABLE_VERSION",
    "summary_votable_bytes",
    "write_catalogue_fits",
    "write_catalogue_votable",
    "write_summary_fits",
    "write_summary_votable",
]


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
    return votable_bytes(summary_product(report))


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
    return write_votable(summary_product(report), path)


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
    return write_fits(summary_product(report), path)


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
    return write_votable(catalogue_product(report), path, binary=True)


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
    return write_fits(catalogue_product(report), path)
