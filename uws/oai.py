"""A minimal OAI-PMH 2.0 repository over the records of `uws.registry`.

`respond` answers one request (its arguments as name/value pairs, from
a GET query or a urlencoded POST) with the ``OAI-PMH`` document: the
six verbs, the metadata prefixes ``ivo_vor`` (the ``ri:Resource``
records) and ``oai_dc`` (Dublin Core), the one set ``ivo_managed``
(Registry Interfaces 1.0: the records this registry manages, which is
what a searchable registry harvests), ``from``/``until`` at a
granularity of seconds.  All records fit in one answer: no resumption
token is ever issued, so any given one is a ``badResumptionToken``.

Protocol errors are answers too (HTTP 200, ``<error code="...">``, as
OAI-PMH 2.0 §3.6 says); after ``badVerb`` and ``badArgument`` the
``request`` element carries no attributes (§3.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from lxml import etree
from lxml.builder import ElementMaker

from uws.registry import (
    MANAGED_SET,
    RI_NS,
    Record,
    stamp,
)
from uws.xml import XSI_NS

__all__ = ["OAI_DC_NS", "OAI_NS", "Repository", "respond"]

OAI_NS: Final = "http://www.openarchives.org/OAI/2.0/"
OAI_DC_NS: Final = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC_NS: Final = "http://purl.org/dc/elements/1.1/"

_O: Final = ElementMaker(namespace=OAI_NS,
                         nsmap={"oai": OAI_NS, "xsi": XSI_NS})
_DC: Final = ElementMaker(namespace=DC_NS, nsmap={"dc": DC_NS})

#: metadataPrefix -> (schema, namespace).
FORMATS: Final = {
    "ivo_vor": (("http://www.ivoa.net/xml/RegistryInterface/"
                "RegistryInterface-v1.0.xsd"), RI_NS),
    "oai_dc": ("http://www.openarchives.org/OAI/2.0/oai_dc.xsd",
               OAI_DC_NS),
}
#: verb -> (required arguments, optional arguments).
VERBS: Final[Mapping[str, tuple[frozenset[str], frozenset[str]]]] = {
    "Identify": (frozenset(), frozenset()),
    "ListMetadataFormats": (frozenset(), frozenset({"identifier"})),
    "ListSets": (frozenset(), frozenset()),
    "GetRecord": (frozenset({"identifier", "metadataPrefix"}),
                  frozenset()),
    "ListIdentifiers": (frozenset({"metadataPrefix"}),
                        frozenset({"from", "until", "set"})),
    "ListRecords": (frozenset({"metadataPrefix"}),
                    frozenset({"from", "until", "set"})),
}
_TOKEN_VERBS: Final = frozenset({"ListSets", "ListIdentifiers",
                                 "ListRecords"})
_PREFIX: Final = re.compile(r"[A-Za-z0-9\-_.!~*'()]+")
_SET: Final = re.compile(
    r"[A-Za-z0-9\-_.!~*'()]+(:[A-Za-z0-9\-_.!~*'()]+)*")
#: What an identifier may be: a URI, no space, nothing to escape.
_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+")
#: Characters XML 1.0 cannot carry (control characters, surrogates).
_XML_ILLEGAL: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_DAY: Final = re.compile(r"\d{4}-\d\d-\d\d")
_SECOND: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
GRANULARITY: Final = "YYYY-MM-DDThh:mm:ssZ"


class OAIError(Exception):
    """A protocol error: its OAI code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Repository:
    """What the repository serves: its records and who to write to."""

    #: The records, the publishing registry's own among them.
    records: Sequence[Record]
    #: The identifier of the registry's own record (Identify shows it).
    registry_id: str
    #: The registry's name (Identify's ``repositoryName``).
    name: str
    admin_email: str
    #: The OAI base URL (``…/oai``).
    base_url: str


def _instant(text: str, name: str, *, end: bool) -> tuple[datetime, bool]:
    """Parse ``from``/``until``: (instant, given to the day).

    A day stands for its first second (``from``) or its last
    (``until``, ``end``).
    """
    try:
        if _DAY.fullmatch(text):
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return (day + timedelta(days=1, seconds=-1) if end
                    else day), True
        if _SECOND.fullmatch(text):
            return datetime.fromisoformat(text), False
    except ValueError:
        pass
    raise OAIError("badArgument", (
        f"{name}={text!r} is not a UTC datestamp (YYYY-MM-DD or "
        f"{GRANULARITY})"))


