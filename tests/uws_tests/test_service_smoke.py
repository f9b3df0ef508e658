"""A first end-to-end run: upload, run, complete, fetch a result."""

from __future__ import annotations

from pathlib import Path

from uwskit import LiveService


def test_upload_run_complete(live_db: LiveService, sample_image: Path):
    with sample_image.open("rb") as fh:
        url = live_db.create(PHASE="RUN", files={"image": fh})
    assert url.startswith(live_db.jobs + "/")
    assert live_db.wait_phase(url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    r = live_db.http.get(f"{url}/results/summary")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/x-votable+xml")
    assert b"<VOTABLE" in r.content
