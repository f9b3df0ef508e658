"""The source catalogue as VOTable (BINARY2) and FITS: every source.

Read back by astropy (strict mode) and checked against each extension's
``sources`` table; validated by the IVOA schema and ``stilts votlint``.
A MegaCam-sized catalogue (36 CCDs, ~100 000 sources) is written to
check the speed and read back.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io.votable import parse
from votable_fixtures import (
    as_float,
    big_report,
    check_ucd1p,
    check_vounit,
    failed_report_fixture,  # noqa: F401 (fixture failed_report)
    fits_column_meta,
    parse_xml,
    read_fits_table,
    report_fixture,  # noqa: F401 (fixture report)
    schema,
    votable_field_meta,
    votlint,
    written_fixture,  # noqa: F401 (fixture written)
)

from qualityfits import tables
from qualityfits.tables import SOURCE_COLUMNS


@pytest.fixture(scope="module")
def product():
    """What ``written`` writes: file stem, VOTable and FITS writers."""
    return ("sources", tables.write_catalogue_votable,
            tables.write_catalogue_fits)


def _sources(rep):
    return [e for e in rep.extensions if e.sources is not None]


def _read_votable(path):
    return parse(str(path), verify="exception").get_first_table().to_table()


def _check_against_report(rep, table):
    """Every source of every extension, in order, with its values."""
    exts = _sources(rep)
    assert len(table) == sum(len(e.sources) for e in exts)
    start = 0
    for ext in exts:
        rows = table[start:start + len(ext.sources)]
        start += len(ext.sources)
        assert set(rows["EXTNAME"]) == {ext.name}
        assert set(rows["HDU"]) == {ext.index}
        for name in ext.sources.colnames:
            want = ext.sources[name]
            if want.dtype.kind in {"U", "b"}:
                assert list(rows[name]) == list(want), name
            else:
                np.testing.assert_array_equal(
                    as_float(rows[name]), np.asarray(want, dtype=float),
                    err_msg=name)
        a = np.asarray(ext.sources["A_IMAGE"])
        b = np.asarray(ext.sources["B_IMAGE"])
        np.testing.assert_allclose(as_float(rows["ELLIP_ISO"]),
                                   (a - b) / (a + b), rtol=1e-15)
        # the pixel-free fits of the PSF stars, null elsewhere
        fwhm = as_float(rows["FWHM_FIT"])
        ellip = as_float(rows["ELLIP_FIT"])
        psf = np.asarray(rows["PSF_STAR"], dtype=bool)
        stars = ext.psf_stars
        assert stars is not None
        assert np.isnan(fwhm[~psf]).all()
        assert np.isnan(ellip[~psf]).all()
        index = np.asarray(stars["NUMBER"]) - 1
        assert (np.asarray(ext.sources["NUMBER"])[index]
                == np.asarray(stars["NUMBER"])).all()
        np.testing.assert_array_equal(fwhm[index], stars["FWHM"])
        np.testing.assert_array_equal(ellip[index], stars["ELLIPTICITY"])
    assert start == len(table)


def test_catalogue_validates_against_the_votable_schema(written):
    _, vot, _ = written
    xsd = schema()
    doc = parse_xml(vot)
    assert xsd.validate(doc), xsd.error_log
    vo = "{http://www.ivoa.net/xml/VOTable/v1.3}"
    assert doc.find(f".//{vo}BINARY2/{vo}STREAM").get("encoding") == "base64"


def test_votlint_reports_nothing(written):
    _, vot, _ = written
    assert votlint(vot) == ""


def test_votable_holds_every_source_with_its_values(written):
    rep, vot, _ = written
    _check_against_report(rep, _read_votable(vot))


def test_fits_holds_every_source_with_its_values(written):
    rep, _, fit = written
    table, header = read_fits_table(fit, "SOURCES")
    _check_against_report(rep, table)
    assert header["NAXIS2"] == sum(len(e.sources) for e in _sources(rep))


def test_a_failed_extension_without_sources_adds_no_rows(failed_report,
                                                         tmp_path):
    failed = failed_report.extensions[1]
    assert failed.status == "failed"
    assert failed.sources is None
    table = _read_votable(tables.write_catalogue_votable(
        failed_report, tmp_path / "c.vot"))
    assert failed.name not in set(table["EXTNAME"])


def test_an_exposure_without_sources_is_an_empty_valid_table(report,
                                                            tmp_path):
    empty = dataclasses.replace(report, extensions=tuple(
        dataclasses.replace(e, sources=e.sources[:0])
        for e in report.extensions))
    vot = tables.write_catalogue_votable(empty, tmp_path / "c.vot")
    xsd = schema()
    assert xsd.validate(parse_xml(vot)), xsd.error_log
    assert votlint(vot) == ""
    table = _read_votable(vot)
    assert len(table) == 0
    assert {"EXTNAME", "CLASS", "FWHM_FIT"} <= set(table.colnames)
    fit = tables.write_catalogue_fits(empty, tmp_path / "c.fits")
    assert len(read_fits_table(fit, "SOURCES")[0]) == 0


def test_every_field_has_a_ucd_a_description_and_a_vounit(written):
    rep, vot, fit = written
    fields = votable_field_meta(parse_xml(vot).getroot(), "sources")
    _, header = read_fits_table(fit, "SOURCES")
    fits_meta = fits_column_meta(header)
    assert list(fits_meta) == list(fields)
    for name, meta in fields.items():
        assert meta["ucd"], f"{name}: no UCD (add it to SOURCE_COLUMNS)"
        check_ucd1p(meta["ucd"])
        assert meta["description"], name
        if meta["unit"]:
            check_vounit(meta["unit"])
        assert fits_meta[name]["unit"] == meta["unit"], name
        assert fits_meta[name]["ucd"] == meta["ucd"], name
        assert fits_meta[name]["description"] == meta["description"], name
    assert set(_sources(rep)[0].sources.colnames) <= set(SOURCE_COLUMNS)
    assert fields["X_IMAGE"]["unit"] == "pix"
    assert fields["MAG_AUTO"]["unit"] == "mag"
    assert fields["FWHM_FIT"]["unit"] == "pix"
    assert fields["CLASS"]["datatype"] == "char"
    assert fields["PSF_STAR"]["datatype"] == "boolean"


def test_class_strings_are_exact(written):
    rep, vot, _ = written
    table = _read_votable(vot)
    assert set(table["CLASS"]) <= {"star", "galaxy", "artefact"}
    assert set(table["CLASS"]) == set(np.concatenate(
        [e.sources["CLASS"] for e in _sources(rep)]))


def test_a_megacam_sized_catalogue(report, tmp_path):
    # Its speed is measured by benchmarks/bench_exposure.py --products.
    big = big_report(report)
    n = sum(len(e.sources) for e in big.extensions)
    assert n == 36 * 2800
    vot = tables.write_catalogue_votable(big, tmp_path / "big.vot")
    fit = tables.write_catalogue_fits(big, tmp_path / "big.fits")
    tables.write_summary_votable(big, tmp_path / "big.summary.vot")
    tables.write_summary_fits(big, tmp_path / "big.summary.fits")
    assert vot.stat().st_size < 40e6
    table = _read_votable(vot)
    assert len(table) == n
    assert list(table["EXTNAME"][::2800]) == [e.name for e in big.extensions]
    fits_table, _ = read_fits_table(fit, "SOURCES")
    assert len(fits_table) == n


@pytest.mark.slow
def test_votlint_accepts_a_megacam_sized_catalogue(report, tmp_path):
    vot = tables.write_catalogue_votable(big_report(report),
                                          tmp_path / "big.vot")
    assert votlint(vot) == ""
    xsd = schema()
    assert xsd.validate(parse_xml(vot)), xsd.error_log
