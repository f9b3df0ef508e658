"""Bad input and faults: each ends in a precise answer, never a traceback.

A refused request is an HTTP status with a ``text/plain`` message that
names what is wrong (and leaves no job and no staged upload behind); a
job that cannot run ends ERROR or ABORTED with a useful errorSummary
and an ``/error`` document.  Everything is real: the service runs in
waitress with the local runner, the workers are real processes (small
Python scripts written here stand for a worker that crashes, exits
without a word or never ends), the server killed with SIGKILL is a
real ``pserve`` process.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from dbfixtures import postgres_server_url
from lxml import etree
from uwskit import (
    QF,
    UWS,
    LiveService,
    error_summary,
    free_port,
    instant,
    job_xml,
    steps_of,
    text_of,
    wait_for,
    wait_serving,
)

from pbs_bridge.jobfolder import LOG_FILE, SPEC_FILE, WorkerSpec
from uws.phases import Phase
from uws.schema import upgrade
from uws.store import JobStore

PSERVE = Path(sys.executable).parent / "pserve"
#: Seconds a test waits for a process to disappear.
GONE_TIMEOUT = 15.0

Starter = Callable[..., LiveService]


# -- helpers ------------------------------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> str:
    """Write a worker script; return the ``worker_command`` that runs it."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return f"{sys.executable} {path}"





def backend_pid(job: Any) -> int:
    """The worker's pid, from jobInfo's ``backendId`` (``pid:N``)."""
    element = job.find(f"{UWS}jobInfo/{QF}processing/{QF}backendId")
    assert element is not None, etree.tostring(job).decode()
    assert str(element.text).startswith("pid:"), element.text
    return int(str(element.text)[4:])




def alive(pid: int) -> bool:
    """Whether a process exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether any process (a zombie too) is left in a process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, *, group: bool = False,
              timeout: float = GONE_TIMEOUT) -> bool:
    """Wait until process ``pid`` is gone; return whether it is.

    With ``group``, until its whole process group (a worker is a group
    leader) is gone and reaped: no descendant and no zombie left.
    """
    deadline = time.monotonic() + timeout
    while group_alive(pid) if group else alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_quietly(pid: int, marker: Path) -> None:
    """SIGKILL a worker a test started, if it still runs (after a failure).

    Only a process whose command line names ``marker`` (the test's
    folder) is killed: never a process that reused the pid.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if os.fsencode(str(marker)) not in argv:
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def job_folders(live: LiveService) -> list[Path]:
    """The job folders (not the staging folder)."""
    return sorted(p for p in live.service.job_root.iterdir()
                  if not p.name.startswith("."))


def staged(live: LiveService) -> list[Path]:
    """Whatever is left in the upload staging folder."""
    root = live.service.staging_root
    return sorted(root.rglob("*")) if root.exists() else []


def assert_no_job(live: LiveService) -> None:
    """No job in the store, the list or the job folder; nothing staged."""
    assert live.service.store.count() == 0
    listing = etree.fromstring(live.http.get(live.jobs).content)
    assert listing.findall(f"{UWS}jobref") == []
    assert job_folders(live) == []
    assert staged(live) == []


def refused(r: requests.Response, status: int, *fragments: str) -> str:
    """Check a refusal: status, text/plain, each fragment in the text."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    assert "Traceback" not in r.text
    for fragment in fragments:
        assert fragment in r.text, (fragment, r.text)
    return r.text



def in_future(seconds: float) -> str:
    """An ISO 8601 instant ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# -- worker scripts -----------------------------------------------------------
SLEEPER = """\
    import sys, time
    print("sleeper: started in", sys.argv[-1], flush=True)
    time.sleep(60)
    """

CRASHER = """\
    import os, signal
    print("crasher: about to die of SIGKILL", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """

SILENT_EXIT = """\
    import sys
    sys.exit(3)
    """

#: Notes when it ran (by the clock of the process itself), then fails.
QUICK = """\
    import sys, time
    from pathlib import Path
    began = time.time()
    time.sleep(0.6)
    Path(sys.argv[-1], "ran").write_text(f"{began} {time.time()}")
    sys.exit(1)
    """


