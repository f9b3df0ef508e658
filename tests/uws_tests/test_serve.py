"""The service started as scripts/serve starts it: one port setting.

``alembic -c development.ini upgrade head`` then ``pserve
development.ini http_port=N`` (what ``scripts/serve --port N`` runs),
on a copy of the ini whose ``%(here)s`` is a temporary folder: the
service listens on N, and the links it answers with carry N (the ini's
``qfits.base_url`` is empty: links come from the request).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from lxml import etree
from uwskit import UWS, free_port, wait_serving

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"



def _run_to_end(http: requests.Session, base: str, image: Path,
                log: Path) -> tuple[str, Any]:
    """POST ``image`` with PHASE=RUN; follow the job until it ends.

    Returns its URL and its document; the job must be COMPLETED.
    """
    with image.open("rb") as fh:
        r = http.post(f"{base}/jobs", data={"PHASE": "RUN"},
                      files={"image": fh}, allow_redirects=False,
                      timeout=60)
    assert r.status_code == 303, r.text
    job_url = r.headers["Location"]
    assert job_url.startswith(f"{base}/jobs/")
    deadline = time.monotonic() + 120
    phase = http.get(f"{job_url}/phase", timeout=30).text
    while phase not in {"COMPLETED", "ERROR"}:
        assert time.monotonic() < deadline, log.read_text()
        http.get(job_url, params={"WAIT": 10, "PHASE": phase}, timeout=30)
        phase = http.get(f"{job_url}/phase", timeout=30).text
    assert phase == "COMPLETED", log.read_text()
    return job_url, etree.fromstring(http.get(job_url, timeout=30).content)

def test_the_port_setting_moves_the_service_and_its_links(
        tmp_path: Path, sample_image: Path):
    folder = tmp_path / "deploy"
    folder.mkdir()
    ini = folder / "development.ini"
    shutil.copy(ROOT / "development.ini", ini)
    upgraded = subprocess.run(
        [str(BIN / "alembic"), "-c", str(ini), "upgrade", "head"],
        cwd=folder, capture_output=True, text=True, timeout=120,
        check=False)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (folder / "var" / "jobs.sqlite").exists()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = folder / "pserve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(BIN / "pserve"), str(ini), f"http_port={port}"],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    http = requests.Session()
    try:
        wait_serving(server, base, log)
        job_url, job = _run_to_end(http, base, sample_image, log)
        links = [e.get(XLINK_HREF) for e in job.iter(f"{UWS}result")]
        assert links
        assert all(link.startswith(f"{job_url}/results/")
                   for link in links), links
        upload = job.find(f"{UWS}parameters/{UWS}parameter[@id='image']")
        assert upload is not None
        assert upload.text == f"{job_url}/parameters/image"
        assert http.get(links[0], timeout=30).status_code == 200
        listing = etree.fromstring(http.get(f"{base}/jobs",
                                            timeout=30).content)
        assert [e.get(XLINK_HREF) for e in listing] == [job_url]
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


#: ``[server:main]`` serving with gunicorn (docs/service.md, "Serving").
GUNICORN = """[server:main]
use = call:uws.serve:gunicorn
host = 127.0.0.1
get port = http_port
threads = 128
worker_connections = 1000
"""


#: ``[server:main]`` serving with granian (docs/service.md, "Serving").
GRANIAN = """[server:main]
use = call:uws.serve:granian
host = 127.0.0.1
get port = http_port
threads = 128
"""


def _deploy(tmp_path: Path, server_lines: str = "",
            server: str = GUNICORN) -> Path:
    """development.ini served by ``server`` (more lines given), upgraded."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    ini = folder / "development.ini"
    text = (ROOT / "development.ini").read_text()
    start = text.index("[server:main]")
    end = text.index("\n[", start)
    ini.write_text(text[:start] + server + server_lines + text[end:])
    subprocess.run([str(BIN / "alembic"), "-c", str(ini), "upgrade",
                    "head"], cwd=folder, capture_output=True, timeout=120,
                   check=True)
    return ini


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_the_service_runs_once_in_the_gunicorn_worker(tmp_path: Path):
    """The arbiter keeps no service thread; its one worker has them.

    Served by gunicorn (``uws.serve``, the alternative to waitress),
    pserve builds the application before the server starts (in what
    becomes gunicorn's arbiter): uws.serve closes that copy, and the
    worker builds its own, so the poller and the reaper run once.
    """
    ini = _deploy(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "pserve"), str(ini), f"http_port={port}"],
        cwd=ini.parent, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_serving(server, f"http://127.0.0.1:{port}")
        children = [int(p) for p in Path(
            f"/proc/{server.pid}/task/{server.pid}/children",
        ).read_text().split()]
        assert len(children) == 1  # one worker
        # The arbiter: its main thread only; the worker: its main
        # thread, the poller and the reaper at least.
        assert _threads(server.pid) == 1
        assert _threads(children[0]) >= 3
    finally:
        server.terminate()
        server.wait(timeout=40)


