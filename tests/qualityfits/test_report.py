"""The report: JSON summary, per-extension table, immutability, pickling,
and what the report pages show of it (`qualityfits.presentation`).

The report under test comes from a real assessment of a three-CCD
mosaic whose middle CCD is constant, so that it holds both measured
values and the NaN of a failed extension.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from lxml import html as lxml_html
from numpy.testing import assert_array_equal

import qualityfits
from qualityfits import html
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.manifest import Product
from qualityfits.metrics import METRICS
from qualityfits.plots import PLOT_IDS
from qualityfits.presentation import (
    CCD_COLUMNS,
    INSTRUMENTAL_MARK,
    MISSING,
    MIXED_MARK,
    PICTURES,
    ccd_table,
    instrumental,
    is_magnitude,
    pictures,
    previews,
)
from qualityfits.report import ExtensionReport, QualityReport

SMALL = SimulationParams(
    shape=(512, 512), n_stars=150, n_galaxies=200, n_cr_hits=20,
    n_cr_tracks=2,
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "exposure.fits"
    hdus = [fits.PrimaryHDU()]
    for k in range(3):
        hdu = simulate_image(SMALL, seed=700 + k).to_hdu(name=f"ccd{k:02d}")
        if k == 1:
            hdu.data = np.full((512, 512), 9.0, np.float32)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return qualityfits.assess(path, jobs=1)


def test_fixture_has_values_and_nan(report):
    assert [e.status for e in report.extensions] == ["ok", "failed", "ok"]
    assert math.isnan(report.extensions[1].metrics["FWHM_PIX"])
    assert math.isfinite(report.extensions[0].metrics["FWHM_PIX"])


# -- JSON --------------------------------------------------------------------
class TestToDict:
    def test_strict_json_round_trip(self, report):
        summary = report.to_dict()
        text = json.dumps(summary, allow_nan=False)
        # JSON-friendly all the way down: nothing changes on a round trip
        assert json.loads(text) == summary

    def test_nan_becomes_null(self, report):
        summary = report.to_dict()
        failed = summary["extensions"][1]
        assert failed["status"] == "failed"
        assert failed["metrics"]["FWHM_PIX"] is None
        assert failed["metrics"]["NOBJ"] is None
        assert failed["error"]["type"] == "EmptyImageError"
        assert "ccd01" in failed["error"]["message"]
        ok = summary["extensions"][0]["metrics"]
        assert ok["FWHM_PIX"] == report.extensions[0].metrics["FWHM_PIX"]

    def test_content(self, report):
        summary = report.to_dict()
        assert summary["image"] == "exposure.fits"
        assert summary["n_extensions"] == 3
        assert summary["n_failed"] == 1
        assert [e["name"] for e in summary["extensions"]] == [
            "ccd00", "ccd01", "ccd02"]
        for ext in summary["extensions"]:
            assert set(ext["metrics"]) == {m.name for m in METRICS}
        assert set(summary["exposure"]["metrics"]) == {
            m.name for m in METRICS}
        assert "MISSING_CCD" in summary["exposure"]["flags"]
        assert summary["config"] == report.config.to_dict()
        assert summary["versions"]["qualityfits"] == qualityfits.__version__


# -- table -------------------------------------------------------------------
def metric_unit(metric):
    return u.Unit(metric.unit) if metric.unit else None


class TestToTable:
    def test_one_row_per_extension(self, report):
        table = report.to_table()
        assert len(table) == len(report.extensions) == 3
        assert list(table["EXTNAME"]) == ["ccd00", "ccd01", "ccd02"]
        assert list(table["STATUS"]) == ["ok", "failed", "ok"]
        assert list(table["HDU"]) == [1, 2, 3]
        assert "ccd01" in table["ERROR"][1]
        assert table["ERROR"][0] == ""

    def test_every_metric_with_its_unit(self, report):
        table = report.to_table()
        for metric in METRICS:
            assert metric.name in table.colnames
            assert table[metric.name].unit == metric_unit(metric), (
                metric.name)
            assert table[metric.name].description == metric.description
        for k, ext in enumerate(report.extensions):
            for metric in METRICS:
                value = ext.metrics[metric.name]
                if metric.integer:
                    expected = int(value) if math.isfinite(value) else -1
                    assert table[metric.name][k] == expected
                elif math.isnan(value):
                    assert math.isnan(table[metric.name][k])
                else:
                    assert table[metric.name][k] == value

    @pytest.mark.parametrize(("fmt", "suffix"), [("fits", ".fits"),
                                                 ("votable", ".xml")])
    def test_round_trip(self, report, tmp_path, fmt, suffix):
        table = report.to_table()
        path = tmp_path / f"summary{suffix}"
        table.write(path, format=fmt)
        back = Table.read(path, format=fmt)
        assert back.colnames == table.colnames
        for name in table.colnames:
            col = table[name]
            if col.dtype.kind in "US":
                assert back[name].tolist() == col.tolist(), name
            else:
                assert_array_equal(np.asarray(back[name]), np.asarray(col))
        for metric in METRICS:
            unit = back[metric.name].unit
            if metric.unit:
                assert unit is not None, metric.name
                assert u.Unit(unit) == u.Unit(metric.unit), metric.name
            else:
                assert not unit, metric.name


# -- immutability and pickling -----------------------------------------------
class TestFrozen:
    def test_extension_report_is_frozen(self, report):
        ext = report.extensions[0]
        with pytest.raises(dataclasses.FrozenInstanceError):
            ext.status = "failed"
        with pytest.raises(dataclasses.FrozenInstanceError):
            ext.metrics = {}
        with pytest.raises(dataclasses.FrozenInstanceError):
            report.extensions = ()

    def test_metrics_are_read_only(self, report):
        ext = report.extensions[0]
        with pytest.raises(TypeError):
            ext.metrics["FWHM_PIX"] = 1.0
        with pytest.raises(TypeError):
            del ext.metrics["FWHM_PIX"]
        with pytest.raises(TypeError):
            report.exposure.metrics["FWHM_PIX"]["median"] = 1.0
        assert isinstance(report.extensions, tuple)

    def test_metrics_do_not_share_the_callers_dict(self):
        values = {"FWHM_PIX": 3.0}
        ext = ExtensionReport(index=1, name="c", shape=(8, 8), status="ok",
                              metrics=values)
        values["FWHM_PIX"] = 99.0
        assert ext.metrics["FWHM_PIX"] == 3.0


class TestPickle:
    def test_report_pickles(self, report):
        again = pickle.loads(pickle.dumps(report))  # noqa: S301 - our data
        assert isinstance(again, QualityReport)
        assert again.to_dict() == report.to_dict()
        for one, two in zip(report.extensions, again.extensions,
                            strict=True):
            if one.sources is None:
                assert two.sources is None
            else:
                assert one.sources.colnames == two.sources.colnames
                for name in one.sources.colnames:
                    assert_array_equal(two.sources[name], one.sources[name])

    def test_unpickled_report_stays_read_only(self, report):
        ext = pickle.loads(pickle.dumps(report.extensions[0]))  # noqa: S301
        assert ext.to_dict() == report.extensions[0].to_dict()
        with pytest.raises(TypeError):
            ext.metrics["NOBJ"] = 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            ext.name = "other"


# -- what the pages show (qualityfits.presentation) --------------------------
class TestPresentation:
    def test_table_of_the_summary_json_is_the_reports(self, report,
                                                      tmp_path):
        # the web page reads <stem>.summary.json, the static page the report
        path = tmp_path / "x.summary.json"
        path.write_text(json.dumps(report.to_dict(), indent=1))
        assert ccd_table(json.loads(path.read_text())) == ccd_table(
            report.to_dict())

    def test_rows(self, report):
        table = ccd_table(report.to_dict())
        assert [r.name for r in table.rows] == ["ccd00", "ccd01", "ccd02",
                                                "median"]
        assert [r.status for r in table.rows] == ["ok", "failed", "ok",
                                                  "median"]
        assert [r.failed for r in table.rows] == [False, True, False, False]
        assert table.rows[-1].median
        failed = report.extensions[1]
        assert failed.error is not None
        assert table.rows[1].flags == failed.error.message
        for row in table.rows:
            assert len(row.texts) == len(table.headings)
        exposure_flags = ", ".join(report.exposure.flags) or "none"
        assert table.rows[-1].flags == exposure_flags

    def test_cells_are_the_metrics_with_their_digits(self, report):
        table = ccd_table(report.to_dict())
        shown = {c.metric for c in table.columns}
        assert "FWHM_PIX" in shown
        assert "NSTAR" in shown
        for column in CCD_COLUMNS:
            values = [e.metrics.get(column.metric, math.nan)
                      for e in report.extensions]
            # a column is shown when some CCD has a value
            assert (column.metric in shown) == any(
                math.isfinite(v) for v in values), column.metric
            if column.metric not in shown:
                continue
            k = table.columns.index(column)
            for row, value in zip(table.rows, values, strict=False):
                expected = (f"{value:.{column.digits}f}"
                            if math.isfinite(value) else MISSING)
                assert row.cells[k] == expected
            median = report.exposure.metrics[column.metric]["median"]
            assert table.rows[-1].cells[k] == column.format(median)
        k = [c.metric for c in table.columns].index("FWHM_PIX")
        assert table.rows[1].cells[k] == MISSING  # the failed CCD
        assert table.headings[2 + k] == "FWHM [pix]"

    def test_a_single_ccd_has_no_median_row(self, report):
        summary = report.to_dict()
        summary["extensions"] = summary["extensions"][:1]
        table = ccd_table(summary)
        assert [r.name for r in table.rows] == ["ccd00"]

    def test_static_page_shows_the_same_table(self, report, tmp_path):
        page = tmp_path / "index.html"
        html.write_report(report, page, "exposure", [])
        root = lxml_html.parse(str(page)).getroot()
        heads = [th.text_content() for th in root.xpath("(//table)[1]//th")]
        table = ccd_table(report.to_dict())
        assert heads == list(table.headings)
        rows = [[td.text_content() for td in tr.xpath("td")]
                for tr in root.xpath("(//table)[1]/tbody/tr")]
        expected = [list(r.texts) for r in table.rows]
        expected[1][-1] = "FAILED: " + expected[1][-1]
        assert rows == expected

    def test_every_picture_has_a_caption(self):
        assert {p.id for p in PICTURES} == set(PLOT_IDS)
        assert len({p.id for p in PICTURES}) == len(PICTURES)
        assert all(p.caption for p in PICTURES)

    def test_pictures_in_order_with_captions(self):
        def product(pid):
            return Product(pid, f"{pid}.png", "image/png", 1, f"about {pid}")

        items = [product(i) for i in ("preview_ccd00", "gal_histo",
                                      "other", "mosaic")]
        picked = pictures(items)
        assert [(p.id, c) for p, c in picked] == [
            ("mosaic", "The exposure (all CCDs)"),
            ("gal_histo", "Galaxy counts")]
        assert [(p.id, c) for p, c in previews(items)] == [
            ("preview_ccd00", "about preview_ccd00")]


# -- instrumental magnitudes --------------------------------------------------
def _without_zeropoint(summary, names):
    """The summary with no zero point on the CCDs ``names``."""
    out = json.loads(json.dumps(summary))
    for ext in out["extensions"]:
        if ext["name"] in names:
            ext["metrics"]["ZEROPOINT"] = None  # NaN in the JSON
    return out


class TestInstrumental:
    def test_what_is_instrumental(self):
        assert instrumental({"ZEROPOINT": None})
        assert instrumental({"ZEROPOINT": math.nan})
        assert instrumental({})
        assert not instrumental({"ZEROPOINT": 30.0})
        assert not instrumental({"ZEROPOINT": 0.0})  # maggies: a zero point
        assert is_magnitude("MAGLIM_5SIG")
        assert is_magnitude("SKY_MAG")
        assert not is_magnitude("ZEROPOINT")
        assert not is_magnitude("FWHM_ARCSEC")

    def test_calibrated_report_says_nothing(self, report):
        assert all(not instrumental(e.metrics) for e in report.extensions
                   if e.ok)
        table = ccd_table(report.to_dict())
        assert table.note is None
        assert not any("instrumental" in h for h in table.headings)

    def test_no_zero_point_anywhere_marks_the_headings(self, report):
        table = ccd_table(_without_zeropoint(report.to_dict(),
                                             {"ccd00", "ccd02"}))
        k = [c.metric for c in table.columns].index("MAGLIM_5SIG")
        assert table.headings[2 + k] == "5σ depth [instrumental mag]"
        assert "Instrumental" in table.titles[2 + k]
        # other columns keep their headings; values are not marked
        assert table.headings[2] == "FWHM [arcsec]"
        assert not any(r.cells[k].endswith(INSTRUMENTAL_MARK)
                       for r in table.rows)
        assert table.note is not None
        assert table.note.startswith("Magnitudes are instrumental: no zero "
                                     "point was given")

    def test_some_ccds_without_a_zero_point_are_marked(self, report):
        summary = report.to_dict()
        # ccd02 gets ccd00's numbers (its depth may be withheld: few PSF
        # stars), then loses its zero point
        first, _, last = summary["extensions"]
        last["metrics"] = dict(first["metrics"])
        table = ccd_table(_without_zeropoint(summary, {"ccd02"}))
        k = [c.metric for c in table.columns].index("MAGLIM_5SIG")
        assert table.headings[2 + k] == "5σ depth [mag]"
        cells = {r.name: r.cells[k] for r in table.rows}
        assert not cells["ccd00"].endswith(INSTRUMENTAL_MARK)
        assert cells["ccd02"].endswith(INSTRUMENTAL_MARK)
        assert cells["ccd01"] == MISSING  # the failed CCD: nothing to mark
        assert cells["median"].endswith(MIXED_MARK)
        assert table.note is not None
        assert "of ccd02 are instrumental" in table.note
        # the FWHM is no magnitude: never marked
        assert not table.rows[2].cells[0].endswith(INSTRUMENTAL_MARK)

    def test_static_page_says_why(self, report, tmp_path):
        uncalibrated = dataclasses.replace(report, extensions=tuple(
            dataclasses.replace(e, metrics={**e.metrics,
                                            "ZEROPOINT": math.nan})
            for e in report.extensions))
        page = tmp_path / "index.html"
        html.write_report(uncalibrated, page, "exposure", [])
        root = lxml_html.parse(str(page)).getroot()
        heads = [th.text_content() for th in root.xpath("(//table)[1]//th")]
        assert "5σ depth [instrumental mag]" in heads
        note = root.get_element_by_id("instrumental").text_content()
        assert note == ccd_table(uncalibrated.to_dict()).note
        # a calibrated report has no such paragraph
        html.write_report(report, page, "exposure", [])
        assert not lxml_html.parse(str(page)).getroot().xpath(
            "//*[@id='instrumental']")
