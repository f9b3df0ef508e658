"""Helpers of the service tests: a real service on loopback.

`LiveService` runs the Pyramid app (real local runner, real worker
processes) behind a real waitress server on a free port of 127.0.0.1,
over a database it first brings to the schema's head (``upgrade
head``, as scripts/serve does); `settings_for` builds its settings.
The fixtures are in conftest.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import waitress
from lxml import etree

from uws import schema
from uws.app import make_app
from uws.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
QF = "{urn:qualityfits-uws}"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


class LiveService:
    """A running service: its URL, its job service, a way to stop it."""

    def __init__(self, settings: Settings, *, threads: int = 16) -> None:
        self.settings = settings
        schema.upgrade(settings.database_url)
        self.app = make_app(settings)
        self.service = self.app.registry.job_service
        self.server: Any = waitress.create_server(
            self.app, host="127.0.0.1", port=0, threads=threads,
            max_request_body_size=4 * 10**9)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.http = requests.Session()
        self.stopped = False

    @property
    def jobs(self) -> str:
        """Return the job-list URL."""
        return f"{self.url}/jobs"

    def stop(self) -> None:
        """Stop the server and the service threads (once)."""
        if self.stopped:
            return
        self.stopped = True
        self.http.close()
        self.server.task_dispatcher.shutdown()
        # Close the sockets in the server's own thread: closed from this
        # one, they could be in its select() (EBADF, a thread exception).
        # Seen once in ~20 full runs: the loop's wake-up pipe was already
        # closed (EBADF), the loop ending; nothing to wake then.
        with contextlib.suppress(OSError):
            self.server.trigger.pull_trigger(self._close_sockets)
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            self._close_sockets()
        self.service.close()

    def _close_sockets(self) -> None:
        """Close the server's sockets (in its thread): its loop ends.

        A connection's buffers are closed too (``handle_close``, and the
        body of a request still being read): left to the garbage
        collector, their temporary files raise a ResourceWarning in
        whatever test runs then.
        """
        for channel in list(self.server._map.values()):
            request = getattr(channel, "request", None)
            if request is not None:
                request.close()
            if hasattr(channel, "outbufs"):
                channel.handle_close()
            else:
                channel.close()

    # -- conveniences ---------------------------------------------------------
    def create(self, **fields: Any) -> str:
        """POST a job (form fields; ``files`` for uploads); return its URL."""
        files = fields.pop("files", None)
        r = self.http.post(self.jobs, data=fields, files=files,
                           allow_redirects=False)
        assert r.status_code == 303, r.text
        return str(r.headers["Location"])

    def run_image(self, image: Path, **fields: Any) -> str:
        """Create a job on an uploaded ``image`` and run it; its URL."""
        with image.open("rb") as fh:
            return self.create(PHASE="RUN", files={"image": fh}, **fields)

    def phase(self, job_url: str) -> str:
        """Return the job's phase (text/plain sub-resource)."""
        return str(self.http.get(f"{job_url}/phase").text)

    def wait_phase(self, job_url: str, phases: set[str],
                   timeout: float = 120) -> str:
        """Block (with WAIT) until the job reaches one of ``phases``."""
        deadline = time.monotonic() + timeout
        phase = self.phase(job_url)
        while phase not in phases:
            if time.monotonic() > deadline:
                pytest.fail(f"{job_url} still {phase} after {timeout} s")
            # PHASE: block only while the job is still in the phase seen
            # (it may have moved on meanwhile: WAIT would block on that).
            self.http.get(job_url, params={"WAIT": 10, "PHASE": phase})
            phase = self.phase(job_url)
        return phase


def settings_for(root: Path, url: str, **overrides: Any) -> Settings:
    """Settings of a test service below ``root`` (overrides as ini text)."""
    ini = {
        "qfits.database_url": url,
        "qfits.job_dir": str(root / "jobs"),
        "qfits.poll_interval": "0.2",
        "qfits.reaper_interval": "3600",
        "qfits.ccd_jobs": "1",
        # The test service's own address, as a data centre's archive:
        # jobs fetch inputs from it (every other private one is refused).
        "qfits.fetch_allow": "127.0.0.1",
    }
    if overrides.get("runner", "local") == "local":
        ini["qfits.max_running"] = "1"  # a setting of the local runner
    ini.update({f"qfits.{k}": str(v) for k, v in overrides.items()})
    return Settings.from_ini(ini)


# -- reading job documents ------------------------------------------------
def job_xml(live: LiveService, url: str) -> Any:
    """GET the job document."""
    r = live.http.get(url)
    assert r.status_code == 200, r.text
    return etree.fromstring(r.content)


def text_of(job: Any, name: str) -> str | None:
    """Text of a ``uws:`` child (None when nil or absent)."""
    element = job.find(f"{UWS}{name}")
    if element is None or element.get(XSI_NIL) == "true":
        return None
    return str(element.text or "")


def error_summary(job: Any) -> tuple[str, str, str]:
    """(type, hasDetail, message) of the job's errorSummary."""
    summary = job.find(f"{UWS}errorSummary")
    assert summary is not None, etree.tostring(job).decode()
    message = summary.find(f"{UWS}message")
    return (str(summary.get("type")), str(summary.get("hasDetail")),
            str(message.text if message is not None else ""))


def steps_of(job: Any) -> dict[str, str]:
    """Step name -> state, from jobInfo (the worker's progress)."""
    return {str(s.get("name")): str(s.get("state")) for s in job.iterfind(
        f"{UWS}jobInfo/{QF}processing/{QF}steps/{QF}step")}


def instant(job: Any, name: str) -> datetime:
    """A ``uws:`` instant of the job."""
    value = text_of(job, name)
    assert value, f"{name} is nil"
    return datetime.fromisoformat(value)


def wait_for(predicate: Callable[[], bool], timeout: float,
              what: str) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(server: subprocess.Popen[bytes], url: str,
                 log: Path | None = None, timeout: float = 60) -> None:
    """Wait until ``pserve`` answers ``url``/availability with 200.

    Fails the test, with the server's ``log`` where there is one, if it
    ends or does not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            said = "" if log is None else f": {log.read_text()}"
            pytest.fail(f"pserve ended{said}")
        try:
            if requests.get(f"{url}/availability",
                            timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            said = "" if log is None else f": {log.read_text()}"
            pytest.fail(f"pserve does not answer{said}")
        time.sleep(0.1)
