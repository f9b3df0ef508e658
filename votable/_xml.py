"""VOTable 1.4 documents, built with lxml element factories.

The one module that knows the VOTable namespace and element names.  A
`votable._model.Document` becomes one ``RESOURCE type="results"``: the
software versions as INFOs, each parameter group as a GROUP of PARAMs,
then one TABLE per `TableSpec`.  Table data are written as TABLEDATA
(small tables, readable) or BINARY2 (large ones).

BINARY2 is encoded here, vectorised with numpy, rather than through
`astropy.io.votable`, whose row-by-row encoder takes about 9 s for a
100 000-row, 25-column table; this one takes a fraction of a second.
Each BINARY2 row is the null flags (one bit per column, most
significant bit first) followed by the values, big-endian, fixed-width
strings padded with NULs (VOTable 1.4 §5.4).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from lxml import etree
from lxml.builder import ElementMaker
from numpy.typing import NDArray

from votable._model import (
    Column,
    Document,
    Group,
    Param,
    TableSpec,
    ascii_bytes,
    is_ascii,
    xml_text,
)

#: VOTable 1.4 keeps the namespace of VOTable 1.3.
VOTABLE_NS: Final = "http://www.ivoa.net/xml/VOTable/v1.3"
VOTABLE_VERSION: Final = "1.4"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
#: Where readers may fetch the schema (as the IVOA recommends).
SCHEMA_LOCATION: Final = (
    f"{VOTABLE_NS} http://www.ivoa.net/xml/VOTable/votable-1.4.xsd")

E: Final = ElementMaker(namespace=VOTABLE_NS,
                        nsmap={None: VOTABLE_NS, "xsi": XSI_NS})

#: numpy dtype -> (VOTable datatype, big-endian dtype for BINARY2).
_NUMERIC: Final = {
    "f8": ("double", ">f8"),
    "f4": ("float", ">f4"),
    "i8": ("long", ">i8"),
    "i4": ("int", ">i4"),
    "i2": ("short", ">i2"),
    "u1": ("unsignedByte", "u1"),
    "u2": ("int", ">i4"),
    "u4": ("long", ">i8"),
}
_BASE64_CHUNK: Final = 57 * 2**14  # whole 76-character base64 lines


def _numeric(column: Column) -> tuple[str, str]:
    key = f"{column.kind}{column.values.dtype.itemsize}"
    if key not in _NUMERIC:
        raise ValueError(
            f"column {column.name}: no VOTable type for {column.values.dtype}")
    return _NUMERIC[key]


def _float_text(value: float) -> str:
    """TABLEDATA/PARAM form of a float: shortest exact, NaN as null."""
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _bmp(text: str) -> str:
    """VOTable 1.4 ``unicodeChar`` is UCS-2: no characters beyond U+FFFF."""
    return "".join(c if ord(c) <= 0xFFFF else "\ufffd" for c in text)


def _description(text: str) -> list[etree._Element]:
    return [E.DESCRIPTION(xml_text(text))] if text else []


def _meta(attrs: dict[str, str], unit: str, ucd: str) -> dict[str, str]:
    if unit:
        attrs["unit"] = unit
    if ucd:
        attrs["ucd"] = ucd
    return attrs


def _field(column: Column, *, binary: bool) -> etree._Element:
    attrs = {"name": column.name}
    if column.kind == "U":
        if binary:
            attrs["datatype"] = "char"
            attrs["arraysize"] = str(_char_width(column))
        else:
            text = all(is_ascii(str(v)) for v in column.values)
            attrs["datatype"] = "char" if text else "unicodeChar"
            attrs["arraysize"] = "*"
    elif column.kind == "b":
        attrs["datatype"] = "boolean"
    else:
        attrs["datatype"] = _numeric(column)[0]
    children = _description(column.description)
    if column.null is not None:
        children.append(E.VALUES(null=str(column.null)))
    return E.FIELD(*children, **_meta(attrs, column.unit, column.ucd))


def _param_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "T" if value else "F"
    if isinstance(value, float | np.floating):
        return _float_text(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return " ".join(_param_text(v) for v in value)
    return str(value)


def _param(param: Param) -> etree._Element:
    attrs = {"name": param.name, "datatype": param.datatype}
    value = param.value
    if param.datatype == "char":
        text = "" if value is None else str(value)
        if not is_ascii(text):
            attrs["datatype"] = "unicodeChar"
            text = _bmp(text)
        attrs["arraysize"] = "*"
        attrs["value"] = xml_text(text)
    else:
        if isinstance(value, Sequence) and not isinstance(value, str):
            attrs["arraysize"] = str(len(value))
        attrs["value"] = _param_text(value)
    return E.PARAM(*_description(param.description),
                   **_meta(attrs, param.unit, param.ucd))


def _group(group: Group) -> etree._Element:
    return E.GROUP(*_description(group.description),
                   *(_param(p) for p in group.params), name=group.name)


def _cells(column: Column) -> list[str]:
    """TABLEDATA text of each value of a column (empty for null)."""
    values = column.values
    if column.kind == "f":
        return [_float_text(v) for v in values.tolist()]
    if column.kind == "b":
        return ["T" if v else "F" for v in values.tolist()]
    if column.kind == "U":
        texts = [str(v) for v in values.tolist()]
        if all(is_ascii(t) for t in texts):
            return texts
        return [xml_text(_bmp(t)) for t in texts]
    null = column.null
    return ["" if v == null else str(v) for v in values.tolist()]


def _tabledata(table: TableSpec) -> etree._Element:
    columns = [_cells(c) for c in table.columns]
    rows = [E.TR(*(E.TD(cell) for cell in row)) for row in zip(*columns,
                                                                strict=True)]
    return E.TABLEDATA(*rows)


def _char_width(column: Column) -> int:
    # At least 2: votlint remarks on arraysize="1" (deprecated) and on a
    # char FIELD without arraysize alike.
    return max(2, ascii_bytes(column.values).dtype.itemsize)


def binary2_rows(table: TableSpec) -> bytes:
    """Encode a table as a BINARY2 byte stream (before base64).

    Parameters
    ----------
    table : TableSpec
        The table; string columns are written as fixed-width ASCII.

    Returns
    -------
    bytes
        Every row: null flags then big-endian values.
    """
    ncols = len(table.columns)
    nflag = (ncols + 7) // 8
    dtypes: list[tuple[Any, ...]] = [("flags", "u1", (nflag,))] if nflag \
        else []
    arrays: list[NDArray[Any]] = []
    for i, column in enumerate(table.columns):
        values = column.values
        if column.kind == "U":
            dtype = f"S{_char_width(column)}"
            array = ascii_bytes(column.values).astype(dtype)
        elif column.kind == "b":
            array = np.where(values, b"T", b"F").astype("S1")
            dtype = "S1"
        else:
            dtype = _numeric(column)[1]
            array = values
        dtypes.append((f"c{i}", dtype))
        arrays.append(array)
    rows = np.zeros(table.nrows, dtype=np.dtype(dtypes))
    for i, array in enumerate(arrays):
        rows[f"c{i}"] = array
    if nflag:
        nulls = np.column_stack([c.null_mask() for c in table.columns])
        rows["flags"] = np.packbits(nulls, axis=1, bitorder="big")
    return rows.tobytes()


def _binary2(table: TableSpec) -> etree._Element:
    raw = binary2_rows(table)
    text = "".join(
        base64.encodebytes(raw[i:i + _BASE64_CHUNK]).decode("ascii")
        for i in range(0, len(raw), _BASE64_CHUNK)
    )
    return E.BINARY2(E.STREAM("\n" + text, encoding="base64"))


def _table(table: TableSpec, *, binary: bool) -> etree._Element:
    data = _binary2(table) if binary else _tabledata(table)
    return E.TABLE(
        *_description(table.description),
        *(_field(c, binary=binary) for c in table.columns),
        E.DATA(data),
        name=table.name, nrows=str(table.nrows),
    )


def votable_element(document: Document, *,
                    binary: bool = False) -> etree._Element:
    """Build the VOTABLE element of a document.

    Parameters
    ----------
    document : Document
        What to write.
    binary : bool
        BINARY2 serialisation of the table data (else TABLEDATA).

    Returns
    -------
    lxml.etree._Element
        The root element.
    """
    infos = [
        E.INFO(name=name, value=version, ucd="meta.version;meta.software")
        for name, version in document.versions.items()
    ]
    resource = E.RESOURCE(
        *_description(document.description),
        *infos,
        *(_group(g) for g in document.groups),
        *(_table(t, binary=binary) for t in document.tables),
        type="results",
    )
    root = E.VOTABLE(resource, version=VOTABLE_VERSION)
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    return root


def votable_bytes(document: Document, *, binary: bool = False) -> bytes:
    """Serialise a document as a UTF-8 VOTable 1.4 document."""
    return etree.tostring(votable_element(document, binary=binary),
                          xml_declaration=True, encoding="UTF-8",
                          pretty_print=True)


def write_votable(document: Document, path: str | Path, *,
                  binary: bool = False) -> Path:
    """Write a document as a VOTable 1.4 file (overwritten if present)."""
    path = Path(path)
    etree.ElementTree(votable_element(document, binary=binary)).write(
        path, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return path
