"""Runs in the service: the jobs sharing a RUNID, their tables and page.

Three exposures of a "night" (two CCDs each, FWHM 3, 4.5 and 6 px,
dated by MJD-OBS in an empty primary header) are assessed by the real
worker under one RUNID, through a live service whose proxy names the
user (header mode); then the run's VOTable and FITS tables, another
owner's view, and the run page in Chromium (the table, the grades, the
trend plots at desktop and phone widths, sorting, and a fourth job
submitted through the form appearing on the open page).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse
from test_web import browser, shot  # noqa: F401 - a fixture, a helper
from uwskit import LiveService, error_summary, job_xml, settings_for

from qualityfits.datasets import SimulationParams, simulate_image
from uws.runs import PLOT_CACHE_UNUSED_S, prune_plots

RUN = "2026-12-06_night.1"
#: FWHM [px] of each exposure, and its start (MJD).
NIGHT = ((3.0, 61380.05), (4.5, 61380.10), (6.0, 61380.15))
FOURTH = (3.8, 61380.20)
CCDS = ("left", "right")
ALICE = {"X-Remote-User": "alice"}
BOB = {"X-Remote-User": "bob"}


def exposure(path: Path, fwhm: float, mjd: float, seed: int) -> Path:
    """Write a two-CCD exposure: an empty primary saying when, two CCDs."""
    params = SimulationParams(shape=(768, 768), fwhm=fwhm, n_stars=450,
                              n_galaxies=150, n_cr_hits=15, n_cr_tracks=2)
    primary = fits.PrimaryHDU()
    primary.header["MJD-OBS"] = mjd
    primary.header["SIMFWHM"] = fwhm
    hdus = [primary] + [simulate_image(params, seed=seed + k).to_hdu(name)
                        for k, name in enumerate(CCDS)]
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The night's three exposures and the fourth, added later."""
    folder = tmp_path_factory.mktemp("night")
    return [exposure(folder / f"exp{k + 1}.fits", fwhm, mjd, 40 + 2 * k)
            for k, (fwhm, mjd) in enumerate((*NIGHT, FOURTH))]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory,
          images: list[Path]) -> Iterator[LiveService]:
    """A service (header mode) where alice's three jobs share RUN."""
    root = tmp_path_factory.mktemp("service")
    live = LiveService(settings_for(root, f"sqlite:///{root}/jobs.sqlite",
                                    auth="header"))
    live.http.headers.update(ALICE)
    try:
        urls = [live.run_image(image, RUNID=RUN) for image in images[:3]]
        for url in urls:
            assert live.wait_phase(url, {"COMPLETED", "ERROR"}) == \
                "COMPLETED", live.http.get(f"{url}/error").text
        yield live
    finally:
        live.stop()


def get(live: LiveService, path: str, who: dict[str, str]) -> Any:
    """GET ``path`` of the service as ``who``."""
    return requests.get(f"{live.url}{path}", headers=who, timeout=60)


def exposures_of(body: bytes) -> Any:
    """The ``exposures`` table of a run VOTable, as an astropy Table."""
    votable = parse(io.BytesIO(body), verify="exception")
    return votable.get_table_by_id("exposures").to_table()


# -- the API --------------------------------------------------------------
def test_the_run_votable_has_one_row_per_exposure(night: LiveService):
    r = get(night, f"/runs/{RUN}/summary.vot", ALICE)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/x-votable+xml")
    table = exposures_of(r.content)
    assert len(table) == 3
    assert list(table["PHASE"]) == ["COMPLETED"] * 3
    # In time order, each at the FWHM it was simulated with.
    assert list(table["MJD_OBS"]) == [mjd for _, mjd in NIGHT]
    for row, (fwhm, _) in zip(table, NIGHT, strict=True):
        assert row["FWHM_PIX"] == pytest.approx(fwhm, rel=0.05), row
        assert row["FWHM_PIX_MIN"] <= row["FWHM_PIX"] <= row["FWHM_PIX_MAX"]
        assert row["N_CCD"] == 2
        assert row["FILTER"] == "r"  # the CCDs' FILTER
        assert row["GRADE"] in ("A", "B", "C", "D")
    # Named by the uploads' file names.
    assert list(table["IMAGE"]) == ["exp1.fits", "exp2.fits", "exp3.fits"]
    # The worst seeing never has a better grade than the best.
    assert table["GRADE"][2] >= table["GRADE"][0]
    ccds = parse(io.BytesIO(r.content)).get_table_by_id("ccds").to_table()
    assert len(ccds) == 6
    assert sorted(set(ccds["EXTNAME"])) == sorted(CCDS)


