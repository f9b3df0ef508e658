"""The UWS and VOSI documents of `uws.xml`, checked three ways.

Every document is validated against the IVOA schemas of
``../shared/schemas`` with lxml, and (marked ``reference``) with
``stilts xsdvalidate``; jobs and job lists are read back with pyvo, the
client we must satisfy, in pedantic mode and with warnings as errors.
Then what the XSD does not check (uws.md §8): ``Z`` on every instant,
``version="1.1"``, unique result ids, element order, ``xsi:nil`` owner,
omitted ``runId``.

All instants are in 2026: astropy, under pyvo, warns "dubious year" for
years past the horizon of its leap-second table (2029 with pyerfa
2.0.1.5), and that warning would be an error here.
"""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree
from lxml.builder import ElementMaker
from pyvo.io.uws import parse_job, parse_job_list
from testkit import require_tool

from uws.model import (
    ErrorSummary,
    Job,
    JobInfo,
    JobRef,
    Parameter,
    Result,
    Step,
)
from uws.phases import Phase
from uws.xml import (
    QF_NS,
    UWS_NS,
    VOSI_AVAILABILITY_NS,
    VOSI_CAPABILITIES_NS,
    VS_NS,
    XLINK_NS,
    XSI_NS,
    availability_document,
    capabilities_document,
    iso,
    job_document,
    job_list_document,
    parameters_document,
    results_document,
)

#: ``../shared/schemas`` beside the project root.
SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"

BASE = "https://example.org/qfits"
JOBS_URL = f"{BASE}/jobs"
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

NIL = f"{{{XSI_NS}}}nil"
HREF = f"{{{XLINK_NS}}}href"
#: Local names of the UWS elements holding an instant.
INSTANTS = {"quote", "creationTime", "startTime", "endTime", "destruction",
            "upSince"}
#: The ``JobSummary`` sequence of UWS.xsd.
JOB_SUMMARY = ["jobId", "runId", "ownerId", "phase", "quote",
               "creationTime", "startTime", "endTime", "executionDuration",
               "destruction", "parameters", "results", "errorSummary",
               "jobInfo"]


