"""Generated input for every endpoint and parameter: never a 500.

Hypothesis draws parameter names (the service's own, in any case, and
others), values (text of every kind, numbers, instants, huge integers,
undecodable percent-escapes) and methods, and sends them to every
resource of the API and the pages, against a real service on loopback.
Every answer must be a well-formed success or a 4xx with a one-line
``Code: message`` (or an HTML page for the pages): no 500, no
traceback.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uwskit import LiveService, settings_for

from uws.params import CONTROL_PARAMETERS, SCIENCE_PARAMETERS

NAMES = [*SCIENCE_PARAMETERS, *CONTROL_PARAMETERS, "action", "wait",
         "after", "last", "csrf_token", "image_url"]

#: Values a client may send: odd text, numbers, instants, escapes.
VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=40),
    st.integers().map(str),
    st.integers(min_value=10**18, max_value=10**60).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["RUN", "ABORT", "DELETE", "PENDING", "QUEUED",
                     "-1", "0", "nan", "inf", "1e400", "",
                     "0001-01-01T00:00:00+14:00",
                     "9999-12-31T23:59:59-14:00", "http://[::1]:0/x",
                     "file:///etc/passwd", "../../etc/passwd"]),
)
RAW = st.lists(st.sampled_from(["%ff", "%fe", "%00", "%c3%28", "a", "=",
                                "&", "%2B", "+"]), max_size=8).map("".join)
PARAMS = st.dictionaries(
    st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES).map(
        str.upper), st.text(min_size=1, max_size=12)),
    VALUES, max_size=4)

#: Resources of a job (``{job}`` is a real job's id, or a made-up one).
RESOURCES = ["/jobs", "/jobs/{job}", "/jobs/{job}/phase",
             "/jobs/{job}/executionduration", "/jobs/{job}/destruction",
             "/jobs/{job}/error", "/jobs/{job}/quote", "/jobs/{job}/owner",
             "/jobs/{job}/results", "/jobs/{job}/results/summary",
             "/jobs/{job}/parameters", "/jobs/{job}/parameters/image",
             "/availability", "/capabilities", "/", "/ui/jobs",
             "/ui/check", "/ui/submit", "/ui/jobs/{job}",
             "/ui/jobs/{job}/report", "/ui/jobs/{job}/results",
             "/ui/jobs/{job}/abort", "/ui/jobs/{job}/delete",
             "/ui/jobs/{job}/thumbs/mosaic"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[LiveService, str]]:
    """A service with one PENDING job (never run: no worker needed)."""
    root = tmp_path_factory.mktemp("fuzz")
    from uws import schema  # noqa: PLC0415

    url = f"sqlite:///{root}/jobs.sqlite"
    schema.upgrade(url)
    live = LiveService(settings_for(root, url, worker_command="false"))
    job = live.create(IMAGE="http://127.0.0.1:9/never.fits")
    try:
        yield live, job.rsplit("/", 1)[1]
    finally:
        live.stop()


def _check(r: requests.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.request.method,
                                 r.request.url, r.text[:300])
    assert "Traceback" not in r.text
    if r.status_code >= 400 and r.headers.get(
            "Content-Type", "").startswith("text/plain"):
        assert r.text.count("\n") == 1, r.text
        assert r.text.split(":", 1)[0].isalpha(), r.text


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(resource=st.sampled_from(RESOURCES), params=PARAMS,
       method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
       body=st.sampled_from(["form", "multipart", "query"]),
       real=st.booleans())
def test_generated_requests_are_never_a_500(fuzzed, resource, params,
                                            method, body, real):
    live, job = fuzzed
    path = resource.format(job=job if real else "0123456789abcdef")
    url = f"{live.url}{path}"
    if method in ("GET", "DELETE") or body == "query":
        r = live.http.request(method, url, params=params, timeout=30,
                              allow_redirects=False)
    elif body == "form":
        r = live.http.request(method, url, data=params, timeout=30,
                              allow_redirects=False)
    else:
        r = live.http.request(method, url, timeout=30,
                              allow_redirects=False, files={
                                  k: (None, v) for k, v in params.items()})
    _check(r)


@FUZZ
@given(resource=st.sampled_from(RESOURCES), query=RAW, path_tail=RAW,
       charset=st.sampled_from(["utf-8", "latin-1", "utf-16", "klingon",
                                "", "ascii"]),
       body=RAW)
def test_raw_bytes_are_never_a_500(fuzzed, resource, query, path_tail,
                                   charset, body):
    live, job = fuzzed
    path = resource.format(job=job) + (
        f"/{path_tail}" if path_tail and resource.endswith("}") else "")
    ctype = "application/x-www-form-urlencoded" + (
        f"; charset={charset}" if charset else "")
    request = requests.Request("POST", f"{live.url}{path}?{query}",
                               data=body.encode(),
                               headers={"Content-Type": ctype})
    prepared = live.http.prepare_request(request)
    prepared.url = f"{live.url}{path}?{query}"
    _check(live.http.send(prepared, allow_redirects=False, timeout=30))
    r = live.http.get(f"{live.url}{quote(path, safe='/%')}?{query}",
                      timeout=30, allow_redirects=False)
    _check(r)


def _small_fits() -> bytes:
    header = "".join(card.ljust(80) for card in (
        "SIMPLE  =                    T", "BITPIX  =                   16",
        "NAXIS   =                    2", "NAXIS1  =                   16",
        "NAXIS2  =                   16", "END")).encode()
    return header.ljust(2880, b" ") + bytes(2880)


SMALL_FITS = _small_fits()


@st.composite
def mangled_fits(draw: st.DrawFn) -> bytes:
    """A small FITS file with some bytes replaced, cut or gzipped."""
    data = bytearray(SMALL_FITS)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at:at + 8] = draw(st.binary(min_size=1, max_size=8))
    cut = draw(st.integers(0, len(data)))
    data = data[:cut] if draw(st.booleans()) else data
    if draw(st.booleans()):
        import gzip  # noqa: PLC0415

        packed = bytearray(gzip.compress(bytes(data)))
        if draw(st.booleans()) and len(packed) > 12:
            at = draw(st.integers(10, len(packed) - 1))
            packed[at] ^= 0xFF
        return bytes(packed)
    return bytes(data)


@FUZZ
@given(upload=mangled_fits(), name=st.sampled_from(["image", "flat",
                                                     "mask", "IMAGE"]))
def test_mangled_uploads_are_never_a_500(fuzzed, upload, name):
    live, _ = fuzzed
    r = live.http.post(live.jobs, files={name: ("x.fits", upload)},
                       timeout=30, allow_redirects=False)
    _check(r)
