r"""FITS rendering of a document: header keywords and binary tables.

The primary HDU carries the parameters and software versions as header
keywords; each `TableSpec` becomes a BINTABLE named by its ``extname``
with, per column, ``TUNITn`` (VOUnit spelling, also valid FITS),
``TNULLn`` (integer nulls), ``TCOMMn`` (description) and ``TUCDn`` (UCD),
the keywords STILTS/TOPCAT read back.  Floating-point nulls are NaN.
Strings are ASCII (non-ASCII characters written as ``\\uXXXX``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
from astropy.io import fits

from votable._model import (
    Column,
    Document,
    Param,
    TableSpec,
    ascii_bytes,
    ascii_text,
)

_FORMATS: Final = {
    "f8": "D", "f4": "E", "i8": "K", "i4": "J", "i2": "I", "u1": "B",
    "b1": "L",
}
_CARD: Final = 80


def _key(key: str) -> str:
    """Spell a keyword for astropy: HIERARCH when it is not standard."""
    if len(key) <= 8 and " " not in key:
        return key
    return f"HIERARCH {key}"


def _card(key: str, value: Any, comment: str) -> fits.Card:
    """Make a card, its comment shortened to fit in 80 characters."""
    if isinstance(value, str):
        value = ascii_text(value)
    bare = fits.Card(_key(key), value)
    if not comment or len(bare.image) > _CARD:  # long string: CONTINUE
        return bare
    # The comment's column: string values are padded, HIERARCH ones not.
    probe = fits.Card(_key(key), value, "x").image.rstrip()
    room = _CARD - len(probe) + 1
    if room < 8:
        return bare
    return fits.Card(_key(key), value, ascii_text(comment)[:room])


def param_cards(param: Param) -> list[fits.Card]:
    """Header cards of a parameter: sequences get ``_1``, ``_2``... keys."""
    value = param.value
    if isinstance(value, list | tuple):
        return [
            _card(f"{param.fits_key}_{i}", v, param.description)
            for i, v in enumerate(value, start=1)
        ]
    if isinstance(value, float) and not np.isfinite(value):
        value = None  # FITS headers have no NaN: an undefined value
    return [_card(param.fits_key, value, param.description)]


def primary_hdu(document: Document) -> fits.PrimaryHDU:
    """Primary HDU (no data) with versions and parameters as keywords."""
    header = fits.Header()
    header.append(_card("ORIGIN", "QualityFITS-UWS", "written by"))
    for name, version in document.versions.items():
        header.append(_card(f"VERSION {name.upper()}", version,
                            f"{name} version"))
    for group in document.groups:
        for param in group.params:
            for card in param_cards(param):
                header.append(card)
    return fits.PrimaryHDU(header=header)


def _fits_column(column: Column) -> fits.Column:
    values = column.values
    if column.kind == "U":
        texts = ascii_bytes(values)
        return fits.Column(name=column.name,
                           format=f"{texts.dtype.itemsize}A",
                           unit=column.unit or None, array=texts)
    key = f"{column.kind}{values.dtype.itemsize}"
    if key not in _FORMATS:
        raise ValueError(
            f"column {column.name}: no FITS format for {values.dtype}")
    return fits.Column(name=column.name, format=_FORMATS[key],
                       unit=column.unit or None, null=column.null,
                       array=values)


def table_hdu(table: TableSpec) -> fits.BinTableHDU:
    """BINTABLE of a table, with units, nulls, descriptions and UCDs.

    ``TCOMMn`` and ``TUCDn`` follow the standard column keywords, in
    column order (inserting them beside each column's ``TFORMn`` costs a
    quadratic header update for the exposure table's hundreds of
    columns).
    """
    hdu = fits.BinTableHDU.from_columns(
        [_fits_column(c) for c in table.columns], name=table.extname)
    cards = []
    for i, column in enumerate(table.columns, start=1):
        if column.description:
            cards.append(fits.Card(f"TCOMM{i}",
                                   ascii_text(column.description)))
        if column.ucd:
            cards.append(fits.Card(f"TUCD{i}", column.ucd))
    hdu.header.extend(cards)
    if table.description:
        hdu.header.add_comment(ascii_text(table.description))
    return hdu


def write_fits(document: Document, path: str | Path) -> Path:
    """Write a document as a FITS file (overwritten if present)."""
    path = Path(path)
    hdus = fits.HDUList([primary_hdu(document),
                         *(table_hdu(t) for t in document.tables)])
    hdus.writeto(path, overwrite=True)
    return path
