"""HTTP ⇄ job service: the UWS 1.1 resources and VOSI.

Views only translate: read the request (parameter names lower-cased
by `uws.forms`), call one `uws.service.JobService` verb, answer with a
document from `uws.xml`, ``text/plain``, a file, or a 303 whose
Location is built from the public base URL.  Errors are `uws.errors`
exceptions rendered by one exception view.
"""

from __future__ import annotations

import itertools
import logging
import mimetypes
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy.exc
from pyramid.exceptions import URLDecodeError
from pyramid.httpexceptions import HTTPMethodNotAllowed, HTTPNotFound
from pyramid.response import Response
from pyramid.view import exception_view_config, view_config

from uws import xml
from uws.auth import Identity
from uws.errors import UnknownJobError, UsageError, UWSError
from uws.forms import Form, read_form
from uws.model import Job, Parameter
from uws.params import parse_instant, parse_int
from uws.phases import FINAL as FINAL_PHASES
from uws.phases import Phase
from uws.service import CACHE_SIZE, JobService, ResultFile

log = logging.getLogger(__name__)

XML_TYPE = "text/xml"
TEXT_TYPE = "text/plain"
BLOCK = 1 << 20


# -- helpers ----------------------------------------------------------------
def service_of(request: Any) -> JobService:
    """Return the job service of the app."""
    service: JobService = request.registry.job_service
    return service


def owner_of(request: Any) -> Identity:
    """Return who asks (the configured `uws.auth` policy decides)."""
    owner: Identity = request.registry.authenticator.identify(request)
    return owner


def base_url(request: Any) -> str:
    """Return the public base URL (setting, else the request's own)."""
    configured: str = service_of(request).settings.base_url
    return configured or str(request.application_url).rstrip("/")


def jobs_url(request: Any) -> str:
    """Return the absolute URL of the job list."""
    return f"{base_url(request)}/jobs"


def job_url(request: Any, job_id: str) -> str:
    """Return the absolute URL of a job."""
    return f"{jobs_url(request)}/{job_id}"


def see_other(location: str) -> Response:
    """Return a 303 to ``location``."""
    response = Response(status=303, content_type=TEXT_TYPE,
                        charset="utf-8", body=f"See {location}\n".encode())
    response.location = location
    return response


def _xml(body: bytes) -> Response:
    return Response(body=body, content_type=XML_TYPE, charset="utf-8")


def _text(text: str) -> Response:
    return Response(body=text.encode(), content_type=TEXT_TYPE,
                    charset="utf-8")


def form_of(request: Any, *, body: bool = True) -> Form:
    """Read the request's parameters (and body) with the upload limit."""
    service = service_of(request)
    return read_form(request, staging_root=service.staging_root,
                     upload_limit=service.settings.upload_limit,
                     with_body=body)


def _only(request: Any, name: str, usage: str) -> str | None:
    """Return the value of ``name``, the one thing a POST here may carry.

    Raises `UsageError` with ``usage`` when anything else is posted;
    None when ``name`` is absent.
    """
    form = form_of(request)
    form.discard()
    if form.names() - {name}:
        raise UsageError(usage)
    return form.single(name)


def parse_phase(text: str, name: str) -> Phase:
    """Parse a phase name given by a client (400 if it is none)."""
    try:
        return Phase(text.strip().upper())
    except ValueError:
        raise UsageError(
            f"{name}: {text!r} is not a UWS phase ("
            + ", ".join(p.value for p in Phase) + ")") from None


def _job_id(request: Any) -> str:
    job_id: str = request.matchdict["job_id"]
    return job_id


def _mask_email(value: str) -> str:
    user, _, domain = value.partition("@")
    return f"{user[:1]}***@{domain}"


