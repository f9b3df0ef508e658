"""UWS 1.1 and VOSI documents, built with lxml element factories.

The one module of the service that knows the UWS, XLink, XSI, VOSI and
VODataService namespaces and element names; the views hand it the plain
objects of `uws.model` and send the bytes it returns.  Nothing here is
a string template (but the job list's small ``<uws:jobref>``
elements, written as escaped text for speed: `jobref_writer`), and
nothing here reads configuration: every URL is
passed in (built by the views from the public base URL, ``uws.md`` §4).

The rules, from ``../shared/docs/uws.md``:

- §8: the ``uws`` prefix everywhere; ``<uws:job>`` and ``<uws:jobs>``
  carry ``version="1.1"``; the children of a job follow the ``JobSummary``
  sequence of ``UWS.xsd`` exactly; ``runId`` and ``quote`` are omitted
  when absent (a nil ``runId`` is invalid), ``ownerId`` is ``xsi:nil``
  for an anonymous owner, ``startTime``/``endTime`` are ``xsi:nil``
  until known; ``<uws:results>`` is always present.
- Rule 4 (§0): every instant is UTC, ``T``-separated, millisecond
  precision, with a trailing ``Z`` (`iso`).  The XSD would accept an
  instant without a zone, so this module never writes one.
- §9: ``errorSummary`` has ``type`` (fatal/transient), ``hasDetail`` and
  a ``<uws:message>`` child; bare text broke pyvo.
- §10: result ids are unique (duplicates raise `ValueError`: the XSD
  lets them through); each result is served at
  ``{job}/results/{id}`` with ``size`` and ``mime-type``.
- §8, §14: ``jobInfo`` is small and namespaced: one ``qf:processing``
  element in `QF_NS` with what the status page showed (host, queue,
  batch id, memory, times, steps), only what is known.
- §5: ``<uws:jobref id xlink:href>`` with ``phase``, ``runId?``,
  ``ownerId`` (nil when anonymous) and ``creationTime``.
- §12: VOSI availability, and capabilities whose root is qualified
  but whose ``capability`` children are not, interfaces typed
  ``vs:ParamHTTP`` with ``<accessURL use="full">``.

Text that XML 1.0 cannot carry (control characters from a crashed
worker's message, lone surrogates) becomes U+FFFD rather than making
the job unreadable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Final
from urllib.parse import quote

from lxml import etree
from lxml.builder import ElementMaker

from uws.model import (
    ErrorSummary,
    Job,
    JobInfo,
    JobListRow,
    JobRef,
    Parameter,
    Result,
    iso,
)

__all__ = [
    "QF_NS",
    "UWS_NS",
    "UWS_VERSION",
    "VOSI_AVAILABILITY_NS",
    "VOSI_CAPABILITIES_NS",
    "VS_NS",
    "XLINK_NS",
    "XSI_NS",
    "availability_document",
    "capabilities_document",
    "iso",
    "job_document",
    "job_list_chunks",
    "job_list_document",
    "jobref_writer",
    "parameters_document",
    "results_document",
]

#: UWS 1.1 kept the namespace of UWS 1.0 (uws.md §8).
UWS_NS: Final = "http://www.ivoa.net/xml/UWS/v1.0"
UWS_VERSION: Final = "1.1"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
#: Our own ``jobInfo`` content (prefix ``qf``).
QF_NS: Final = "urn:qualityfits-uws"
VOSI_AVAILABILITY_NS: Final = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
VOSI_CAPABILITIES_NS: Final = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
#: VODataService 1.1, for ``xsi:type="vs:ParamHTTP"`` interfaces.
VS_NS: Final = "http://www.ivoa.net/xml/VODataService/v1.1"

#: standardIDs of the capabilities we declare (uws.md §12).
CAPABILITIES_ID: Final = "ivo://ivoa.net/std/VOSI#capabilities"
AVAILABILITY_ID: Final = "ivo://ivoa.net/std/VOSI#availability"
UWS_ID: Final = "ivo://ivoa.net/std/UWS#rest-1.1"

_UWS_NSMAP: Final = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}
U: Final = ElementMaker(namespace=UWS_NS, nsmap=_UWS_NSMAP)
QF: Final = ElementMaker(namespace=QF_NS, nsmap={"qf": QF_NS})
#: Unqualified elements (VOSI capability children, VOResource types).
_PLAIN: Final = ElementMaker()

_NIL: Final = {f"{{{XSI_NS}}}nil": "true"}
_HREF: Final = f"{{{XLINK_NS}}}href"
_XSI_TYPE: Final = f"{{{XSI_NS}}}type"

#: Error types of the worker contract -> UWS ``ErrorType``.  A usage
#: error (bad input) is fatal to the client: it must not retry as is.
_ERROR_TYPES: Final = {
    "fatal": "fatal",
    "transient": "transient",
    "usage": "fatal",
}

_XML_ILLEGAL: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(text: str) -> str:
    """Return ``text`` with what XML 1.0 cannot carry replaced by U+FFFD."""
    return _XML_ILLEGAL.sub("\ufffd", text)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _segment(name: str) -> str:
    """Return ``name`` as one URL path segment."""
    return quote(name, safe="")


def _serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                          pretty_print=True)


def _instant(name: str, dt: datetime | None) -> etree._Element:
    """Return ``<uws:{name}>``, ``xsi:nil`` when the instant is unknown."""
    if dt is None:
        return U(name, _NIL)
    return U(name, iso(dt))


def _owner(owner: str | None) -> etree._Element:
    if owner is None:
        return U.ownerId(_NIL)
    return U.ownerId(_text(owner))


def _check_result_ids(results: Sequence[Result]) -> None:
    seen: set[str] = set()
    for result in results:
        if result.id in seen:
            raise ValueError(
                f"duplicate result id {result.id!r}: UWS result ids must "
                "be unique within a job")
        seen.add(result.id)


def _results(results: Sequence[Result], job_url: str) -> etree._Element:
    """Return ``<uws:results>``, each result at ``{job}/results/{id}``.

    Raises
    ------
    ValueError
        If two results share an id.
    """
    _check_result_ids(results)
    base = job_url.rstrip("/")
    element = U.results()
    for result in results:
        attrs = {
            "id": _text(result.id),
            _HREF: f"{base}/results/{_segment(result.id)}",
            "size": str(result.size),
        }
        if result.mime:
            attrs["mime-type"] = _text(result.mime)
        element.append(U.result(attrs))
    return element


def _parameters(parameters: Sequence[Parameter]) -> etree._Element:
    """Return ``<uws:parameters>``; flags only when true."""
    element = U.parameters()
    for parameter in parameters:
        attrs = {"id": _text(parameter.name)}
        if parameter.by_reference:
            attrs["byReference"] = "true"
        if parameter.is_post:
            attrs["isPost"] = "true"
        element.append(U.parameter(_text(parameter.text), attrs))
    return element


def _error_summary(error: ErrorSummary) -> etree._Element:
    """Return ``<uws:errorSummary>`` with its ``<uws:message>`` child.

    Raises
    ------
    ValueError
        If the error type is not one of fatal, transient, usage.
    """
    if error.type not in _ERROR_TYPES:
        raise ValueError(
            f"unknown error type {error.type!r} "
            f"(expected one of {sorted(_ERROR_TYPES)})")
    return U.errorSummary(
        U.message(_text(error.message)),
        type=_ERROR_TYPES[error.type],
        hasDetail=_bool(error.has_detail),
    )


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _job_info(info: JobInfo) -> etree._Element | None:
    """Return ``<uws:jobInfo>`` with one ``qf:processing``, or None.

    None when nothing is known: the element is optional.
    """
    children: list[etree._Element] = []
    for name, text in (("host", info.host), ("queue", info.queue),
                       ("backendId", info.backend_id)):
        if text:
            children.append(QF(name, _text(text)))
    if info.max_rss_kb is not None:
        children.append(QF.maxRssKb(str(info.max_rss_kb)))
    for name, value in (("wallSeconds", info.wall_s),
                        ("cpuSeconds", info.cpu_s)):
        if value is not None and math.isfinite(value):
            children.append(QF(name, _seconds(value)))
    if info.steps:
        steps = QF.steps()
        for step in info.steps:
            attrs = {key: _text(value) for key, value in (
                ("name", step.name), ("state", step.state),
                ("start", step.start), ("end", step.end)) if value}
            detail = [_text(step.detail)] if step.detail else []
            steps.append(QF.step(*detail, attrs))
        children.append(steps)
    if not children:
        return None
    return U.jobInfo(QF.processing(*children))


def _job(job: Job, job_url: str) -> etree._Element:
    """Return ``<uws:job>``, children in ``JobSummary`` order."""
    children: list[etree._Element] = [U.jobId(_text(job.job_id))]
    if job.run_id is not None:
        children.append(U.runId(_text(job.run_id)))
    children += [_owner(job.owner), U.phase(job.phase.value)]
    if job.quote is not None:
        children.append(U.quote(iso(job.quote)))
    children += [
        U.creationTime(iso(job.creation_time)),
        _instant("startTime", job.start_time),
        _instant("endTime", job.end_time),
        U.executionDuration(str(job.execution_duration)),
        U.destruction(iso(job.destruction)),
        _parameters(job.parameters),
        _results(job.results, job_url),
    ]
    if job.error is not None:
        children.append(_error_summary(job.error))
    info = _job_info(job.info)
    if info is not None:
        children.append(info)
    return U.job(*children, version=UWS_VERSION)


def job_document(job: Job, job_url: str) -> bytes:
    """Return the ``<uws:job>`` document of a job (``GET {job}``).

    Parameters
    ----------
    job : Job
        The job to show.
    job_url : str
        Its absolute URL; result hrefs are ``{job_url}/results/{id}``.

    Returns
    -------
    bytes
        UTF-8 XML with declaration.

    Raises
    ------
    ValueError
        If two results share an id, the error type is unknown or an
        instant is naive.
    """
    return _serialise(_job(job, job_url))


def job_list_document(jobs: Sequence[JobRef], jobs_url: str) -> bytes:
    """Return the ``<uws:jobs>`` document of a job list (``GET {jobs}``).

    Parameters
    ----------
    jobs : sequence of JobRef
        The jobs to list, in the order given (the caller filters and
        sorts, uws.md §5).
    jobs_url : str
        Absolute URL of the job list; each job is at
        ``{jobs_url}/{job_id}``.

    Returns
    -------
    bytes
        UTF-8 XML with declaration (`job_list_chunks`, joined).
    """
    rows = [(ref.job_id, ref.phase.value, ref.run_id, ref.owner,
             iso(ref.creation_time)) for ref in jobs]
    return b"".join(job_list_chunks([jobref_writer(jobs_url)(rows)]))


#: The job list's start and end (`job_list_chunks`).
_JOBS_HEAD: Final = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    f'<uws:jobs xmlns:uws="{UWS_NS}" xmlns:xlink="{XLINK_NS}" '
    f'xmlns:xsi="{XSI_NS}" version="{UWS_VERSION}">\n').encode()
_JOBS_TAIL: Final = b"</uws:jobs>\n"
_ESCAPE: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                '"': "&quot;", "\r": "&#13;",
                                "\n": "&#10;", "\t": "&#9;"})
_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9_.~-]+\Z")
#: Text that needs no escape (nor a U+FFFD).
_PLAIN_TEXT: Final = re.compile(
    '[^&<>"\x00-\x1f\ud800-\udfff\ufffe\uffff]*\\Z')
_NIL_OWNER: Final = '    <uws:ownerId xsi:nil="true"/>\n'


def job_list_chunks(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the ``<uws:jobs>`` document around ``pieces``.

    The document of `job_list_document`, written as it is read (a
    response's ``app_iter``): the start, each piece of ``<uws:jobref>``
    elements (`jobref_writer`, a page of the list each), the end.  A
    list of any length thus costs the memory of the pieces being
    written.
    """
    yield _JOBS_HEAD
    yield from pieces
    yield _JOBS_TAIL