def _check_arguments(verb: str, args: Mapping[str, str]) -> None:
    """Raise badArgument for a missing, unknown or ill-formed argument."""
    required, optional = VERBS[verb]
    if "resumptionToken" in args and verb in _TOKEN_VERBS:
        if len(args) > 1:
            raise OAIError("badArgument", (
                "resumptionToken is an exclusive argument: give it "
                "alone"))
        return
    unknown = sorted(set(args) - required - optional)
    if unknown:
        allowed = sorted(required | optional)
        raise OAIError("badArgument", (
            f"{verb} does not take {', '.join(map(repr, unknown))} (its "
            f"arguments: {', '.join(allowed) or 'none'})"))
    missing = sorted(required - set(args))
    if missing:
        raise OAIError("badArgument",
                       f"{verb} needs {', '.join(missing)}")
    identifier = args.get("identifier")
    if identifier is not None and not _URI.fullmatch(identifier):
        raise OAIError("badArgument",
                       f"identifier={identifier!r} is not a URI")
    prefix = args.get("metadataPrefix")
    if prefix is not None and not _PREFIX.fullmatch(prefix):
        raise OAIError("badArgument",
                       f"metadataPrefix={prefix!r} is not a prefix")
    set_spec = args.get("set")
    if set_spec is not None and not _SET.fullmatch(set_spec):
        raise OAIError("badArgument", f"set={set_spec!r} is not a setSpec")
    limits = {}
    for name in ("from", "until"):
        if name in args:
            limits[name] = _instant(args[name], name, end=name == "until")
    if len(limits) == 2:
        (start, start_day), (stop, stop_day) = limits["from"], limits[
            "until"]
        if start_day != stop_day:
            raise OAIError("badArgument", (
                "from and until must have the same granularity (both "
                "days or both seconds)"))
        if start > stop:
            raise OAIError("badArgument", "from is later than until")


def _prefix(args: Mapping[str, str]) -> str:
    prefix = args["metadataPrefix"]
    if prefix not in FORMATS:
        raise OAIError("cannotDisseminateFormat", (
            f"no metadata format {prefix!r} here (the formats: "
            f"{', '.join(FORMATS)})"))
    return prefix


def _find(repository: Repository, identifier: str) -> Record:
    for record in repository.records:
        if record.identifier == identifier:
            return record
    raise OAIError("idDoesNotExist", (
        f"no record {identifier!r} here (the records: "
        f"{', '.join(r.identifier for r in repository.records)})"))


def _header(record: Record) -> etree._Element:
    return _O.header(_O.identifier(record.identifier),
                     _O.datestamp(stamp(record.datestamp)),
                     _O.setSpec(MANAGED_SET))


def _metadata(record: Record, prefix: str) -> etree._Element:
    if prefix == "ivo_vor":
        return _O.metadata(record.resource)
    dc = ElementMaker(namespace=OAI_DC_NS,
                      nsmap={"oai_dc": OAI_DC_NS, "dc": DC_NS})
    return _O.metadata(dc.dc(*(_DC(name, text)
                               for name, text in record.dublin_core)))


def _selected(repository: Repository,
              args: Mapping[str, str]) -> list[Record]:
    """Return the records within ``from``/``until`` and the set."""
    start = (_instant(args["from"], "from", end=False)[0]
             if "from" in args else None)
    stop = (_instant(args["until"], "until", end=True)[0]
            if "until" in args else None)
    if args.get("set", MANAGED_SET) != MANAGED_SET:
        raise OAIError("noRecordsMatch", (
            f"no set {args['set']!r} here (the one set: {MANAGED_SET})"))
    found = [r for r in repository.records
             if (start is None or r.datestamp >= start)
             and (stop is None or r.datestamp <= stop)]
    if not found:
        raise OAIError("noRecordsMatch",
                       "no record changed between from and until")
    return found


def _identify(repository: Repository,
              args: Mapping[str, str]) -> etree._Element:
    del args
    earliest = min(r.datestamp for r in repository.records)
    own = _find(repository, repository.registry_id)
    return _O.Identify(
        _O.repositoryName(repository.name),
        _O.baseURL(repository.base_url),
        _O.protocolVersion("2.0"),
        _O.adminEmail(repository.admin_email),
        _O.earliestDatestamp(stamp(earliest)),
        _O.deletedRecord("no"),
        _O.granularity(GRANULARITY),
        _O.description(own.resource))


