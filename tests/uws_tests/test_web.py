"""The web pages in a real browser: Debian's Chromium driven by Playwright.

The service runs on loopback (real waitress, real worker processes);
Playwright drives the system Chromium (``/usr/bin/chromium``, never a
downloaded browser).  Screenshots of every page go to
``build/test-artefacts/web/`` (desktop and phone widths): look at them.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import playwright.sync_api as playwright_api
import pytest
from astropy.io import fits
from smtpkit import SmtpServer
from testkit import require_tool, shared_file
from uwskit import LiveService, wait_for

from uws.auth import ANONYMOUS
from uws.model import utcnow
from uws.phases import Phase
from uws.store import NewJob

ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / \
    "test-artefacts" / "web"
#: Flags from ../shared/docs/browser-tests.md: root needs no sandbox; no
#: calls to outside hosts.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}

Starter = Callable[..., LiveService]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The system Chromium, headless."""
    chromium = require_tool("chromium")
    with playwright_api.sync_playwright() as play:
        launched = play.chromium.launch(executable_path=chromium, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (its own context: no cookies or storage shared)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot, at the desktop width and a phone's."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTEFACTS / f"{name}-phone.png"),
                    full_page=True)
    # Readable on a phone: nothing wider than the screen (wide tables
    # scroll inside their own box).
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name}: {width} px wide on a phone"
    page.set_viewport_size(size)


@pytest.fixture(scope="module")
def ntt_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real image: NTT EMMI, R band, galaxies (../shared/data)."""
    packed = shared_file("ntt_emmi_R_galaxies.fits.gz")
    path = tmp_path_factory.mktemp("real") / "ntt_emmi_R_galaxies.fits"
    with gzip.open(packed) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path




def report_state(page: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(phase, ((step, state), ...)) as the job page shows them now."""
    return page.evaluate("""() => {
        const r = document.getElementById('report');
        const steps = [...r.querySelectorAll('tr.step')].map(
            s => [s.dataset.step, s.querySelector('td').textContent]);
        return [r.dataset.phase, steps];
    }""")