def public_job(job: Job, url: str) -> Job:
    """Return the job as clients see it: upload URLs, masked email."""
    params = []
    for p in job.parameters:
        if p.is_post:
            params.append(Parameter(p.name, f"{url}/parameters/{p.name}",
                                    by_reference=True, is_post=True))
        elif p.name == "email":
            params.append(replace(p, value=_mask_email(p.text)))
        else:
            params.append(p)
    return replace(job, parameters=tuple(params))


def allow_methods(request: Any, *allowed: str) -> None:
    """Raise 405 unless the request's method is one of ``allowed``."""
    if request.method not in allowed:
        raise HTTPMethodNotAllowed(
            f"{request.method} is not allowed here (use "
            f"{', '.join(allowed)})",
            headers={"Allow": ", ".join(allowed)})


# -- the job list -------------------------------------------------------------
@view_config(route_name="jobs")
def jobs_view(request: Any) -> Response:
    """GET the job list (PHASE, AFTER, LAST); POST creates a job."""
    allow_methods(request, "GET", "HEAD", "POST")
    service = service_of(request)
    owner = owner_of(request)
    if request.method == "POST":
        service.check_room(owner)  # before the body is read
        form = form_of(request)
        job_id = service.create(owner, form)
        return see_other(job_url(request, job_id))
    query = form_of(request, body=False)
    unknown = query.names() - {"phase", "after", "last"}
    if unknown:
        raise UsageError(
            "unknown job-list filter "
            f"{', '.join(repr(name.upper()[:40]) for name in sorted(unknown))}"
            ": the filters are PHASE (repeatable), AFTER and LAST")
    wanted = [parse_phase(value, "PHASE")
              for value in query.values.get("phase", [])]
    after = query.single("after")
    last = query.single("last")
    last_n = None
    if last is not None:
        last_n = parse_int(last, "LAST")
        if last_n <= 0:
            raise UsageError(f"LAST: {last_n} must be a positive integer")
    pieces = service.list_rendered(
        owner, xml.jobref_writer(jobs_url(request)), phases_=wanted,
        after=None if after is None else parse_instant(after, "AFTER"),
        last=last_n)
    # The first page is read now: a database that does not answer is
    # still a 503; the others as the response is written (a list of any
    # length costs a page of memory, written as it is read).
    first = next(pieces, b"")
    return Response(
        app_iter=xml.job_list_chunks(itertools.chain([first], pieces)),
        content_type=XML_TYPE, charset="utf-8")


# -- one job -----------------------------------------------------------------
@view_config(route_name="job")
def job_view(request: Any) -> Response:
    """GET the job (WAIT, PHASE); DELETE or POST ACTION=DELETE."""
    allow_methods(request, "GET", "HEAD", "POST", "DELETE")
    service = service_of(request)
    owner = owner_of(request)
    job_id = _job_id(request)
    if request.method == "DELETE":
        service.delete(job_id, owner)
        return see_other(jobs_url(request))
    if request.method == "POST":
        usage = ("POST to a job accepts only ACTION=DELETE; send PHASE=RUN "
                 f"or PHASE=ABORT to {job_url(request, job_id)}/phase and "
                 f"parameters to {job_url(request, job_id)}/parameters")
        action = _only(request, "action", usage)
        if action is None or action.strip().upper() != "DELETE":
            raise UsageError(usage)
        service.delete(job_id, owner)
        return see_other(jobs_url(request))
    query = form_of(request, body=False)
    wait = query.single("wait")
    if wait is not None:
        seconds = parse_int(wait, "WAIT", maximum=None)  # capped below
        if seconds < -1:
            raise UsageError(f"WAIT: {seconds} (use -1, 0 or a positive "
                             "number of seconds)")
        phase = query.single("phase")
        target = None if phase is None else parse_phase(phase, "PHASE")
        job = service.wait(job_id, owner, seconds, target)
    else:
        job = service.get(job_id, owner)
    return _xml(_job_document(job, job_url(request, job_id)))


#: Job documents kept rendered: (job id, job URL) -> (the job, bytes).
_documents: OrderedDict[tuple[str, str], tuple[Job, bytes]] = OrderedDict()
_documents_lock = threading.Lock()


