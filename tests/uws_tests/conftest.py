"""Fixtures of the service tests: a real service on loopback.

`live` starts the Pyramid app with the real local runner and a real
waitress server on a free port of 127.0.0.1 (SQLite);
`live_db` does the same over each database of `dbfixtures`
(SQLite and a real PostgreSQL).  `sample_image` is a small simulated
exposure that the real worker assesses in a few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import waitress
from dbfixtures import database_url  # noqa: F401 - a fixture

from qualityfits.datasets import SimulationParams, write_exposure
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
        self.server.close()
        self.thread.join(timeout=10)
        self.service.close()

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
            self.http.get(job_url, params={"WAIT": 10})
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


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., LiveService]]:
    """Return a function that starts a service (stopped at teardown)."""
    started: list[LiveService] = []

    def start(url: str | None = None, *, threads: int = 16,
              **overrides: Any) -> LiveService:
        db = url or f"sqlite:///{tmp_path}/jobs.sqlite"
        live = LiveService(settings_for(tmp_path, db, **overrides),
                           threads=threads)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def live(start_service: Callable[..., LiveService]) -> LiveService:
    """A service over SQLite with the local runner."""
    return start_service()


@pytest.fixture
def live_db(start_service: Callable[..., LiveService],
            database_url: str) -> LiveService:  # noqa: F811
    """A service over each database (SQLite, PostgreSQL)."""
    return start_service(database_url)


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated single-CCD image (the worker needs ~3 s)."""
    path = tmp_path_factory.mktemp("images") / "sample.fits"
    return write_exposure(path, SimulationParams(shape=(1024, 1024)),
                          n_ccds=1, seed=3)


@pytest.fixture(scope="session")
def schemas() -> Path:
    """The IVOA schemas folder (skip with a reason if absent)."""
    if not (SCHEMAS / "UWS.xsd").exists():
        pytest.skip(f"IVOA schemas not available: {SCHEMAS} is absent")
    return SCHEMAS
