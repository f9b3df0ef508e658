"""Issue 16 audited on the served code: what still got through.

Each case here was found by attacking the service as the issue's author
did (granian, ``development.ini``, the embedded defaults and ``basic``
mode) after the issue's items were built, and each failed before its
fix: a 500 (conditional and range headers WebOb cannot parse, a charset
that is not a text encoding), a request thread held for minutes by a
small upload (a ``ZNAXIS`` of two billion axes, thousands of HDUs read
by astropy), an address that is not public let through (IPv6 forms
that carry an IPv4 address or are not global unicast), the failed-login
throttle undone by a flood of unknown user names.  Files are built
here, byte by byte, not by the project's simulator.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import math
import threading
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uwskit import LiveService, settings_for

from pbs_bridge.fetch import FetchError, FetchPolicy, fetch
from pbs_bridge.jobfolder import JobFolder, WorkerSpec
from pbs_bridge.pbs import PbsRunner, PbsSettings
from pbs_bridge.runner import BackendPhase, RunnerJob
from qualityfits.errors import InvalidImageError
from qualityfits.fitsscan import MAX_HDUS, FitsTooLargeError, scan_fits
from uws import auth
from uws.auth import (
    FAILURE_TABLE,
    MAX_ADDRESS_FAILURES,
    MAX_FAILURES,
    VERIFIED_CACHE,
    BasicPolicy,
    BasicSettings,
    hash_password,
)
from uws.errors import NotAuthenticatedError, TooManyRequestsError
from uws.params import check_fits

MB = 10**6


def _cards(*cards: str) -> bytes:
    text = "".join(c.ljust(80) for c in (*cards, "END"))
    return text.encode().ljust(-(-len(text) // 2880) * 2880, b" ")


PRIMARY = _cards("SIMPLE  =                    T",
                 "BITPIX  =                   16",
                 "NAXIS   =                    0",
                 "EXTEND  =                    T")
#: A 2 x 3 int16 image extension: one header block, one data block.
EXTENSION = _cards("XTENSION= 'IMAGE   '", "BITPIX  =                   16",
                   "NAXIS   =                    2",
                   "NAXIS1  =                    2",
                   "NAXIS2  =                    3",
                   "PCOUNT  =                    0",
                   "GCOUNT  =                    1") + bytes(2880)


def _many_hdus(path: Path, count: int, *, packed: bool = False) -> Path:
    """A primary header and ``count`` tiny image extensions."""
    with (gzip.open(path, "wb") if packed else path.open("wb")) as out:
        out.write(PRIMARY)
        for _ in range(count):
            out.write(EXTENSION)
    return path


def _refused(r: requests.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text
    for word in words:
        assert word in r.text, (word, r.text[:300])
    return r.text


@pytest.fixture
def uploaded(live: LiveService, tmp_path: Path) -> tuple[str, bytes]:
    """A job's uploaded image: its URL and its bytes."""
    data = PRIMARY.replace(b"NAXIS   =                    0",
                           b"NAXIS   =                    1"
                           ).replace(b"EXTEND  =                    T",
                                     b"NAXIS1  =                 2880")
    data += bytes(range(256)) * 22 + bytes(2880 * 2 - 256 * 22)
    path = tmp_path / "plain.fits"
    path.write_bytes(data)
    with path.open("rb") as fh:
        job = live.create(files={"image": ("plain.fits", fh)})
    return f"{job}/parameters/image", data


# -- byte ranges and conditions (item 9; a 500 before) -----------------------
@pytest.mark.parametrize("value", [
    "bytes=-", "bytes=--1", "bytes=-1-", "bytes=0-1,5-6", "bytes=1-1-1",
    "bytes=0-1,-0", "bytes=abc", "bytes=5-2", "pages=0-1", "bytes = 0-1x"])