def jobref_writer(jobs_url: str) -> Callable[[Sequence[JobListRow]], bytes]:
    """Return the function that writes rows as ``<uws:jobref>`` elements.

    It takes a page of the list (`uws.store.JobStore.list_rendered`)
    and returns its elements, UTF-8, in one piece.  The small elements
    are written as text here, escaped like lxml does, rather than built
    as trees (a tree per job took ~40 µs, ten times the text;
    benchmarks/README.md): the one place of this module that writes
    markup itself.  ``jobs_url``: the list's URL, each job's is
    ``{jobs_url}/{job_id}``.
    """
    base = _escaped(jobs_url.rstrip("/"))  # an attribute's text

    def write(rows: Sequence[JobListRow]) -> bytes:
        return "".join([_jobref(row, base) for row in rows]).encode()

    return write


def _escaped(text: str) -> str:
    """Return ``text`` for XML text or a quoted attribute."""
    if _PLAIN_TEXT.match(text):
        return text
    return _text(text).translate(_ESCAPE)


def _jobref(row: JobListRow, base: str) -> str:
    """Return one ``<uws:jobref>``; ``base``: the list's URL, escaped."""
    job_id, phase, run_id, owner, created = row
    if _PLAIN_ID.match(job_id):
        head = f'  <uws:jobref id="{job_id}" xlink:href="{base}/{job_id}">\n'
    else:  # the segment is percent-encoded: nothing to escape
        head = (f'  <uws:jobref id="{_escaped(job_id)}" '
                f'xlink:href="{base}/{_segment(job_id)}">\n')
    return (f"{head}    <uws:phase>{phase}</uws:phase>\n"
            + ("" if run_id is None else
               f"    <uws:runId>{_escaped(run_id)}</uws:runId>\n")
            + (_NIL_OWNER if owner is None else
               f"    <uws:ownerId>{_escaped(owner)}</uws:ownerId>\n")
            + f"    <uws:creationTime>{created}</uws:creationTime>\n"
            "  </uws:jobref>\n")


