"""The writers' corners: BINARY2 null flags and types, strings, names.

Small hand-made products, each written by our writers and read back by
astropy (strict mode), validated by the schema and ``stilts votlint``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse
from votable_fixtures import (
    as_float,
    parse_xml,
    read_fits_table,
    schema,
    votable_field_meta,
    votlint,
)

from votable import (
    Column,
    Document,
    Group,
    Param,
    TableSpec,
    ascii_text,
    ucd_with,
    vounit,
    write_fits,
    write_votable,
)

NAN = np.nan


def _product(columns, params=()):
    return Document(
        description="test", versions={"qualityfits": "0"},
        groups=(Group("input", "test", tuple(params)),) if params else (),
        tables=(TableSpec("t", "T", "a test table", tuple(columns)),))


def _mixed_columns():
    # 11 columns: two bytes of null flags per BINARY2 row
    return [
        Column("F8", np.array([1.5, NAN, -np.inf, 1e-300]), "adu",
               "instr.skyLevel", "doubles"),
        Column("F4", np.array([NAN, 2.5, 3.25, 0.0], dtype=np.float32),
               ucd="stat.value", description="floats"),
        Column("I4", np.array([1, -1, 7, 2**31 - 1], dtype=np.int32),
               ucd="meta.number", description="ints", null=-1),
        Column("I2", np.array([-5, 0, 3, 9], dtype=np.int16),
               ucd="meta.code.qual", description="shorts"),
        Column("I8", np.array([2**40, 0, -3, 4], dtype=np.int64),
               ucd="meta.number", description="longs"),
        Column("U1", np.array([0, 255, 3, 4], dtype=np.uint8),
               ucd="meta.code", description="bytes"),
        Column("B", np.array([True, False, True, False]),
               ucd="meta.code", description="booleans"),
        Column("S", np.array(["star", "", "galaxy", "a≠b"]),
               ucd="src.class", description="strings"),
        Column("S1", np.array(["x", "y", "z", "w"]), ucd="meta.id",
               description="one character"),
        Column("F8B", np.array([NAN, NAN, NAN, NAN]), ucd="stat.value",
               description="all null"),
        Column("LAST", np.array([1.0, 2.0, 3.0, NAN]), ucd="stat.value",
               description="null flag in the second byte"),
    ]



def _assert_read_back(got, column, *, ascii_only):
    """A column read back holds what was written, nulls as NaN.

    Text is compared ASCII-folded (`ascii_text`) where the format
    carries only ASCII (BINARY2 ``char``, FITS), as written otherwise.
    """
    if column.kind == "U":
        want = list(column.values)
        if ascii_only:
            want = [ascii_text(v) for v in want]
        assert list(np.ma.filled(got, "")) == want, column.name
    elif column.kind == "b":
        assert list(got) == list(column.values), column.name
    else:
        want = column.values.astype(float)
        if column.null is not None:
            want[column.values == column.null] = NAN
        np.testing.assert_array_equal(as_float(got), want,
                                      err_msg=column.name)

@pytest.mark.parametrize("binary", [False, True], ids=["tabledata",
                                                        "binary2"])
def test_every_type_and_null_round_trips(tmp_path, binary):
    columns = _mixed_columns()
    path = write_votable(_product(columns), tmp_path / "t.vot",
                         binary=binary)
    xsd = schema()
    assert xsd.validate(parse_xml(path)), xsd.error_log
    assert votlint(path) == ""
    table = parse(str(path), verify="exception").get_first_table()
    back = table.to_table()
    for column in columns:
        _assert_read_back(back[column.name], column, ascii_only=binary)
    fields = votable_field_meta(parse_xml(path).getroot(), "t")
    assert [f["datatype"] for f in fields.values()] == [
        "double", "float", "int", "short", "long", "unsignedByte",
        "boolean", "char" if binary else "unicodeChar", "char", "double",
        "double"]
    assert fields["I4"]["null"] == "-1"


def test_fits_round_trip_of_every_type(tmp_path):
    columns = _mixed_columns()
    path = write_fits(_product(columns), tmp_path / "t.fits")
    table, header = read_fits_table(path, "T")
    for i, column in enumerate(columns, start=1):
        assert header[f"TUCD{i}"] == column.ucd
        assert header[f"TCOMM{i}"] == column.description
        _assert_read_back(table[column.name], column, ascii_only=True)
    assert header["TNULL3"] == -1
    assert header["TUNIT1"] == "adu"


def test_text_xml_cannot_carry_is_replaced(tmp_path):
    text = np.array(["bell\x07 and\ttab", "e\u0301t\u00e9 \U0001f600"])
    columns = [Column("T", text, ucd="meta.note", description="notes")]
    params = [Param("IMAGE", "IMAGE", "f\x00ile\u00e9.fits", "char",
                    ucd="meta.id;meta.file", description="name")]
    path = write_votable(_product(columns, params), tmp_path / "t.vot")
    assert votlint(path) == ""
    votable_file = parse(str(path), verify="exception")
    back = votable_file.get_first_table().to_table()
    # control characters become "?", non-BMP characters U+FFFD (UCS-2)
    assert list(back["T"]) == ["bell? and\ttab", "e\u0301t\u00e9 \ufffd"]
    param = votable_file.resources[0].groups[0].entries[0]
    assert param.value == "f?ile\u00e9.fits"
    header = fits.getheader(
        write_fits(_product(columns, params), tmp_path / "t.fits"))
    assert header["IMAGE"] == "f?ile\\xe9.fits"


def test_params_of_every_kind(tmp_path):
    params = [
        Param("N", "N", 3, "int", description="an int"),
        Param("X", "X", 0.1, "double", "arcsec", "instr.scale",
              "a double"),
        Param("NULLX", "NULLX", None, "double", description="no value"),
        Param("B", "B", value=True, datatype="boolean",
              description="a boolean"),
        Param("R", "RANGE", (2.0, 16.0), "double", description="a pair"),
        Param("S", "S", None, "char", description="no string"),
    ]
    path = write_votable(_product(_mixed_columns()[:1], params),
                         tmp_path / "t.vot")
    assert votlint(path) == ""
    entries = {p.name: p.value for p in parse(
        str(path), verify="exception").resources[0].groups[0].entries}
    assert entries["N"] == 3
    assert entries["X"] == 0.1
    assert entries["NULLX"] is None
    assert entries["B"] is np.True_ or entries["B"] is True
    np.testing.assert_array_equal(entries["R"], [2.0, 16.0])
    assert entries["S"] == ""
    header = fits.getheader(write_fits(_product(_mixed_columns()[:1], params),
                                       tmp_path / "t.fits"))
    assert header["X"] == 0.1
    assert header["NULLX"] is None
    assert header["B"] is True
    assert (header["RANGE_1"], header["RANGE_2"]) == (2.0, 16.0)


def test_a_table_refuses_duplicate_names_and_ragged_columns():
    a = Column("A", np.zeros(2))
    with pytest.raises(ValueError, match="duplicate column names A"):
        TableSpec("t", "T", "", (a, a))
    with pytest.raises(ValueError, match="different lengths"):
        TableSpec("t", "T", "", (a, Column("B", np.zeros(3))))
    with pytest.raises(ValueError, match="1-D"):
        Column("C", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integer columns"):
        Column("D", np.zeros(2), null=-1)


def test_ucd_with_adds_a_word_once():
    assert ucd_with("instr.skyLevel", "stat.median") == (
        "instr.skyLevel;stat.median")
    assert ucd_with("instr.det.psf;stat.min", "stat.min") == (
        "instr.det.psf;stat.min")
    assert ucd_with("", "stat.min") == "stat.min"


def test_vounit_respells_fits_exponents_only():
    assert vounit("mag/arcsec2") == "mag/arcsec**2"
    assert vounit("pix2") == "pix**2"
    assert vounit("adu") == "adu"
    assert vounit("") == ""


def test_votable_imports_neither_the_service_nor_the_batch_backend():
    code = ("import sys, votable; print(sorted({'uws', 'pbs_bridge', "
            "'pyramid', 'sqlalchemy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