def test_an_unusable_range_is_ignored(live: LiveService, uploaded, value):
    """RFC 9110 14.2: a range set the server does not serve is ignored.

    WebOb read ``bytes=-`` as a suffix of ``int('')`` (a 500), and
    served the first range of several as if it were all that was asked.
    """
    url, data = uploaded
    r = live.http.get(url, headers={"Range": value})
    assert r.status_code == 200, (value, r.status_code, r.text[:200])
    assert r.content == data
    assert "Content-Range" not in r.headers


def test_usable_ranges_still_work(live: LiveService, uploaded):
    url, data = uploaded
    for value, part in (("bytes=0-9", data[:10]), ("bytes=10-", data[10:]),
                        ("bytes=-7", data[-7:]), ("BYTES=3-3", data[3:4]),
                        ("bytes=0-99999999999999999999", data)):
        r = live.http.get(url, headers={"Range": value})
        assert r.status_code == 206, (value, r.status_code)
        assert r.content == part, value
    r = live.http.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416


@pytest.mark.parametrize("header", [
    ("If-Modified-Since", "Sat, 01 Jan 10000 00:00:00 GMT"),
    ("If-Modified-Since", "Fri, 31 Dec 9999 23:59:59 -1400"),
    ("If-Unmodified-Since", "Sat, 01 Jan 10000 00:00:00 GMT"),
    ("If-Range", "Mon, 99 Foo 99999 99:99:99 GMT"),
    ("If-Range", "Sat, 01 Jan 10000 00:00:00 GMT")])
def test_an_unreadable_date_is_ignored(live: LiveService, uploaded,
                                       header):
    """RFC 9110 13.1.3: an invalid HTTP-date is ignored, not a 500.

    An If-Range whose date cannot be read matches nothing: the whole
    file (200).  The static files, served by Pyramid, are answered the
    same way.
    """
    url, data = uploaded
    name, value = header
    r = live.http.get(url, headers={name: value, "Range": "bytes=0-1"})
    assert r.status_code == (200 if name == "If-Range" else 206), (
        r.status_code, r.text[:200])
    assert r.content == (data if name == "If-Range" else data[:2])
    r = live.http.get(f"{live.url}/static/qfits.css",
                      headers={name: value, "Range": "bytes=-"})
    assert r.status_code == 200, (r.status_code, r.text[:200])


def test_a_readable_condition_still_applies(live: LiveService, uploaded):
    url, _ = uploaded
    first = live.http.get(url)
    r = live.http.get(url, headers={
        "If-Modified-Since": first.headers["Last-Modified"]})
    assert r.status_code == 304
    r = live.http.get(url, headers={"If-Range": '"another-etag"',
                                    "Range": "bytes=0-1"})
    assert r.status_code == 200


# -- charsets (item 4; a 500 before) ------------------------------------------
@pytest.mark.parametrize("charset", ["rot13", "base64", "hex", "zlib", "uu"])
def test_a_charset_that_is_no_text_encoding_is_400(live: LiveService,
                                                    charset):
    """Python knows these codecs, but they turn bytes into bytes."""
    for body, ctype in ((b"RUNID=a",
                         "application/x-www-form-urlencoded; charset="
                         + charset),
                        (b'--B\r\nContent-Disposition: form-data; '
                         b'name="RUNID"\r\nContent-Type: text/plain; '
                         b"charset=" + charset.encode()
                         + b"\r\n\r\na\r\n--B--\r\n",
                         "multipart/form-data; boundary=B")):
        r = live.http.post(live.jobs, data=body,
                           headers={"Content-Type": ctype},
                           allow_redirects=False)
        _refused(r, 400, "UsageError: unknown charset", charset)
    assert live.service.store.count() == 0


def test_bytes_a_charset_cannot_decode_are_400(live: LiveService):
    """Punycode raises UnicodeError, not UnicodeDecodeError."""
    r = live.http.post(live.jobs, data=b"abc-9999999999=1", headers={
        "Content-Type": "application/x-www-form-urlencoded; "
                        "charset=punycode"}, allow_redirects=False)
    _refused(r, 400, "UsageError:", "not valid punycode")