def results_document(job: Job, job_url: str) -> bytes:
    """Return the ``<uws:results>`` document of a job (``GET …/results``).

    Parameters
    ----------
    job : Job
        The job whose results to list (possibly none).
    job_url : str
        Its absolute URL; result hrefs are ``{job_url}/results/{id}``.

    Returns
    -------
    bytes
        UTF-8 XML with declaration.

    Raises
    ------
    ValueError
        If two results share an id.
    """
    return _serialise(_results(job.results, job_url))


def parameters_document(
        job: Job,
        job_url: str,  # noqa: ARG001 -- same call as the other job views
) -> bytes:
    """Return the ``<uws:parameters>`` document (``GET …/parameters``).

    Parameters
    ----------
    job : Job
        The job whose parameters to list.  By-reference values are
        already URLs (uploads at ``{job}/parameters/{name}``).
    job_url : str
        Its absolute URL (unused: accepted so that every job document
        is called alike).

    Returns
    -------
    bytes
        UTF-8 XML with declaration.
    """
    return _serialise(_parameters(job.parameters))


def availability_document(available: bool, notes: Sequence[str],
                          up_since: datetime | None) -> bytes:
    """Return a VOSI availability document (``GET …/availability``).

    Parameters
    ----------
    available : bool
        Whether the service accepts and runs jobs.
    notes : sequence of str
        Human-readable remarks, one ``<vosi:note>`` each.
    up_since : datetime or None
        When the service last became available, if known.

    Returns
    -------
    bytes
        UTF-8 XML with declaration.
    """
    vosi = ElementMaker(namespace=VOSI_AVAILABILITY_NS,
                        nsmap={"vosi": VOSI_AVAILABILITY_NS})
    children = [vosi.available(_bool(available))]
    if up_since is not None:
        children.append(vosi.upSince(iso(up_since)))
    children += [vosi.note(_text(note)) for note in notes]
    return _serialise(vosi.availability(*children))


