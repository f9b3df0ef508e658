"""Parameter values are stored typed and read back as the same text.

Through the real service on SQLite and PostgreSQL: ``zeropoint`` and
``pixscale`` are numbers in the store (a JSON column), and the job
document and ``GET …/parameters/{name}`` show the text they always
showed (Python's ``repr`` of the float).
"""

from __future__ import annotations

from uwskit import UWS, LiveService, job_xml


def test_numbers_are_stored_as_numbers_and_shown_as_before(
        live_db: LiveService):
    url = live_db.create(IMAGE="https://example.org/a.fits",
                         ZEROPOINT="25", PIXSCALE="0.187",
                         EMAIL="observer@example.org")
    job_id = url.rsplit("/", 1)[1]
    job = live_db.service.store.get(job_id)
    assert job is not None
    values = {p.name: p.value for p in job.parameters}
    assert values == {"image": "https://example.org/a.fits",
                      "zeropoint": 25.0, "pixscale": 0.187,
                      "email": "observer@example.org"}
    assert type(values["zeropoint"]) is float
    document = job_xml(live_db, url)
    shown = {p.get("id"): p.text
             for p in document.iter(f"{UWS}parameter")}
    assert shown["zeropoint"] == "25.0"
    assert shown["pixscale"] == "0.187"
    for name, text in (("zeropoint", "25.0"), ("pixscale", "0.187"),
                       ("image", "https://example.org/a.fits")):
        r = live_db.http.get(f"{url}/parameters/{name}")
        assert r.status_code == 200
        assert r.text == text