def _job_document(job: Job, url: str) -> bytes:
    """Render the job document (once for a finished job).

    The service hands a finished job from its cache as the same object
    until the job changes (destruction time, deletion:
    `JobService.get`), and the document depends on the job and its URL
    only: while ``job`` is that object, the bytes rendered for it are
    served again (``CACHE_SIZE`` documents at most, as many as the
    service's cache).  Any other job is rendered each time.
    """
    key = (job.job_id, url)
    with _documents_lock:
        kept = _documents.get(key)
        if kept is not None and kept[0] is job:
            _documents.move_to_end(key)
            return kept[1]
    body = xml.job_document(public_job(job, url), url)
    if job.phase in FINAL_PHASES:
        with _documents_lock:
            _documents[key] = (job, body)
            _documents.move_to_end(key)
            while len(_documents) > CACHE_SIZE:
                _documents.popitem(last=False)
    return body


@view_config(route_name="job_phase")
def phase_view(request: Any) -> Response:
    """GET the phase; POST PHASE=RUN or PHASE=ABORT."""
    allow_methods(request, "GET", "HEAD", "POST")
    service = service_of(request)
    owner = owner_of(request)
    job_id = _job_id(request)
    if request.method == "POST":
        given = _only(request, "phase", "POST to phase accepts only "
                      "PHASE=RUN or PHASE=ABORT") or ""
        value = given.strip().upper()
        if value == "RUN":
            service.run(job_id, owner)
        elif value == "ABORT":
            service.abort(job_id, owner)
        else:
            raise UsageError(
                f"PHASE={given!r}: use PHASE=RUN or PHASE=ABORT")
        return see_other(job_url(request, job_id))
    return _text(service.get(job_id, owner).phase.value)


@view_config(route_name="job_executionduration")
def executionduration_view(request: Any) -> Response:
    """GET or POST EXECUTIONDURATION (seconds, 0 = unlimited)."""
    allow_methods(request, "GET", "HEAD", "POST")
    service = service_of(request)
    owner = owner_of(request)
    job_id = _job_id(request)
    if request.method == "POST":
        usage = "POST EXECUTIONDURATION=<seconds>"
        value = _only(request, "executionduration", usage)
        if value is None:
            raise UsageError(usage)
        service.set_execution_duration(job_id, owner, value)
        return see_other(job_url(request, job_id))
    return _text(str(service.get(job_id, owner).execution_duration))


@view_config(route_name="job_destruction")
def destruction_view(request: Any) -> Response:
    """GET or POST DESTRUCTION (an ISO 8601 instant)."""
    allow_methods(request, "GET", "HEAD", "POST")
    service = service_of(request)
    owner = owner_of(request)
    job_id = _job_id(request)
    if request.method == "POST":
        usage = "POST DESTRUCTION=<ISO 8601 instant>"
        value = _only(request, "destruction", usage)
        if value is None:
            raise UsageError(usage)
        service.set_destruction(job_id, owner, value)
        return see_other(job_url(request, job_id))
    return _text(xml.iso(service.get(job_id, owner).destruction))


@view_config(route_name="job_attribute")
def attribute_view(request: Any) -> Response:
    """GET quote, owner, runId, creationTime, startTime, endTime, jobId."""
    allow_methods(request, "GET", "HEAD")
    job = service_of(request).get(_job_id(request), owner_of(request))
    name = request.matchdict["name"].lower()
    values: dict[str, str] = {
        "quote": xml.iso(job.quote) if job.quote else "",
        "owner": job.owner or "",
        "runid": job.run_id or "",
        "creationtime": xml.iso(job.creation_time),
        "starttime": xml.iso(job.start_time) if job.start_time else "",
        "endtime": xml.iso(job.end_time) if job.end_time else "",
        "jobid": job.job_id,
    }
    if name not in values:
        raise UnknownJobError(f"no job resource {request.matchdict['name']}")
    return _text(values[name])