# -- headers that hold a request thread (item 1) ------------------------------
@pytest.mark.timeout(60)
def test_a_huge_znaxis_is_refused_at_once(live: LiveService,
                                          tmp_path: Path):
    """5760 bytes whose ZNAXIS says two billion axes: minutes of CPU."""
    path = tmp_path / "znaxis.fits"
    path.write_bytes(PRIMARY + _cards(
        "XTENSION= 'BINTABLE'", "BITPIX  =                    8",
        "NAXIS   =                    2", "NAXIS1  =                    8",
        "NAXIS2  =                    0", "PCOUNT  =                    0",
        "GCOUNT  =                    1", "TFIELDS =                    1",
        "ZIMAGE  =                    T", "ZNAXIS  =           2000000000"))
    with pytest.raises(InvalidImageError, match=r"ZNAXIS = 2000000000 is "
                       r"not 0\.\.999"):
        scan_fits(path, max_bytes=MB, max_pixels=MB)
    started = time.monotonic()
    with path.open("rb") as fh:
        r = live.http.post(live.jobs, files={"image": fh},
                           allow_redirects=False)
    _refused(r, 400, "IMAGE: ZNAXIS = 2000000000 is not 0..999")
    assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_thousands_of_hdus_are_refused_at_once(live: LiveService,
                                               tmp_path: Path, packed):
    """2 000 tiny HDUs (11.5 MB): astropy's check took 30 s, quadratic.

    The same file with `MAX_HDUS` extensions (the primary makes one more)
    is the first refused; one fewer is read, in a second (10 s before:
    the check asked astropy where each HDU ends, which walks those
    before it).
    """
    name = "many.fits.gz" if packed else "many.fits"
    path = _many_hdus(tmp_path / name, 2000, packed=packed)
    started = time.monotonic()
    with path.open("rb") as fh:
        r = live.http.post(live.jobs, files={"image": (name, fh)},
                           allow_redirects=False)
    _refused(r, 413, f"IMAGE: more than {MAX_HDUS} HDUs")
    assert time.monotonic() - started < 10
    assert live.service.store.count() == 0
    with pytest.raises(InvalidImageError, match="more than"):
        scan_fits(_many_hdus(tmp_path / "at.fits", MAX_HDUS, packed=packed),
                  max_bytes=100 * MB, max_pixels=MB)
    under = _many_hdus(tmp_path / "under.fits", MAX_HDUS - 1, packed=packed)
    assert scan_fits(under, max_bytes=100 * MB,
                     max_pixels=MB).hdus == MAX_HDUS
    started = time.monotonic()  # 10 s before (fileinfo of each HDU)
    assert check_fits("image", under) == pytest.approx(
        (MAX_HDUS - 1) * 6e-6)
    assert time.monotonic() - started < 5
    with under.open("rb") as fh:
        r = live.http.post(live.jobs, files={"image": (name, fh)},
                           allow_redirects=False)
    assert r.status_code == 303, r.text[:300]


# -- URL inputs (item 2) ------------------------------------------------------
@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::10.0.0.1",     # IPv4-compatible (RFC 4291, deprecated)
    "::ffff:0:7f00:1",               # IPv4-translated (SIIT, RFC 2765)
    "64:ff9b:1::a00:1",              # local-use NAT64 (RFC 8215)
    "fec0::1",                       # site-local (deprecated, internal)
    "5f00::1", "4000::1"])           # not global unicast (2000::/3)
def test_ipv6_addresses_that_are_not_global_unicast_are_refused(address):
    assert not FetchPolicy().permits(address)


@pytest.mark.parametrize("address", [
    "2606:4700:4700::1111", "2a00:1450:4007:80e::200e",
    "64:ff9b::808:808",              # NAT64 of 8.8.8.8 (DNS64 networks)
    "::ffff:8.8.8.8"])
def test_public_ipv6_addresses_are_still_allowed(address):
    assert FetchPolicy().permits(address)


def test_the_allow_list_still_opens_any_ipv6_network():
    assert FetchPolicy(("fec0::/10",)).permits("fec0::1")


