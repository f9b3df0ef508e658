"""The statistics as VOTable 1.4 and FITS: valid, complete, faithful.

Each product is checked by parsers other than the writer's: the IVOA
schema (lxml), ``stilts votlint``, astropy's VOTable reader in its
strictest mode (which also checks UCD1+ words and VOUnit strings) and
astropy's FITS reader; values read back must equal the report's.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse
from lxml import etree
from votable_fixtures import (
    FAILED_NAME,
    as_float,
    check_fields_described,
    check_ucd1p,
    check_vounit,
    failed_report_fixture,  # noqa: F401 (fixture failed_report)
    fits_column_meta,
    nan_equal,
    parse_xml,
    read_fits_table,
    report_fixture,  # noqa: F401 (fixture report)
    require_tool,
    schema,
    votable_field_meta,
    votlint,
    written_fixture,  # noqa: F401 (fixture written)
)

from qualityfits import tables
from qualityfits.metrics import METRICS
from qualityfits.tables import METRIC_UCD_FIXES
from votable import VOUNIT_SPELLINGS


@pytest.fixture(scope="module")
def product():
    """What ``written`` writes: file stem, VOTable and FITS writers."""
    return "summary", tables.write_summary_votable, tables.write_summary_fits


def _table(path, name):
    votable_file = parse(str(path), verify="exception")
    for table in votable_file.iter_tables():
        if table.name == name:
            return table
    raise AssertionError(f"no table {name}")


def _failed_report_shape(failed_report):
    assert [e.status for e in failed_report.extensions] == [
        "ok", "failed", "ok"]
    assert failed_report.image == FAILED_NAME


# -- validity ---------------------------------------------------------------
def test_summary_validates_against_the_votable_schema(written):
    _, vot, _ = written
    doc = parse_xml(vot)
    xsd = schema()
    assert xsd.validate(doc), xsd.error_log
    root = doc.getroot()
    assert root.get("version") == "1.4"
    assert root.tag == "{http://www.ivoa.net/xml/VOTable/v1.3}VOTABLE"


def test_votlint_reports_nothing(written):
    _, vot, _ = written
    assert votlint(vot) == ""


def test_astropy_reads_it_in_its_strictest_mode(written):
    # verify="exception" turns every astropy warning into an error,
    # among them W06 (UCD not UCD1+) and W50 (unit not VOUnit).
    _, vot, _ = written
    tables = [t.name for t in parse(str(vot), verify="exception")
              .iter_tables()]
    assert tables == ["extensions", "exposure"]


def test_every_field_has_a_ucd1p_ucd_a_description_and_a_vounit(written):
    _, vot, _ = written
    root = parse_xml(vot).getroot()
    check_fields_described(root, ("extensions", "exposure"))
    vo = "{http://www.ivoa.net/xml/VOTable/v1.3}"
    for element in root.iter(f"{vo}PARAM", f"{vo}INFO"):
        if element.get("ucd"):
            check_ucd1p(element.get("ucd"))
        if element.get("unit"):
            check_vounit(element.get("unit"))


def test_the_bytes_are_the_file(written):
    rep, vot, _ = written
    assert tables.summary_votable_bytes(rep) == vot.read_bytes()


# -- content: the extensions table ----------------------------------------
def test_one_row_per_extension_with_its_identification(written):
    rep, vot, _ = written
    table = _table(vot, "extensions").to_table()
    assert len(table) == len(rep.extensions)
    assert list(table["EXTNAME"]) == [e.name for e in rep.extensions]
    assert list(table["HDU"]) == [e.index for e in rep.extensions]
    assert list(table["STATUS"]) == [e.status for e in rep.extensions]
    assert list(table["NAXIS1"]) == [e.shape[1] for e in rep.extensions]
    assert list(table["NAXIS2"]) == [e.shape[0] for e in rep.extensions]
    assert list(table["QA_FLAGS"]) == [",".join(e.flags)
                                       for e in rep.extensions]
    assert list(table["ERROR"]) == [
        "" if e.error is None else e.error.message for e in rep.extensions]
    assert list(table["ERROR_CODE"]) == [
        "" if e.error is None else e.error.code for e in rep.extensions]


def test_every_metric_is_a_column_with_the_reports_values(written):
    rep, vot, _ = written
    table = _table(vot, "extensions").to_table()
    for metric in METRICS:
        expected = [e.metrics.get(metric.name, math.nan)
                    for e in rep.extensions]
        nan_equal(table[metric.name], expected)
        kind = table[metric.name].dtype.kind
        assert kind == ("i" if metric.integer else "f"), metric.name


def test_metric_fields_carry_the_metrics_definition(written):
    _, vot, _ = written
    fields = votable_field_meta(parse_xml(vot).getroot(), "extensions")
    for metric in METRICS:
        meta = fields[metric.name]
        assert meta["unit"] == VOUNIT_SPELLINGS.get(metric.unit,
                                                    metric.unit)
        bad, good = METRIC_UCD_FIXES.get(metric.name, ("", ""))
        assert meta["ucd"] == (good if metric.ucd == bad else metric.ucd)
        assert meta["description"] == metric.description
        if metric.integer:
            assert (meta["datatype"], meta["null"]) == ("int", "-1")
        else:
            assert (meta["datatype"], meta["null"]) == ("double", None)


def test_a_failed_extension_is_a_row_of_nulls_with_its_error(
        failed_report, tmp_path):
    _failed_report_shape(failed_report)
    failed = failed_report.extensions[1]
    assert failed.error is not None
    vot = tables.write_summary_votable(failed_report, tmp_path / "s.vot")
    row = _table(vot, "extensions").to_table()[1]
    assert row["STATUS"] == "failed"
    assert row["ERROR_CODE"] == failed.error.code == "empty-image"
    assert row["ERROR"] == failed.error.message
    for name in ("NOBJ", "NSTAR", "FWHM_PIX", "ELLIPTICITY"):
        assert np.ma.is_masked(row[name]), name
    # Nulls as the VOTable spells them: empty cells (VALUES null="-1"
    # for the integer columns); never "nan" or "-1" in the data.
    doc = parse_xml(vot).getroot()
    vo = "{http://www.ivoa.net/xml/VOTable/v1.3}"
    names = list(votable_field_meta(doc, "extensions"))
    tr = doc.findall(f".//{vo}TABLE[@name='extensions']//{vo}TR")[1]
    cells = dict(zip(names, (td.text or "" for td in tr), strict=True))
    assert cells["NOBJ"] == cells["FWHM_PIX"] == ""
    assert not any(c.lower() in {"nan", "-1"} for c in cells.values())


# -- content: parameters, versions, configuration -------------------------
def _params(path):
    resource = parse(str(path), verify="exception").resources[0]
    infos = {i.name: i.value for i in resource.infos}
    groups = {g.name: {p.name: p for p in g.entries} for g in resource.groups}
    return infos, groups


def test_versions_are_infos(written):
    rep, vot, _ = written
    infos, _ = _params(vot)
    assert infos == dict(rep.versions)
    assert "qualityfits" in infos


def test_inputs_are_params_null_when_not_given(written):
    rep, vot, _ = written
    _, groups = _params(vot)
    inputs = groups["input"]
    assert inputs["IMAGE"].value == rep.image
    for key, name in (("flat", "FLAT"), ("mask", "MASK")):
        assert inputs[name].value == (rep.parameters[key] or "")
    for key, name in (("zeropoint", "ZEROPOINT"), ("pixscale", "PIXSCALE")):
        given = rep.parameters[key]
        if given is None:
            assert inputs[name].value is None
        else:
            assert inputs[name].value == given
    assert inputs["MASK_CONVENTION"].value == rep.parameters[
        "mask_convention"]
    assert str(inputs["ZEROPOINT"].unit) == "mag"


def test_a_non_ascii_image_name_survives(failed_report, tmp_path):
    vot = tables.write_summary_votable(failed_report, tmp_path / "s.vot")
    _, groups = _params(vot)
    assert groups["input"]["IMAGE"].value == FAILED_NAME
    assert groups["input"]["ZEROPOINT"].value == 30.0
    fit = tables.write_summary_fits(failed_report, tmp_path / "s.fits")
    assert fits.getheader(fit)["IMAGE"] == "expo\\u2260sure.fits"


def test_every_configuration_value_is_a_param(written):
    rep, vot, _ = written
    _, groups = _params(vot)
    config = rep.config.to_dict()
    assert set(groups["config"]) == set(config)
    for key, value in config.items():
        np.testing.assert_array_equal(groups["config"][key].value, value)


# -- content: the exposure table ------------------------------------------
def test_exposure_row_has_median_min_max_of_every_metric(written):
    rep, vot, _ = written
    table = _table(vot, "exposure").to_table()
    assert len(table) == 1
    row = table[0]
    assert row["N_EXTENSIONS"] == len(rep.extensions)
    assert row["N_FAILED"] == len(rep.failed)
    assert row["QA_FLAGS"] == ",".join(rep.exposure.flags)
    for metric in METRICS:
        stats = rep.exposure.metrics[metric.name]
        nan_equal([row[metric.name]], [stats["median"]])
        nan_equal([row[metric.name + "_MIN"]], [stats["min"]])
        nan_equal([row[metric.name + "_MAX"]], [stats["max"]])
        if "total" in stats:
            nan_equal([row[metric.name + "_TOTAL"]], [stats["total"]])
        else:
            assert metric.name + "_TOTAL" not in table.colnames
    assert "MISSING_CCD" in row["QA_FLAGS"] or not rep.failed


def test_exposure_ucds_say_which_statistic(written):
    _, vot, _ = written
    fields = votable_field_meta(parse_xml(vot).getroot(), "exposure")
    assert fields["SKY_MEAN"]["ucd"] == "instr.skyLevel;stat.median"
    assert fields["SKY_MEAN_MIN"]["ucd"] == "instr.skyLevel;stat.min"
    assert fields["FWHM_MAX_MAX"]["ucd"] == "instr.det.psf;stat.max"
    assert fields["NOBJ_TOTAL"]["ucd"] == "meta.number;src;arith.sum"
    assert fields["NOBJ"]["datatype"] == "double"  # a median may be x.5
    assert fields["NOBJ_MIN"]["datatype"] == "int"


# -- the FITS file --------------------------------------------------------
def test_fits_tables_hold_the_same_values(written):
    rep, vot, fit = written
    for name, extname in (("extensions", "EXTENSIONS"),
                          ("exposure", "EXPOSURE")):
        expected = _table(vot, name).to_table()
        table, _ = read_fits_table(fit, extname)
        assert table.colnames == expected.colnames
        for col in expected.colnames:
            if expected[col].dtype.kind in "USO":
                # astropy reads an empty FITS string as masked
                assert list(np.ma.filled(table[col], "")) == list(
                    expected[col]), col
            else:
                nan_equal(table[col], as_float(expected[col]))
    table, _ = read_fits_table(fit, "EXTENSIONS")
    assert len(table) == len(rep.extensions)


def test_fits_columns_carry_units_ucds_and_descriptions(written):
    _, vot, fit = written
    root = parse_xml(vot).getroot()
    for name, extname in (("extensions", "EXTENSIONS"),
                          ("exposure", "EXPOSURE")):
        _, header = read_fits_table(fit, extname)
        fits_meta = fits_column_meta(header)
        vo_meta = votable_field_meta(root, name)
        assert list(fits_meta) == list(vo_meta)
        for col, meta in vo_meta.items():
            assert fits_meta[col]["unit"] == meta["unit"], col
            assert fits_meta[col]["ucd"] == meta["ucd"], col
            assert fits_meta[col]["description"] == meta["description"]
        for i, col in enumerate(fits_meta, start=1):
            if vo_meta[col]["null"] is not None:
                assert header[f"TNULL{i}"] == int(vo_meta[col]["null"])


def test_fits_primary_header_has_inputs_versions_configuration(written):
    rep, _, fit = written
    header = fits.getheader(fit, 0)
    assert header["NAXIS"] == 0
    for name, version in rep.versions.items():
        assert header[f"VERSION {name.upper()}"] == version
    for key, value in rep.config.to_dict().items():
        if isinstance(value, list):
            assert [header[f"CONFIG {key.upper()}_{i}"]
                    for i in range(1, len(value) + 1)] == value
        else:
            assert header[f"CONFIG {key.upper()}"] == value
    zeropoint = rep.parameters["zeropoint"]
    assert header["ZEROPOINT"] == zeropoint  # None: an undefined value
    assert header["MASK_CONVENTION"] == rep.parameters["mask_convention"]
    assert all(len(card.image) % 80 == 0 for card in header.cards)


def test_stilts_reads_the_fits_ucds_and_descriptions(written, tmp_path):
    # A third reader of the FITS metadata: STILTS, through TUCDn/TCOMMn.
    _, vot, fit = written
    out = tmp_path / "back.vot"
    subprocess.run([require_tool("stilts"), "tcopy", f"in={fit}#EXPOSURE",
                    f"out={out}", "ofmt=votable"],
                   check=True, capture_output=True, timeout=300)
    fields = {f.get("name"): f for f in etree.parse(str(out)).iter(
        "{*}FIELD")}
    expected = votable_field_meta(parse_xml(vot).getroot(), "exposure")
    assert list(fields) == list(expected)
    for name, meta in expected.items():
        assert fields[name].get("ucd") == meta["ucd"], name
        assert fields[name].findtext("{*}DESCRIPTION") == meta[
            "description"], name