def _capability(standard_id: str, url: str) -> etree._Element:
    interface = _PLAIN.interface(
        _PLAIN.accessURL(url, use="full"),
        {_XSI_TYPE: "vs:ParamHTTP", "role": "std"},
    )
    return _PLAIN.capability(interface, standardID=standard_id)


def _capabilities(entries: Iterable[tuple[str, str]]) -> etree._Element:
    vosi = ElementMaker(namespace=VOSI_CAPABILITIES_NS, nsmap={
        "vosi": VOSI_CAPABILITIES_NS, "vs": VS_NS, "xsi": XSI_NS})
    return vosi.capabilities(*(_capability(standard_id, url)
                               for standard_id, url in entries))


def capabilities_document(base_url: str, *,
                          record_url: str | None = None) -> bytes:
    """Return the VOSI capabilities document (``GET …/capabilities``).

    Declares the capabilities endpoint itself, availability, and the
    UWS 1.1 job list (the service's access URL, uws.md §2).

    Parameters
    ----------
    base_url : str
        Absolute public URL of the service; the endpoints are
        ``{base_url}/capabilities``, ``/availability`` and ``/jobs``.
    record_url : str, optional
        URL of the service's VOResource record (``/resource.xml``):
        declared, when given, as a capability without a standardID
        (VOSI defines none for it), described in words.

    Returns
    -------
    bytes
        UTF-8 XML with declaration.
    """
    base = base_url.rstrip("/")
    root = _capabilities((
        (CAPABILITIES_ID, f"{base}/capabilities"),
        (AVAILABILITY_ID, f"{base}/availability"),
        (UWS_ID, f"{base}/jobs"),
    ))
    if record_url is not None:
        root.append(_PLAIN.capability(
            _PLAIN.description("The VOResource record of this service "
                               "(ri:Resource), as its publishing "
                               "registry gives it (OAI-PMH: /oai)."),
            _PLAIN.interface(_PLAIN.accessURL(record_url, use="full"),
                             {_XSI_TYPE: "vs:ParamHTTP"})))
    return _serialise(root)