def _job(job_id: str, phase: Phase, **changes: object) -> Job:
    base = Job(
        job_id=job_id, phase=phase, owner=None, run_id=None,
        creation_time=T0, start_time=None, end_time=None,
        execution_duration=600, destruction=T0 + timedelta(days=7),
        parameters=(Parameter("image", "https://example.org/x.fits",
                              by_reference=True),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


STARTED = T0 + timedelta(seconds=2)
ENDED = T0 + timedelta(seconds=9, milliseconds=500)
RESULTS = (
    Result("result", "results/result.xml", "application/x-votable+xml",
           20480, "main catalogue"),
    Result("report", "results/report.html", "text/html", 5120),
    Result("psf", "results/psf.png", "image/png", 70000),
)
INFO = JobInfo(
    steps=(
        Step("read", "done", "2026-01-02T03:04:07.000Z",
             "2026-01-02T03:04:08.000Z"),
        Step("detect", "done", "2026-01-02T03:04:08.000Z",
             "2026-01-02T03:04:09.000Z", "812 sources"),
        Step("psf", "skipped", detail="too few stars"),
    ),
    host="node07", queue="batch", backend_id="1234.pbs01",
    max_rss_kb=812_344, wall_s=7.25, cpu_s=6.5,
)

#: One job per case of uws.md §8 (phases, owners, optional elements).
JOBS = {
    "pending": _job("p1", Phase.PENDING),
    "queued": _job("q1", Phase.QUEUED, owner="alice", run_id="night-42",
                   quote=T0 + timedelta(minutes=5),
                   parameters=(Parameter("image", "param:image",
                                         by_reference=True, is_post=True),
                               Parameter("mode", "fast"))),
    "executing": _job("x1", Phase.EXECUTING, owner="CN=Bob, O=Obs",
                      start_time=STARTED, quote=T0 + timedelta(minutes=1),
                      info=JobInfo(host="node07", backend_id="1235.pbs01")),
    "completed": _job("c1", Phase.COMPLETED, owner="alice",
                      run_id="night-42", start_time=STARTED, end_time=ENDED,
                      results=RESULTS, info=INFO),
    "error": _job("e1", Phase.ERROR, run_id="t1", start_time=STARTED,
                  end_time=ENDED,
                  error=ErrorSummary("fatal", "Not a FITS file",
                                     has_detail=True)),
    "aborted": _job("a1", Phase.ABORTED, owner="alice", start_time=STARTED,
                    end_time=ENDED, results=RESULTS[:1],
                    error=ErrorSummary("transient",
                                       "execution duration exceeded")),
    "archived": _job("z1", Phase.ARCHIVED, execution_duration=0,
                     parameters=(), start_time=STARTED, end_time=ENDED),
}
REFS = [
    JobRef("c1", Phase.COMPLETED, "night-42", "alice",
           T0 + timedelta(hours=1)),
    JobRef("p1", Phase.PENDING, None, None, T0),
    JobRef("q1", Phase.QUEUED, "", "bob", T0 - timedelta(days=1)),
]


def job_url(job: Job) -> str:
    return f"{JOBS_URL}/{job.job_id}"


def parse(document: bytes) -> etree._Element:
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    return etree.fromstring(document)


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


def children(element: etree._Element) -> list[str]:
    return [local(child) for child in element]


def uws(element: etree._Element, name: str) -> etree._Element | None:
    return element.find(f"{{{UWS_NS}}}{name}")


def child(element: etree._Element, name: str) -> etree._Element:
    found = uws(element, name)
    assert found is not None, name
    return found


# -- schemas ---------------------------------------------------------------

def _schema_file(name: str) -> Path:
    path = SCHEMAS / name
    if not path.exists():
        pytest.skip(f"IVOA schemas not available: {path} is absent (the "
                    "shared schemas folder sits beside the project)")
    return path


@pytest.fixture(scope="module")
def uws_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(_schema_file("UWS.xsd")))


@pytest.fixture(scope="module")
def availability_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(_schema_file("VOSIAvailability.xsd")))


@pytest.fixture(scope="module")
def capabilities_schema(
        tmp_path_factory: pytest.TempPathFactory) -> etree.XMLSchema:
    """Validate ``vosi:capabilities`` *and* ``xsi:type="vs:ParamHTTP"``."""
    xs = ElementMaker(namespace="http://www.w3.org/2001/XMLSchema",
                      nsmap={"xs": "http://www.w3.org/2001/XMLSchema"})
    wrapper = xs.schema(
        xs("import", namespace=VOSI_CAPABILITIES_NS, schemaLocation=(
            _schema_file("VOSICapabilities.xsd").as_uri())),
        xs("import", namespace=VS_NS, schemaLocation=(
            _schema_file("VODataService.xsd").as_uri())),
    )
    path = tmp_path_factory.mktemp("schemas") / "capabilities-wrapper.xsd"
    etree.ElementTree(wrapper).write(path)
    return etree.XMLSchema(etree.parse(path))


@pytest.mark.parametrize("case", JOBS)
def test_job_validates(uws_schema: etree.XMLSchema, case: str) -> None:
    job = JOBS[case]
    uws_schema.assertValid(parse(job_document(job, job_url(job))))


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_validates(uws_schema: etree.XMLSchema,
                               phase: Phase) -> None:
    job = _job("j", phase)
    root = parse(job_document(job, job_url(job)))
    uws_schema.assertValid(root)
    assert child(root, "phase").text == phase.value


@pytest.mark.parametrize("refs", [REFS, []], ids=["three", "empty"])
def test_job_list_validates(uws_schema: etree.XMLSchema,
                            refs: list[JobRef]) -> None:
    uws_schema.assertValid(parse(job_list_document(refs, JOBS_URL)))


