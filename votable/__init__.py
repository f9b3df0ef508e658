"""Generic tables written as VOTable 1.4 documents and FITS files.

A `Document` (software versions, groups of `Param`, one or more
`TableSpec` of `Column`: numpy values with unit, UCD and description)
is written by `write_votable` (VOTable 1.4 built with lxml, TABLEDATA
or BINARY2) and by `write_fits` (the parameters in the primary header
and one BINTABLE per table, with ``TUNITn``, ``TNULLn``, ``TCOMMn`` and
``TUCDn``): both formats always carry the same columns, units, UCDs
and nulls.

Import boundary: ``votable`` is a leaf.  It imports numpy, astropy,
lxml and the standard library, never ``qualityfits``, ``pbs_bridge``
or ``uws``; the package direction of the project is
``uws -> pbs_bridge -> qualityfits -> votable``.  What a
`qualityfits.QualityReport` becomes as tables (the statistics and the
source catalogue) is `qualityfits.tables`.

>>> import numpy as np, votable
>>> table = votable.TableSpec("t", "T", "a table", (
...     votable.Column("X", np.array([1.5, 2.5]), "pix", "pos.cartesian.x"),))
>>> document = votable.Document("example", {"me": "1"}, (), (table,))
>>> votable.votable_bytes(document).startswith(b"<?xml")
True
"""

from __future__ import annotations

from votable._fits import write_fits
from votable._model import (
    VOUNIT_SPELLINGS,
    Column,
    Document,
    Group,
    Param,
    TableSpec,
    ascii_text,
    param_datatype,
    ucd_with,
    vounit,
)
from votable._xml import (
    VOTABLE_NS,
    VOTABLE_VERSION,
    votable_bytes,
    write_votable,
)

__all__ = [
    "VOTABLE_NS",
    "VOTABLE_VERSION",
    "VOUNIT_SPELLINGS",
    "Column",
    "Document",
    "Group",
    "Param",
    "TableSpec",
    "ascii_text",
    "param_datatype",
    "ucd_with",
    "votable_bytes",
    "vounit",
    "write_fits",
    "write_votable",
]