@pytest.fixture
def sleeper(tmp_path: Path) -> str:
    """A worker command that sleeps 60 s (never ends in a test)."""
    return script(tmp_path, "sleeper", SLEEPER)




def unused_url() -> str:
    """An http URL on a port of 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/image.fits"


# -- bad uploads --------------------------------------------------------------
def _half(sample: bytes) -> bytes:
    return sample[:len(sample) // 2]


def _one_byte_short(sample: bytes) -> bytes:
    return sample[:-1]


BAD_UPLOADS = [
    pytest.param("image", "notes.txt", lambda _: b"hello, world\n" * 400,
                 "IMAGE: not a FITS file", id="not-fits"),
    pytest.param("flat", "flat.fits", lambda _: b"\0" * 5760,
                 "FLAT: not a FITS file", id="flat-not-fits"),
    pytest.param("image", "cut.fits", _half,
                 "IMAGE: truncated FITS file", id="truncated"),
    pytest.param("image", "cut.fits", _one_byte_short,
                 "IMAGE: truncated FITS file", id="one-byte-short"),
    pytest.param("image", "empty.fits", lambda _: b"",
                 "IMAGE: not a FITS file", id="empty"),
    pytest.param("image", "image.fits.gz",
                 lambda _: b"\x1f\x8b" + b"not gzip at all" * 300,
                 "IMAGE: not a readable gzip FITS file", id="bad-gzip"),
    pytest.param("image", "notes.txt.gz",
                 lambda _: gzip.compress(b"plain text, gzipped\n" * 300),
                 "IMAGE: not a FITS file", id="gzipped-text"),
]


@pytest.mark.parametrize(("name", "filename", "make", "message"),
                         BAD_UPLOADS)
def test_bad_upload_is_refused(live: LiveService, sample_image: Path,
                               name: str, filename: str,
                               make: Callable[[bytes], bytes], message: str):
    sample = sample_image.read_bytes()
    files = {name: (filename, make(sample))}
    if name != "image":
        files["image"] = ("image.fits", sample)
    r = live.http.post(live.jobs, data={"PHASE": "RUN"}, files=files,
                       allow_redirects=False)
    refused(r, 400, f"UsageError: {message}")
    assert_no_job(live)


@pytest.mark.parametrize("size", [2_000_000, 3_000_000],
                         ids=["streamed", "content-length"])
def test_upload_over_the_limit(start_service: Starter, size: int):
    live = start_service(upload_limit="1MB")
    content = b"SIMPLE  =                    T" + b"\0" * (size - 30)
    r = live.http.post(live.jobs, data={"PHASE": "RUN"},
                       files={"image": ("big.fits", content)},
                       allow_redirects=False)
    refused(r, 413, "TooLarge:", "the limit is 1 MB")
    assert_no_job(live)


# -- bad parameters -----------------------------------------------------------
ACCEPTED = ("IMAGE", "FLAT", "MASK", "ZEROPOINT", "PIXSCALE",
            "MASK_CONVENTION", "EMAIL", "RUNID", "PHASE=RUN",
            "EXECUTIONDURATION", "DESTRUCTION")


def test_unknown_parameter_lists_the_accepted_ones(live: LiveService):
    r = live.http.post(live.jobs, data={"image": unused_url(),
                                        "colour": "red"},
                       allow_redirects=False)
    text = refused(r, 400, "unknown parameter COLOUR")
    for name in ACCEPTED:
        assert name in text
    assert_no_job(live)


BAD_VALUES = [
    ({"DESTRUCTION": "next tuesday"},
     "DESTRUCTION: 'next tuesday' is not an ISO 8601 instant"),
    ({"EXECUTIONDURATION": "abc"},
     "EXECUTIONDURATION: 'abc' is not an integer"),
    ({"EXECUTIONDURATION": "-5"}, "EXECUTIONDURATION: -5 is negative"),
    ({"ZEROPOINT": "abc"}, "ZEROPOINT: 'abc' is not a number"),
    ({"PIXSCALE": "-1"}, "PIXSCALE: -1 is outside (0, 100]"),
    ({"PIXSCALE": "nan"}, "PIXSCALE: nan is not a finite number"),
    ({"ZEROPOINT": "-1"}, "ZEROPOINT: -1 is outside [0, 50]"),
    ({"MASK_CONVENTION": "odd"},
     "MASK_CONVENTION: 'odd' is not one of auto, zero, nonzero"),
    ({"EMAIL": "bad"}, "EMAIL: 'bad' is not an email address"),
    ({"IMAGE": "file:///etc/passwd"},
     ("IMAGE: 'file:///etc/passwd' is neither an uploaded file nor an "
      "http(s) URL")),
    ({"IMAGE": "ftp://example.org/image.fits"},
     "IMAGE: 'ftp://example.org/image.fits' is neither an uploaded file"),
    ({"MASK": "/etc/passwd"}, "MASK: '/etc/passwd' is neither"),
    ({"PHASE": "ABORT"},
     "PHASE='ABORT' at job creation: only PHASE=RUN"),
    ({"RUNID": "x" * 65}, "RUNID: at most 64 printable characters"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_VALUES,
                         ids=[next(iter(f)) + "=" + next(iter(f.values()))[:20]
                              for f, _ in BAD_VALUES])
def test_bad_value_is_refused(live: LiveService, sample_image: Path,
                              fields: dict[str, str], message: str):
    with sample_image.open("rb") as fh:
        files = None if "IMAGE" in fields else {"image": fh}
        r = live.http.post(live.jobs, data=fields, files=files,
                           allow_redirects=False)
    refused(r, 400, f"UsageError: {message}")
    assert_no_job(live)  # the staged upload is gone too


def test_run_without_image_creates_no_job(live: LiveService):
    r = live.http.post(live.jobs, data={"PHASE": "RUN", "ZEROPOINT": "25"},
                       allow_redirects=False)
    refused(r, 400, "PHASE=RUN: the job has no IMAGE")
    assert_no_job(live)


def test_bad_values_on_an_existing_job(live: LiveService):
    url = live.create(IMAGE=unused_url())
    post = live.http.post
    refused(post(f"{url}/executionduration", data={"EXECUTIONDURATION":
                                                   "abc"},
                 allow_redirects=False), 400, "'abc' is not an integer")
    refused(post(f"{url}/destruction", data={"DESTRUCTION": "soon"},
                 allow_redirects=False), 400, "'soon' is not an ISO 8601")
    refused(post(f"{url}/parameters", data={"ZEROPOINT": "abc"},
                 allow_redirects=False), 400, "ZEROPOINT: 'abc'")
    refused(post(f"{url}/parameters", data={"RUNID": "x"},
                 allow_redirects=False), 400, "unknown parameter RUNID")
    refused(post(f"{url}/phase", data={"PHASE": "SUSPEND"},
                 allow_redirects=False), 400, "use PHASE=RUN or PHASE=ABORT")
    refused(live.http.get(live.jobs, params={"PHASE": "DONE"}), 400,
            "PHASE: 'DONE' is not a UWS phase")
    refused(live.http.get(url, params={"WAIT": "soon"}), 400,
            "WAIT: 'soon' is not an integer")
    job = job_xml(live, url)
    assert text_of(job, "phase") == "PENDING"
    assert text_of(job, "executionDuration") == "3600"


# -- no shell -----------------------------------------------------------------
def _pwned(*roots: Path) -> list[Path]:
    """Files named pwned below ``roots`` or in the working folder."""
    found = [p for root in roots for p in root.rglob("*pwned*")]
    return found + [p for p in (Path.cwd() / "pwned",) if p.exists()]


def test_shell_metacharacters_in_a_value_are_refused(
        live: LiveService, tmp_path: Path):
    r = live.http.post(live.jobs, data={"IMAGE": unused_url(),
                                        "ZEROPOINT": "1;touch pwned",
                                        "PHASE": "RUN"},
                       allow_redirects=False)
    refused(r, 400, "ZEROPOINT: '1;touch pwned' is not a number")
    assert_no_job(live)
    assert _pwned(tmp_path) == []


def test_shell_metacharacters_in_a_url_are_a_harmless_string(
        live: LiveService, tmp_path: Path):
    port = free_port()
    image = f"http://127.0.0.1:{port}/x;touch${{IFS}}pwned"
    url = live.create(IMAGE=image, RUNID="$(touch pwned)`touch pwned`",
                      PHASE="RUN")
    assert live.wait_phase(url, {"COMPLETED", "ERROR", "ABORTED"},
                           timeout=60) == "ERROR"
    job = job_xml(live, url)
    kind, detail, message = error_summary(job)
    assert kind == "transient"  # the server may be up later
    assert detail == "true"
    assert f"image: cannot fetch {image}" in message
    assert text_of(job, "runId") == "$(touch pwned)`touch pwned`"
    job_dir = live.service.job_root / url.rsplit("/", 1)[1]
    assert (job_dir / "worker.log").exists()
    assert job_dir.is_relative_to(tmp_path)
    assert _pwned(tmp_path) == []


# -- the worker fails ---------------------------------------------------------
def _run_to_end(live: LiveService, image: str) -> tuple[str, Any]:
    url = live.create(IMAGE=image, PHASE="RUN")
    live.wait_phase(url, {"COMPLETED", "ERROR", "ABORTED"}, timeout=60)
    return url, job_xml(live, url)


def test_worker_killed_by_sigkill(start_service: Starter, tmp_path: Path):
    live = start_service(worker_command=script(tmp_path, "crash", CRASHER))
    url, job = _run_to_end(live, unused_url())
    assert text_of(job, "phase") == "ERROR"
    kind, detail, message = error_summary(job)
    assert (kind, detail) == ("fatal", "true")
    assert "SIGKILL" in message
    assert "the worker ended without a result" in message
    r = live.http.get(f"{url}/error")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert message in r.text
    assert "crasher: about to die of SIGKILL" in r.text  # the log tail
    # The log is a result too.
    r = live.http.get(f"{url}/results/log")
    assert r.status_code == 200
    assert "about to die" in r.text


def test_worker_exits_3_without_a_word(start_service: Starter,
                                       tmp_path: Path):
    live = start_service(worker_command=script(tmp_path, "exit3",
                                               SILENT_EXIT))
    url, job = _run_to_end(live, unused_url())
    assert text_of(job, "phase") == "ERROR"
    kind, detail, message = error_summary(job)
    assert (kind, detail) == ("fatal", "true")
    assert "exit status 3" in message
    r = live.http.get(f"{url}/error")
    assert r.status_code == 200
    assert "exit status 3" in r.text


def test_worker_command_does_not_exist(start_service: Starter,
                                       tmp_path: Path):
    missing = tmp_path / "no-such-worker"
    live = start_service(worker_command=str(missing))
    url, job = _run_to_end(live, unused_url())
    assert text_of(job, "phase") == "ERROR"
    kind, detail, message = error_summary(job)
    assert (kind, detail) == ("fatal", "true")
    assert f"cannot start the worker {missing}" in message
    assert "No such file or directory" in message
    r = live.http.get(f"{url}/error")
    assert r.status_code == 200
    assert "cannot start the worker" in r.text


def test_no_star_in_the_image(live: LiveService, noise_image: Path):
    url = live.run_image(noise_image)
    assert live.wait_phase(url, {"COMPLETED", "ERROR"}, timeout=60) == \
        "ERROR"
    job = job_xml(live, url)
    kind, detail, message = error_summary(job)
    assert (kind, detail) == ("fatal", "true")
    assert "no star usable for the PSF" in message
    assert "extension PRIMARY" in message
    r = live.http.get(f"{url}/error")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.startswith(f"fatal: {message}")
    assert "step psf: failed" in r.text  # the log tail
    assert steps_of(job)["psf"] == "failed"  # the worker's progress
    r = live.http.get(f"{url}/results")
    assert r.status_code == 200
    ids = [e.get("id") for e in etree.fromstring(r.content)]
    assert ids == ["log"]


# -- duration, abort, queue ---------------------------------------------------
def test_execution_duration_exceeded(start_service: Starter, sleeper: str,
                                     tmp_path: Path):
    live = start_service(execution_duration="1", worker_command=sleeper)
    url = live.create(IMAGE=unused_url(), PHASE="RUN")
    assert live.wait_phase(url, {"EXECUTING"}, timeout=10) == "EXECUTING"
    pid = backend_pid(job_xml(live, url))
    try:
        assert alive(pid)
        began = time.monotonic()
        assert live.wait_phase(url, {"ABORTED", "ERROR", "COMPLETED"},
                               timeout=15) == "ABORTED"
        assert time.monotonic() - began < 5
        job = job_xml(live, url)
        kind, detail, message = error_summary(job)
        assert (kind, detail) == ("fatal", "true")
        assert "execution duration of 1 s exceeded" in message
        assert wait_gone(pid, group=True), f"worker {pid} left"
        r = live.http.get(f"{url}/error")
        assert r.status_code == 200
        assert "execution duration of 1 s exceeded" in r.text
        assert "sleeper: started" in r.text
    finally:
        kill_quietly(pid, tmp_path)


def test_abort_kills_the_worker_and_a_queued_job_never_starts(
        start_service: Starter, sleeper: str, tmp_path: Path):
    live = start_service(worker_command=sleeper, max_running="1")
    first = live.create(IMAGE=unused_url(), PHASE="RUN")
    second = live.create(IMAGE=unused_url(), PHASE="RUN")
    assert live.wait_phase(first, {"EXECUTING"}, timeout=10) == "EXECUTING"
    pid = backend_pid(job_xml(live, first))
    try:
        assert live.phase(second) == "QUEUED"
        # ABORT of the QUEUED job.
        r = live.http.post(f"{second}/phase", data={"PHASE": "ABORT"},
                           allow_redirects=False)
        assert r.status_code == 303, r.text
        assert live.phase(second) == "ABORTED"
        # ABORT of the EXECUTING one: its worker is killed.
        r = live.http.post(f"{first}/phase", data={"PHASE": "ABORT"},
                           allow_redirects=False)
        assert r.status_code == 303, r.text
        assert live.phase(first) == "ABORTED"
        assert wait_gone(pid, group=True), f"worker {pid} left"
        job = job_xml(live, first)
        assert job.find(f"{UWS}errorSummary") is None  # the client's choice
        assert text_of(job, "endTime")
        # The freed slot does not go to the aborted job.
        time.sleep(1.0)  # five poll cycles
        job = job_xml(live, second)
        assert text_of(job, "phase") == "ABORTED"
        assert text_of(job, "startTime") is None
        assert job.find(f"{UWS}jobInfo") is None  # no backend id
        second_dir = live.service.job_root / second.rsplit("/", 1)[1]
        assert not (second_dir / "worker.log").exists()
        # Aborting again is harmless; running again is refused.
        r = live.http.post(f"{second}/phase", data={"PHASE": "ABORT"},
                           allow_redirects=False)
        assert r.status_code == 303
        r = live.http.post(f"{second}/phase", data={"PHASE": "RUN"},
                           allow_redirects=False)
        refused(r, 403, "InvalidPhase:")
    finally:
        kill_quietly(pid, tmp_path)


def test_abort_stops_the_real_worker(live: LiveService, sample_image: Path,
                                     tmp_path: Path):
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"EXECUTING"}, timeout=10) == "EXECUTING"
    pid = backend_pid(job_xml(live, url))
    try:
        # Abort inside the pipeline (the check step is done).
        wait_for(lambda: steps_of(job_xml(live, url)).get("check") == "done",
                 20, "the worker's check step")
        r = live.http.post(f"{url}/phase", data={"PHASE": "ABORT"},
                           allow_redirects=False)
        assert r.status_code == 303, r.text
        assert wait_gone(pid, group=True), f"worker {pid} still alive"
        time.sleep(0.6)  # three poll cycles: the end is not an ERROR
        job = job_xml(live, url)
        assert text_of(job, "phase") == "ABORTED"
        assert job.find(f"{UWS}errorSummary") is None
        job_dir = live.service.job_root / url.rsplit("/", 1)[1]
        assert not (job_dir / "results" / "manifest.json").exists()
        assert not (job_dir / "error.json").exists()
        assert list(job_dir.glob("results/.*partial")) == []
        assert "stopped by SIGTERM" in (job_dir / "worker.log").read_text()
    finally:
        kill_quietly(pid, tmp_path)


def test_jobs_start_in_fifo_order(start_service: Starter, tmp_path: Path):
    live = start_service(worker_command=script(tmp_path, "quick", QUICK),
                         max_running="1")
    urls = [live.create(IMAGE=unused_url(), PHASE="RUN") for _ in range(3)]
    for url in urls:
        assert live.wait_phase(url, {"ERROR", "COMPLETED"}, timeout=30) \
            == "ERROR"
    starts = [instant(job_xml(live, url), "startTime") for url in urls]
    assert starts == sorted(starts)
    assert len(set(starts)) == 3
    # One at a time: each worker began after the previous one ended.
    ran = [[float(t) for t in (live.service.job_root / url.rsplit("/", 1)[1]
                               / "ran").read_text().split()]
           for url in urls]
    assert ran[0][1] <= ran[1][0]
    assert ran[1][1] <= ran[2][0]


# -- the job folder and the database ------------------------------------------
def test_unwritable_job_folder_answers_503(live: LiveService,
                                           sample_image: Path):
    pending = live.create(IMAGE=unused_url())
    root = live.service.job_root
    # Root ignores permissions: replace the folder by a regular file.
    root.rename(root.with_name("jobs.moved"))
    root.write_text("not a folder\n")
    r = live.http.post(live.jobs, data={"IMAGE": unused_url()},
                       allow_redirects=False)
    refused(r, 503, "ServiceUnavailable: cannot write the job folder")
    with sample_image.open("rb") as fh:
        r = live.http.post(live.jobs, data={"PHASE": "RUN"},
                           files={"image": fh}, allow_redirects=False)
    refused(r, 503, "ServiceUnavailable: cannot stage the upload: Not a "
            "directory")
    r = live.http.post(f"{pending}/phase", data={"PHASE": "RUN"},
                       allow_redirects=False)
    refused(r, 503, "ServiceUnavailable: cannot write the job spec")
    assert live.phase(pending) == "PENDING"
    assert live.service.store.count() == 1  # only the first job
    r = live.http.get(f"{live.url}/availability")
    assert r.status_code == 200
    assert b"available>false<" in r.content
    assert b"the job folder is not writable" in r.content


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_gone_answers_503(start_service: Starter,
                                   database_url: str):
    live = start_service(database_url)
    url = live.create(IMAGE=unused_url())
    folders = job_folders(live)
    # The database is dropped under the running service.
    name = sa.make_url(database_url).database
    admin = sa.create_engine(postgres_server_url(),
                             isolation_level="AUTOCOMMIT",
                             poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
    for r in (live.http.get(live.jobs), live.http.get(url),
              live.http.get(f"{url}/phase"),
              live.http.post(live.jobs, data={"IMAGE": unused_url()},
                             allow_redirects=False),
              live.http.delete(url, allow_redirects=False)):
        text = refused(r, 503, "ServiceUnavailable: the job database "
                       "does not answer", f'database "{name}" does not '
                       "exist")
        assert "[SQL:" not in text
    # The refused creation left no folder behind.
    assert job_folders(live) == folders
    r = live.http.get(f"{live.url}/availability")
    assert r.status_code == 200
    assert b"available>false<" in r.content


# -- the server killed while jobs run -----------------------------------------
INI = """\
[app:main]
use = egg:qualityfits-uws
qfits.database_url = sqlite:///{root}/jobs.sqlite
qfits.job_dir = {root}/jobs
qfits.runner = local
qfits.max_running = 2
qfits.ccd_jobs = 1
qfits.poll_interval = 0.2
qfits.reaper_interval = 3600
qfits.worker_command = {worker}