@pytest.mark.parametrize("case", JOBS)
def test_results_and_parameters_validate(uws_schema: etree.XMLSchema,
                                         case: str) -> None:
    job = JOBS[case]
    results = parse(results_document(job, job_url(job)))
    uws_schema.assertValid(results)
    assert local(results) == "results"
    assert len(results) == len(job.results)
    parameters = parse(parameters_document(job, job_url(job)))
    uws_schema.assertValid(parameters)
    assert local(parameters) == "parameters"
    assert [p.get("id") for p in parameters] == [
        p.name for p in job.parameters]


def test_schema_rejects_a_misordered_job(
        uws_schema: etree.XMLSchema) -> None:
    """The validation above has teeth: quote after creationTime fails."""
    job = JOBS["queued"]
    root = parse(job_document(job, job_url(job)))
    child(root, "creationTime").addnext(child(root, "quote"))
    assert not uws_schema.validate(root)


@pytest.mark.parametrize(("available", "notes", "up_since"), [
    (True, ["all good", "2 of 4 batch nodes up"], T0),
    (False, [], None),
    (False, ["database down\x00"], None),
])
def test_availability_validates(availability_schema: etree.XMLSchema,
                                available: bool, notes: list[str],
                                up_since: datetime | None) -> None:
    root = parse(availability_document(available, notes, up_since))
    availability_schema.assertValid(root)
    ns = f"{{{VOSI_AVAILABILITY_NS}}}"
    assert root.tag == f"{ns}availability"
    assert root.findtext(f"{ns}available") == str(available).lower()
    assert len(root.findall(f"{ns}note")) == len(notes)
    since = root.findtext(f"{ns}upSince")
    assert since == (None if up_since is None else iso(up_since))


def test_capabilities_validate(capabilities_schema: etree.XMLSchema) -> None:
    root = parse(capabilities_document(f"{BASE}/"))
    capabilities_schema.assertValid(root)
    assert root.tag == f"{{{VOSI_CAPABILITIES_NS}}}capabilities"
    found = {}
    for capability in root:
        assert capability.tag == "capability"  # unqualified (uws.md §12)
        (interface,) = capability
        assert interface.tag == "interface"
        prefix, name = interface.get(f"{{{XSI_NS}}}type").split(":")
        assert (interface.nsmap[prefix], name) == (VS_NS, "ParamHTTP")
        (access,) = interface
        assert (access.tag, access.get("use")) == ("accessURL", "full")
        found[capability.get("standardID")] = access.text
    assert found == {
        "ivo://ivoa.net/std/VOSI#capabilities": f"{BASE}/capabilities",
        "ivo://ivoa.net/std/VOSI#availability": f"{BASE}/availability",
        "ivo://ivoa.net/std/UWS#rest-1.1": f"{BASE}/jobs",
    }


def test_capabilities_schema_checks_the_interface_type(
        capabilities_schema: etree.XMLSchema) -> None:
    root = parse(capabilities_document(BASE))
    root[0][0].set(f"{{{XSI_NS}}}type", "vs:NoSuchInterface")
    assert not capabilities_schema.validate(root)


# -- STILTS, a second validator ---------------------------------------------