def follow(page: Any, timeout: float = 120) -> list[Any]:
    """Watch the job page until a final phase; return what it showed."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase, steps = report_state(page)
        state = (phase, tuple(tuple(s) for s in steps))
        if not seen or seen[-1] != state:
            seen.append(state)
        if phase in {"COMPLETED", "ERROR", "ABORTED"}:
            return seen
        time.sleep(0.05)
    pytest.fail(f"the page still shows {seen[-1] if seen else None}")


# -- submit, follow, results, download --------------------------------------
@pytest.mark.realdata
def test_a_real_image_from_upload_to_archive(start_service: Starter,
                                             page: Any, ntt_image: Path,
                                             tmp_path: Path,
                                             smtp: SmtpServer):
    live = start_service(ccd_jobs=1, smtp_host="127.0.0.1",
                         smtp_port=smtp.port)
    page.goto(f"{live.url}/")
    assert "800 MB" in page.inner_text("#limit")
    shot(page, "1-submit")
    # A slow line (500 kB/s up), so that the progress bar is seen.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 5, "downloadThroughput": -1,
        "uploadThroughput": 500_000})
    page.set_input_files("#image", str(ntt_image))
    page.fill("#email", "observer@example.org")
    page.click("#send")
    progress: list[tuple[float, str]] = []
    while "/ui/jobs/" not in page.url:
        # The page may be left between two reads.
        with contextlib.suppress(playwright_api.Error):
            value = page.eval_on_selector("#progress", "p => p.value")
            text = page.inner_text("#progress-text")
            if text and (not progress or progress[-1][1] != text):
                progress.append((value, text))
                if len(progress) == 3:
                    shot(page, "2-uploading")
        time.sleep(0.1)
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": -1})
    # The bar moved, and said bytes sent, rate, elapsed and time left.
    values = [v for v, _ in progress]
    assert len(set(values)) >= 3, progress
    assert values == sorted(values)
    assert any(" of 2.1 MB sent, " in t and "/s, " in t and " elapsed, "
               in t and " left" in t for _, t in progress), progress
    # The job page, until the job ends (this small image may be done
    # before the page first shows: the steps advancing live are
    # test_the_job_page_follows_the_steps_live's).
    seen = follow(page)
    shot(page, "3-job-completed")
    assert seen[-1][0] == "COMPLETED"
    text = page.inner_text("#report")
    for label in ("Created", "Queued", "Started", "Ended", "Queue", "Host",
                  "Memory used", "Wall time used"):
        assert label in text
    assert "local" in text  # the queue of the local runner
    assert page.locator("#abort").count() == 0  # ended: no abort button
    # The e-mail given in the form: one message, with the results link.
    wait_for(lambda: len(smtp.inbox.received()) == 1, 15, "the e-mail")
    mail = smtp.inbox.received()[0]
    assert mail.recipients == ["observer@example.org"]
    job_id = page.url.rsplit("/", 1)[1]
    assert mail.message["Subject"] == \
        f"QualityFITS-UWS job {job_id}: COMPLETED"
    assert f"/ui/jobs/{job_id}/results" in mail.body
    # The results page.
    page.click("#results-link")
    assert page.url == f"{live.url}/ui/jobs/{job_id}/results"
    page.wait_for_selector("#ccds")
    # The exposure's grade, with its reasons when below A.
    letter = page.inner_text("#grade .grade")
    assert letter in ("A", "B", "C", "D")
    assert (page.locator("#grade-reasons li").count() > 0) == (letter != "A")
    rows = page.locator("#ccds tbody tr")
    assert rows.count() == 1  # one CCD
    assert "ok" in rows.first.inner_text()
    # The NTT field has no zero point: its depth is instrumental, said so.
    assert "5σ depth [instrumental mag]" in page.inner_text("#ccds thead")
    assert "instrumental" in page.inner_text("#instrumental")
    # What the file's one HDU is, as the report page and CLI say it.
    assert page.inner_text("#hdus").startswith(
        "HDU 0 PRIMARY: sky image, assessed")
    pictures = page.locator(".pictures img")
    assert pictures.count() >= 8
    assert pictures.first.get_attribute("loading") == "lazy"
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("""() => [...document.querySelectorAll(
        '.pictures img')].every(i => i.complete && i.naturalWidth > 0)""")
    widths = page.eval_on_selector_all(
        ".pictures img", "imgs => imgs.map(i => i.naturalWidth)")
    assert max(widths) <= 480  # thumbnails, not the full pictures
    products = page.inner_text("#products")
    for name in ("summary", "catalogue", "weight", "flag", "psf_model",
                 "archive", "log"):
        assert name in products
    shot(page, "4-results")
    with page.expect_download() as download:
        page.click("#archive")
    archive = tmp_path / "archive.tar.gz"
    download.value.save_as(archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("/manifest.json") for n in names)
    assert any(n.endswith("_summary.vot") for n in names)
    assert any(n.endswith("_m.png") for n in names)


class _HeldFile(http.server.BaseHTTPRequestHandler):
    """Serve the server's file, holding its last 64 kB until released."""

    def do_GET(self):
        data = self.server.data
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:-65536])
        self.wfile.flush()
        self.server.release.wait(60)
        self.wfile.write(data[-65536:])

    def log_message(self, *args):
        pass


