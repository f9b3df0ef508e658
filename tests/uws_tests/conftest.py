"""Fixtures of the service tests: a real service on loopback.

`live` starts the Pyramid app with the real local runner and a real
waitress server on a free port of 127.0.0.1 (SQLite);
`live_db` does the same over each database of `dbfixtures`
(SQLite and a real PostgreSQL).  `sample_image` is a small simulated
exposure that the real worker assesses in a few seconds, `noise_image`
one where it finds no star (the job fails).  The classes
live in `uwskit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from dbfixtures import database_url  # noqa: F401 - a fixture
from smtpkit import smtp  # noqa: F401 - a fixture
from uwskit import SCHEMAS, LiveService, settings_for

from qualityfits.datasets import SimulationParams, write_exposure


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
def noise_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FITS image of pure Gaussian noise: the worker finds no star."""
    path = tmp_path_factory.mktemp("noise") / "noise.fits"
    data = np.random.default_rng(7).normal(1000.0, 10.0, (512, 512))
    fits.PrimaryHDU(data.astype(np.float32)).writeto(path)
    return path


@pytest.fixture(scope="session")
def schemas() -> Path:
    """The IVOA schemas folder (skip with a reason if absent)."""
    if not (SCHEMAS / "UWS.xsd").exists():
        pytest.skip(f"IVOA schemas not available: {SCHEMAS} is absent")
    return SCHEMAS
