"""Hostile and malformed client input: a precise 4xx, never a 500.

Each case was a 500 with a traceback, or a wrong answer, before the
tolerant parsing layer (issue 16, items 4, 8 and 9); the property-based
sweep sends generated values to every parameter of every endpoint.
"""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from uwskit import LiveService, job_xml, text_of


def _raw(live: LiveService, method: str, target: str,
         body: bytes | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    """Send a request with a raw (undecoded) target and body."""
    request = requests.Request(method, f"{live.url}{target}",
                               data=body, headers=headers or {})
    prepared = live.http.prepare_request(request)
    prepared.url = f"{live.url}{target}"  # keep %ff as it is
    return live.http.send(prepared, allow_redirects=False)


def _refused(r: requests.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text
    for word in words:
        assert word in r.text, (word, r.text)
    return r.text


def _pending(live: LiveService) -> str:
    return live.create(RUNID="hostile")


@pytest.mark.parametrize(("target", "words"), [
    ("/jobs?LAST=%ff", ("LAST", "not valid UTF-8")),
    ("/jobs?PHASE=%ff%fe", ("PHASE", "not valid UTF-8")),
    ("/jobs?%ff=1", ("not valid UTF-8",)),
    ("/jobs?LAST=99999999999999999999999", ("LAST",)),
    ("/jobs?AFTER=9999-12-31T23:59:59-14:00",
     ("AFTER", "out of range")),
    ("/jobs?AFTER=0001-01-01T00:00:00%2B14:00",
     ("AFTER", "out of range")),
])
def test_bad_job_list_filters_are_400(live: LiveService, target, words):
    _refused(_raw(live, "GET", target), 400, "UsageError:", *words)


@pytest.mark.parametrize("target", [
    "/jobs/%ff%fe", "/jobs/%ff/phase", "/ui/jobs/%ff", "/%ff"])
def test_an_undecodable_path_is_400(live: LiveService, target):
    _refused(_raw(live, "GET", target), 400, "not valid UTF-8")


@pytest.mark.parametrize(("value", "words"), [
    ("0001-01-01T00:00:00+14:00", ("DESTRUCTION", "out of range")),
    ("9999-12-31T23:59:59-14:00", ("DESTRUCTION", "out of range")),
    ("2001-01-01T00:00:00Z", ("DESTRUCTION", "in the past")),
])
def test_bad_destructions_are_400(live: LiveService, value, words):
    r = live.http.post(live.jobs, data={"DESTRUCTION": value},
                       allow_redirects=False)
    _refused(r, 400, *words)
    job = _pending(live)
    r = live.http.post(f"{job}/destruction", data={"DESTRUCTION": value},
                       allow_redirects=False)
    _refused(r, 400, *words)


def test_huge_numbers_are_400_or_bounded(live: LiveService):
    huge = "9" * 40
    r = live.http.post(live.jobs, data={"EXECUTIONDURATION": huge},
                       allow_redirects=False)
    # The service's maximum is substituted (UWS: the server may).
    assert r.status_code == 303, r.text
    job = r.headers["Location"]
    assert int(live.http.get(f"{job}/executionduration").text) == \
        live.settings.execution_duration_max
    r = live.http.get(job, params={"WAIT": huge, "PHASE": "QUEUED"})
    assert r.status_code == 200  # not in that phase: at once
    _refused(live.http.post(f"{job}/parameters", data={"ZEROPOINT": huge},
                            allow_redirects=False), 400, "ZEROPOINT")


def test_a_latin1_form_is_read(live: LiveService):
    body = "RUNID=caf\xe9".encode("latin-1")
    r = _raw(live, "POST", "/jobs", body, {
        "Content-Type":
        "application/x-www-form-urlencoded; charset=latin-1"})
    assert r.status_code == 303, r.text
    assert text_of(job_xml(live, r.headers["Location"]), "runId") == \
        "caf\xe9"


def test_an_undecodable_form_is_400(live: LiveService):
    r = _raw(live, "POST", "/jobs", b"RUNID=%ff%fe", {
        "Content-Type": "application/x-www-form-urlencoded"})
    _refused(r, 400, "RUNID", "not valid UTF-8")


def test_a_corrupt_gzip_upload_is_400(live: LiveService,
                                      sample_image: Path):
    packed = bytearray(gzip.compress(sample_image.read_bytes()[:28800]))
    packed[200:260] = b"\x00" * 60  # corrupt deflate data after the head
    r = live.http.post(live.jobs, files={
        "image": ("image.fits.gz", io.BytesIO(bytes(packed)))},
        allow_redirects=False)
    _refused(r, 400, "IMAGE", "gzip")


def test_quote_resource_equals_the_job_documents(live: LiveService,
                                                  sample_image: Path):
    """Whole seconds: read within a second, the two say the same."""
    with sample_image.open("rb") as fh:
        job = live.create(files={"image": fh})
    before = live.http.get(f"{job}/quote").text
    document = text_of(job_xml(live, job), "quote")
    after = live.http.get(f"{job}/quote").text
    assert document in (before, after)
    assert document.endswith(".000Z")  # whole seconds


def test_destruction_in_the_future_is_still_taken(live: LiveService):
    when = datetime.now(UTC) + timedelta(days=2)
    text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = live.http.post(live.jobs, data={"DESTRUCTION": text},
                       allow_redirects=False)
    assert r.status_code == 303, r.text


# -- byte ranges (RFC 9110 14.1.2) --------------------------------------------
def test_suffix_ranges(live: LiveService, sample_image: Path):
    with sample_image.open("rb") as fh:
        job = live.create(files={"image": fh})
    url = f"{job}/parameters/image"
    size = sample_image.stat().st_size
    r = live.http.get(url, headers={"Range": "bytes=-0"})
    assert r.status_code == 416, r.status_code
    assert r.headers["Content-Range"] == f"bytes */{size}"
    r = live.http.get(url, headers={"Range": f"bytes=-{size + 100}"})
    assert r.status_code == 206, r.status_code
    assert r.headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
    assert r.content == sample_image.read_bytes()
    r = live.http.get(url, headers={"Range": "bytes=-10"})
    assert r.status_code == 206
    assert r.content == sample_image.read_bytes()[-10:]


# -- decompression bombs (issue 16, item 1) -----------------------------------
def _bomb(path: Path, tail_mb: int) -> Path:
    """A valid 100x100 image, then ``tail_mb`` MB of zeros, gzipped."""
    header = "".join(c.ljust(80) for c in (
        "SIMPLE  =                    T", "BITPIX  =                   16",
        "NAXIS   =                    2", "NAXIS1  =                  100",
        "NAXIS2  =                  100", "END")).encode().ljust(2880)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header + bytes(20160))
        for _ in range(tail_mb):
            out.write(bytes(10**6))
    return path


def test_a_decompression_bomb_is_refused_at_upload(start_service,
                                                   tmp_path: Path):
    live = start_service(decompressed_limit="10MB", pixel_limit="1M")
    bomb = _bomb(tmp_path / "bomb.fits.gz", 200)
    assert bomb.stat().st_size < 10**6  # 200 MB inflated
    with bomb.open("rb") as fh:
        r = live.http.post(live.jobs, files={"image": ("b.fits.gz", fh)},
                           allow_redirects=False)
    _refused(r, 413, "TooLarge: IMAGE: decompresses to more than the "
             "limit of 10.0 MB")
    liar = tmp_path / "liar.fits"
    liar.write_bytes("".join(c.ljust(80) for c in (
        "SIMPLE  =                    T", "BITPIX  =                  -32",
        "NAXIS   =                    2", "NAXIS1  =                20000",
        "NAXIS2  =                20000", "END")).encode().ljust(2880))
    with liar.open("rb") as fh:
        r = live.http.post(live.jobs, files={"image": ("l.fits", fh)},
                           allow_redirects=False)
    _refused(r, 413, "IMAGE: its headers announce 1.6 GB")
    assert live.http.get(live.jobs).text.count("jobref") == 0


# -- an upload's file name --------------------------------------------------
@pytest.mark.parametrize(("sent", "stored"), [
    ("../../../etc/passwd.fits", "passwd.fits"),
    ("C:\\Users\\me\\night 1\\field.fits", "field.fits"),
    ("étoile du soir.fits", "etoile_du_soir.fits"),
    ("星.fits", "image.fits"),
    ("x" * 300 + ".fits.gz", "x" * 92 + ".fits.gz"),
    ("<b>alert(1)</b>.fits", "b_.fits"),  # "/" ends a path
    ("<i>alert(1)<i>.fits", "_i_alert_1_i_.fits"),
    (".htaccess", "htaccess"),
])
def test_an_upload_keeps_its_name_made_safe(live: LiveService,
                                            sample_image: Path,
                                            sent: str, stored: str):
    """Stored as inputs/image/<the name made safe>, served and shown so."""
    with sample_image.open("rb") as fh:
        url = live.create(files={"image": (sent, fh)})
    job_id = url.rsplit("/", 1)[1]
    folder = live.service.job_root / job_id
    assert [p.relative_to(live.service.job_root).as_posix()
            for p in live.service.job_root.rglob("*") if p.is_file()] == [
        f"{job_id}/inputs/image/{stored}"]
    assert (folder / "inputs" / "image" / stored).read_bytes() == \
        sample_image.read_bytes()
    r = live.http.get(f"{url}/parameters/image")
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == (
        f'inline; filename="{stored}"')
    page = live.http.get(f"{live.url}/ui/jobs/{job_id}").text
    assert f"uploaded file <code>{stored}</code>" in page


def test_an_upload_named_with_a_nul_byte(live: LiveService,
                                         sample_image: Path):
    """A raw NUL in the part's file name (no client library sends one)."""
    body = (b'--B\r\nContent-Disposition: form-data; name="image"; '
            b'filename="a\x00b.fits"\r\n'
            b"Content-Type: application/fits\r\n\r\n"
            + sample_image.read_bytes() + b"\r\n--B--\r\n")
    r = _raw(live, "POST", "/jobs", body,
             {"Content-Type": "multipart/form-data; boundary=B"})
    assert r.status_code == 303, r.text
    job_id = r.headers["Location"].rsplit("/", 1)[1]
    stored = live.service.job_root / job_id / "inputs" / "image"
    assert [p.name for p in stored.iterdir()] == ["a_b.fits"]
