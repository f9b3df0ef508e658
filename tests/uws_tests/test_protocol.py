"""UWS 1.1 conformance of the running service, through real HTTP.

Every test talks to a real waitress server with the real local runner
(`live`: SQLite; `live_db`: SQLite and PostgreSQL) the way clients do:
``requests`` with ``allow_redirects=False`` where the 303 matters, and
pyvo, the client we must satisfy.  The checklist is
``../shared/docs/uws.md``: 303 + absolute Location after every state
change (§4), 403 for requests illegal in the current phase (§3, §7),
404 for unknown jobs and sub-resources, job-list filters (§5), blocking
WAIT (§6), case-insensitive parameter names and both body encodings on
every POST endpoint (§11), results (§10), and every live document
valid against the IVOA schemas (lxml, and ``stilts xsdvalidate`` when
marked ``reference``) and readable by pyvo in pedantic mode.

Jobs that stay PENDING name their image by an http URL that is never
fetched; the few jobs that run use the small simulated exposure (about
3 s each) or, to fail fast, an image of pure noise or a URL answering
404.  One module-scoped service holds a COMPLETED and an ERROR job for
the read-only tests.
"""

from __future__ import annotations

import io
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from astropy.io import fits
from lxml import etree
from lxml.builder import ElementMaker
from pyvo.dal import AsyncTAPJob, DALQueryError
from pyvo.io.uws import parse_job, parse_job_list
from testkit import require_tool
from uwskit import XSI_NIL, LiveService, settings_for

from uws.phases import Phase

UWS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
QF = "urn:qualityfits-uws"
VOSI_AVAILABILITY = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
VOSI_CAPABILITIES = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
VS = "http://www.ivoa.net/xml/VODataService/v1.1"
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
INSTANTS = {"quote", "creationTime", "startTime", "endTime", "destruction",
            "upSince"}

#: An input URL of jobs that stay PENDING (never fetched).
IMAGE_URL = "http://example.org/data/exposure.fits"
#: A public base URL behind a (pretend) proxy.
BASE = "http://example.org/qfits"
ENCODINGS = ["urlencoded", "multipart"]
PLUS2 = timezone(timedelta(hours=2))
FINAL = {"COMPLETED", "ERROR", "ABORTED"}
TIMEOUT = 90

Fields = dict[str, str] | Sequence[tuple[str, str]]


# -- helpers -----------------------------------------------------------------

def post(http: requests.Session, url: str, fields: Fields, encoding: str,
         files: Sequence[tuple[str, Any]] = ()) -> requests.Response:
    """POST ``fields`` as a urlencoded or a multipart body (no redirect)."""
    pairs = list(fields.items()) if isinstance(fields, dict) else list(
        fields)
    if encoding == "urlencoded":
        assert not files
        r = http.post(url, data=pairs, allow_redirects=False,
                      timeout=TIMEOUT)
        sent = "application/x-www-form-urlencoded"
    else:
        parts = [(name, (None, value)) for name, value in pairs]
        r = http.post(url, files=[*parts, *files], allow_redirects=False,
                      timeout=TIMEOUT)
        sent = "multipart/form-data"
    assert r.request.headers["Content-Type"].startswith(sent)
    return r


def media_type(r: requests.Response) -> str:
    return r.headers["Content-Type"].split(";")[0].strip()


def see_other(r: requests.Response, location: str) -> None:
    """A state change accepted: 303 to an absolute ``location``."""
    assert r.status_code == 303, r.text
    assert r.headers["Location"] == location