@view_config(route_name="job_error")
def error_view(request: Any) -> Response:
    """GET the error document of a failed job (404 if none)."""
    allow_methods(request, "GET", "HEAD")
    text = service_of(request).error_detail(_job_id(request),
                                            owner_of(request))
    return _text(text)


@view_config(route_name="job_results")
def results_view(request: Any) -> Response:
    """GET the results list."""
    allow_methods(request, "GET", "HEAD")
    job_id = _job_id(request)
    job = service_of(request).get(job_id, owner_of(request))
    return _xml(xml.results_document(job, job_url(request, job_id)))


@view_config(route_name="job_result")
def result_view(request: Any) -> Response:
    """GET one result file (HTTP range requests supported)."""
    allow_methods(request, "GET", "HEAD")
    found = service_of(request).result_file(
        _job_id(request), owner_of(request), request.matchdict["result_id"])
    return _file(found, request)


@view_config(route_name="job_parameters")
def parameters_view(request: Any) -> Response:
    """GET the parameters; POST adds or changes them while PENDING."""
    allow_methods(request, "GET", "HEAD", "POST")
    service = service_of(request)
    owner = owner_of(request)
    job_id = _job_id(request)
    url = job_url(request, job_id)
    if request.method == "POST":
        if (request.content_type or "").lower() == "multipart/form-data":
            service.check_room(owner)  # before the upload is read
        service.set_parameters(job_id, owner, form_of(request))
        return see_other(url)
    job = service.get(job_id, owner)
    return _xml(xml.parameters_document(public_job(job, url), url))


@view_config(route_name="job_parameter")
def parameter_view(request: Any) -> Response:
    """GET one parameter: the uploaded file, or the value as text."""
    allow_methods(request, "GET", "HEAD")
    found = service_of(request).parameter_value(
        _job_id(request), owner_of(request), request.matchdict["name"])
    if isinstance(found, ResultFile):
        return _file(found, request)
    if request.matchdict["name"].lower() == "email":
        found = _mask_email(found)
    return _text(found)


# -- VOSI --------------------------------------------------------------
@view_config(route_name="availability")
def availability_view(request: Any) -> Response:
    """VOSI availability (200 whether or not available)."""
    allow_methods(request, "GET", "HEAD")
    service = service_of(request)
    available, notes = service.availability()
    return _xml(xml.availability_document(available, notes,
                                          service.up_since))


@view_config(route_name="capabilities")
def capabilities_view(request: Any) -> Response:
    """VOSI capabilities."""
    allow_methods(request, "GET", "HEAD")
    base = base_url(request)
    # The VOResource record, when there is one (``qfits.ivoid``).
    record = f"{base}/resource.xml" if service_of(
        request).settings.ivoid else None
    return _xml(xml.capabilities_document(base, record_url=record))


