"""A first end-to-end run: upload, run, complete, fetch a result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


def test_a_finished_job_read_twice_follows_its_changes(
        live: LiveService, sample_image: Path):
    # Finished jobs are served from a cache: a new destruction time and
    # the deletion must still show at once.
    url = live.run_image(sample_image)
    assert live.wait_phase(url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    assert live.http.get(url).status_code == 200
    when = (datetime.now(UTC) + timedelta(days=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    r = live.http.post(f"{url}/destruction", data={"DESTRUCTION": when},
                       allow_redirects=False)
    assert r.status_code == 303
    assert live.http.get(f"{url}/destruction").text == when
    assert f"<uws:destruction>{when}</uws:destruction>" in \
        live.http.get(url).text
    assert live.http.delete(url, allow_redirects=False).status_code == 303
    assert live.http.get(url).status_code == 404
    assert live.http.get(f"{url}/results/summary").status_code == 404