def _list_metadata_formats(repository: Repository,
                           args: Mapping[str, str]) -> etree._Element:
    if "identifier" in args:
        _find(repository, args["identifier"])  # every record has both
    return _O.ListMetadataFormats(*(
        _O.metadataFormat(_O.metadataPrefix(prefix), _O.schema(schema),
                          _O.metadataNamespace(namespace))
        for prefix, (schema, namespace) in FORMATS.items()))


def _list_sets(repository: Repository,
               args: Mapping[str, str]) -> etree._Element:
    del repository, args
    return _O.ListSets(_O.set(
        _O.setSpec(MANAGED_SET),
        _O.setName("Resources managed by this publishing registry")))


def _get_record(repository: Repository,
                args: Mapping[str, str]) -> etree._Element:
    prefix = _prefix(args)
    record = _find(repository, args["identifier"])
    return _O.GetRecord(_O.record(_header(record),
                                  _metadata(record, prefix)))


def _list_identifiers(repository: Repository,
                      args: Mapping[str, str]) -> etree._Element:
    _prefix(args)
    return _O.ListIdentifiers(*(_header(record)
                                for record in _selected(repository, args)))


def _list_records(repository: Repository,
                  args: Mapping[str, str]) -> etree._Element:
    prefix = _prefix(args)
    return _O.ListRecords(*(
        _O.record(_header(record), _metadata(record, prefix))
        for record in _selected(repository, args)))


_ANSWERS: Final[Mapping[str, Callable[
    [Repository, Mapping[str, str]], etree._Element]]] = {
    "Identify": _identify,
    "ListMetadataFormats": _list_metadata_formats,
    "ListSets": _list_sets,
    "GetRecord": _get_record,
    "ListIdentifiers": _list_identifiers,
    "ListRecords": _list_records,
}


def _arguments(pairs: Sequence[tuple[str, str]]) -> tuple[str, dict[
        str, str]]:
    """Return the verb and the other arguments (errors as OAIError)."""
    verbs = [value for name, value in pairs if name == "verb"]
    if len(verbs) != 1 or verbs[0] not in VERBS:
        reason = ("no verb given" if not verbs
                  else "the verb is repeated" if len(verbs) > 1
                  else f"{verbs[0]!r} is not a verb")
        raise OAIError("badVerb", (
            f"{reason} (the verbs: {', '.join(VERBS)})"))
    args: dict[str, str] = {}
    for name, value in pairs:
        if name == "verb":
            continue
        if name in args:
            raise OAIError("badArgument", f"{name!r} is given twice")
        if _XML_ILLEGAL.search(name + value):
            raise OAIError("badArgument", (
                f"{name}={value!r}: control characters are no argument"))
        args[name] = value
    _check_arguments(verbs[0], args)
    if "resumptionToken" in args:
        raise OAIError("badResumptionToken", (
            "this repository issues no resumption tokens: every list is "
            "complete in one answer"))
    return verbs[0], args


def respond(pairs: Sequence[tuple[str, str]], repository: Repository,
            now: datetime) -> bytes:
    """Answer one OAI-PMH request.

    Parameters
    ----------
    pairs : sequence of (str, str)
        The request's arguments in order (names are case-sensitive).
    repository : Repository
        The records and the repository's description.
    now : datetime
        The response date.

    Returns
    -------
    bytes
        The ``OAI-PMH`` document, UTF-8 with declaration (errors
        included: they are answers of the protocol).
    """
    request = _O.request(repository.base_url)
    try:
        verb, args = _arguments(pairs)
    except OAIError as exc:
        body: list[etree._Element] = [_O.error(exc.message, code=exc.code)]
        if exc.code == "badResumptionToken":
            request.attrib.update(dict(pairs))
    else:
        request.attrib.update({"verb": verb, **args})
        try:
            body = [_ANSWERS[verb](repository, args)]
        except OAIError as exc:
            body = [_O.error(exc.message, code=exc.code)]
    root = _O("OAI-PMH", _O.responseDate(stamp(now)), request, *body)
    root.set(f"{{{XSI_NS}}}schemaLocation",
             f"{OAI_NS} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                          pretty_print=True)