# -- files -------------------------------------------------------------
class _RangeFile:
    """An app_iter over a file that WebOb can ask for a byte range."""

    def __init__(self, path: Path) -> None:
        self.file: BinaryIO = path.open("rb")
        self.start = 0
        self.stop: int | None = None

    def app_iter_range(self, start: int, stop: int | None) -> _RangeFile:
        """Serve bytes ``start`` to ``stop`` (exclusive) only.

        Returns this object, not a new iterator: the server closes the
        app_iter WebOb hands it, and that must close the file.
        """
        self.start, self.stop = start, stop
        return self

    def __iter__(self) -> Iterator[bytes]:
        start, stop = self.start, self.stop
        self.file.seek(start)
        left = None if stop is None else stop - start
        while left is None or left > 0:
            chunk = self.file.read(BLOCK if left is None
                                   else min(BLOCK, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk

    def close(self) -> None:
        """Close the file."""
        self.file.close()


_SUFFIX_RANGE = re.compile(r"^\s*bytes\s*=\s*-\s*(\d+)\s*$")


def _suffix_range(request: Any, size: int) -> Response | None:
    """Apply RFC 9110 to a suffix range, which WebOb gets wrong.

    ``bytes=-0`` selects nothing: 416.  A suffix longer than the file
    selects the whole file: asked as ``bytes=0-`` (206).
    """
    match = _SUFFIX_RANGE.match(request.headers.get("Range", ""))
    if match is None:
        return None
    length = int(match.group(1)[:20])
    if length == 0:
        response = _text("RangeNotSatisfiable: bytes=-0 selects no byte\n")
        response.status_int = 416
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    if length >= size:
        request.headers["Range"] = "bytes=0-"
    return None


def _file(found: ResultFile, request: Any) -> Response:
    path = found.path
    try:
        stat = path.stat()
    except OSError:
        raise UnknownJobError(f"{path.name} is no longer available"
                              ) from None
    refused = _suffix_range(request, stat.st_size)
    if refused is not None:
        return refused
    mime = found.mime or mimetypes.guess_type(path.name)[0] or \
        "application/octet-stream"
    charset = "utf-8" if mime.startswith("text/") else None
    response = Response(content_type=mime, charset=charset,
                        conditional_response=True)
    response.app_iter = _RangeFile(path)
    response.content_length = stat.st_size
    response.accept_ranges = "bytes"
    response.last_modified = stat.st_mtime
    response.etag = f"{stat.st_mtime_ns}-{stat.st_size}"
    response.content_disposition = f'inline; filename="{path.name}"'
    return response


# -- errors ------------------------------------------------------------
@exception_view_config(UWSError)
def uws_error_view(exc: UWSError, request: Any) -> Response:
    """Render a protocol error as ``text/plain`` with its status."""
    response = _text(f"{exc.code}: {exc.message}\n")
    response.status_int = exc.status
    if exc.status == 401:
        response.headers.update(request.registry.authenticator.challenge())
    return response


@exception_view_config(HTTPNotFound)
def not_found_view(exc: HTTPNotFound, request: Any) -> Response:
    """Unknown URL: 404 in plain text."""
    del exc
    response = _text(f"NotFound: no resource at {request.path}\n")
    response.status_int = 404
    return response


@exception_view_config(HTTPMethodNotAllowed)
def method_view(exc: HTTPMethodNotAllowed, request: Any) -> Response:
    """Wrong method: 405 with Allow."""
    del request
    response = _text(f"MethodNotAllowed: {exc.detail}\n")
    response.status_int = 405
    response.headers["Allow"] = exc.headers.get("Allow", "")
    return response


@exception_view_config(sqlalchemy.exc.OperationalError)
@exception_view_config(sqlalchemy.exc.TimeoutError)
def database_error_view(exc: Exception, request: Any) -> Response:
    """Answer 503 when the database is unreachable, gone or saturated."""
    reason = getattr(exc, "orig", None) or exc
    first = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
    log.warning("job database error on %s %s: %s", request.method,
                request.path, first)
    response = _text(
        f"ServiceUnavailable: the job database does not answer: {first}\n")
    response.status_int = 503
    return response


@exception_view_config(URLDecodeError)
def undecodable_url_view(exc: URLDecodeError, request: Any) -> Response:
    """Answer 400 to a path that is not UTF-8 (``/jobs/%ff``)."""
    del exc, request  # request.path itself cannot be decoded
    response = _text("UsageError: the URL path is not valid UTF-8 "
                     "(percent-encode the bytes of UTF-8 text)\n")
    response.status_int = 400
    return response


@exception_view_config(Exception)
def internal_error_view(exc: Exception, request: Any) -> Response:
    """Anything else: 500 in plain text, logged with the job id."""
    log.error("internal error on %s %s (job %s)", request.method,
              request.environ.get("PATH_INFO", "?"),
              request.matchdict.get("job_id", "-")
              if request.matchdict else "-", exc_info=exc)
    response = _text(f"InternalError: {type(exc).__name__}: {exc}\n")
    response.status_int = 500
    return response