def test_the_run_fits_opens_in_astropy(night: LiveService):
    r = get(night, f"/runs/{RUN}/summary.fits", ALICE)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/fits"
    with fits.open(io.BytesIO(r.content)) as hdus:
        exposures = hdus["EXPOSURES"].data
        assert len(exposures) == 3
        assert len(hdus["CCDS"].data) == 6
        fwhm = np.asarray(exposures["FWHM_PIX"], dtype=float)
    assert fwhm == pytest.approx([f for f, _ in NIGHT], rel=0.05)


def test_the_runs_are_listed_per_owner(night: LiveService):
    r = get(night, "/runs", ALICE)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    (run,) = [item for item in r.json()["runs"] if item["run_id"] == RUN]
    assert run["jobs"] == 3
    assert run["phases"] == {"COMPLETED": 3}
    assert run["summary_vot"] == f"{night.url}/runs/{RUN}/summary.vot"
    assert run["page"] == f"{night.url}/ui/runs/{RUN}"
    assert get(night, "/runs", BOB).json() == {"runs": []}


@pytest.mark.parametrize("path", [f"/runs/{RUN}/summary.vot",
                                  f"/runs/{RUN}/summary.fits",
                                  f"/ui/runs/{RUN}", f"/ui/runs/{RUN}/table",
                                  f"/ui/runs/{RUN}/plots/run_trends.png"])
def test_another_owner_does_not_see_the_run(night: LiveService, path: str):
    r = get(night, path, BOB)
    assert r.status_code == 404
    assert f"none of your jobs has RUNID={RUN}" in r.text
    assert "alice" not in r.text


def test_bad_run_names_are_refused(night: LiveService):
    r = get(night, "/runs/no%20spaces/summary.vot", ALICE)
    assert r.status_code == 400
    assert r.text.startswith("UsageError: RUNID 'no spaces' has no run "
                             "resources")
    assert get(night, "/ui/runs/.hidden", ALICE).status_code == 400
    r = get(night, "/runs/another-night/summary.vot", ALICE)
    assert r.status_code == 404
    assert r.text == ("NotFound: no run 'another-night': none of your jobs "
                      "has RUNID=another-night\n")
    r = get(night, f"/ui/runs/{RUN}/plots/other.png", ALICE)
    assert r.status_code == 404
    assert "no run picture 'other'" in html.unescape(r.text)


def test_an_unfinished_job_is_a_row_with_its_phase(night: LiveService):
    url = night.create(RUNID=RUN)  # PENDING: no image yet
    try:
        table = exposures_of(get(night, f"/runs/{RUN}/summary.vot",
                                 ALICE).content)
        assert len(table) == 4
        (pending,) = [row for row in table if row["PHASE"] == "PENDING"]
        assert pending["JOB_ID"] == url.rsplit("/", 1)[1]
        assert np.ma.is_masked(pending["FWHM_PIX"]) or \
            math.isnan(pending["FWHM_PIX"])
        assert pending["GRADE"] == ""
        assert get(night, "/runs", ALICE).json()["runs"][0]["phases"] == \
            {"COMPLETED": 3, "PENDING": 1}
    finally:
        night.http.delete(url)


def test_a_failed_job_is_a_row_with_its_error(night: LiveService,
                                             noise_image: Path):
    url = night.run_image(noise_image, RUNID="failed-night")
    assert night.wait_phase(url, {"COMPLETED", "ERROR"}) == "ERROR"
    message = error_summary(job_xml(night, url))[2]
    table = exposures_of(get(night, "/runs/failed-night/summary.vot",
                             ALICE).content)
    (row,) = table
    assert row["PHASE"] == "ERROR"
    assert row["ERROR"] == message
    assert "no star usable for the PSF" in message
    assert row["GRADE"] == ""
    page = get(night, "/ui/runs/failed-night", ALICE).text
    assert 'class="failed"' in page
    assert message in html.unescape(page)


# -- the page ---------------------------------------------------------------
@pytest.fixture
def alice_page(browser: Any) -> Iterator[Any]:  # noqa: F811
    """A page whose requests say they are alice's (the proxy's header)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  extra_http_headers=ALICE)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def plots_loaded(page: Any) -> list[int]:
    """Wait until the run's pictures are loaded; return their widths."""
    page.wait_for_function("""() => {
        const imgs = [...document.querySelectorAll('.run-plots img')];
        return imgs.length == 2 && imgs.every(
            i => i.complete && i.naturalWidth > 0);
    }""")
    return list(page.eval_on_selector_all(
        ".run-plots img", "imgs => imgs.map(i => i.naturalWidth)"))