# -- the failed-login throttle (item 9) ---------------------------------------
class _Request:
    """What `BasicPolicy.identify` reads of a request."""

    def __init__(self, user: str, password: str, address: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.remote_addr = address


def _policy(tmp_path: Path, users: dict[str, str],
            iterations: int = 1) -> BasicPolicy:
    """A basic policy over ``users`` (name: password), quick hashes."""
    path = tmp_path / "users"
    path.write_text("".join(
        f"{name}:{hash_password(word, iterations=iterations)}\n"
        for name, word in users.items()))
    return BasicPolicy(BasicSettings(auth_user_file=path))


def test_unknown_names_do_not_flush_the_throttle(tmp_path: Path):
    """A flood of made-up names leaves a guessed user's failures alone.

    Before, each made-up name took a place in the bounded table of
    failures, so `FAILURE_TABLE` of them (no password check: cheap)
    pushed a guessed user's failures out, and the guessing went on.
    Other names are now counted in a table of their own; here they come
    from as many addresses, so that no address is held back.
    """
    policy = _policy(tmp_path, {"alice": "wonderland"})
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(NotAuthenticatedError, match="wrong password"):
            policy.identify(_Request("alice", "guess", "10.0.0.9"))
    for k in range(FAILURE_TABLE + 10):
        with pytest.raises(NotAuthenticatedError, match="wrong password"):
            policy.identify(_Request(f"nobody{k}", "x",
                                     f"10.1.{k // 250}.{k % 250}"))
    with pytest.raises(NotAuthenticatedError, match="wrong password"):
        policy.identify(_Request("alice", "guess", "10.0.0.9"))
    with pytest.raises(TooManyRequestsError, match="failed logins"):
        policy.identify(_Request("alice", "wonderland", "10.0.0.9"))
    assert len(policy._failures) == 1  # alice's, from that address
    assert len(policy._strangers) == FAILURE_TABLE


def test_a_name_that_is_no_user_answers_like_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same password check, throttle and words for any name.

    Before, a made-up name was refused without a password check (~10 ms
    against 60-100 ms for a user's wrong password): the time of the
    answer told which names are users.  Now it costs one check against
    a hash with the users' number of rounds (the checks are recorded
    here, and run as they are).
    """
    policy = _policy(tmp_path, {"alice": "wonderland"}, iterations=1234)
    rounds: list[str] = []
    checked = auth.check_password

    def recorded(password: str, stored: str) -> bool:
        rounds.append(stored.split("$")[1])
        return checked(password, stored)

    monkeypatch.setattr(auth, "check_password", recorded)
    for name in ("alice", "mallory"):
        for _ in range(MAX_FAILURES):
            with pytest.raises(NotAuthenticatedError) as caught:
                policy.identify(_Request(name, "guess", "10.0.0.3"))
            assert str(caught.value) == "unknown user or wrong password"
        with pytest.raises(TooManyRequestsError,
                           match="failed logins for this user"):
            policy.identify(_Request(name, "guess", "10.0.0.3"))
    assert rounds == ["1234"] * (2 * MAX_FAILURES)


def test_one_address_is_held_back_whatever_the_names(tmp_path: Path):
    """`MAX_ADDRESS_FAILURES` failures of any names: the address waits.

    Each failure costs the service a password check, whatever the name;
    rotating names from one address was unlimited.  Another address is
    not held back.
    """
    policy = _policy(tmp_path, {"alice": "wonderland"})
    for k in range(MAX_ADDRESS_FAILURES):
        with pytest.raises(NotAuthenticatedError):
            policy.identify(_Request(f"name{k}", "x", "10.0.0.4"))
    with pytest.raises(TooManyRequestsError,
                       match=f"{MAX_ADDRESS_FAILURES} failed logins from "
                             "this address"):
        policy.identify(_Request("alice", "wonderland", "10.0.0.4"))
    assert policy.identify(_Request("alice", "wonderland", "10.0.0.5")
                           ).name == "alice"


# -- the job list's filters (item 8) ------------------------------------------
@pytest.mark.parametrize(("query", "named"), [
    ("=1", "''"), ("%00x=1", "'\\x00X'"), ("phse=RUN", "'PHSE'"),
])
def test_an_unknown_filter_is_named_quoted(live: LiveService, query: str,
                                           named: str):
    """An empty name, or one with a NUL, was echoed raw (``filter :``)."""
    r = live.http.get(f"{live.jobs}?{query}")
    text = _refused(r, 400, f"unknown job-list filter {named}: the "
                    "filters are PHASE")
    assert "\x00" not in text


# -- cross-site requests (item 5) ---------------------------------------------
def test_an_origin_that_cannot_be_read_is_never_this_service(
        live: LiveService):
    """Two unreadable origins compared equal (None == None): accepted.

    ``Host: a:b`` (no browser sends it) made the service's own origin
    unreadable too; an unreadable ``Origin`` must be refused whatever
    the service's is.
    """
    r = live.http.post(live.jobs, data={"RUNID": "x"}, headers={
        "Host": "a:b", "Origin": "http://a:b"}, allow_redirects=False)
    _refused(r, 403, "cross-site request refused", "'http://a:b'")
    assert live.service.store.count() == 0


# -- messages (item 4) --------------------------------------------------------
def test_a_multipart_error_is_said_without_python_internals(
        live: LiveService):
    body = (b'--B\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n'
            b"\r\na\r\n--B--\r\n")
    r = live.http.post(live.jobs, data=body, headers={
        "Content-Type": "multipart/form-data; boundary=B"},
        allow_redirects=False)
    text = _refused(r, 400, "UsageError: malformed multipart/form-data "
                    "body: ")
    assert text.count("\n") == 1
    assert "UnicodeDecodeError" not in text, text
    assert "\\x" not in text, text


# -- URL inputs: schemes at every redirect (item 2) ---------------------------
class _ToFtp(http.server.BaseHTTPRequestHandler):
    """Redirect every request to ftp:// on this same server."""

    def do_GET(self):
        port = self.server.server_address[1]
        self.send_response(302)
        self.send_header("Location", f"ftp://127.0.0.1:{port}/field.fits")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_to_another_scheme_is_refused(tmp_path: Path):
    """urllib follows ftp:// redirects itself, outside the checked sockets."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ToFtp)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        with pytest.raises(FetchError) as info:
            fetch("image", f"http://127.0.0.1:{port}/x",
                  tmp_path / "image.fits", limit=MB, timeout=5,
                  policy=FetchPolicy(("127.0.0.1",)), user_agent="test")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert info.value.kind == "usage"
    refused = (f"redirect to ftp://127.0.0.1:{port}/field.fits refused "
               "(http or https only)")
    assert refused in info.value.message, info.value.message


# -- a bomb is inflated up to the limit only (item 1) -------------------------
def test_a_bomb_is_not_inflated_past_the_limit(tmp_path: Path):
    """A corrupt tail after 300 MB of zeros: reached only by a full inflate.

    tests/qualityfits/test_fitsscan.py checks the message; a scan that
    inflated the whole stream and then compared would give the same one.
    Here the stream breaks after the zeros: a scan that stops at the
    limit never reads that far, one that goes on finds the break.
    """
    path = tmp_path / "bomb.fits.gz"
    head = PRIMARY.replace(b"EXTEND  =                    T",
                           b"COMMENT a bomb follows".ljust(30))
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(head)
        block = bytes(MB)
        for _ in range(300):
            out.write(block)
    with path.open("ab") as out:
        out.write(b"\x1f\x8b\x08\x00" + b"\xff" * 64)  # a broken member
    assert path.stat().st_size < MB
    with pytest.raises(FitsTooLargeError, match=r"decompresses to more "
                       r"than the limit of 10\.0 MB"):
        scan_fits(path, max_bytes=10 * MB, max_pixels=MB)
    with pytest.raises(InvalidImageError, match="not a readable gzip"):
        scan_fits(path, max_bytes=400 * MB, max_pixels=MB)


# -- precise messages at upload (item 8) --------------------------------------
@pytest.mark.parametrize(("cards", "message"), [
    (("NAXIS   =                    2", "NAXIS1  =                  -10",
      "NAXIS2  =                   10"),
     "UsageError: IMAGE: a negative NAXISn ([-10, 10])"),
    (("NAXIS   =                    2", "NAXIS1  =                   10",
      "NAXIS2  =                   10"),
     "UsageError: IMAGE: BITPIX = 12 is not a FITS value"),
])
def test_lying_headers_are_named_at_upload(live: LiveService,
                                           tmp_path: Path, cards, message):
    """Said once, naming the parameter: no "constant image", no echo."""
    bitpix = "12" if "BITPIX" in message else "16"
    path = tmp_path / "odd.fits"
    path.write_bytes(_cards("SIMPLE  =                    T",
                            f"BITPIX  = {bitpix:>20}", *cards)
                     + bytes(2880))
    for packed in (False, True):
        data = path.read_bytes()
        with (gzip.open(path.with_suffix(".fits.gz"), "wb") if packed
              else path.open("wb")) as out:
            out.write(data)
        sent = path.with_suffix(".fits.gz") if packed else path
        with sent.open("rb") as fh:
            r = live.http.post(live.jobs, files={"image": fh},
                               allow_redirects=False)
        text = _refused(r, 400, message)
        assert text.count("IMAGE") == 1, text
    assert live.service.store.count() == 0


# -- bounded caches of basic authentication (item 9) --------------------------
def test_the_caches_of_basic_authentication_are_bounded(tmp_path: Path):
    """`VERIFIED_CACHE` right pairs, `FAILURE_TABLE` failing ones at most.

    Users with a one-round hash, so that thousands of checks are quick.
    """
    count = FAILURE_TABLE + 20
    users = tmp_path / "users"
    users.write_text("".join(
        f"u{k}:{hash_password(f'p{k}', iterations=1)}\n"
        for k in range(count)))
    policy = BasicPolicy(BasicSettings(auth_user_file=users))
    for k in range(VERIFIED_CACHE + 20):
        assert policy.identify(_Request(f"u{k}", f"p{k}", "10.0.0.1")
                               ).name == f"u{k}"
    assert len(policy._verified) == VERIFIED_CACHE
    assert ("u0", hashlib.sha256(b"p0").hexdigest()) not in policy._verified
    for k in range(count):
        with pytest.raises(NotAuthenticatedError):
            policy.identify(_Request(f"u{k}", "wrong",
                                     f"10.2.{k // 250}.{k % 250}"))
    assert len(policy._failures) == FAILURE_TABLE
    assert len(policy._addresses) == FAILURE_TABLE


# -- generated conditional and range headers (items 4 and 9) ------------------
#: Header text a client library sends: printable Latin-1, no edge spaces.
HEADER_TEXT = st.text(alphabet=st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.characters(min_codepoint=161, max_codepoint=255)),
    max_size=40).map(str.strip)
RANGES = st.one_of(
    HEADER_TEXT,
    st.lists(st.tuples(st.sampled_from(["", "0", "1", "-1", "99", "7" * 25]),
                       st.sampled_from(["", "0", "5", "-", "7" * 25])),
             min_size=1, max_size=3).map(
        lambda specs: "bytes=" + ",".join(f"{a}-{b}" for a, b in specs)))
DATES = st.one_of(
    HEADER_TEXT,
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    st.builds("{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
              st.sampled_from(["Mon", "Sat", "Foo"]),
              st.integers(0, 99), st.sampled_from(["Jan", "Dec", "Xyz"]),
              st.integers(0, 99999), st.integers(0, 99), st.integers(0, 99),
              st.integers(0, 99), st.sampled_from(["GMT", "-1400", "+1400"])))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.fixed_dictionaries({}, optional={
    "Range": RANGES, "If-Range": st.one_of(DATES, HEADER_TEXT),
    "If-Modified-Since": DATES, "If-Unmodified-Since": DATES,
    "If-None-Match": HEADER_TEXT, "If-Match": HEADER_TEXT}),
    static=st.booleans())
def test_generated_conditions_are_never_a_500(live: LiveService, uploaded,
                                              headers, static):
    url = f"{live.url}/static/qfits.css" if static else uploaded[0]
    r = live.http.get(url, headers=headers, timeout=30)
    assert r.status_code in (200, 206, 304, 412, 416), (
        headers, r.status_code, r.text[:200])


# -- the default limits admit a MegaCam exposure (item 1) ---------------------
@pytest.mark.parametrize("bitpix", [16, -32])
def test_the_default_limits_admit_a_megacam_exposure(tmp_path: Path,
                                                     bitpix: int):
    """40 CCDs of 2112 x 4644 pixels: 785 MB raw (16 bits), 1.57 GB float.

    The file is sparse (its data are holes): the scan seeks past them.
    """
    defaults = settings_for(tmp_path, "sqlite://")
    ccd = _cards("XTENSION= 'IMAGE   '", f"BITPIX  = {bitpix:>20}",
                 "NAXIS   =                    2",
                 "NAXIS1  =                 2112",
                 "NAXIS2  =                 4644",
                 "PCOUNT  =                    0",
                 "GCOUNT  =                    1")
    data = -(-2112 * 4644 * abs(bitpix) // 8 // 2880) * 2880
    path = tmp_path / "megacam.fits"
    with path.open("wb") as out:
        out.write(PRIMARY)
        for _ in range(40):
            out.write(ccd)
            out.seek(data, 1)
        out.truncate()
    layout = scan_fits(path, max_bytes=defaults.decompressed_limit,
                       max_pixels=defaults.pixel_limit)
    assert layout.pixels == 40 * 2112 * 4644
    assert layout.size == path.stat().st_size


# -- a tile-compressed image counts decompressed (item 1) ---------------------
def _tiled(path: Path, zbitpix: int, nx: int, ny: int) -> Path:
    """A tile-compressed image's headers; its table and heap are holes."""
    table = _cards(
        "XTENSION= 'BINTABLE'", "BITPIX  =                    8",
        "NAXIS   =                    2", "NAXIS1  =                    8",
        f"NAXIS2  = {ny:>20}", "PCOUNT  =                 2880",
        "GCOUNT  =                    1", "TFIELDS =                    1",
        "TTYPE1  = 'COMPRESSED_DATA'", "TFORM1  = '1PB(0)  '",
        "ZIMAGE  =                    T", f"ZBITPIX = {zbitpix:>20}",
        "ZNAXIS  =                    2", f"ZNAXIS1 = {nx:>20}",
        f"ZNAXIS2 = {ny:>20}", "ZTILE1  = " + f"{nx:>20}",
        "ZTILE2  =                    1", "ZCMPTYPE= 'GZIP_1  '")
    with path.open("wb") as out:
        out.write(PRIMARY + table)
        out.seek(-(-(8 * ny + 2880) // 2880) * 2880, 1)
        out.truncate()
    return path


def test_a_tile_compressed_image_counts_as_it_decompresses(tmp_path: Path):
    """20 000 x 20 000 float64 zeros (400 Mpx, under the pixel limit).

    Its tiles of zeros compress to almost nothing: the file is a few MB
    (here 3 MB of table), the image 3.2 GB in the worker's memory, and a
    PBS job asked memory for the 3 MB.  What the headers say once
    decompressed is checked against the limit, and is the size the
    memory request follows.
    """
    defaults = settings_for(tmp_path, "sqlite://")
    path = _tiled(tmp_path / "zeros.fits.fz", -64, 20000, 20000)
    assert path.stat().st_size < 2 * MB
    with pytest.raises(FitsTooLargeError, match=r"announce 3\.2 GB"):
        scan_fits(path, max_bytes=defaults.decompressed_limit,
                  max_pixels=defaults.pixel_limit)
    small = scan_fits(_tiled(tmp_path / "small.fits.fz", 16, 2112, 4644),
                      max_bytes=defaults.decompressed_limit,
                      max_pixels=defaults.pixel_limit)
    assert small.expanded == 2 * 2880 + 2112 * 4644 * 2
    assert small.size < 2 * 2880 + 8 * 4644 + 2 * 2880


def test_pbs_memory_follows_a_tile_compressed_image(tmp_path: Path):
    """2112 x 4644 pixels of 16 bits: 19.6 MB asked for, not the table's."""
    runner = PbsRunner(PbsSettings(pbs_memory_base=2**20,
                                   pbs_memory_factor=2.0))
    folder = JobFolder(tmp_path / "abc")
    folder.inputs.mkdir(parents=True)
    _tiled(folder.inputs / "image.fits.fz", 16, 2112, 4644)
    job = RunnerJob("abc", BackendPhase.QUEUED, "", None, folder)
    spec = WorkerSpec(job_id="abc", image="inputs/image.fits.fz")
    assert runner._memory_mb(job, spec) == math.ceil(
        (2**20 + 2 * (2 * 2880 + 2112 * 4644 * 2)) / 2**20)


# -- generated input for the resources test_fuzz.py leaves out (item 4) -------
#: The run resources, the registry's (with ``qfits.ivoid`` set) and the
#: job attributes not in test_fuzz.RESOURCES; ``{run}`` is a real run.
MORE_RESOURCES = [
    "/runs", "/runs/{run}/summary.vot", "/runs/{run}/summary.fits",
    "/ui/runs", "/ui/runs/{run}", "/ui/runs/{run}/table",
    "/ui/runs/{run}/plots/fwhm.png", "/oai", "/resource.xml",
    "/jobs/{job}/runId", "/jobs/{job}/creationTime", "/jobs/{job}/startTime",
    "/jobs/{job}/endTime", "/jobs/{job}/parameters/zeropoint"]
OAI_NAMES = ["verb", "metadataPrefix", "identifier", "from", "until", "set",
             "resumptionToken", "since", "RUNID", "run_id"]
FIELD_VALUES = st.one_of(
    HEADER_TEXT, st.text(max_size=30), st.integers().map(str),
    st.sampled_from(["Identify", "ListRecords", "ListIdentifiers",
                     "GetRecord", "ListSets", "ListMetadataFormats",
                     "ivo_vor", "oai_dc", "ivo://example.org/qfits",
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                     "2026-13-45", "", "%ff", "night-1", "../x"]))


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    """A service with a VO record and one PENDING job of run night-1."""
    root = tmp_path_factory.mktemp("registered")
    live = LiveService(settings_for(
        root, f"sqlite:///{root}/jobs.sqlite", worker_command="false",
        ivoid="ivo://example.org/qfits", record_publisher="Example",
        record_contact_email="vo@example.org"))
    job = live.create(RUNID="night-1", ZEROPOINT="25")
    try:
        yield live, job.rsplit("/", 1)[1]
    finally:
        live.stop()


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resource=st.sampled_from(MORE_RESOURCES),
       params=st.dictionaries(st.sampled_from(OAI_NAMES), FIELD_VALUES,
                              max_size=4),
       method=st.sampled_from(["GET", "POST", "HEAD"]),
       real=st.booleans())
def test_more_generated_requests_are_never_a_500(registered, resource,
                                                 params, method, real):
    live, job = registered
    path = resource.format(job=job if real else "0123456789abcdef",
                           run="night-1" if real else "no-such_run")
    r = live.http.request(method, f"{live.url}{path}",
                          **({"data": params} if method == "POST"
                             else {"params": params}),
                          timeout=30, allow_redirects=False)
    assert r.status_code < 500, (method, path, params, r.status_code,
                                 r.text[:300])
    assert "Traceback" not in r.text
