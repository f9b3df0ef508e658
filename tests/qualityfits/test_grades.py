"""Exposure grades A-D (`qualityfits.grades`): the rules, their limits
from `QualityConfig`, and the grade in every product of a real run."""

from __future__ import annotations

import json
import math

import pytest
from astropy.io import fits
from astropy.io.votable import parse

from qualityfits import assess
from qualityfits.cli import main
from qualityfits.config import QualityConfig
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.errors import InvalidParameterError
from qualityfits.grades import FLAG_CAPS, grade_exposure


def grade(fwhm=0.8, ell=0.02, flags=(), n=36, failed=0, **config):
    return grade_exposure(
        {"FWHM_ARCSEC": fwhm, "FWHM_PIX": fwhm / 0.187, "ELLIPTICITY": ell},
        flags=flags, n_ccds=n, n_failed=failed,
        config=QualityConfig(**config))


class TestRules:
    @pytest.mark.parametrize(("fwhm", "letter"), [
        (0.7, "A"), (1.0, "A"), (1.05, "B"), (1.2, "B"), (1.31, "C"),
        (2.0, "C"), (2.4, "D")])
    def test_seeing_limits(self, fwhm, letter):
        got = grade(fwhm=fwhm)
        assert got.letter == letter
        assert bool(got.reasons) == (letter != "A")

    def test_reason_names_value_and_limit(self):
        assert grade(fwhm=1.31).reasons == ("FWHM 1.31″ > 1.2″",)
        assert grade(ell=0.15).reasons == ("ellipticity 0.15 > 0.1",)

    def test_worst_rule_wins_and_reasons_are_worst_first(self):
        got = grade(fwhm=1.1, ell=0.25, flags=("PSF_VARIES",))
        assert got.letter == "D"
        assert got.reasons[0].startswith("ellipticity 0.25 > 0.2")
        assert len(got.reasons) == 3

    def test_missing_ccds(self):
        assert grade(failed=1).letter == "B"
        assert grade(failed=4).letter == "C"    # 11 % > 10 %
        assert grade(failed=19).letter == "D"   # 53 % > 50 %
        assert grade(failed=19).reasons == (
            "19 of 36 CCDs not assessed: 52.8 % > 50 %",)

    @pytest.mark.parametrize("flag", sorted(FLAG_CAPS))
    def test_flags_cap(self, flag):
        letter, reason = FLAG_CAPS[flag]
        got = grade(flags=(flag,))
        assert (got.letter, got.reasons) == (letter, (reason,))

    def test_unknown_scale_is_a_note_not_a_downgrade(self):
        got = grade_exposure({"FWHM_ARCSEC": math.nan, "FWHM_PIX": 9.0,
                              "ELLIPTICITY": 0.02},
                             flags=(), n_ccds=1, n_failed=0)
        assert got.letter == "A"
        note = "seeing not graded: no pixel scale (FWHM 9 px)"
        assert got.notes == (note,)

    def test_no_psf_at_all(self):
        got = grade_exposure({}, flags=("PSF_WITHHELD",), n_ccds=1,
                             n_failed=0)
        assert got.letter == "C"
        assert got.reasons[0].startswith("seeing not measured")

    def test_limits_are_configurable(self):
        assert grade(fwhm=0.9, grade_fwhm_arcsec=(0.5, 0.8, 1.5)) \
            .reasons == ("FWHM 0.9″ > 0.8″",)

    @pytest.mark.parametrize("bad", [(1.0, 0.9, 2.0), (1.0, 2.0),
                                     (-1.0, 1.0, 2.0), (1.0, 2.0, math.nan)])
    def test_bad_limits_refused(self, bad):
        with pytest.raises(InvalidParameterError,
                           match="grade_fwhm_arcsec must be three"):
            QualityConfig(grade_fwhm_arcsec=bad)

    def test_config_round_trip(self):
        config = QualityConfig(grade_ellipticity=(0.1, 0.2, 0.3))
        assert QualityConfig.from_dict(config.to_dict()) == config


@pytest.fixture(scope="module")
def blurred(tmp_path_factory):
    """A CCD seen through 7 px seeing at 0.187″/px: 1.31″."""
    sim = simulate_image(SimulationParams(
        shape=(768, 768), fwhm=7.0, n_stars=220, n_galaxies=60,
        n_cr_hits=0, n_cr_tracks=0), seed=4242)
    path = tmp_path_factory.mktemp("grade") / "blurred.fits"
    fits.PrimaryHDU(sim.data, sim.header).writeto(path)
    return path


class TestInProducts:
    def test_report_grade_follows_the_measurement(self, blurred):
        report = assess(blurred, jobs=1)
        med = {k: v["median"] for k, v in report.exposure.metrics.items()}
        assert 1.2 < med["FWHM_ARCSEC"] <= 2.0
        got = report.exposure.grade
        assert got == grade_exposure(
            med, flags=report.exposure.flags, n_ccds=1, n_failed=0)
        assert got.letter in "CD"
        shown = f"{med['FWHM_ARCSEC']:.2f}".rstrip("0").rstrip(".")
        assert f"FWHM {shown}″ > 1.2″" in got.reasons
        # Tighter limits make the same exposure a D, looser an A or B.
        strict = assess(blurred, jobs=1, config=QualityConfig(
            grade_fwhm_arcsec=(0.2, 0.4, 0.6)))
        assert strict.exposure.grade.letter == "D"

    def test_cli_summary_votable_and_page(self, blurred, tmp_path, capsys):
        assert main([str(blurred), "-o", str(tmp_path), "--no-progress",
                     "--set", "grade_fwhm_arcsec=0.2,0.4,0.6"]) == 0
        out = capsys.readouterr().out
        assert "grade D (unusable): FWHM 1.3" in out
        summary = json.loads((tmp_path / "blurred.summary.json")
                             .read_text())
        assert summary["exposure"]["grade"]["letter"] == "D"
        assert summary["exposure"]["grade"]["reasons"][0].endswith(
            "> 0.6″")
        votable = parse(tmp_path / "blurred_summary.vot")
        exposure = votable.get_table_by_id("exposure").to_table()
        assert exposure["GRADE"][0] == "D"
        assert exposure["GRADE_REASONS"][0].startswith("FWHM 1.3")
        fits_table = fits.getdata(tmp_path / "blurred_summary.fits",
                                  "EXPOSURE")
        assert fits_table["GRADE"][0] == "D"
        page = (tmp_path / "index.html").read_text()
        assert 'class="grade grade-D"' in page
