"""The run's tables (`qualityfits.runs`) as VOTable 1.4 and FITS: valid
for the schema, votlint and astropy's strictest reader, with UCD1+ words
and VOUnits, and faithful to the exposures' summaries."""

from __future__ import annotations

import math

import pytest
from astropy.io import fits
from astropy.io.votable import parse
from votable_fixtures import (
    check_fields_described,
    failed_report_fixture,  # noqa: F401 (fixture failed_report)
    parse_xml,
    report_fixture,  # noqa: F401 (fixture report)
    schema,
    votlint,
)

from qualityfits.runs import RunExposure, write_run_fits, write_run_votable


@pytest.fixture(scope="module")
def run(report, failed_report, tmp_path_factory):
    """Two assessed exposures (one with a failed CCD) and one in error."""
    first = report.to_dict()
    first["observation"] = {"mjd_obs": 61000.2, "date_obs":
                            "2025-11-21T04:48:00.000", "filter": "r",
                            "exptime": 300.0, "airmass": 1.2}
    second = failed_report.to_dict()
    second["observation"] = {"mjd_obs": 61000.1}
    exposures = [
        RunExposure("a.fits", first, job_id="j1"),
        RunExposure("b.fits", second, job_id="j2"),
        RunExposure("c.fits", None, job_id="j3", phase="ERROR",
                    error="not a FITS file"),
    ]
    folder = tmp_path_factory.mktemp("run")
    vot = write_run_votable("r1", exposures, {"qualityfits": "test"},
                            folder / "run.vot")
    fits_path = write_run_fits("r1", exposures, {"qualityfits": "test"},
                               folder / "run.fits")
    return exposures, vot, fits_path


def test_valid_everywhere(run):
    _, vot, _ = run
    xsd = schema()
    assert xsd.validate(parse_xml(vot)), xsd.error_log
    assert votlint(vot) == ""
    names = [t.name for t in parse(str(vot), verify="exception")
             .iter_tables()]
    assert names == ["exposures", "ccds"]


def test_every_field_has_ucd_description_and_vounit(run):
    _, vot, _ = run
    root = parse_xml(vot).getroot()
    check_fields_described(root, ("exposures", "ccds"))


def test_rows_follow_the_summaries(run):
    exposures, vot, fits_path = run
    table = parse(str(vot)).get_table_by_id("exposures").to_table()
    # time order: b (61000.1) before a (61000.2); c (no date) last
    assert list(table["JOB_ID"]) == ["j2", "j1", "j3"]
    a = exposures[0]
    row = table[1]
    assert row["FWHM_PIX"] == pytest.approx(a.median("FWHM_PIX"))
    assert row["FWHM_PIX_MAX"] == pytest.approx(a.median("FWHM_PIX", "max"))
    assert row["GRADE"] == a.grade["letter"]
    assert row["FILTER"] == "r"
    assert row["AIRMASS"] == pytest.approx(1.2)
    assert row["N_CCD"] == len(a.ccds)
    assert table[0]["N_FAILED"] == 1
    assert table[2]["PHASE"] == "ERROR"
    assert table[2]["ERROR"] == "not a FITS file"
    assert table.columns["FWHM_PIX"].unit == "pix"
    ccds = parse(str(vot)).get_table_by_id("ccds").to_table()
    assert len(ccds) == len(a.ccds) + len(exposures[1].ccds)
    with fits.open(fits_path) as hdus:
        data = hdus["EXPOSURES"].data
        assert list(data["JOB_ID"]) == ["j2", "j1", "j3"]
        assert math.isnan(data["FWHM_PIX"][2])
        assert hdus["CCDS"].header["TUNIT" + str(
            hdus["CCDS"].columns.names.index("FWHM_PIX") + 1)] == "pix"