@pytest.fixture
def held_file(ntt_image: Path) -> Iterator[Any]:
    """A loopback HTTP server whose one file is held back until released."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeldFile)
    httpd.data = ntt_image.read_bytes()
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.realdata
def test_the_job_page_follows_the_steps_live(start_service: Starter,
                                             page: Any, held_file: Any):
    """The steps advance on the page as the job runs, without a reload.

    The image comes by URL from a server that holds its end back until
    the page has shown the fetch running: the job cannot end before the
    page has seen it executing, however fast the pipeline is.
    """
    live = start_service()
    port = held_file.server_address[1]
    page.goto(f"{live.url}/")
    page.fill("#image_url", f"http://127.0.0.1:{port}/ntt.fits")
    page.click("#send")
    page.wait_for_url("**/ui/jobs/*")
    page.evaluate("window.notReloaded = true")
    deadline = time.monotonic() + 60
    while True:
        phase, steps = report_state(page)
        if phase == "EXECUTING" and ["fetch", "running"] in steps:
            break
        assert phase in ("PENDING", "QUEUED", "EXECUTING"), phase
        assert time.monotonic() < deadline, (phase, steps)
        time.sleep(0.05)
    shot(page, "3-job-executing")
    held_file.release.set()
    seen = follow(page)
    assert seen[-1][0] == "COMPLETED", seen
    assert page.evaluate("window.notReloaded") is True
    first = seen[0]
    assert first[0] == "EXECUTING"
    assert ("fetch", "running") in first[1]
    assert ("fetch", "done") in seen[-1][1]
    done = [sum(state == "done" for _, state in steps)
            for _, steps in seen]
    assert done == sorted(done), seen
    assert done[-1] == len(seen[-1][1]) > done[0], seen


def test_an_error_job_shows_its_message(start_service: Starter, page: Any,
                                        noise_image: Path):
    live = start_service()
    page.goto(f"{live.url}/")
    page.set_input_files("#image", str(noise_image))
    page.click("#send")
    page.wait_for_url("**/ui/jobs/*")
    assert follow(page)[-1][0] == "ERROR"
    error = page.inner_text("#error")
    assert "no star usable for the PSF" in error
    assert "Last lines of worker.log" in error  # the log's tail
    assert page.locator("tr.step-failed").count() >= 1
    shot(page, "5-job-error")


def test_an_over_limit_file_is_refused_before_upload(
        start_service: Starter, page: Any, tmp_path: Path):
    live = start_service(upload_limit="1MB")
    big = tmp_path / "big.fits"
    fits.PrimaryHDU(np.zeros((600, 600), np.float32)).writeto(big)
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url)
            if r.method == "POST" else None)
    page.goto(f"{live.url}/")
    assert page.inner_text("#limit") == "1 MB"
    page.set_input_files("#image", str(big))
    problem = page.locator("#problem")
    problem.wait_for(state="visible")
    assert "over the limit of 1.0 MB: it was not sent" in \
        problem.inner_text()
    page.click("#send")
    time.sleep(0.5)
    assert posted == []
    assert live.service.store.count() == 0
    shot(page, "6-over-limit")


def test_the_job_list_goes_a_page_at_a_time(start_service: Starter,
                                            page: Any) -> None:
    """230 jobs: pages of 100 with an "Older jobs" link (issue 16).

    Ten jobs share one creation time across the first page's end; jobs
    deleted and aborted between two pages, the phase filter kept.
    """
    live = start_service()
    store = live.service.store
    now = utcnow()
    for i in range(230):
        # j125-j134 created at one instant (the first page ends at j130).
        age = 230 - (125 if 125 <= i < 135 else i)
        created = now - timedelta(seconds=age)
        store.create(NewJob(
            job_id=f"j{i:03d}", owner=None, run_id=None,
            creation_time=created, execution_duration=60,
            destruction=created + timedelta(days=30), parameters=()))

    def shown() -> list[str]:
        return page.locator("#jobs tbody code").all_inner_texts()

    page.goto(f"{live.url}/ui/jobs")
    first = shown()
    assert first == [f"j{i:03d}" for i in range(229, 129, -1)]
    assert page.locator("#newest").count() == 0
    shot(page, "8b-job-list-pages")
    # Between two pages: the job shown last and the next one go.
    live.service.delete("j130", ANONYMOUS)
    live.service.delete("j129", ANONYMOUS)
    page.click("#older")
    assert shown() == [f"j{i:03d}" for i in range(128, 28, -1)]
    page.click("#older")
    assert shown() == [f"j{i:03d}" for i in range(28, -1, -1)]
    assert page.locator("#older").count() == 0
    page.click("#newest")
    assert shown() == [f"j{i:03d}" for i in range(229, 130, -1)] + ["j128"]
    # Filtered by phase: the link keeps the filter.
    for job_id in ("j200", "j100", "j005"):
        store.transition(job_id, [Phase.PENDING], Phase.ABORTED)
    page.goto(f"{live.url}/ui/jobs?phase=PENDING")
    seen = shown()
    while page.locator("#older").count():
        assert "phase=PENDING" in page.get_attribute("#older", "href")
        page.click("#older")
        seen += shown()
    assert seen == [f"j{i:03d}" for i in range(229, -1, -1)
                    if i not in (130, 129, 200, 100, 5)]
    # A cursor that is not one: a page saying why.
    answer = page.goto(f"{live.url}/ui/jobs?before=yesterday&before_job=j1")
    assert answer.status == 400
    assert "before: 'yesterday' is not an ISO 8601 instant" in \
        page.inner_text("main")
    answer = page.goto(f"{live.url}/ui/jobs?before_job=j1")
    assert answer.status == 400
    assert "before and before_job go together" in page.inner_text("main")


def test_job_list_check_abort_and_delete(start_service: Starter, page: Any,
                                         tmp_path: Path, noise_image: Path):
    sleeper = tmp_path / "sleeper.sh"
    sleeper.write_text("#!/bin/sh\nsleep 60\n")
    sleeper.chmod(0o755)
    live = start_service(worker_command=str(sleeper))
    page.goto(f"{live.url}/")
    page.set_input_files("#image", str(noise_image))
    page.fill("#email", "me@example.org")
    page.click("#send")
    page.wait_for_url("**/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(
        "() => document.getElementById('report').dataset.phase "
        "=== 'EXECUTING'")
    shot(page, "7-job-executing")
    # Keyboard: the abort button is reachable and works with Enter.  The
    # form's POST answers with a redirect to the job page: wait for that
    # navigation, or the page's own refresh may show ABORTED first and
    # the redirect cut the next goto short.
    page.focus("#abort")
    with page.expect_navigation(url=f"**/ui/jobs/{job_id}"):
        page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('report').dataset.phase "
        "=== 'ABORTED'")
    # The list, filtered by phase.
    page.goto(f"{live.url}/ui/jobs?phase=ABORTED")
    assert job_id in page.inner_text("#jobs")
    page.select_option("#phase", "COMPLETED")
    page.click("form.filter button")
    assert job_id not in page.inner_text("main")
    shot(page, "8-job-list")
    # "Is my result there?": wrong e-mail, then the right one.
    page.goto(f"{live.url}/ui/check")
    page.fill("#job", job_id)
    page.fill("#check-email", "someone@example.org")
    page.click("main form button")
    assert "No job with this id and e-mail" in page.inner_text("#answer")
    page.fill("#check-email", "me@example.org")
    page.click("main form button")
    assert f"Job {job_id} is ABORTED" in page.inner_text("#answer")
    shot(page, "9-check")
    # Delete.
    page.goto(f"{live.url}/ui/jobs/{job_id}")
    page.click("#delete")
    page.wait_for_url("**/ui/jobs?deleted=1")
    assert "The job was deleted" in page.inner_text("main")
    assert live.service.store.count() == 0
    # Its page is gone: a page saying so, not a bare error.
    response = page.goto(f"{live.url}/ui/jobs/{job_id}")
    assert response.status == 404
    assert page.inner_text("h1") == "Not found"
    assert job_id in page.inner_text("#problem")
    shot(page, "10-not-found")