STILTS_CASES: dict[str, Callable[[], bytes]] = {
    "job-completed": lambda: job_document(JOBS["completed"],
                                          job_url(JOBS["completed"])),
    "job-error": lambda: job_document(JOBS["error"], job_url(JOBS["error"])),
    "job-list": lambda: job_list_document(REFS, JOBS_URL),
    "availability": lambda: availability_document(
        available=True, notes=["fine"], up_since=T0),
    "capabilities": lambda: capabilities_document(BASE),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", STILTS_CASES)
def test_stilts_xsdvalidate(tmp_path: Path, case: str) -> None:
    stilts = require_tool("stilts")
    path = tmp_path / f"{case}.xml"
    path.write_bytes(STILTS_CASES[case]())
    run = subprocess.run(
        [stilts, "xsdvalidate", f"doc={path}", "uselocals=true"],
        capture_output=True, text=True, timeout=120, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


# -- pyvo, the client ---------------------------------------------------------

@pytest.mark.parametrize("case", JOBS)
def test_pyvo_reads_the_job(case: str) -> None:
    job = JOBS[case]
    parsed = parse_job(io.BytesIO(job_document(job, job_url(job))),
                       pedantic=True)
    assert parsed.version == "1.1"
    assert parsed.jobid == job.job_id
    assert parsed.runid == job.run_id
    assert parsed.ownerid == job.owner
    assert parsed.phase == job.phase.value
    assert parsed.creationtime.isot == iso(job.creation_time)[:-1]
    assert (parsed.starttime is None) == (job.start_time is None)
    assert (parsed.quote is None) == (job.quote is None)
    assert parsed.executionduration.to_value("s") == job.execution_duration
    assert [(r.id_, r.href, r.size, r.mimetype) for r in parsed.results] == [
        (r.id, f"{job_url(job)}/results/{r.id}", r.size, r.mime)
        for r in job.results]
    assert [(p.id_, p.content, bool(p.byreference))
            for p in parsed.parameters] == [
        (p.name, p.value, p.by_reference) for p in job.parameters]
    if job.error is None:
        assert parsed.errorsummary is None
    else:
        assert parsed.errorsummary.message.content == job.error.message
        assert parsed.errorsummary.type_ == job.error.type
        assert parsed.errorsummary.has_detail is job.error.has_detail
    assert (parsed.jobinfo is None) == (job.info == JobInfo())


def test_pyvo_reads_job_info() -> None:
    """pyvo keeps jobInfo by local name; repeated tags collapse to one."""
    job = JOBS["completed"]
    parsed = parse_job(io.BytesIO(job_document(job, job_url(job))),
                       pedantic=True)
    processing = parsed.jobinfo["processing"]
    assert processing["host"].text == "node07"
    assert processing["backendId"].text == "1234.pbs01"
    assert processing["maxRssKb"].value == 812_344
    assert processing["wallSeconds"].value == 7.25
    assert "steps" in processing


def test_pyvo_reads_the_job_list() -> None:
    parsed = parse_job_list(io.BytesIO(job_list_document(REFS, JOBS_URL)),
                            pedantic=True)
    assert [(j.jobid, j.phase, j.runid, j.ownerid, j.creationtime.isot)
            for j in parsed] == [
        (r.job_id, r.phase.value, r.run_id or None, r.owner,
         iso(r.creation_time)[:-1]) for r in REFS]


# -- what the XSD does not check (uws.md §8) --------------------------------

def _all_documents() -> list[bytes]:
    documents = [job_document(job, job_url(job)) for job in JOBS.values()]
    documents += [results_document(job, job_url(job))
                  for job in JOBS.values()]
    documents += [job_list_document(REFS, JOBS_URL),
                  availability_document(available=True, notes=[],
                                        up_since=T0 + timedelta(hours=5))]
    return documents


@pytest.mark.parametrize("document", _all_documents())
def test_every_instant_is_utc_with_z(document: bytes) -> None:
    for element in parse(document).iter():
        if local(element) in INSTANTS and element.get(NIL) != "true":
            assert ISO_Z.fullmatch(element.text or ""), element.text


def test_version_on_job_and_job_list() -> None:
    job = JOBS["pending"]
    assert parse(job_document(job, job_url(job))).get("version") == "1.1"
    assert parse(job_list_document(REFS, JOBS_URL)).get("version") == "1.1"


def test_duplicate_result_ids_raise() -> None:
    job = _job("d", Phase.COMPLETED, results=(*RESULTS, RESULTS[0]))
    with pytest.raises(ValueError, match="duplicate result id 'result'"):
        job_document(job, job_url(job))
    with pytest.raises(ValueError, match="duplicate result id"):
        results_document(job, job_url(job))


@pytest.mark.parametrize(("case", "order"), [
    ("pending", ["jobId", "ownerId", "phase", "creationTime", "startTime",
                 "endTime", "executionDuration", "destruction", "parameters",
                 "results"]),
    ("queued", ["jobId", "runId", "ownerId", "phase", "quote",
                "creationTime", "startTime", "endTime", "executionDuration",
                "destruction", "parameters", "results"]),
    ("completed", ["jobId", "runId", "ownerId", "phase", "creationTime",
                   "startTime", "endTime", "executionDuration",
                   "destruction", "parameters", "results", "jobInfo"]),
    ("error", ["jobId", "runId", "ownerId", "phase", "creationTime",
               "startTime", "endTime", "executionDuration", "destruction",
               "parameters", "results", "errorSummary"]),
])
def test_element_order(case: str, order: list[str]) -> None:
    job = JOBS[case]
    assert children(parse(job_document(job, job_url(job)))) == order


@pytest.mark.parametrize("case", JOBS)
def test_order_follows_job_summary(case: str) -> None:
    job = JOBS[case]
    names = children(parse(job_document(job, job_url(job))))
    assert names == sorted(names, key=JOB_SUMMARY.index)
    assert all(name in names for name in (
        "jobId", "ownerId", "phase", "creationTime", "startTime", "endTime",
        "executionDuration", "destruction", "results"))


def test_anonymous_owner_is_nil_and_named_owner_is_text() -> None:
    anonymous = parse(job_document(JOBS["pending"], job_url(JOBS["pending"])))
    owner = child(anonymous, "ownerId")
    assert (owner.get(NIL), owner.text) == ("true", None)
    named = parse(job_document(JOBS["executing"],
                               job_url(JOBS["executing"])))
    owner = child(named, "ownerId")
    assert (owner.get(NIL), owner.text) == (None, "CN=Bob, O=Obs")


def test_unknown_times_are_nil_and_unknown_quote_omitted() -> None:
    root = parse(job_document(JOBS["pending"], job_url(JOBS["pending"])))
    for name in ("startTime", "endTime"):
        element = child(root, name)
        assert (element.get(NIL), element.text) == ("true", None)
    assert uws(root, "quote") is None
    assert uws(root, "runId") is None


def test_run_id_omitted_when_none_kept_when_empty() -> None:
    root = parse(job_list_document(REFS, JOBS_URL))
    assert [children(ref) for ref in root] == [
        ["phase", "runId", "ownerId", "creationTime"],
        ["phase", "ownerId", "creationTime"],
        ["phase", "runId", "ownerId", "creationTime"],
    ]
    assert root[1][1].get(NIL) == "true"  # anonymous
    assert root[2][1].text is None  # empty runId, not nil
    assert root[2][1].get(NIL) is None


def test_job_list_refs() -> None:
    root = parse(job_list_document(REFS, f"{JOBS_URL}/"))
    assert local(root) == "jobs"
    assert [(ref.get("id"), ref.get(HREF)) for ref in root] == [
        (r.job_id, f"{JOBS_URL}/{r.job_id}") for r in REFS]


def test_results_hrefs_size_and_type() -> None:
    job = JOBS["completed"]
    root = parse(job_document(job, job_url(job)))
    results = child(root, "results")
    assert [(r.get("id"), r.get(HREF), r.get("size"), r.get("mime-type"))
            for r in results] == [
        ("result", f"{JOBS_URL}/c1/results/result", "20480",
         "application/x-votable+xml"),
        ("report", f"{JOBS_URL}/c1/results/report", "5120", "text/html"),
        ("psf", f"{JOBS_URL}/c1/results/psf", "70000", "image/png"),
    ]


def test_empty_results_present() -> None:
    root = parse(job_document(JOBS["pending"], job_url(JOBS["pending"])))
    results = child(root, "results")
    assert len(results) == 0


def test_parameters_flags() -> None:
    root = parse(parameters_document(JOBS["queued"], job_url(JOBS["queued"])))
    assert [(p.get("id"), p.get("byReference"), p.get("isPost"), p.text)
            for p in root] == [
        ("image", "true", "true", "param:image"),
        ("mode", None, None, "fast"),
    ]


def test_error_summary() -> None:
    root = parse(job_document(JOBS["error"], job_url(JOBS["error"])))
    summary = child(root, "errorSummary")
    assert (summary.get("type"), summary.get("hasDetail")) == (
        "fatal", "true")
    assert children(summary) == ["message"]
    assert summary[0].text == "Not a FITS file"


def test_usage_error_is_fatal_and_unknown_type_raises() -> None:
    job = _job("u", Phase.ERROR, error=ErrorSummary("usage", "bad image"))
    root = parse(job_document(job, job_url(job)))
    assert child(root, "errorSummary").get("type") == "fatal"
    job = _job("u", Phase.ERROR, error=ErrorSummary("oops", "?"))
    with pytest.raises(ValueError, match="unknown error type 'oops'"):
        job_document(job, job_url(job))


def test_job_info_is_namespaced_and_complete() -> None:
    root = parse(job_document(JOBS["completed"], job_url(JOBS["completed"])))
    info = child(root, "jobInfo")
    (processing,) = info
    assert processing.tag == f"{{{QF_NS}}}processing"
    assert processing.prefix == "qf"
    assert all(e.tag.startswith(f"{{{QF_NS}}}") for e in processing.iter())
    assert children(processing) == ["host", "queue", "backendId",
                                    "maxRssKb", "wallSeconds", "cpuSeconds",
                                    "steps"]
    assert float(processing[4].text) == 7.25
    steps = [(dict(step.attrib), step.text) for step in processing[6]]
    assert steps == [
        ({"name": "read", "state": "done",
          "start": "2026-01-02T03:04:07.000Z",
          "end": "2026-01-02T03:04:08.000Z"}, None),
        ({"name": "detect", "state": "done",
          "start": "2026-01-02T03:04:08.000Z",
          "end": "2026-01-02T03:04:09.000Z"}, "812 sources"),
        ({"name": "psf", "state": "skipped"}, "too few stars"),
    ]


def test_job_info_only_what_is_known() -> None:
    root = parse(job_document(JOBS["executing"], job_url(JOBS["executing"])))
    info = child(root, "jobInfo")
    assert children(info[0]) == ["host", "backendId"]
    job = _job("n", Phase.EXECUTING,
               info=JobInfo(wall_s=float("nan"), max_rss_kb=0))
    info = uws(parse(job_document(job, job_url(job))), "jobInfo")
    assert info is not None
    assert children(info[0]) == ["maxRssKb"]
    root = parse(job_document(JOBS["pending"], job_url(JOBS["pending"])))
    assert uws(root, "jobInfo") is None


def test_text_xml_cannot_carry_is_replaced(
        uws_schema: etree.XMLSchema) -> None:
    job = _job("t", Phase.ERROR, run_id="run\x07",
               error=ErrorSummary("fatal", "\x1b[31mcrash\x1b[0m \ud800"))
    root = parse(job_document(job, job_url(job)))
    uws_schema.assertValid(root)
    assert child(root, "runId").text == "run\ufffd"
    message = root.findtext(f"{{{UWS_NS}}}errorSummary/{{{UWS_NS}}}message")
    assert message == "\ufffd[31mcrash\ufffd[0m \ufffd"


# -- iso() --------------------------------------------------------------------

@pytest.mark.parametrize(("dt", "text"), [
    (T0, "2026-01-02T03:04:05.123Z"),
    (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05.000Z"),
    (datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
     "2026-01-02T03:04:05.999Z"),
    (datetime(2026, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))),
     "2026-01-01T23:00:00.000Z"),
    (datetime(2026, 7, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5))),
     "2026-07-01T17:00:00.000Z"),
])
def test_iso(dt: datetime, text: str) -> None:
    assert iso(dt) == text


def test_iso_refuses_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        iso(datetime(2026, 1, 2, 3, 4, 5))  # noqa: DTZ001