def test_more_gunicorn_workers_are_refused_in_one_line(tmp_path: Path):
    ini = _deploy(tmp_path, "workers = 2\n")
    done = subprocess.run([str(BIN / "pserve"), str(ini)], cwd=ini.parent,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert ("qualityfits-uws: cannot start: [server:main] workers = 2: "
            "the service runs in one gunicorn process") in done.stderr


def _serve(ini: Path, port: int) -> subprocess.Popen[bytes]:
    """pserve on ``ini``, answering on ``port``; its log in the folder."""
    with (ini.parent / "pserve.log").open("ab") as log:
        server = subprocess.Popen(
            [str(BIN / "pserve"), str(ini), f"http_port={port}"],
            cwd=ini.parent, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    wait_serving(server, f"http://127.0.0.1:{port}", ini.parent / "pserve.log")
    return server


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(
        f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_granian_serves_a_job_from_its_one_worker(tmp_path: Path,
                                                  sample_image: Path):
    """Served by granian: one worker builds the service, a job runs.

    The main process (where pserve built the application first) keeps
    no service: the "ready" line is logged twice (the main process's
    copy, closed, and the worker's), and the job created through the
    worker runs to COMPLETED with its results downloadable.
    """
    ini = _deploy(tmp_path, server=GRANIAN)
    port = free_port()
    server = _serve(ini, port)
    base = f"http://127.0.0.1:{port}"
    try:
        assert len(_children(server.pid)) == 1
        _, job = _run_to_end(requests.Session(), base, sample_image,
                             ini.parent / "pserve.log")
        links = [e.get(XLINK_HREF) for e in job.iter(f"{UWS}result")]
        assert links
        assert requests.get(links[0], timeout=30).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=40)
    log = (ini.parent / "pserve.log").read_text()
    assert log.count("QualityFITS-UWS ready") == 2, log
    assert "Traceback" not in log, log


def test_granian_worker_killed_is_replaced_and_ends_with_its_parent(
        tmp_path: Path):
    """kill -9 of the worker: a new one serves; of the main process:
    the worker stops too (no orphan serving beside a restarted service).
    """
    ini = _deploy(tmp_path, server=GRANIAN)
    port = free_port()
    server = _serve(ini, port)
    log = ini.parent / "pserve.log"
    try:
        [worker] = _children(server.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            replaced = [p for p in _children(server.pid) if p != worker]
            if replaced:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        wait_serving(server, f"http://127.0.0.1:{port}", log)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        assert _gone(replaced[0]), log.read_text()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/availability",
                         timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


@pytest.mark.parametrize(("line", "words"), [
    ("workers = 2",
     "[server:main] workers = 2: the service runs in one granian worker"),
    ("max_request_body_size = 10",
     "[server:main] max_request_body_size: not a granian setting"),
    ("http = 3", "[server:main] http = 3: not a valid value"),
])
def test_granian_settings_refused_in_one_line(tmp_path: Path, line: str,
                                              words: str):
    ini = _deploy(tmp_path, line + "\n", server=GRANIAN)
    done = subprocess.run([str(BIN / "pserve"), str(ini)], cwd=ini.parent,
                          capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"qualityfits-uws: cannot start: {words}" in done.stderr
