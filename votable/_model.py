"""What a document holds, independent of its format.

A `Document` is some document-level metadata (software versions,
groups of parameters) and one or more `TableSpec`, each a sequence of
`Column`: numpy values plus unit, UCD and description.  The VOTable
writer (`votable._xml`) and the FITS writer (`votable._fits`) both
render a `Document`, so the two formats always carry the same columns,
units, UCDs and nulls.

Units pass through `vounit`, the one place where FITS-style spellings
that are not valid VOUnit are corrected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

#: Unit spellings that are not VOUnit (FITS-style exponents, as
#: `qualityfits.metrics` writes them), and their VOUnit spelling.
VOUNIT_SPELLINGS: Final[Mapping[str, str]] = {
    "mag/arcsec2": "mag/arcsec**2",
    "pix2": "pix**2",
}

# Characters XML 1.0 does not allow, even escaped.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def vounit(unit: str) -> str:
    """Return the VOUnit spelling of a unit string ("" stays "")."""
    return VOUNIT_SPELLINGS.get(unit, unit)


def ucd_with(ucd: str, word: str) -> str:
    """Qualify a UCD with a secondary word, unless it already has it.

    Parameters
    ----------
    ucd : str
        A UCD1+ string, possibly empty.
    word : str
        A word valid as a secondary (``stat.median``, ``arith.sum``...).

    Returns
    -------
    str
        ``ucd;word``; ``ucd`` if it already contains ``word``.
    """
    words = [w for w in ucd.split(";") if w]
    if word in words:
        return ucd
    return ";".join([*words, word])


def xml_text(text: str) -> str:
    """Replace the characters XML 1.0 cannot carry by ``?``."""
    return _XML_ILLEGAL.sub("?", text)


def ascii_text(text: str) -> str:
    r"""ASCII form of a string (FITS headers and tables, VOTable ``char``).

    Non-ASCII characters become Python escapes (``\\u2260``), control
    characters ``?``: nothing is silently dropped.
    """
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return re.sub("[\x00-\x1f\x7f]", "?", escaped)


def ascii_bytes(values: NDArray[np.str_]) -> NDArray[np.bytes_]:
    """Fixed-width ASCII bytes of strings, as `ascii_text` spells them."""
    unique, inverse = np.unique(values, return_inverse=True)
    encoded = [ascii_text(str(v)).encode("ascii") for v in unique.tolist()]
    width = max([1, *(len(b) for b in encoded)])
    return np.array(encoded, dtype=f"S{width}")[inverse.ravel()]


def is_ascii(text: str) -> bool:
    """Return True if ``text`` is printable ASCII (a VOTable ``char``)."""
    return text.isascii() and ascii_text(text) == text


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes
    ----------
    name : str
        Column name (FITS ``TTYPE``, VOTable ``FIELD name``).
    values : numpy.ndarray
        1-D values: float64, float32, int16, int32, int64, bool or str.
        NaN is the null of a floating-point column.
    unit : str
        VOUnit string; empty when dimensionless.
    ucd : str
        UCD1+ string.
    description : str
        One sentence: what the column holds.
    null : int or None
        For an integer column, the value meaning "no value" (FITS
        ``TNULL``, VOTable ``VALUES null``); None when the column has no
        nulls by construction.
    """

    name: str
    values: NDArray[Any]
    unit: str = ""
    ucd: str = ""
    description: str = ""
    null: int | None = None

    def __post_init__(self) -> None:
        """Check the values are a 1-D array of a supported kind."""
        if self.values.ndim != 1 or self.values.dtype.kind not in "fiubU":
            raise ValueError(
                f"column {self.name}: 1-D numeric, bool or str values "
                f"expected, got {self.values.dtype} of shape "
                f"{self.values.shape}"
            )
        if self.null is not None and self.values.dtype.kind not in "iu":
            raise ValueError(
                f"column {self.name}: a null value is for integer columns")

    @property
    def kind(self) -> str:
        """The numpy kind: ``f``, ``i``, ``u``, ``b`` or ``U``."""
        return str(self.values.dtype.kind)

    def null_mask(self) -> NDArray[np.bool_]:
        """Return True where the value is null (NaN, or the integer null)."""
        if self.kind == "f":
            return np.isnan(self.values)
        if self.null is not None:
            return np.asarray(self.values == self.null)
        return np.zeros(self.values.shape, dtype=bool)


@dataclass(frozen=True)
class Param:
    """A single value describing a whole document (PARAM, header card).

    Attributes
    ----------
    name : str
        VOTable PARAM name.
    fits_key : str
        FITS keyword; longer than 8 characters or with spaces it is
        written as a ``HIERARCH`` card.
    value : bool, int, float, str, sequence of numbers or None
        None is the null value.
    datatype : str
        VOTable datatype: ``boolean``, ``int``, ``long``, ``double`` or
        ``char``.
    unit, ucd, description : str
        As for `Column`.
    """

    name: str
    fits_key: str
    value: Any
    datatype: str
    unit: str = ""
    ucd: str = ""
    description: str = ""


@dataclass(frozen=True)
class Group:
    """Parameters that belong together (input, configuration)."""

    name: str
    description: str
    params: tuple[Param, ...]


@dataclass(frozen=True)
class TableSpec:
    """One table of a document: a VOTable TABLE, a FITS BINTABLE."""

    name: str
    extname: str
    description: str
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        """Check column names are unique and lengths agree."""
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"table {self.name}: duplicate column names "
                f"{', '.join(duplicates)}")
        lengths = {len(c.values) for c in self.columns}
        if len(lengths) > 1:
            raise ValueError(
                f"table {self.name}: columns of different lengths "
                f"{sorted(lengths)}")

    @property
    def nrows(self) -> int:
        """Number of rows."""
        return len(self.columns[0].values) if self.columns else 0


@dataclass(frozen=True)
class Document:
    """A whole document: metadata and tables."""

    description: str
    versions: Mapping[str, str]
    groups: tuple[Group, ...]
    tables: tuple[TableSpec, ...]


def param_datatype(value: Any) -> str:
    """VOTable datatype of a Python scalar or of a sequence's items."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        kinds = {param_datatype(v) for v in value}
        if len(kinds) == 1:
            return kinds.pop()
        if kinds <= {"int", "long", "double"}:
            return "double"
        raise ValueError(f"mixed sequence {value!r}")
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | np.integer):
        return "int" if -(2**31) <= int(value) < 2**31 else "long"
    if isinstance(value, float | np.floating):
        return "double"
    if isinstance(value, str):
        return "char"
    raise ValueError(f"no VOTable datatype for {value!r}")