{server}
[loggers]
keys = root, uws

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_uws]
level = INFO
handlers =
qualname = uws

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s
"""

#: The ``[server:main]`` of ``INI``: waitress, or granian (``uws.serve``,
#: one worker process under granian's main process).
SERVERS = {
    "waitress": ("[server:main]\nuse = egg:waitress#main\n"
                 "listen = 127.0.0.1:{port}\nthreads = 8\n"),
    "granian": ("[server:main]\nuse = call:uws.serve:granian\n"
                "host = 127.0.0.1\nport = {port}\nthreads = 8\n"),
}

#: Sleeps (the seconds written in the file ``delay`` beside it), then
#: becomes the real worker (same pid, same last argument: the job folder).
DELAYED_WORKER = """\
    import os, sys, time
    from pathlib import Path
    print("delayed worker: waiting", flush=True)
    time.sleep(float(Path(__file__).with_name("delay").read_text()))
    os.execv(sys.executable, [sys.executable, "-m", "pbs_bridge.worker",
                              sys.argv[-1]])
    """


class ServerProcess:
    """``pserve INI`` as a real subprocess, on a fixed port."""

    def __init__(self, ini: Path, port: int, log: Path) -> None:
        self.ini = ini
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [str(PSERVE), str(self.ini)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.ini.parent,
                start_new_session=True)
        wait_serving(self.popen, self.url, self.log)

    def kill(self) -> None:
        """SIGKILL the server (workers are in their own sessions)."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """Terminate the server if it runs."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    # -- client side -------------------------------------------------------
    def create(self, image: Path, **fields: str) -> str:
        """POST a job that uploads ``image``; return its URL."""
        with image.open("rb") as fh:
            r = requests.post(f"{self.url}/jobs", data=fields,
                              files={"image": fh}, allow_redirects=False,
                              timeout=30)
        assert r.status_code == 303, r.text
        return str(r.headers["Location"])

    def job(self, url: str) -> Any:
        """The job document."""
        r = requests.get(url, timeout=30)
        assert r.status_code == 200, r.text
        return etree.fromstring(r.content)

    def phase(self, url: str) -> str:
        """The job's phase."""
        return str(requests.get(f"{url}/phase", timeout=30).text)

    def wait_phase(self, url: str, phases: set[str],
                   timeout: float = 60) -> str:
        """Block (WAIT) until the job is in one of ``phases``."""
        deadline = time.monotonic() + timeout
        phase = self.phase(url)
        while phase not in phases:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} still {phase} after {timeout} s\n"
                            + self.log.read_text())
            requests.get(url, params={"WAIT": 5, "PHASE": phase},
                         timeout=30)
            phase = self.phase(url)
        return phase


