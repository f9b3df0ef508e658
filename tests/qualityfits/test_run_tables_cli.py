"""A run of exposures (`qualityfits.runs`, ``qualityfits run``): the
header's observation, the run table in time order, its pictures and
page, and an exposure that cannot be assessed."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from testkit import shared_file

from qualityfits.cli import main
from qualityfits.datasets import SimulationParams, simulate_image
from qualityfits.observation import observation
from qualityfits.parallel import ProgressEvent
from qualityfits.pipeline import assess
from qualityfits.runcli import RunProgress
from qualityfits.runs import RunExposure, in_time_order, run_rows

# -- what the header says ---------------------------------------------------


@pytest.mark.realdata
# The NTT header has ESO-LOG cards astropy warns about.
@pytest.mark.filterwarnings(
    "ignore::astropy.utils.exceptions.AstropyUserWarning")
@pytest.mark.parametrize(("name", "date", "filt", "exptime", "airmass"), [
    # DATE-OBS + UTC-OBS, the same instant as its MJD-OBS
    ("megacam_1616681p_ccd21_cutout.fits.gz", "2013-04-09T08:45:29.170",
     "r.MP9601", 287.102, 1.6),
    # ISO DATE-OBS with time; the short BAND before the long FILTER
    ("decam_c4d_170316_062107_ooi_z_ls9.N2.fits.gz",
     "2017-03-16T06:18:30.751", "z", 107.0, 1.8),
    # pre-2000 dd/mm/yy and UT
    ("kpno_m51_B_devpix.fits.gz", "1987-04-05T09:27:27.000", None, 600.0,
     1.08015632629395),
    # a date with UT: more precise than its MJD-OBS rounded to the day
    ("saao1m_ste3_raw_a8280271.fits.gz", "2013-07-13T00:57:33.000", None,
     150.04, 1.176),  # SECZ
    # dd/mm/yy without a time: MJD-OBS gives the instant
    ("ntt_emmi_R_galaxies.fits.gz",
     Time(48921.62787, format="mjd").isot, None, 1200.0, 1.068349957466),
    # nothing about when
    ("spitzer_irac_ch2_glimpse_example.fits.gz", None, None, 1.2, None),
])
def test_observation_of_real_headers(name, date, filt, exptime, airmass):
    with fits.open(shared_file(name)) as hdus:
        header = hdus[0].header.copy()
        if len(hdus) > 1:
            header.update(hdus[1].header)
    obs = observation(header)
    assert obs["date_obs"] == date
    if date is not None:
        assert obs["mjd_obs"] == pytest.approx(
            Time(date, format="isot").mjd, abs=1e-8)
    assert obs["filter"] == filt
    assert obs["exptime"] == exptime
    assert obs["airmass"] == airmass


def test_megacam_date_matches_its_mjd():
    header = fits.Header({"DATE-OBS": "2013-04-09", "UTC-OBS": "8:45:29.17",
                          "MJD-OBS": 56391.3649209})
    assert observation(header)["mjd_obs"] == pytest.approx(56391.3649209,
                                                           abs=1e-6)


@pytest.mark.parametrize("header", [
    {"DATE-OBS": "2013-04-09"},                 # a day, no time
    {"DATE-OBS": "yesterday"},
    {"DATE-OBS": "2013-04-09", "UT": "25:00:00"},
    {"MJD-OBS": -5.0},
    {"EXPTIME": "long", "AIRMASS": True},
])
def test_what_is_not_said_is_none(header):
    obs = observation(fits.Header(header))
    for key in ("date_obs", "mjd_obs", "exptime", "airmass"):
        assert obs[key] is None, key


# -- a night on the command line -------------------------------------------

#: Three exposures, given out of time order: FWHM, start (MJD).
NIGHT = (("late", 6.0, 61010.30), ("early", 3.0, 61010.10),
         ("mid", 4.5, 61010.20))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    images = []
    for k, (name, fwhm, mjd) in enumerate(NIGHT):
        sim = simulate_image(SimulationParams(
            shape=(640, 640), fwhm=fwhm, n_stars=260, n_galaxies=60,
            n_cr_hits=5, n_cr_tracks=0), seed=9100 + k)
        header = sim.header.copy()
        header["MJD-OBS"] = mjd
        header["AIRMASS"] = 1.1 + k / 10
        path = folder / f"{name}.fits"
        fits.PrimaryHDU(sim.data, header).writeto(path)
        images.append(path)
    broken = folder / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    out = folder / "out"
    status = main(["run", *map(str, images), str(broken), "-o", str(out),
                   "--no-progress", "--run-id", "night-1"])
    return folder, out, status


def test_run_table_in_time_order(night):
    folder, out, status = night
    assert status == 2  # the broken file
    table = Table.read(out / "run.vot", table_id="exposures")
    assert list(table["IMAGE"]) == ["early.fits", "mid.fits", "late.fits",
                                    "broken.fits"]
    assert list(table["PHASE"]) == ["COMPLETED"] * 3 + ["ERROR"]
    assert table["ERROR"][3]
    for row in table[:3]:
        truth = fits.getheader(folder / row["IMAGE"])["SIMFWHM"]
        assert row["FWHM_PIX"] == pytest.approx(truth, rel=0.05)
        assert row["GRADE"] in ("A", "B", "C", "D")
        assert row["FWHM_PIX_MIN"] <= row["FWHM_PIX"] <= row["FWHM_PIX_MAX"]
    assert np.all(np.diff(table["MJD_OBS"][:3]) > 0)
    assert np.ma.is_masked(table["FWHM_PIX"][3]) or \
        math.isnan(table["FWHM_PIX"][3])
    ccds = Table.read(out / "run.vot", table_id="ccds")
    assert len(ccds) == 3  # one CCD per assessed exposure


def test_run_fits_and_page(night):
    _, out, _ = night
    with fits.open(out / "run.fits") as hdus:
        assert [h.name for h in hdus[1:]] == ["EXPOSURES", "CCDS"]
        assert hdus["EXPOSURES"].data["GRADE"][0] in "ABCD"
        assert hdus[0].header["RUNID"] == "night-1"
    page = (out / "index.html").read_text()
    for name in ("early", "mid", "late"):
        assert f'href="{name}/index.html"' in page
        assert (out / name / "index.html").exists()
    assert "broken.fits" in page
    for picture in ("run_trends.png", "run_ccd_fwhm.png"):
        assert f'src="{picture}"' in page
        with (out / picture).open("rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rows_without_dates_keep_their_order():
    undated = [RunExposure(f"e{i}.fits", {"exposure": {}, "extensions": []})
               for i in range(3)]
    dated = RunExposure("d.fits", {"observation": {"mjd_obs": 60000.5}})
    assert [e.image for e in in_time_order([*undated, dated])] == [
        "d.fits", "e0.fits", "e1.fits", "e2.fits"]
    rows = run_rows([*undated, dated])
    assert rows[0].cells[1] == "d.fits"


def test_run_command_line_errors(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "qualityfits", "run", "-o", str(tmp_path)],
        capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "qualityfits run: error:" in done.stderr
    assert "Traceback" not in done.stderr
    same = [str(tmp_path / "a" / "x.fits"), str(tmp_path / "b" / "x.fits")]
    assert main(["run", *same, "-o", str(tmp_path / "o")]) == 2


def test_a_file_named_run_is_still_an_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("run").write_bytes(b"not FITS")
    assert main(["./run", "-o", "out", "--no-progress"]) == 2


def test_one_progress_bar_over_the_run():
    stream = io.StringIO()  # a terminal in the CLI
    bar = RunProgress(2, stream)
    bar.start("a.fits")
    for ccd in ("ccd00", "ccd01"):
        bar(ProgressEvent(extension=ccd, index=1, step="done",
                          step_number=0, n_steps=0, n_extensions=2))
    bar.finish_image()
    bar.start("b.fits")
    bar(ProgressEvent(extension="ccd00", index=1, step="failed",
                      step_number=0, n_steps=0, n_extensions=4))
    assert bar.done == pytest.approx(1.25)
    bar.finish_image()
    assert bar.done == pytest.approx(2.0)
    bar.close()
    text = stream.getvalue()
    assert "b.fits: 1/4 CCDs" in text
    assert "100%" in text


def test_the_run_bar_is_sized_by_the_pipeline(tmp_path):
    """The bar learns an image's CCD count from its progress events
    (the image is not opened a second time to count them)."""
    path = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU()] + [
        simulate_image(SimulationParams(shape=(384, 384), n_stars=120,
                                        n_galaxies=20), seed=9200 + k)
        .to_hdu(name=f"ccd{k}") for k in range(2)]).writeto(path)
    stream = io.StringIO()
    bar = RunProgress(1, stream)
    bar.start("two.fits")
    assess(path, jobs=1, progress=bar)
    assert bar.done == pytest.approx(1.0)  # before finish_image
    bar.finish_image()
    assert bar.done == pytest.approx(1.0)
    bar.close()
    assert "two.fits: 2/2 CCDs" in stream.getvalue()