def column(page: Any, heading: str) -> list[str]:
    """The texts of a column of the run table, top to bottom."""
    return list(page.evaluate("""(heading) => {
        const ths = [...document.querySelectorAll('#run-table thead th')];
        const i = ths.findIndex(th => th.textContent.trim()
                                      .startsWith(heading));
        return [...document.querySelectorAll('#run-table tbody tr')].map(
            tr => tr.cells[i].textContent.trim());
    }""", heading))


def test_the_run_page_lists_the_night_and_follows_it(
        night: LiveService, alice_page: Any, images: list[Path]):
    page = alice_page
    page.goto(f"{night.url}/ui/runs")
    assert "3" in page.inner_text(f"#runs tr:has(a[href$='/ui/runs/{RUN}'])")
    shot(page, "runs-0-list")
    page.click(f"#runs a[href$='/ui/runs/{RUN}']")
    page.wait_for_url(f"**/ui/runs/{RUN}")
    rows = page.locator("#run-table tbody tr")
    assert rows.count() == 3
    assert column(page, "Phase") == ["COMPLETED"] * 3
    assert all(g in "ABCD" for g in column(page, "Grade"))
    assert page.locator("#run-table .grade").count() == 3
    # The FWHM (arcsec: the CCDs have a WCS), in time order.
    fwhm = [float(v) for v in column(page, "FWHM [″]")]
    assert fwhm == sorted(fwhm)
    assert min(plots_loaded(page)) > 300
    assert page.get_attribute("#summary-vot", "href") == \
        f"{night.url}/runs/{RUN}/summary.vot"
    # SAMP: the run's table for TOPCAT, its absolute URL (samp.js shows
    # the button; tests/uws_tests/test_samp.py sends through a real hub).
    assert page.is_visible("#samp-run-table")
    items = json.loads(page.get_attribute("#samp-run-table",
                                          "data-samp-items"))
    assert [i["url"] for i in items] == [
        f"{night.url}/runs/{RUN}/summary.vot"]
    # ... and the three images, each downloadable from its job.
    sent = json.loads(page.get_attribute("#samp-run-images",
                                         "data-samp-items"))
    assert len(sent) == 3
    for item in sent:
        assert item["url"].startswith(f"{night.url}/jobs/")
        assert item["url"].endswith("/parameters/image")
    # Sorting by a heading, then the other way.
    page.click("#run-table th:nth-child(7) button")
    assert [float(v) for v in column(page, "FWHM")] == fwhm
    page.click("#run-table th:nth-child(7) button")
    assert [float(v) for v in column(page, "FWHM")] == fwhm[::-1]
    assert page.get_attribute("#run-table th:nth-child(7)",
                              "aria-sort") == "descending"
    shot(page, "runs-1-night")
    # At a phone's width the table scrolls inside its box (shot checked
    # that the page itself does not overflow).
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("""() => {
        const box = document.querySelector('#run .scroll');
        return box.scrollWidth > box.clientWidth;
    }""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 900})
    # Each row links to its job: the image to its results.
    first = page.locator("#run-table tbody tr").first
    job_id = first.get_attribute("data-job")
    assert first.locator("td:nth-child(2) a").get_attribute("href") == \
        f"{night.url}/ui/jobs/{job_id}/results"
    # A fourth exposure, submitted with the form in another tab, appears
    # on the open page without a reload.
    page.evaluate("window.stayed = true")
    key = page.get_attribute("#run", "data-key")
    form = page.context.new_page()
    form.goto(f"{night.url}/")
    form.set_input_files("#image", str(images[3]))
    form.fill("#runid", RUN)
    form.click("#send")
    form.wait_for_url("**/ui/jobs/*")
    new_job = form.url.rsplit("/", 1)[1]
    assert form.inner_text("#run-link") == f"Part of the run {RUN}."
    page.wait_for_selector(f"#run-table tr[data-job='{new_job}']",
                           timeout=20_000)
    assert page.locator("#run-table tbody tr").count() == 4
    page.wait_for_function(f"""() => {{
        const row = document.querySelector("tr[data-job='{new_job}']");
        return row && row.querySelector('.grade') !== null;
    }}""", timeout=90_000)
    assert page.evaluate("window.stayed") is True  # no reload
    assert page.get_attribute("#run", "data-key") != key
    # The sort chosen is kept; the pictures are drawn anew.
    assert [float(v) for v in column(page, "FWHM")] == \
        sorted([float(v) for v in column(page, "FWHM")], reverse=True)
    assert all(page.get_attribute(f"#plot-{name}", "src").endswith(
        page.get_attribute("#run", "data-key"))
        for name in ("run_trends", "run_ccd_fwhm"))
    plots_loaded(page)
    shot(page, "runs-2-fourth")
    # The results page links back to the run.
    form.goto(f"{night.url}/ui/jobs/{new_job}/results")
    form.click("#run-link a")
    form.wait_for_url(f"**/ui/runs/{RUN}")
    assert form.locator("#run-table tbody tr").count() == 4


def test_a_run_name_the_page_cannot_show_is_refused_by_the_form(
        night: LiveService, alice_page: Any, images: list[Path]):
    page = alice_page
    before = night.service.store.count()
    page.goto(f"{night.url}/")
    page.set_input_files("#image", str(images[0]))
    page.fill("#runid", "my night")
    # The browser says so first; without its check, the service does.
    assert page.evaluate("document.getElementById('runid').validity"
                         ".patternMismatch") is True
    page.evaluate("document.getElementById('submit').noValidate = true")
    with page.expect_response("**/ui/submit") as answer:
        page.click("#send")
    assert answer.value.status == 400
    problem = page.locator("#problem")
    problem.wait_for(state="visible")
    assert "RUNID 'my night' has no run resources" in problem.inner_text()
    assert night.service.store.count() == before


# -- runs of jobs not yet run, on each database -------------------------------
def test_runs_of_pending_jobs_on_each_database(live_db: LiveService):
    """Runs are counted by SQL on SQLite and PostgreSQL; no job ran."""
    for run_id in ("a-run", "a-run", "b.run", "b.run", "b.run"):
        live_db.create(RUNID=run_id)
    live_db.create()  # no RUNID: in no run
    live_db.create(RUNID="with space")
    runs = {r["run_id"]: r for r in
            live_db.http.get(f"{live_db.url}/runs").json()["runs"]}
    assert {k: (r["jobs"], r["phases"]) for k, r in runs.items()} == {
        "a-run": (2, {"PENDING": 2}), "b.run": (3, {"PENDING": 3}),
        "with space": (1, {"PENDING": 1})}
    assert runs["with space"]["page"] is None
    assert runs["b.run"]["last_creation"] >= runs["b.run"]["first_creation"]
    # The run's table: rows with their phase, nothing measured.
    r = live_db.http.get(f"{live_db.url}/runs/b.run/summary.vot")
    table = exposures_of(r.content)
    assert list(table["PHASE"]) == ["PENDING"] * 3
    assert all(np.ma.is_masked(v) or math.isnan(v)
               for v in table["FWHM_PIX"])
    # The page: three rows, no plots yet, the run listed on /ui/runs.
    page = live_db.http.get(f"{live_db.url}/ui/runs/b.run")
    assert page.status_code == 200
    assert page.text.count("<tr data-job=") == 3
    assert "The trend plots appear when a job of the run is completed" \
        in page.text
    assert live_db.http.get(
        f"{live_db.url}/ui/runs/b.run/plots/run_trends.png").status_code \
        == 404
    listing = live_db.http.get(f"{live_db.url}/ui/runs").text
    assert 'href="' + f"{live_db.url}/ui/runs/a-run" + '"' in listing
    assert "(no page: the name is not a safe token)" in listing
    # The fragment the page's script asks for: 204 while unchanged.
    key = page.text.split('data-key="', 1)[1].split('"', 1)[0]
    fragment = f"{live_db.url}/ui/runs/b.run/table"
    assert live_db.http.get(fragment, params={"since": key}).status_code \
        == 204
    live_db.create(RUNID="b.run")
    changed = live_db.http.get(fragment, params={"since": key})
    assert changed.status_code == 200
    assert changed.text.count("<tr data-job=") == 4


def test_pictures_of_runs_not_drawn_for_a_day_are_removed(tmp_path: Path):
    old, recent, kept = (tmp_path / n for n in ("old", "recent", "kept"))
    for folder in (old, recent, kept):
        (folder / "key").mkdir(parents=True)
        (folder / "key" / "run_trends.png").write_bytes(b"png")
    long_ago = time.time() - PLOT_CACHE_UNUSED_S - 60
    for folder in (old, kept):
        os.utime(folder, (long_ago, long_ago))
    assert prune_plots(tmp_path, keep=kept) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "recent"]
