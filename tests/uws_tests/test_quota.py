"""Per-owner quota of stored bytes (issue 16, item 6), on each database.

A real service (local runner, waitress on loopback) over SQLite and
PostgreSQL; FITS files written by astropy (not the project's simulator)
are uploaded; a job's results are made by a worker command that writes
a file into its folder, so that the bytes recorded at a job's end are
what a real worker leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import fits
from dbfixtures import database_url  # noqa: F401 - a fixture
from uwskit import LiveService, settings_for

Starter = Callable[..., LiveService]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 64 x 64 float32 FITS image: 2 880 + 17 280 = 20 160 bytes."""
    path = tmp_path / "small.fits"
    fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(path)
    assert path.stat().st_size == 20160
    return path


def _post(live: LiveService, image: Path) -> requests.Response:
    with image.open("rb") as fh:
        return live.http.post(live.jobs, files={"image": fh},
                              allow_redirects=False)


def _refused(r: requests.Response, *fragments: str) -> None:
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.text.startswith("PermissionDenied: "), r.text
    for fragment in fragments:
        assert fragment in r.text, (fragment, r.text)


def test_uploads_beyond_the_stored_bytes_are_refused(
        start_service: Starter, database_url: str,  # noqa: F811
        image: Path) -> None:
    live = start_service(database_url, max_stored_bytes="50kB")
    first = _post(live, image)
    second = _post(live, image)
    assert first.status_code == second.status_code == 303, first.text
    _refused(_post(live, image),
             "everybody's stored jobs take 40.3 kB; with this upload of "
             "20.2 kB they would pass the limit of 50 kB "
             "(qfits.max_stored_bytes)")
    assert live.service.store.count() == 2
    # An upload to a pending job counts the same way.
    job = second.headers["Location"]
    with image.open("rb") as fh:
        r = live.http.post(f"{job}/parameters", files={"flat": fh},
                           allow_redirects=False)
    _refused(r, "with this upload of 20.2 kB", "(qfits.max_stored_bytes)")
    # A parameter without a file changes nothing stored: accepted.
    r = live.http.post(f"{job}/parameters", data={"ZEROPOINT": "25.5"},
                       allow_redirects=False)
    assert r.status_code == 303, r.text
    # Deleting a job frees its bytes at once.
    assert live.http.delete(first.headers["Location"],
                            allow_redirects=False).status_code == 303
    assert _post(live, image).status_code == 303


def test_results_count_when_the_job_ends(
        start_service: Starter, database_url: str,  # noqa: F811
        image: Path, tmp_path: Path) -> None:
    """A worker's 30 kB of output push the owner over 45 kB."""
    worker = tmp_path / "worker.sh"
    worker.write_text('#!/bin/sh\nhead -c 30000 /dev/zero > "$1/blob"\n')
    worker.chmod(0o755)
    live = start_service(database_url, max_stored_bytes="45kB",
                         worker_command=str(worker))
    with image.open("rb") as fh:
        job = live.create(PHASE="RUN", files={"image": fh})
    assert live.wait_phase(job, {"COMPLETED", "ERROR"}) == "ERROR"
    r = live.http.post(live.jobs, data={"IMAGE": "http://x.invalid/a.fits"},
                       allow_redirects=False)
    folder = live.service.folder(job.rsplit("/", 1)[1]).path
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size > 20160 + 30000  # the upload, the output, the log
    _refused(r, f"everybody's stored jobs take {size / 1000:.1f} kB; they "
             "are over the limit of 45 kB (qfits.max_stored_bytes)")


def test_no_limit_and_the_setting(tmp_path: Path) -> None:
    assert settings_for(tmp_path, "sqlite://").max_stored_bytes == 50 * 10**9
    assert settings_for(tmp_path, "sqlite://",
                        max_stored_bytes="1GiB").max_stored_bytes == 2**30
    assert settings_for(tmp_path, "sqlite://",
                        max_stored_bytes="0").max_stored_bytes == 0
