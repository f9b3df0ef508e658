"""Helpers of the service tests: a real service on loopback.

`LiveService` runs the Pyramid app (real local runner, real worker
processes) behind a real waitress server on a free port of 127.0.0.1;
`settings_for` builds its settings.  The fixtures are in conftest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import waitress

from uws.app import make_app
from uws.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"


class LiveService:
    """A running service: its URL, its job service, a way to stop it."""

    def __init__(self, settings: Settings, *, threads: int = 16) -> None:
        self.settings = settings
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

    @property
    def jobs(self) -> str:
        """Return the job-list URL."""
        return f"{self.url}/jobs"

    def stop(self) -> None:
        """Stop the server and the service threads."""
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
        """Close the server's sockets (in its thread): its loop ends."""
        for channel in list(self.server._map.values()):
            channel.close()

    # -- conveniences ---------------------------------------------------------
    def create(self, **fields: Any) -> str:
        """POST a job (form fields; ``files`` for uploads); return its URL."""
        files = fields.pop("files", None)
        r = self.http.post(self.jobs, data=fields, files=files,
                           allow_redirects=False)
        assert r.status_code == 303, r.text
        return str(r.headers["Location"])

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
        "qfits.max_running": "1",
        "qfits.ccd_jobs": "1",
    }
    ini.update({f"qfits.{k}": str(v) for k, v in overrides.items()})
    return Settings.from_ini(ini)