def refused(r: requests.Response, status: int, *words: str) -> None:
    """An error answer: ``status``, a text/plain message naming ``words``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert media_type(r) == "text/plain"
    assert r.text.strip()
    for word in words:
        assert word in r.text, (word, r.text)


def get(http: requests.Session, url: str,
        params: Fields | None = None) -> requests.Response:
    return http.get(url, params=params, allow_redirects=False,
                    timeout=TIMEOUT)


def get_xml(http: requests.Session, url: str,
            params: Fields | None = None) -> etree._Element:
    r = get(http, url, params)
    assert r.status_code == 200, (url, r.status_code, r.text)
    assert media_type(r) == "text/xml"
    return etree.fromstring(r.content)


def get_text(http: requests.Session, url: str) -> str:
    """GET an atomic sub-resource: 200 text/plain."""
    r = get(http, url)
    assert r.status_code == 200, (url, r.status_code, r.text)
    assert media_type(r) == "text/plain"
    return r.text


def uws(element: etree._Element, name: str) -> etree._Element | None:
    return element.find(f"{{{UWS}}}{name}")


def text_of(element: etree._Element, name: str) -> str:
    found = uws(element, name)
    assert found is not None, name
    return found.text or ""


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def job_id_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def phase_of(document: bytes) -> str:
    return text_of(etree.fromstring(document), "phase")


def instant(text: str) -> datetime:
    assert ISO_Z.fullmatch(text), text
    return datetime.fromisoformat(text)


def iso_ms(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def listed(live: LiveService, params: Fields | None = None) -> list[str]:
    """Ids of the job list (filters ``params``), in document order."""
    root = get_xml(live.http, live.jobs, params)
    return [ref.get("id") for ref in root]


def parameters_of(root: etree._Element) -> dict[str, tuple[str, str | None,
                                                           str | None]]:
    params = root if local(root) == "parameters" else uws(root,
                                                          "parameters")
    assert params is not None
    return {p.get("id"): (p.text or "", p.get("byReference"),
                          p.get("isPost")) for p in params}


def results_of(root: etree._Element) -> list[tuple[str, str, str, str]]:
    results = root if local(root) == "results" else uws(root, "results")
    assert results is not None
    return [(r.get("id"), r.get(XLINK_HREF), r.get("size"),
             r.get("mime-type")) for r in results]


def pending(live: LiveService, **fields: Any) -> str:
    """Create a PENDING job whose image is a URL; return its URL."""
    return live.create(IMAGE=IMAGE_URL, **fields)


def upload(live: LiveService, image: Path, **fields: Any) -> str:
    """Create a job with an uploaded image; return its URL."""
    with image.open("rb") as fh:
        return live.create(
            files={"image": ("exposure.fits", fh, "application/fits")},
            **fields)


def wait_final(live: LiveService, url: str) -> str:
    return live.wait_phase(url, FINAL)


def write_noise(path: Path) -> Path:
    """A FITS image of pure noise: no star, the worker fails cleanly."""
    rng = np.random.default_rng(7)
    data = rng.normal(1000.0, 10.0, (256, 256)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(path)
    return path


# -- schemas -----------------------------------------------------------------

@dataclass(frozen=True)
class Schemas:
    uws: etree.XMLSchema
    availability: etree.XMLSchema
    capabilities: etree.XMLSchema


@pytest.fixture(scope="module")
def xsd(schemas: Path, tmp_path_factory: pytest.TempPathFactory) -> Schemas:
    """lxml validators (capabilities with VODataService for vs:ParamHTTP)."""
    xs = ElementMaker(namespace="http://www.w3.org/2001/XMLSchema",
                      nsmap={"xs": "http://www.w3.org/2001/XMLSchema"})
    wrapper = xs.schema(
        xs("import", namespace=VOSI_CAPABILITIES, schemaLocation=(
            (schemas / "VOSICapabilities.xsd").as_uri())),
        xs("import", namespace=VS, schemaLocation=(
            (schemas / "VODataService.xsd").as_uri())),
    )
    path = tmp_path_factory.mktemp("xsd") / "capabilities-wrapper.xsd"
    etree.ElementTree(wrapper).write(path)
    return Schemas(
        uws=etree.XMLSchema(etree.parse(schemas / "UWS.xsd")),
        availability=etree.XMLSchema(
            etree.parse(schemas / "VOSIAvailability.xsd")),
        capabilities=etree.XMLSchema(etree.parse(path)),
    )


def valid_uws(xsd: Schemas, document: bytes) -> etree._Element:
    """Validate a UWS document, plus what UWS.xsd does not check (§8)."""
    assert document.startswith(b"<?xml")
    root = etree.fromstring(document)
    xsd.uws.assertValid(root)
    if local(root) in {"job", "jobs"}:
        assert root.get("version") == "1.1"
    for element in root.iter():
        if (element.tag.startswith(f"{{{UWS}}}")
                and local(element) in INSTANTS
                and element.get(XSI_NIL) != "true"):
            assert ISO_Z.fullmatch(element.text or ""), element.text
    results = root if local(root) == "results" else uws(root, "results")
    if results is not None:
        ids = [r.get("id") for r in results]
        assert len(ids) == len(set(ids)), ids
    # And pyvo, the client, reads it (pedantic; warnings are errors).
    if local(root) == "job":
        parsed = parse_job(io.BytesIO(document), pedantic=True)
        assert (parsed.jobid, parsed.phase) == (
            text_of(root, "jobId"), text_of(root, "phase"))
    elif local(root) == "jobs":
        parsed = parse_job_list(io.BytesIO(document), pedantic=True)
        assert [j.jobid for j in parsed] == [r.get("id") for r in root]
    return root


def fetch_valid(live: LiveService, xsd: Schemas, url: str,
                params: Fields | None = None) -> etree._Element:
    r = get(live.http, url, params)
    assert r.status_code == 200, r.text
    assert media_type(r) == "text/xml"
    return valid_uws(xsd, r.content)


def pyvo_job(live: LiveService, url: str) -> Any:
    r = get(live.http, url)
    assert r.status_code == 200
    return parse_job(io.BytesIO(r.content), pedantic=True)


# -- a service with finished jobs (module scope) -----------------------------

@dataclass
class Finished:
    """A service holding a COMPLETED and an ERROR job."""

    live: LiveService
    completed: str
    error: str
    #: Phase -> the first job document seen in that phase.
    seen: dict[str, bytes]


@pytest.fixture(scope="module")
def noise_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_noise(tmp_path_factory.mktemp("noise") / "noise.fits")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, sample_image: Path,
             noise_image: Path) -> Iterator[Finished]:
    """Run two jobs (max_running=1: the second waits QUEUED) to the end.

    The job documents are kept as first seen in each phase: QUEUED,
    EXECUTING, COMPLETED and ERROR.
    """
    root = tmp_path_factory.mktemp("finished")
    live = LiveService(settings_for(root, f"sqlite:///{root}/jobs.sqlite"))
    try:
        completed = upload(live, sample_image, PHASE="RUN", RUNID="ok")
        error = upload(live, noise_image, PHASE="RUN", RUNID="noise")
        seen: dict[str, bytes] = {}
        document = get(live.http, error).content
        seen[phase_of(document)] = document
        document = get(live.http, completed).content
        deadline = time.monotonic() + 120
        while True:
            phase = phase_of(document)
            seen.setdefault(phase, document)
            if phase in FINAL or time.monotonic() > deadline:
                break
            document = get(live.http, completed,
                           {"WAIT": "10", "PHASE": phase}).content
        wait_final(live, error)
        document = get(live.http, error).content
        seen.setdefault(phase_of(document), document)
        yield Finished(live, completed, error, seen)
    finally:
        live.stop()


def test_finished_jobs_went_through_the_phases(finished: Finished):
    assert phase_of(get(finished.live.http, finished.completed).content) \
        == "COMPLETED"
    assert phase_of(get(finished.live.http, finished.error).content) \
        == "ERROR"
    assert {"QUEUED", "EXECUTING", "COMPLETED", "ERROR"} <= set(
        finished.seen)


# -- job creation ------------------------------------------------------------

def test_creation_redirects_to_the_configured_base_url(
        start_service: Callable[..., LiveService], sample_image: Path):
    """Every URL the service writes uses the public base (uws.md §4)."""
    live = start_service(base_url=BASE)
    r = post(live.http, live.jobs, {"IMAGE": IMAGE_URL}, "urlencoded")
    assert r.status_code == 303, r.text
    location = r.headers["Location"]
    assert re.fullmatch(rf"{re.escape(BASE)}/jobs/[A-Za-z0-9_-]+", location)
    job_id = job_id_of(location)
    url = f"{live.jobs}/{job_id}"  # the backend's own address
    root = get_xml(live.http, url)
    assert (text_of(root, "jobId"), text_of(root, "phase")) == (
        job_id, "PENDING")
    assert [ref.get(XLINK_HREF) for ref in get_xml(live.http, live.jobs)
            ] == [location]
    with sample_image.open("rb") as fh:
        see_other(post(live.http, f"{url}/parameters", {}, "multipart",
                       files=[("IMAGE", ("x.fits", fh))]), location)
    assert parameters_of(get_xml(live.http, f"{url}/parameters")) == {
        "image": (f"{location}/parameters/image", "true", "true")}
    see_other(post(live.http, f"{url}/executionduration",
                   {"EXECUTIONDURATION": "60"}, "urlencoded"), location)
    see_other(post(live.http, f"{url}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), location)
    see_other(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
              f"{BASE}/jobs")
    capabilities = get_xml(live.http, f"{live.url}/capabilities")
    assert sorted(a.text for a in capabilities.iter("accessURL")) == [
        f"{BASE}/availability", f"{BASE}/capabilities", f"{BASE}/jobs"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_create_a_pending_job(live: LiveService, xsd: Schemas,
                              encoding: str):
    r = post(live.http, live.jobs, {"IMAGE": IMAGE_URL, "RUNID": "night-42",
                                    "ZEROPOINT": "25.5"}, encoding)
    assert r.status_code == 303, r.text
    location = r.headers["Location"]
    assert re.fullmatch(rf"{re.escape(live.jobs)}/[A-Za-z0-9_-]+", location)
    root = fetch_valid(live, xsd, location)
    assert root.tag == f"{{{UWS}}}job"
    assert text_of(root, "jobId") == job_id_of(location)
    assert text_of(root, "phase") == "PENDING"
    assert text_of(root, "runId") == "night-42"
    assert get_text(live.http, f"{location}/runId") == "night-42"
    assert parameters_of(root) == {"image": (IMAGE_URL, "true", None),
                                   "zeropoint": ("25.5", None, None)}
    for name in ("startTime", "endTime"):
        element = uws(root, name)
        assert element is not None
        assert element.get(XSI_NIL) == "true"
    assert len(uws(root, "results")) == 0
    assert uws(root, "errorSummary") is None
    assert listed(live) == [job_id_of(location)]


def test_create_with_an_upload(live: LiveService, sample_image: Path,
                               xsd: Schemas):
    """Multipart: a file part and text parts in one body."""
    with sample_image.open("rb") as fh:
        r = post(live.http, live.jobs, {"RUNID": "upload", "PIXSCALE": "0.2"},
                 "multipart", files=[("IMAGE", ("my image.fits", fh,
                                                "application/fits"))])
    assert r.status_code == 303, r.text
    url = r.headers["Location"]
    root = fetch_valid(live, xsd, url)
    assert text_of(root, "phase") == "PENDING"
    assert parameters_of(root) == {
        "image": (f"{url}/parameters/image", "true", "true"),
        "pixscale": ("0.2", None, None)}
    r = get(live.http, f"{url}/parameters/image")
    assert r.status_code == 200
    assert media_type(r) == "application/fits"
    assert r.content == sample_image.read_bytes()
    assert int(r.headers["Content-Length"]) == sample_image.stat().st_size
    assert r.headers["Content-Disposition"] == (
        'inline; filename="my_image.fits"')
    folder = live.service.job_root / job_id_of(url)
    stored = [p.relative_to(folder).as_posix()
              for p in folder.rglob("*.fits")]
    assert stored == ["inputs/image/my_image.fits"]  # the client's, safe
    # Another upload replaces it, a URL too.
    with sample_image.open("rb") as fh:
        r = post(live.http, f"{url}/parameters", {}, "multipart",
                 files=[("IMAGE", ("second.fits", fh))])
    assert r.status_code == 303, r.text
    assert [p.relative_to(folder).as_posix()
            for p in folder.rglob("*.fits")] == ["inputs/image/second.fits"]
    r = post(live.http, f"{url}/parameters",
             {"IMAGE": "https://example.org/third.fits"}, "urlencoded")
    assert r.status_code == 303, r.text
    assert list(folder.rglob("*.fits")) == []


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_create_and_run(live: LiveService, sample_image: Path,
                        encoding: str):
    """PHASE=RUN at creation queues the job (a repeated RUN: 303, no-op)."""
    if encoding == "multipart":
        with sample_image.open("rb") as fh:
            r = post(live.http, live.jobs, {"PHASE": "RUN"}, encoding,
                     files=[("IMAGE", ("x.fits", fh))])
    else:
        # The worker fetches the image from another job of the service.
        source = upload(live, sample_image)
        r = post(live.http, live.jobs, {
            "IMAGE": f"{source}/parameters/image", "PHASE": "RUN"}, encoding)
    assert r.status_code == 303, r.text
    url = r.headers["Location"]
    assert get_text(live.http, f"{url}/phase") in {"QUEUED", "EXECUTING"}
    see_other(post(live.http, f"{url}/phase", {"PHASE": "RUN"}, encoding),
              url)
    assert get_text(live.http, f"{url}/phase") in {"QUEUED", "EXECUTING"}
    refused(post(live.http, f"{url}/parameters", {"ZEROPOINT": "25"},
                 encoding), 403, "PENDING")
    refused(post(live.http, f"{url}/executionduration",
                 {"EXECUTIONDURATION": "60"}, encoding), 403, "PENDING")
    # DELETE of a running job aborts it and forgets it.
    see_other(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
              live.jobs)
    refused(get(live.http, url), 404)
    assert not (live.service.job_root / job_id_of(url)).exists()


@pytest.mark.parametrize(("fields", "problem"), [
    ({"IMAGE": IMAGE_URL, "FOO": "1"}, "FOO"),
    ({"IMAGE": "ftp://example.org/x.fits"}, "IMAGE"),
    ({"IMAGE": IMAGE_URL, "ZEROPOINT": "bright"}, "ZEROPOINT"),
    ({"IMAGE": IMAGE_URL, "PHASE": "ABORT"}, "PHASE"),
    ({"RUNID": "x", "PHASE": "RUN"}, "IMAGE"),
    ({"IMAGE": IMAGE_URL, "RUNID": "r" * 65}, "RUNID"),
    ({"IMAGE": IMAGE_URL, "EXECUTIONDURATION": "soon"}, "EXECUTIONDURATION"),
    ({"IMAGE": IMAGE_URL, "DESTRUCTION": "never"}, "DESTRUCTION"),
])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_creation_checks_its_parameters(live: LiveService,
                                        fields: dict[str, str],
                                        problem: str, encoding: str):
    """400 naming the culprit; no job, no job folder."""
    refused(post(live.http, live.jobs, fields, encoding), 400, problem)
    assert listed(live) == []
    assert [p.name for p in live.service.job_root.iterdir()
            if not p.name.startswith(".")] == []


# -- parameter names ---------------------------------------------------------

def _alternate(name: str) -> str:
    return "".join(c.lower() if i % 2 else c.upper()
                   for i, c in enumerate(name))


SPELLINGS: dict[str, Callable[[str], str]] = {
    "lower": str.lower, "upper": str.upper, "title": str.title,
    "alternate": _alternate}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_parameter_names_are_case_insensitive(live: LiveService,
                                              spelling: str):
    """Names in any case on every endpoint; values keep theirs (DALI)."""
    spell = SPELLINGS[spelling]
    url = live.create(**{spell("image"): IMAGE_URL,
                         spell("runid"): "Mixed-Case"})
    root = get_xml(live.http, url)
    assert text_of(root, "runId") == "Mixed-Case"
    assert parameters_of(root) == {"image": (IMAGE_URL, "true", None)}
    assert get_text(live.http, f"{url}/parameters/{spell('image')}") == \
        IMAGE_URL
    see_other(post(live.http, f"{url}/executionduration",
                   {spell("executionduration"): "120"}, "multipart"), url)
    assert get_text(live.http, f"{url}/executionduration") == "120"
    later = iso_ms(datetime.now(UTC) + timedelta(days=1))
    see_other(post(live.http, f"{url}/destruction",
                   {spell("destruction"): later}, "multipart"), url)
    assert get_text(live.http, f"{url}/destruction") == later
    see_other(post(live.http, f"{url}/parameters", {spell("zeropoint"): "24"},
                   "urlencoded"), url)
    assert get_text(live.http, f"{url}/parameters/{spell('zeropoint')}") \
        == "24.0"
    assert listed(live, {spell("phase"): "PENDING", spell("last"): "1"}) \
        == [job_id_of(url)]
    assert get_text(live.http, f"{url}/phase?{spell('wait')}=0") == "PENDING"
    see_other(post(live.http, f"{url}/phase", {spell("phase"): "ABORT"},
                   "urlencoded"), url)
    assert get_text(live.http, f"{url}/phase") == "ABORTED"
    see_other(post(live.http, url, {spell("action"): "DELETE"}, "multipart"),
              live.jobs)
    assert listed(live) == []


def test_lower_case_names_at_creation_with_run(live: LiveService,
                                               sample_image: Path):
    with sample_image.open("rb") as fh:
        r = post(live.http, live.jobs, {"phase": "RUN", "runid": "lc"},
                 "multipart", files=[("image", ("x.fits", fh))])
    assert r.status_code == 303, r.text
    url = r.headers["Location"]
    assert get_text(live.http, f"{url}/phase") in {"QUEUED", "EXECUTING"}
    assert get_text(live.http, f"{url}/runId") == "lc"
    see_other(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
              live.jobs)


@pytest.mark.parametrize("fields", [
    [("IMAGE", IMAGE_URL), ("image", IMAGE_URL)],
    [("IMAGE", IMAGE_URL), ("RUNID", "a"), ("runid", "b")],
    [("IMAGE", IMAGE_URL), ("ZEROPOINT", "25"), ("ZeroPoint", "25")],
    [("IMAGE", IMAGE_URL), ("PHASE", "RUN"), ("phase", "RUN")],
    [("IMAGE", IMAGE_URL), ("EXECUTIONDURATION", "60"),
     ("ExecutionDuration", "60")],
], ids=["image", "runid", "zeropoint", "phase", "executionduration"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_duplicate_parameters_at_creation(live: LiveService,
                                          fields: list[tuple[str, str]],
                                          encoding: str):
    refused(post(live.http, live.jobs, fields, encoding), 400,
            "more than once")
    assert listed(live) == []


def test_refused_uploads_leave_nothing(live: LiveService,
                                      sample_image: Path):
    """Duplicate or bad uploads: 400, no job, no staged file left."""
    data = sample_image.read_bytes()
    refused(post(live.http, live.jobs, {}, "multipart", files=[
        ("IMAGE", ("a.fits", data)), ("image", ("b.fits", data))]), 400,
        "more than once")
    refused(post(live.http, live.jobs, {"IMAGE": IMAGE_URL}, "multipart",
                 files=[("image", ("b.fits", data))]), 400, "more than once")
    refused(post(live.http, live.jobs, {"ZEROPOINT": "bright"}, "multipart",
                 files=[("image", ("b.fits", data))]), 400, "ZEROPOINT")
    refused(post(live.http, live.jobs, {}, "multipart", files=[
        ("image", ("notes.txt", b"not a FITS file\n" * 300))]), 400, "IMAGE")
    url = live.create(RUNID="later")
    refused(post(live.http, f"{url}/parameters", {}, "multipart", files=[
        ("image", ("notes.txt", b"not a FITS file\n" * 300))]), 400, "IMAGE")
    assert listed(live) == [job_id_of(url)]
    assert "image" not in parameters_of(get_xml(live.http, url))
    staging = live.service.staging_root
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_duplicate_parameters_on_job_resources(live: LiveService,
                                               encoding: str):
    url = pending(live)
    later = iso_ms(datetime.now(UTC) + timedelta(days=1))
    for path, fields in [
            ("/phase", [("PHASE", "ABORT"), ("phase", "ABORT")]),
            ("/executionduration", [("EXECUTIONDURATION", "60"),
                                    ("executionduration", "70")]),
            ("/destruction", [("DESTRUCTION", later),
                              ("destruction", later)]),
            ("/parameters", [("ZEROPOINT", "25"), ("zeropoint", "26")]),
            ("", [("ACTION", "DELETE"), ("action", "DELETE")])]:
        refused(post(live.http, url + path, fields, encoding), 400,
                "more than once")
    assert get_text(live.http, f"{url}/phase") == "PENDING"
    assert get_text(live.http, f"{url}/executionduration") == "3600"
    assert "zeropoint" not in parameters_of(get_xml(live.http, url))


# -- the job list ------------------------------------------------------------

def test_empty_job_list(live: LiveService, xsd: Schemas):
    r = get(live.http, live.jobs)
    assert r.status_code == 200
    root = valid_uws(xsd, r.content)
    assert root.tag == f"{{{UWS}}}jobs"
    assert len(root) == 0
    assert list(parse_job_list(io.BytesIO(r.content), pedantic=True)) == []


def test_job_list_filters(live_db: LiveService, xsd: Schemas):
    """PHASE union, AFTER strictly after, LAST newest first, AND-ed."""
    live = live_db
    urls = {}
    for name in "abcz":
        urls[name] = pending(live, RUNID=name)
        time.sleep(0.02)  # distinct creation instants
    a, b, c, z = (job_id_of(urls[n]) for n in "abcz")
    see_other(post(live.http, f"{urls['b']}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), urls["b"])
    see_other(post(live.http, f"{urls['z']}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), urls["z"])
    # The service archives nothing itself: make z ARCHIVED in the store.
    assert live.service.store.transition(z, [Phase.ABORTED], Phase.ARCHIVED)
    created = {n: text_of(get_xml(live.http, urls[n]), "creationTime")
               for n in "abcz"}

    assert listed(live) == [c, b, a]  # ARCHIVED hidden, newest first
    assert listed(live, {"PHASE": "ARCHIVED"}) == [z]
    assert listed(live, [("PHASE", "PENDING"), ("PHASE", "ABORTED")]) == [
        c, b, a]
    assert listed(live, [("PHASE", "PENDING"), ("PHASE", "ARCHIVED")]) == [
        z, c, a]
    assert listed(live, {"PHASE": "PENDING"}) == [c, a]
    assert listed(live, {"PHASE": "EXECUTING"}) == []
    assert listed(live, {"LAST": "1"}) == [c]
    assert listed(live, {"LAST": "2"}) == [c, b]
    assert listed(live, {"LAST": "10"}) == [c, b, a]
    # AFTER: strictly after the published creationTime.
    assert listed(live, {"AFTER": created["a"]}) == [c, b]
    assert listed(live, {"AFTER": created["b"]}) == [c]
    assert listed(live, {"AFTER": created["c"]}) == []
    micro = created["a"][:-1] + "999Z"  # microseconds accepted
    assert listed(live, {"AFTER": micro}) == [c, b]
    before = iso_ms(instant(created["a"]) - timedelta(seconds=1))
    assert listed(live, {"AFTER": before}) == [c, b, a]
    offset = instant(created["a"]).astimezone(PLUS2).isoformat(
        timespec="milliseconds")  # ...+02:00
    assert listed(live, {"AFTER": offset}) == [c, b]
    # Filters are AND-ed.
    assert listed(live, {"PHASE": "PENDING", "LAST": "1"}) == [c]
    assert listed(live, {"PHASE": "PENDING", "AFTER": created["a"]}) == [c]
    assert listed(live, {"PHASE": "ABORTED", "AFTER": created["b"]}) == []
    assert listed(live, {"AFTER": before, "LAST": "2"}) == [c, b]
    assert listed(live, [("PHASE", "ARCHIVED"), ("PHASE", "ABORTED"),
                         ("LAST", "1")]) == [z]
    assert listed(live, {"phase": "PENDING", "last": "1"}) == [c]
    fetch_valid(live, xsd, live.jobs, {"PHASE": "ARCHIVED"})
    fetch_valid(live, xsd, urls["z"])  # an ARCHIVED job


def test_job_list_refs(live: LiveService, xsd: Schemas):
    with_run_id = pending(live, RUNID="night-42")
    time.sleep(0.02)
    without = pending(live)
    r = get(live.http, live.jobs)
    root = valid_uws(xsd, r.content)
    refs = list(root)
    assert [ref.get("id") for ref in refs] == [job_id_of(without),
                                               job_id_of(with_run_id)]
    assert [[local(e) for e in ref] for ref in refs] == [
        ["phase", "ownerId", "creationTime"],
        ["phase", "runId", "ownerId", "creationTime"]]
    for ref, url in zip(refs, [without, with_run_id], strict=True):
        assert ref.get(XLINK_HREF) == url
        job = get_xml(live.http, ref.get(XLINK_HREF))
        assert text_of(ref, "phase") == text_of(job, "phase") == "PENDING"
        assert text_of(ref, "creationTime") == text_of(job, "creationTime")
        assert uws(ref, "ownerId").get(XSI_NIL) == "true"
    assert text_of(refs[1], "runId") == "night-42"
    parsed = parse_job_list(io.BytesIO(r.content), pedantic=True)
    assert [(j.jobid, j.phase, j.runid) for j in parsed] == [
        (job_id_of(without), "PENDING", None),
        (job_id_of(with_run_id), "PENDING", "night-42")]


@pytest.mark.parametrize("query", [
    "PHASE=FINISHED", "PHASE=", "LAST=0", "LAST=-1", "LAST=abc", "LAST=1.5",
    "LAST=1&LAST=2", "AFTER=yesterday", "AFTER=2026-13-01T00:00:00Z",
    "AFTER=", "FOO=1",
])
def test_bad_job_list_filters(live: LiveService, query: str):
    pending(live)
    refused(get(live.http, f"{live.jobs}?{query}"), 400)


# -- sub-resources -----------------------------------------------------------

def test_sub_resources_of_a_pending_job(live: LiveService,
                                        sample_image: Path, xsd: Schemas):
    url = upload(live, sample_image, RUNID="sub", ZEROPOINT="25.5")
    job_id = job_id_of(url)
    root = fetch_valid(live, xsd, url)
    assert get_text(live.http, f"{url}/phase") == text_of(root, "phase") \
        == "PENDING"
    assert get_text(live.http, f"{url}/executionduration") == text_of(
        root, "executionDuration") == "3600"
    destruction = get_text(live.http, f"{url}/destruction")
    assert destruction == text_of(root, "destruction")
    created = get_text(live.http, f"{url}/creationTime")
    assert created == text_of(root, "creationTime")
    assert instant(destruction) - instant(created) == timedelta(days=7)
    assert get_text(live.http, f"{url}/runId") == text_of(root, "runId") \
        == "sub"
    assert get_text(live.http, f"{url}/owner") == ""  # anonymous
    assert uws(root, "ownerId").get(XSI_NIL) == "true"
    # The quote of a PENDING job: now + the expected run time (moves).
    quote = instant(get_text(live.http, f"{url}/quote"))
    assert abs(quote - instant(text_of(root, "quote"))) < timedelta(
        seconds=5)
    assert quote > instant(created)
    refused(get(live.http, f"{url}/error"), 404)
    results = fetch_valid(live, xsd, f"{url}/results")
    assert local(results) == "results"
    assert len(results) == 0
    params = fetch_valid(live, xsd, f"{url}/parameters")
    assert local(params) == "parameters"
    assert parameters_of(params) == parameters_of(root) == {
        "image": (f"{url}/parameters/image", "true", "true"),
        "zeropoint": ("25.5", None, None)}
    r = get(live.http, f"{url}/parameters/image")
    assert (r.status_code, media_type(r)) == (200, "application/fits")
    assert r.content == sample_image.read_bytes()
    assert get_text(live.http, f"{url}/parameters/zeropoint") == "25.5"
    assert get_text(live.http, f"{url}/parameters/ZEROPOINT") == "25.5"
    assert get_text(live.http, f"{url}/jobId") == job_id


def test_quote_is_empty_when_unknown(finished: Finished):
    http = finished.live.http
    for url in (finished.completed, finished.error):
        r = get(http, f"{url}/quote")
        assert (r.status_code, media_type(r), r.text) == (
            200, "text/plain", "")
        assert uws(get_xml(http, url), "quote") is None


def test_atomic_sub_resources_match_the_job(finished: Finished):
    http = finished.live.http
    for url in (finished.completed, finished.error):
        root = get_xml(http, url)
        assert get_text(http, f"{url}/phase") == text_of(root, "phase")
        assert get_text(http, f"{url}/executionduration") == text_of(
            root, "executionDuration")
        for name in ("destruction", "creationTime", "startTime", "endTime",
                     "runId"):
            assert get_text(http, f"{url}/{name}") == text_of(root, name)
        assert get_text(http, f"{url}/owner") == ""


UNKNOWN_JOB_PATHS = ["", "/phase", "/executionduration", "/destruction",
                     "/error", "/quote", "/results", "/results/summary",
                     "/parameters", "/parameters/image", "/owner", "/runId",
                     "/creationTime"]


@pytest.mark.parametrize("path", UNKNOWN_JOB_PATHS)
def test_unknown_job_is_404(live: LiveService, path: str):
    pending(live)
    refused(get(live.http, f"{live.jobs}/0123456789abcdef{path}"), 404)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_state_changes_of_an_unknown_job_are_404(live: LiveService,
                                                 encoding: str):
    url = f"{live.jobs}/0123456789abcdef"
    later = iso_ms(datetime.now(UTC) + timedelta(days=1))
    for path, fields in [("/phase", {"PHASE": "RUN"}),
                         ("/phase", {"PHASE": "ABORT"}),
                         ("/executionduration", {"EXECUTIONDURATION": "60"}),
                         ("/destruction", {"DESTRUCTION": later}),
                         ("/parameters", {"ZEROPOINT": "25"}),
                         ("", {"ACTION": "DELETE"})]:
        refused(post(live.http, url + path, fields, encoding), 404)
    refused(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
            404)


@pytest.mark.parametrize("path", ["/nosuch", "/results/nosuch",
                                  "/parameters/nosuch", "/error",
                                  "/phase/nosuch", "/results/summary"])
def test_unknown_sub_resource_is_404(live: LiveService, path: str):
    url = pending(live)
    refused(get(live.http, url + path), 404)


def test_unknown_result_of_a_completed_job_is_404(finished: Finished):
    http = finished.live.http
    refused(get(http, f"{finished.completed}/results/nosuch"), 404)
    refused(get(http, f"{finished.completed}/error"), 404)
    refused(get(http, f"{finished.completed}/parameters/flat"), 404)


# -- phases and the 303 rules ------------------------------------------------

@pytest.mark.parametrize("encoding", ENCODINGS)
def test_abort_a_pending_job(live: LiveService, xsd: Schemas,
                             encoding: str):
    url = pending(live)
    see_other(post(live.http, f"{url}/phase", {"PHASE": "ABORT"},
                   encoding), url)
    root = fetch_valid(live, xsd, url)
    assert text_of(root, "phase") == "ABORTED"
    # ABORT on ABORTED: a 303 no-op.
    see_other(post(live.http, f"{url}/phase", {"PHASE": "ABORT"},
                   encoding), url)
    assert get_text(live.http, f"{url}/phase") == "ABORTED"
    refused(post(live.http, f"{url}/phase", {"PHASE": "RUN"}, encoding),
            403)
    refused(post(live.http, f"{url}/parameters", {"ZEROPOINT": "25"},
                 encoding), 403)
    refused(post(live.http, f"{url}/executionduration",
                 {"EXECUTIONDURATION": "60"}, encoding), 403)
    later = iso_ms(datetime.now(UTC) + timedelta(days=2))
    see_other(post(live.http, f"{url}/destruction", {"DESTRUCTION": later},
                   encoding), url)
    assert get_text(live.http, f"{url}/destruction") == later
    assert get_text(live.http, f"{url}/phase") == "ABORTED"
    refused(get(live.http, f"{url}/error"), 404)  # aborted by the client


@pytest.mark.parametrize("value", ["SUSPEND", "", "RUN,ABORT", "COMPLETED"])
def test_bad_phase_requests(live: LiveService, value: str):
    url = pending(live)
    refused(post(live.http, f"{url}/phase", {"PHASE": value}, "urlencoded"),
            400, "PHASE")
    refused(post(live.http, f"{url}/phase", {"FOO": "RUN"}, "urlencoded"),
            400)
    refused(post(live.http, url, {"PHASE": "RUN"}, "urlencoded"), 400,
            "/phase")
    assert get_text(live.http, f"{url}/phase") == "PENDING"


def test_run_without_an_image(live: LiveService):
    url = live.create(RUNID="no image")
    refused(post(live.http, f"{url}/phase", {"PHASE": "RUN"}, "urlencoded"),
            400, "IMAGE")
    assert get_text(live.http, f"{url}/phase") == "PENDING"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_run_a_job_that_fails(live: LiveService, xsd: Schemas,
                              encoding: str):
    """RUN from /phase; an input URL answering 404: ERROR, not stuck."""
    url = live.create(IMAGE=f"{live.url}/no/such/image.fits")
    see_other(post(live.http, f"{url}/phase", {"PHASE": "RUN"}, encoding),
              url)
    assert wait_final(live, url) == "ERROR"
    root = fetch_valid(live, xsd, url)
    summary = uws(root, "errorSummary")
    assert summary is not None
    assert (summary.get("type"), summary.get("hasDetail")) == (
        "fatal", "true")
    message = text_of(summary, "message")
    assert "HTTP 404" in message, message
    detail = get_text(live.http, f"{url}/error")
    assert message in detail
    refused(post(live.http, f"{url}/phase", {"PHASE": "RUN"}, encoding),
            403)
    refused(post(live.http, f"{url}/phase", {"PHASE": "ABORT"}, encoding),
            403)


@pytest.mark.parametrize("which", ["completed", "error"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_illegal_requests_on_finished_jobs(finished: Finished, which: str,
                                           encoding: str):
    http = finished.live.http
    url = getattr(finished, which)
    phase = get_text(http, f"{url}/phase")
    for path, fields in [("/phase", {"PHASE": "RUN"}),
                         ("/phase", {"PHASE": "ABORT"}),
                         ("/parameters", {"ZEROPOINT": "25"}),
                         ("/executionduration", {"EXECUTIONDURATION": "60"})]:
        refused(post(http, url + path, fields, encoding), 403)
    assert get_text(http, f"{url}/phase") == phase
    assert "zeropoint" not in parameters_of(get_xml(http, url))


@pytest.mark.parametrize("how", ["DELETE", "urlencoded", "multipart"])
def test_delete(live: LiveService, sample_image: Path, how: str):
    url = upload(live, sample_image)
    folder = live.service.job_root / job_id_of(url)
    assert folder.is_dir()
    if how == "DELETE":
        r = live.http.delete(url, allow_redirects=False, timeout=TIMEOUT)
    else:
        r = post(live.http, url, {"ACTION": "DELETE"}, how)
    see_other(r, live.jobs)
    refused(get(live.http, url), 404)
    refused(get(live.http, f"{url}/phase"), 404)
    refused(get(live.http, f"{url}/parameters/image"), 404)
    assert not folder.exists()
    assert listed(live) == []
    refused(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
            404)


def test_post_to_a_job_accepts_only_action_delete(live: LiveService):
    url = pending(live)
    for fields in ({"ACTION": "ABORT"}, {"ZEROPOINT": "25"},
                   {"ACTION": "DELETE", "RUNID": "x"}):
        refused(post(live.http, url, fields, "urlencoded"), 400)
    assert get_text(live.http, f"{url}/phase") == "PENDING"


# -- parameters --------------------------------------------------------------

@pytest.mark.parametrize("encoding", ENCODINGS)
def test_post_parameters(live: LiveService, sample_image: Path,
                         xsd: Schemas, encoding: str):
    url = live.create(RUNID="params")
    files = []
    if encoding == "multipart":
        files = [("IMAGE", ("x.fits", sample_image.read_bytes()))]
        fields = {"ZEROPOINT": "25.5", "PIXSCALE": "0.25"}
        image = (f"{url}/parameters/image", "true", "true")
    else:
        fields = {"IMAGE": IMAGE_URL, "ZEROPOINT": "25.5", "PIXSCALE": "0.25"}
        image = (IMAGE_URL, "true", None)
    see_other(post(live.http, f"{url}/parameters", fields, encoding,
                   files=files), url)
    expected = {"image": image, "zeropoint": ("25.5", None, None),
                "pixscale": ("0.25", None, None)}
    assert parameters_of(fetch_valid(live, xsd, url)) == expected
    assert parameters_of(fetch_valid(live, xsd, f"{url}/parameters")) == \
        expected
    # A later POST changes a value and keeps the others.
    see_other(post(live.http, f"{url}/parameters", {"ZEROPOINT": "24"},
                   encoding), url)
    expected["zeropoint"] = ("24.0", None, None)
    assert parameters_of(get_xml(live.http, url)) == expected
    if encoding == "multipart":
        r = get(live.http, f"{url}/parameters/image")
        assert r.content == sample_image.read_bytes()
    else:
        assert get_text(live.http, f"{url}/parameters/image") == IMAGE_URL
    for bad in ({"ZEROPOINT": "bright"}, {"FOO": "1"},
                {"RUNID": "not a science parameter"}):
        refused(post(live.http, f"{url}/parameters", bad, encoding), 400)
    assert parameters_of(get_xml(live.http, url)) == expected


# -- execution duration and destruction --------------------------------------

@pytest.mark.parametrize("encoding", ENCODINGS)
def test_execution_duration(live: LiveService, encoding: str):
    url = pending(live)
    maximum = live.service.settings.execution_duration_max
    for asked, granted in [("120", 120), (str(maximum + 1), maximum),
                           ("99999999", maximum), ("0", maximum),
                           ("60", 60)]:
        see_other(post(live.http, f"{url}/executionduration",
                       {"EXECUTIONDURATION": asked}, encoding), url)
        assert get_text(live.http, f"{url}/executionduration") == str(
            granted)
        assert text_of(get_xml(live.http, url), "executionDuration") == str(
            granted)
    for bad in ["abc", "-5", "1.5", "12s"]:
        refused(post(live.http, f"{url}/executionduration",
                     {"EXECUTIONDURATION": bad}, encoding), 400,
                "EXECUTIONDURATION")
    refused(post(live.http, f"{url}/executionduration", {"FOO": "60"},
                 encoding), 400, "EXECUTIONDURATION")
    assert get_text(live.http, f"{url}/executionduration") == "60"
    url = pending(live, EXECUTIONDURATION=str(maximum * 2))
    assert get_text(live.http, f"{url}/executionduration") == str(maximum)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_destruction(live: LiveService, encoding: str):
    url = pending(live)
    created = instant(get_text(live.http, f"{url}/creationTime"))
    settings = live.service.settings

    def ask(value: str) -> str:
        see_other(post(live.http, f"{url}/destruction",
                       {"DESTRUCTION": value}, encoding), url)
        text = get_text(live.http, f"{url}/destruction")
        assert text == text_of(get_xml(live.http, url), "destruction")
        return text

    when = created + timedelta(days=2)
    assert ask(iso_ms(when)) == iso_ms(when)
    # pyvo's format: microseconds, Z.
    when = created + timedelta(days=3, microseconds=123456)
    assert ask(when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) == iso_ms(when)
    # An offset is converted to UTC; a naive instant is UTC.
    when = created + timedelta(days=4)
    assert ask(when.astimezone(PLUS2).isoformat()) == iso_ms(when)
    assert ask(when.strftime("%Y-%m-%dT%H:%M:%S")) == iso_ms(
        when.replace(microsecond=0))
    # Beyond the maximum: clamped.
    latest = created + timedelta(seconds=settings.destruction_max)
    assert ask(iso_ms(created + timedelta(days=365))) == iso_ms(latest)
    for bad in ["tomorrow", "2026-13-01T00:00:00Z", "1700000000"]:
        refused(post(live.http, f"{url}/destruction", {"DESTRUCTION": bad},
                     encoding), 400, "DESTRUCTION")
    assert get_text(live.http, f"{url}/destruction") == iso_ms(latest)
    # At creation too.
    url = pending(live, DESTRUCTION=iso_ms(created + timedelta(days=365)))
    created = instant(get_text(live.http, f"{url}/creationTime"))
    assert get_text(live.http, f"{url}/destruction") == iso_ms(
        created + timedelta(seconds=settings.destruction_max))


def test_a_finished_jobs_document_follows_its_changes(live: LiveService):
    """A finished job's document is kept rendered, and follows changes.

    The document of an ended job is served again as rendered
    (``uws.views``), until its destruction time changes or it is
    deleted: then the new time, or 404.
    """
    url = pending(live)
    see_other(post(live.http, f"{url}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), url)
    assert wait_final(live, url) == "ABORTED"
    first = get(live.http, url).content
    assert get(live.http, url).content == first
    created = instant(get_text(live.http, f"{url}/creationTime"))
    for days in (2, 3):
        when = iso_ms(created + timedelta(days=days))
        see_other(post(live.http, f"{url}/destruction",
                       {"DESTRUCTION": when}, "urlencoded"), url)
        assert text_of(get_xml(live.http, url), "destruction") == when
        assert text_of(get_xml(live.http, url), "destruction") == when
    see_other(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
              live.jobs)
    refused(get(live.http, url), 404)


# -- WAIT --------------------------------------------------------------------

def timed(live: LiveService, url: str,
          params: Fields) -> tuple[float, etree._Element]:
    start = time.monotonic()
    root = get_xml(live.http, url, params)
    return time.monotonic() - start, root


def test_wait_blocks_on_a_pending_job(live: LiveService):
    url = pending(live)
    elapsed, root = timed(live, url, {"WAIT": "2"})
    assert 1.8 <= elapsed < 3.5, elapsed
    assert text_of(root, "phase") == "PENDING"
    elapsed, _ = timed(live, url, {"WAIT": "2", "PHASE": "PENDING"})
    assert 1.8 <= elapsed < 3.5, elapsed
    elapsed, _ = timed(live, url, {"WAIT": "0"})
    assert elapsed < 1


@pytest.mark.parametrize("phase", ["QUEUED", "EXECUTING", "COMPLETED"])
def test_wait_with_another_phase_returns_at_once(live: LiveService,
                                                 phase: str):
    url = pending(live)
    elapsed, root = timed(live, url, {"WAIT": "30", "PHASE": phase})
    assert elapsed < 1, elapsed
    assert text_of(root, "phase") == "PENDING"


def test_wait_on_finished_jobs_returns_at_once(finished: Finished):
    for url in (finished.completed, finished.error):
        for params in ({"WAIT": "30"}, {"WAIT": "-1"},
                       {"WAIT": "30", "PHASE": "COMPLETED"}):
            elapsed, root = timed(finished.live, url, params)
            assert elapsed < 1, (url, params, elapsed)
            assert text_of(root, "phase") in {"COMPLETED", "ERROR"}


def test_wait_is_capped(start_service: Callable[..., LiveService]):
    live = start_service(wait_max=2)
    url = pending(live)
    for wait in ("-1", "30"):
        elapsed, _ = timed(live, url, {"WAIT": wait})
        assert 1.8 <= elapsed < 3.5, (wait, elapsed)


@pytest.mark.parametrize(("change", "outcome"), [
    ("RUN", {"QUEUED", "EXECUTING", "ERROR"}),  # PENDING -> QUEUED
    ("ABORT", {"ABORTED"}),
    ("DELETE", {404}),
])
def test_wait_returns_when_the_phase_changes(live: LiveService, change: str,
                                             outcome: set[Any]):
    """A client blocked on a PENDING job hears of the change at once."""
    url = live.create(IMAGE=f"{live.url}/no/such/image.fits")
    answer: dict[str, Any] = {}

    def waiter() -> None:
        with requests.Session() as http:
            start = time.monotonic()
            r = http.get(url, params={"WAIT": "20"}, timeout=TIMEOUT)
            answer.update(start=start, end=time.monotonic(),
                          outcome=r.status_code if r.status_code != 200
                          else phase_of(r.content))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(1.0)
    changed = time.monotonic()
    if change == "DELETE":
        r = live.http.delete(url, allow_redirects=False, timeout=TIMEOUT)
        see_other(r, live.jobs)
    else:
        see_other(post(live.http, f"{url}/phase", {"PHASE": change},
                       "urlencoded"), url)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert answer["end"] - answer["start"] >= 0.9  # it did block
    assert answer["end"] - changed < 1.5, answer["end"] - changed
    assert answer["outcome"] in outcome
    if change == "RUN":
        wait_final(live, url)


def test_wait_wakes_the_waiters_of_the_changed_job_only(live: LiveService):
    """Two clients on each of two jobs: a change ends its job's WAITs only.

    The waits are kept on per job (a condition each, benchmarks/README.md,
    "Fair service under load"): the second job's clients stay blocked
    until their own job changes, then hear of it at once.
    """
    first, second = pending(live), pending(live)
    ended: dict[str, list[float]] = {first: [], second: []}
    lock = threading.Lock()

    def waiter(url: str) -> None:
        with requests.Session() as http:
            r = http.get(url, params={"WAIT": "20"}, timeout=TIMEOUT)
        assert r.status_code == 200
        with lock:
            ended[url].append(time.monotonic())

    threads = [threading.Thread(target=waiter, args=(url,))
               for url in (first, second) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    changed = time.monotonic()
    see_other(post(live.http, f"{first}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), first)
    time.sleep(2.0)
    with lock:
        assert len(ended[first]) == 2, ended
        assert max(ended[first]) - changed < 1.5
        assert ended[second] == []  # still blocked
    changed = time.monotonic()
    see_other(post(live.http, f"{second}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), second)
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(ended[second]) == 2
    assert max(ended[second]) - changed < 1.5


@pytest.mark.parametrize("query", ["WAIT=abc", "WAIT=1.5", "WAIT=-2",
                                   "WAIT=", "WAIT=5&PHASE=NOPE",
                                   "WAIT=1&WAIT=2"])
def test_bad_wait(live: LiveService, query: str):
    url = pending(live)
    start = time.monotonic()
    refused(get(live.http, f"{url}?{query}"), 400)
    assert time.monotonic() - start < 1


def test_wait_elsewhere_is_ignored(live: LiveService):
    url = pending(live)
    start = time.monotonic()
    assert get_text(live.http, f"{url}/phase?WAIT=5") == "PENDING"
    assert time.monotonic() - start < 1


# -- results and jobInfo -----------------------------------------------------

def test_results_of_a_completed_job(finished: Finished, xsd: Schemas):
    http = finished.live.http
    url = finished.completed
    results = results_of(get_xml(http, url))
    ids = [r[0] for r in results]
    assert ids[0] == "summary"
    assert len(ids) == len(set(ids))
    assert "log" in ids
    assert results_of(fetch_valid(finished.live, xsd, f"{url}/results")) \
        == results
    for result_id, href, size, mime in results:
        assert href == f"{url}/results/{result_id}"
        r = get(http, href)
        assert r.status_code == 200, (href, r.text)
        assert media_type(r) == mime, result_id
        assert int(r.headers["Content-Length"]) == int(size) == len(
            r.content), result_id
    summary = get(http, f"{url}/results/summary")
    assert b"<VOTABLE" in summary.content
    log = get_text(http, f"{url}/results/log")
    assert job_id_of(url) in log


def test_range_request_on_the_archive(finished: Finished):
    http = finished.live.http
    href = f"{finished.completed}/results/archive"
    full = get(http, href)
    assert full.status_code == 200
    assert full.headers["Accept-Ranges"] == "bytes"
    size = len(full.content)
    assert size > 200
    for first, last in [(0, 99), (100, 199), (size - 10, size - 1)]:
        r = http.get(href, headers={"Range": f"bytes={first}-{last}"},
                     timeout=TIMEOUT)
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(r.headers["Content-Length"]) == last - first + 1
        assert r.content == full.content[first:last + 1]


def test_job_info_of_a_completed_job(finished: Finished):
    root = get_xml(finished.live.http, finished.completed)
    info = uws(root, "jobInfo")
    assert info is not None
    processing = info.find(f"{{{QF}}}processing")
    assert processing is not None
    assert processing.findtext(f"{{{QF}}}host")
    assert int(processing.findtext(f"{{{QF}}}maxRssKb")) > 0
    steps = processing.findall(f"{{{QF}}}steps/{{{QF}}}step")
    assert steps
    states = {step.get("name"): step.get("state") for step in steps}
    assert set(states.values()) <= {"done", "skipped"}, states
    assert list(states.values()).count("done") >= len(states) - 1
    for step in steps:
        if step.get("state") == "done":
            assert ISO_Z.fullmatch(step.get("start")), step.attrib
            assert ISO_Z.fullmatch(step.get("end")), step.attrib


def test_error_job(finished: Finished, xsd: Schemas):
    http = finished.live.http
    url = finished.error
    root = fetch_valid(finished.live, xsd, url)
    assert text_of(root, "phase") == "ERROR"
    summary = uws(root, "errorSummary")
    assert summary is not None
    assert (summary.get("type"), summary.get("hasDetail")) == (
        "fatal", "true")
    message = text_of(summary, "message")
    assert "star" in message
    r = get(http, f"{url}/error")
    assert (r.status_code, media_type(r)) == (200, "text/plain")
    assert message in r.text
    assert [r[0] for r in results_of(root)] == ["log"]
    info = uws(root, "jobInfo")
    assert info is not None
    assert "failed" in [step.get("state") for step in info.iter(
        f"{{{QF}}}step")]


# -- documents: lxml, STILTS, pyvo -------------------------------------------

def test_documents_of_every_phase_reached_validate(finished: Finished,
                                                   xsd: Schemas):
    for phase, document in finished.seen.items():
        root = valid_uws(xsd, document)
        assert text_of(root, "phase") == phase
        parsed = parse_job(io.BytesIO(document), pedantic=True)
        assert parsed.phase == phase
    queued = etree.fromstring(finished.seen["QUEUED"])
    assert ISO_Z.fullmatch(text_of(queued, "quote"))
    executing = etree.fromstring(finished.seen["EXECUTING"])
    assert ISO_Z.fullmatch(text_of(executing, "startTime"))
    live = finished.live
    for url in (finished.completed, finished.error):
        fetch_valid(live, xsd, f"{url}/results")
        fetch_valid(live, xsd, f"{url}/parameters")
    fetch_valid(live, xsd, live.jobs)
    fetch_valid(live, xsd, live.jobs, {"PHASE": "COMPLETED", "LAST": "5"})


def test_vosi_documents(live: LiveService, xsd: Schemas):
    r = get(live.http, f"{live.url}/availability")
    assert (r.status_code, media_type(r)) == (200, "text/xml")
    root = etree.fromstring(r.content)
    xsd.availability.assertValid(root)
    ns = f"{{{VOSI_AVAILABILITY}}}"
    assert root.findtext(f"{ns}available") == "true"
    assert ISO_Z.fullmatch(root.findtext(f"{ns}upSince"))
    r = get(live.http, f"{live.url}/capabilities")
    assert (r.status_code, media_type(r)) == (200, "text/xml")
    root = etree.fromstring(r.content)
    xsd.capabilities.assertValid(root)
    assert {c.get("standardID"): c.find("interface/accessURL").text
            for c in root} == {
        "ivo://ivoa.net/std/VOSI#capabilities": f"{live.url}/capabilities",
        "ivo://ivoa.net/std/VOSI#availability": f"{live.url}/availability",
        "ivo://ivoa.net/std/UWS#rest-1.1": live.jobs}


@pytest.fixture(scope="module")
def stilts_urls(finished: Finished) -> dict[str, str]:
    """Live URLs of every kind of document (two more jobs added)."""
    live = finished.live
    pending_url = pending(live, RUNID="stilts")
    aborted = pending(live)
    see_other(post(live.http, f"{aborted}/phase", {"PHASE": "ABORT"},
                   "urlencoded"), aborted)
    return {
        "job-pending": pending_url,
        "job-aborted": aborted,
        "job-completed": finished.completed,
        "job-error": finished.error,
        "job-list": live.jobs,
        "job-list-filtered": f"{live.jobs}?PHASE=COMPLETED&PHASE=ERROR"
                             "&LAST=5",
        "results": f"{finished.completed}/results",
        "results-error": f"{finished.error}/results",
        "parameters": f"{pending_url}/parameters",
        "availability": f"{live.url}/availability",
        "capabilities": f"{live.url}/capabilities",
    }


STILTS_CASES = ["job-pending", "job-aborted", "job-completed", "job-error",
                "job-list", "job-list-filtered", "results", "results-error",
                "parameters", "availability", "capabilities"]


@pytest.mark.reference
@pytest.mark.parametrize("case", STILTS_CASES)
def test_stilts_validates_live_documents(stilts_urls: dict[str, str],
                                         case: str):
    stilts = require_tool("stilts")
    run = subprocess.run(
        [stilts, "xsdvalidate", f"doc={stilts_urls[case]}",
         "uselocals=true"],
        capture_output=True, text=True, timeout=120, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_pyvo_reads_finished_jobs(finished: Finished):
    live = finished.live
    completed = pyvo_job(live, finished.completed)
    assert (completed.version, completed.jobid, completed.phase,
            completed.runid) == ("1.1", job_id_of(finished.completed),
                                 "COMPLETED", "ok")
    assert completed.errorsummary is None
    assert completed.results[0].id_ == "summary"
    assert completed.results[0].href == f"{finished.completed}/results/summary"
    error = pyvo_job(live, finished.error)
    assert error.phase == "ERROR"
    assert "star" in error.errorsummary.message.content
    assert [r.id_ for r in error.results] == ["log"]
    r = get(live.http, live.jobs, {"PHASE": "COMPLETED", "LAST": "5"})
    jobs = parse_job_list(io.BytesIO(r.content), pedantic=True)
    assert [(j.jobid, j.phase) for j in jobs] == [
        (job_id_of(finished.completed), "COMPLETED")]


def test_pyvo_raise_if_error(finished: Finished):
    root = get_xml(finished.live.http, finished.error)
    message = root.findtext(f"{{{UWS}}}errorSummary/{{{UWS}}}message")
    assert message
    job = AsyncTAPJob(finished.error)
    assert job.phase == "ERROR"
    with pytest.raises(DALQueryError, match=re.escape(message)):
        job.raise_if_error()
    job = AsyncTAPJob(finished.completed)
    assert job.phase == "COMPLETED"
    job.raise_if_error()


def test_pyvo_end_to_end(live: LiveService, sample_image: Path):
    url = upload(live, sample_image, RUNID="pyvo")
    job = AsyncTAPJob(url)
    assert job.job_id == job_id_of(url)
    assert job.phase == "PENDING"
    job.run()
    job.wait(timeout=120)
    assert job.phase == "COMPLETED"
    job.raise_if_error()
    uris = job.result_uris
    assert uris[0] == f"{url}/results/summary"
    assert f"{url}/results/log" in uris
    assert job.results[0].id_ == "summary"
    assert b"<VOTABLE" in get(live.http, uris[0]).content
    job.delete()
    refused(get(live.http, url), 404)
    assert not (live.service.job_root / job_id_of(url)).exists()


# -- the core cycle on each database -----------------------------------------

def test_core_cycle(live_db: LiveService, sample_image: Path, xsd: Schemas):
    """Create, list, run, complete, delete: over SQLite and PostgreSQL."""
    live = live_db
    assert listed(live) == []
    url = upload(live, sample_image, RUNID="core")
    job_id = job_id_of(url)
    assert text_of(fetch_valid(live, xsd, url), "phase") == "PENDING"
    assert listed(live) == [job_id]
    see_other(post(live.http, f"{url}/phase", {"PHASE": "RUN"},
                   "urlencoded"), url)
    assert get_text(live.http, f"{url}/phase") in {"QUEUED", "EXECUTING"}
    assert listed(live, [("PHASE", "QUEUED"), ("PHASE", "EXECUTING")]) == [
        job_id]
    assert wait_final(live, url) == "COMPLETED"
    root = fetch_valid(live, xsd, url)
    assert results_of(root)[0][:2] == ("summary", f"{url}/results/summary")
    assert listed(live, {"PHASE": "COMPLETED", "LAST": "1"}) == [job_id]
    assert listed(live, {"AFTER": text_of(root, "creationTime")}) == []
    fetch_valid(live, xsd, live.jobs)
    second = pending(live)
    see_other(post(live.http, second, {"ACTION": "DELETE"}, "multipart"),
              live.jobs)
    see_other(live.http.delete(url, allow_redirects=False, timeout=TIMEOUT),
              live.jobs)
    refused(get(live.http, url), 404)
    refused(get(live.http, second), 404)
    assert listed(live) == []
    assert not (live.service.job_root / job_id).exists()