@pytest.fixture
def server(tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A pserve process over a tmp job folder (started by the test).

    Served by waitress, or by the server named by an indirect parameter.
    """
    port = free_port()
    worker = script(tmp_path, "delayed", DELAYED_WORKER)
    (tmp_path / "delay").write_text("6")
    ini = tmp_path / "service.ini"
    kind = getattr(request, "param", "waitress")
    ini.write_text(INI.format(root=tmp_path, port=port, worker=worker,
                              server=SERVERS[kind].format(port=port)))
    upgrade(f"sqlite:///{tmp_path}/jobs.sqlite")  # as scripts/serve
    process = ServerProcess(ini, port, tmp_path / "pserve.log")
    yield process
    process.stop()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["waitress", "granian"], indirect=True)
def test_server_killed_while_jobs_run(server: ServerProcess,
                                      sample_image: Path):
    """Kill -9 the server with two jobs EXECUTING and one QUEUED.

    Served by granian, the kill hits its main process (what pserve
    runs); its worker, where the service is, stops with it.

    After the restart: the worker that ran on is re-attached and its
    job COMPLETES; the job whose worker died meanwhile ends ERROR with
    a message; the queued job runs.
    """
    server.start()
    pids: list[int] = []
    try:
        survivor, victim, queued = (
            server.create(sample_image, PHASE="RUN") for _ in range(3))
        assert server.wait_phase(survivor, {"EXECUTING"}) == "EXECUTING"
        assert server.wait_phase(victim, {"EXECUTING"}) == "EXECUTING"
        assert server.phase(queued) == "QUEUED"
        pids = [backend_pid(server.job(u)) for u in (survivor, victim)]
        # The victim has started (its first line is in its log).
        log = server.ini.parent / "jobs" / victim.rsplit("/", 1)[1] / LOG_FILE
        deadline = time.monotonic() + 30
        while not (log.exists() and "delayed worker: waiting"
                   in log.read_text()):
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        server.kill()
        (server.ini.parent / "delay").write_text("0")  # for the queued job
        # While the service is down, one worker dies.
        os.kill(pids[1], signal.SIGKILL)
        assert wait_gone(pids[1])
        assert alive(pids[0])
        restarted = datetime.now(UTC)
        server.start()
        # Re-attached: still running after the restart.
        assert server.phase(survivor) == "EXECUTING"
        assert alive(pids[0])
        assert server.wait_phase(victim, {"ERROR", "COMPLETED"}) == "ERROR"
        kind, detail, message = error_summary(server.job(victim))
        assert (kind, detail) == ("fatal", "true")
        assert "the worker is gone" in message
        r = requests.get(f"{victim}/error", timeout=30)
        assert r.status_code == 200
        assert "delayed worker: waiting" in r.text
        assert server.wait_phase(survivor, {"COMPLETED", "ERROR"}) == \
            "COMPLETED"
        r = requests.get(f"{survivor}/results/summary", timeout=30)
        assert r.status_code == 200
        assert b"<VOTABLE" in r.content
        assert server.wait_phase(queued, {"COMPLETED", "ERROR"}) == \
            "COMPLETED"
        assert instant(server.job(queued), "startTime") > restarted
        assert "Traceback" not in server.log.read_text()
    finally:
        for pid in pids:
            kill_quietly(pid, server.ini.parent)


def test_a_queued_job_the_backend_refuses_at_restart_ends_in_error(
        start_service: Starter, sample_image: Path, tmp_path: Path):
    # A job left QUEUED without a backend id (the service died between
    # queueing it and submitting it) is submitted at restart; a refusal
    # then ends it in ERROR, as at a RUN, instead of leaving it queued.
    empty = tmp_path / "no-batch-commands"
    empty.mkdir()
    live = start_service(runner="pbs", pbs_bin=str(empty))
    with sample_image.open("rb") as fh:
        url = live.create(files={"image": fh})
    job_id = url.rsplit("/", 1)[1]
    live.stop()
    store = JobStore(live.settings.database_url)
    assert store.transition(job_id, [Phase.PENDING], Phase.QUEUED)
    store.close()
    spec = WorkerSpec(job_id=job_id, image="inputs/image.fits")
    (live.service.job_root / job_id / SPEC_FILE).write_text(spec.to_json())
    again = start_service(runner="pbs", pbs_bin=str(empty))
    url = f"{again.jobs}/{job_id}"
    assert again.phase(url) == "ERROR"
    kind, _, message = error_summary(job_xml(again, url))
    assert kind == "transient"
    assert message == ("the batch system refused the job: qsub not found "
                       f"in {empty} (qfits.pbs_bin)")


# -- the reaper ---------------------------------------------------------------
def test_reaper_destroys_expired_jobs(start_service: Starter, sleeper: str,
                                      tmp_path: Path):
    live = start_service(worker_command=sleeper)
    pending = live.create(IMAGE=unused_url(), DESTRUCTION=in_future(1))
    running = live.create(IMAGE=unused_url(), DESTRUCTION=in_future(1),
                          PHASE="RUN")
    kept = live.create(IMAGE=unused_url())
    assert live.wait_phase(running, {"EXECUTING"}, timeout=10) == "EXECUTING"
    pid = backend_pid(job_xml(live, running))
    try:
        folders = {u: live.service.job_root / u.rsplit("/", 1)[1]
                   for u in (pending, running, kept)}
        assert all(f.is_dir() for f in folders.values())
        assert live.service.reap_expired() == 0  # not yet
        time.sleep(1.2)
        assert live.service.reap_expired() == 2
        for url in (pending, running):
            refused(live.http.get(url), 404, "NotFound:")
            refused(live.http.get(f"{url}/phase"), 404, "NotFound:")
            assert not folders[url].exists()
        assert wait_gone(pid, group=True), f"worker {pid} left"
        assert live.phase(kept) == "PENDING"
        assert folders[kept].is_dir()
        listing = etree.fromstring(live.http.get(live.jobs).content)
        assert [e.get("id") for e in listing] == [kept.rsplit("/", 1)[1]]
    finally:
        kill_quietly(pid, tmp_path)
