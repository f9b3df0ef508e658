"""The service's VOResource records, for ``/resource.xml`` and ``/oai``.

A deployment that sets ``qfits.ivoid`` is a publishing registry of its
own (IVOA Registry Interfaces 1.0): it describes

- the service, a ``vr:Service`` with the capabilities of its UWS job
  list, its VOSI endpoints and its web page.  The service processes
  the images it is given, it holds no data collection, so it is not a
  ``vs:DataService`` (whose facility, instrument and coverage would be
  empty) nor a ``vs:CatalogService`` (no tables);
- the publishing registry itself, a ``vg:Registry`` whose ``vg:Harvest``
  capability is the OAI-PMH endpoint (``/oai``); a searchable registry
  harvests it once it is listed in the Registry of Registries;
- the naming authority of the service's IVOID (``ivo://authority``), a
  ``vg:Authority`` that the registry declares it manages, unless
  ``qfits.registry_authority`` is false (the authority is then managed,
  and its record published, by another registry of the data centre).

Every record is an ``ri:Resource`` whose children are unqualified
(VOResource); the settings fill the title, curation and content
(`RecordSettings`, from `uws.settings.Settings`).  Nothing here reads
the request: URLs come from the public base URL the views pass in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from lxml import etree
from lxml.builder import ElementMaker

from pbs_bridge.config import SettingsError
from qualityfits._version import __version__
from uws.xml import (
    AVAILABILITY_ID,
    CAPABILITIES_ID,
    UWS_ID,
    VS_NS,
    XSI_NS,
)

__all__ = [
    "IVOID",
    "RI_NS",
    "VG_NS",
    "VR_NS",
    "Record",
    "RecordSettings",
    "parse_record_time",
    "records",
    "resource_document",
]

RI_NS: Final = "http://www.ivoa.net/xml/RegistryInterface/v1.0"
VR_NS: Final = "http://www.ivoa.net/xml/VOResource/v1.0"
VG_NS: Final = "http://www.ivoa.net/xml/VORegistry/v1.0"
#: standardID of a registry's harvesting (and searching) interfaces.
REGISTRY_ID: Final = "ivo://ivoa.net/std/Registry"
#: VOResource's ``IdentifierURI``, the form of an IVOA identifier.
IVOID: Final = re.compile(
    r"ivo://[\w\-.!~*'()+=]{3,}(/[\w\-.!~*'()+=]+)*")
#: An address OAI-PMH accepts as ``adminEmail`` (its ``emailType``).
_EMAIL: Final = re.compile(r"\S+@(\S+\.)+\S+")
#: Characters XML 1.0 cannot carry.
_XML_ILLEGAL: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: The OAI set of the records a publishing registry manages (RI 1.0).
MANAGED_SET: Final = "ivo_managed"

_NSMAP: Final = {"ri": RI_NS, "vr": VR_NS, "vs": VS_NS, "vg": VG_NS,
                 "xsi": XSI_NS}
_RI: Final = ElementMaker(namespace=RI_NS, nsmap=_NSMAP)
_E: Final = ElementMaker()
_XSI_TYPE: Final = f"{{{XSI_NS}}}type"


class Settings(Protocol):
    """The settings the records are written from (`uws.settings`).

    A protocol, so that `uws.settings` may use this module's checks
    without the two importing each other.  Read-only: the settings are
    a frozen dataclass.
    """

    @property
    def ivoid(self) -> str: ...
    @property
    def registry_ivoid(self) -> str: ...
    @property
    def registry_authority(self) -> bool: ...
    @property
    def record_title(self) -> str: ...
    @property
    def record_short_name(self) -> str: ...
    @property
    def record_publisher(self) -> str: ...
    @property
    def record_contact_name(self) -> str: ...
    @property
    def record_contact_email(self) -> str: ...
    @property
    def record_description(self) -> str: ...
    @property
    def record_subjects(self) -> str: ...
    @property
    def record_reference_url(self) -> str: ...
    @property
    def record_created(self) -> str: ...
    @property
    def record_updated(self) -> str: ...


def parse_record_time(text: str, key: str) -> datetime | None:
    """Parse an ISO 8601 instant of a setting (naive: UTC; empty: None).

    Raises
    ------
    SettingsError
        If the text is no ISO 8601 date or instant.
    """
    value = text.strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).replace(microsecond=0)
    except (ValueError, OverflowError):
        raise SettingsError(
            f"{key}: {text!r} is not an ISO 8601 instant of the years "
            "1 to 9999 (e.g. 2026-01-02T03:04:05Z)") from None


@dataclass(frozen=True)
class RecordSettings:
    """What the records say, from the ``qfits.*`` settings (checked)."""

    ivoid: str
    registry_ivoid: str
    manage_authority: bool
    title: str
    short_name: str
    publisher: str
    contact_name: str
    contact_email: str
    description: str
    subjects: tuple[str, ...]
    reference_url: str
    created: datetime
    updated: datetime

    @property
    def authority(self) -> str:
        """Return the naming authority of the service (``ivo://auth``)."""
        return "ivo://" + self.ivoid.removeprefix("ivo://").split("/")[0]

    @classmethod
    def from_settings(cls, settings: Settings,
                      started: datetime) -> RecordSettings | None:
        """Return the record settings, None when ``qfits.ivoid`` is unset.

        ``started`` stands for the creation and update instants the
        settings do not give (the start of the process).
        """
        if not settings.ivoid:
            return None
        check_settings(settings)
        start = started.astimezone(UTC).replace(microsecond=0)
        created = parse_record_time(settings.record_created,
                                    "qfits.record_created")
        updated = parse_record_time(settings.record_updated,
                                    "qfits.record_updated")
        if updated is None:
            updated = max(start, created or start)
        return cls(
            ivoid=settings.ivoid,
            registry_ivoid=_registry_ivoid(settings),
            manage_authority=settings.registry_authority,
            title=settings.record_title,
            short_name=settings.record_short_name,
            publisher=settings.record_publisher,
            contact_name=(settings.record_contact_name
                          or settings.record_publisher),
            contact_email=settings.record_contact_email,
            description=settings.record_description,
            subjects=subject_list(settings.record_subjects),
            reference_url=settings.record_reference_url,
            created=created or updated,
            updated=updated,
        )


def subject_list(text: str) -> tuple[str, ...]:
    """Split the subjects setting on commas (a subject may have spaces)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def check_settings(settings: Settings) -> None:
    """Refuse registry settings that would make an invalid record.

    Raises
    ------
    SettingsError
        Naming the ``qfits.*`` key and what it must be.
    """
    if not settings.ivoid:
        return
    _check_identifiers(settings)
    for key in ("record_publisher", "record_contact_email"):
        if not getattr(settings, key).strip():
            raise SettingsError(
                f"qfits.{key} is required with qfits.ivoid (who runs the "
                'service, and whom to write to: docs/service.md, "The '
                'VO registry")')
    for key in ("record_title", "record_short_name", "record_publisher",
                "record_contact_name", "record_contact_email",
                "record_description", "record_subjects",
                "record_reference_url"):
        if _XML_ILLEGAL.search(getattr(settings, key)):
            raise SettingsError(
                f"qfits.{key}: control characters cannot be written in "
                "the record")
    if not _EMAIL.fullmatch(settings.record_contact_email):
        raise SettingsError(
            f"qfits.record_contact_email: {settings.record_contact_email!r}"
            " is not an e-mail address (name@host.domain)")
    for key in ("record_title", "record_description"):
        if not getattr(settings, key).strip():
            raise SettingsError(f"qfits.{key} must not be empty")
    if len(settings.record_short_name) > 16:
        raise SettingsError(
            f"qfits.record_short_name: {settings.record_short_name!r} is "
            "longer than 16 characters (VOResource's limit)")
    if not subject_list(settings.record_subjects):
        raise SettingsError("qfits.record_subjects: give at least one "
                            "subject (separated by commas)")
    url = settings.record_reference_url
    if url and not re.match(r"^https?://[^/\s]+\S*$", url):
        raise SettingsError(
            f"qfits.record_reference_url: {url!r} is not an http(s) URL")
    created = parse_record_time(settings.record_created,
                                "qfits.record_created")
    updated = parse_record_time(settings.record_updated,
                                "qfits.record_updated")
    if created and updated and created > updated:
        raise SettingsError("qfits.record_created is after "
                            "qfits.record_updated")


def _check_identifiers(settings: Settings) -> None:
    """Refuse IVOIDs that are malformed, or that two records would share.

    The service's and the registry's identifiers need a path: the bare
    ``ivo://authority`` is the authority's record.
    """
    for key, value in (("ivoid", settings.ivoid),
                       ("registry_ivoid", settings.registry_ivoid)):
        if value and not IVOID.fullmatch(value):
            raise SettingsError(
                f"qfits.{key}: {value!r} is not an IVOA identifier "
                "(ivo://authority/path, e.g. ivo://example.org/qfits)")
        if value and "/" not in value.removeprefix("ivo://"):
            raise SettingsError(
                f"qfits.{key}: {value!r} names an authority, not a "
                "resource: add a path (e.g. ivo://example.org/qfits)")
    if _registry_ivoid(settings) == settings.ivoid:
        raise SettingsError(
            f"qfits.registry_ivoid ({_registry_ivoid(settings)}) must "
            "differ from qfits.ivoid (two records, two identifiers)")


def _registry_ivoid(settings: Settings) -> str:
    """Return the registry's IVOID (default: ``ivo://{authority}/registry``)."""
    authority = settings.ivoid.removeprefix("ivo://").split("/")[0]
    return settings.registry_ivoid or f"ivo://{authority}/registry"


@dataclass(frozen=True)
class Record:
    """One record of the publishing registry."""

    #: The IVOID, also the record's OAI identifier.
    identifier: str
    #: Its last change (the OAI datestamp, VOResource ``updated``).
    datestamp: datetime
    #: The ``ri:Resource`` element (``ivo_vor``).
    resource: etree._Element
    #: Its Dublin Core fields: (element name, text) pairs (``oai_dc``).
    dublin_core: tuple[tuple[str, str], ...]


def stamp(dt: datetime) -> str:
    """Write an instant to the second, UTC, trailing ``Z`` (OAI, VOR)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _interface(xsi_type: str, url: str, use: str, *,
               std: bool) -> etree._Element:
    attrs = {_XSI_TYPE: xsi_type}
    if std:
        attrs["role"] = "std"
    return _E.interface(_E.accessURL(url, use=use), attrs)


def _capability(standard_id: str | None, description: str,
                interface: etree._Element) -> etree._Element:
    attrs = {} if standard_id is None else {"standardID": standard_id}
    return _E.capability(_E.description(description), interface, attrs)


def _curation(info: RecordSettings) -> etree._Element:
    return _E.curation(
        _E.publisher(info.publisher),
        _E.date(stamp(info.created), role="Created"),
        _E.date(stamp(info.updated), role="Updated"),
        _E.version(__version__),
        _E.contact(_E.name(info.contact_name),
                   _E.email(info.contact_email)),
    )


def _resource(info: RecordSettings, xsi_type: str, *,
              title: str, identifier: str, short_name: str | None,
              content: Sequence[etree._Element],
              tail: Sequence[etree._Element]) -> etree._Element:
    children = [_E.title(title)]
    if short_name:
        children.append(_E.shortName(short_name))
    children += [_E.identifier(identifier), _curation(info),
                 _E.content(*content), *tail]
    return _RI.Resource(*children, {
        _XSI_TYPE: xsi_type, "created": stamp(info.created),
        "updated": stamp(info.updated), "status": "active"})


def _dublin_core(info: RecordSettings, title: str, identifier: str,
                 description: str, subjects: Sequence[str],
                 kind: str) -> tuple[tuple[str, str], ...]:
    return (("title", title), ("creator", info.publisher),
            *(("subject", s) for s in subjects),
            ("description", description), ("publisher", info.publisher),
            ("date", stamp(info.updated)), ("type", kind),
            ("identifier", identifier))


def service_record(info: RecordSettings, base_url: str) -> Record:
    """Return the service's record (``vr:Service``).

    Its capabilities: the UWS 1.1 job list (``use="base"``: clients
    append the job paths), VOSI capabilities and availability
    (``use="full"``) and the web page (``vr:WebBrowser``).
    """
    base = base_url.rstrip("/")
    reference = info.reference_url or f"{base}/"
    content = [*(_E.subject(s) for s in info.subjects),
               _E.description(info.description),
               _E.referenceURL(reference), _E.type("Other"),
               _E.contentLevel("Research")]
    capabilities = [
        _capability(UWS_ID, "The UWS 1.1 job list: POST an image (or "
                    "its URL) to create a job that assesses it.",
                    _interface("vs:ParamHTTP", f"{base}/jobs", "base",
                               std=True)),
        _capability(CAPABILITIES_ID, "VOSI capabilities.",
                    _interface("vs:ParamHTTP", f"{base}/capabilities",
                               "full", std=True)),
        _capability(AVAILABILITY_ID, "VOSI availability.",
                    _interface("vs:ParamHTTP", f"{base}/availability",
                               "full", std=True)),
        _capability(None, "The web page: submit images and read the "
                    "quality reports in a browser.",
                    _interface("vr:WebBrowser", f"{base}/", "full",
                               std=False)),
    ]
    resource = _resource(info, "vr:Service", title=info.title,
                         identifier=info.ivoid, short_name=info.short_name,
                         content=content, tail=capabilities)
    return Record(info.ivoid, info.updated, resource, _dublin_core(
        info, info.title, info.ivoid, info.description, info.subjects,
        "Service"))


def registry_record(info: RecordSettings, base_url: str) -> Record:
    """Return the publishing registry's own record (``vg:Registry``)."""
    base = base_url.rstrip("/")
    title = f"{info.title}: publishing registry"
    description = (
        f"The publishing registry of {info.title}: its OAI-PMH endpoint "
        "gives the VOResource records of the service, of this registry "
        "and of the authority it manages, for searchable registries to "
        "harvest.")
    subjects = ("Virtual observatory",)
    content = [*(_E.subject(s) for s in subjects),
               _E.description(description),
               _E.referenceURL(info.reference_url or f"{base}/"),
               _E.type("Registry")]
    harvest = _E.capability(
        _E.description("OAI-PMH 2.0 harvesting (metadata prefixes "
                       "ivo_vor and oai_dc, set ivo_managed)."),
        _E.interface(_E.accessURL(f"{base}/oai", use="base"),
                     {_XSI_TYPE: "vg:OAIHTTP", "role": "std",
                      "version": "1.0"}),
        _E.maxRecords("0"),
        {_XSI_TYPE: "vg:Harvest", "standardID": REGISTRY_ID})
    tail = [harvest, _E.full("false")]
    if info.manage_authority:
        tail.append(_E.managedAuthority(info.authority[6:]))
    resource = _resource(info, "vg:Registry", title=title,
                         identifier=info.registry_ivoid, short_name=None,
                         content=content, tail=tail)
    return Record(info.registry_ivoid, info.updated, resource,
                  _dublin_core(info, title, info.registry_ivoid,
                               description, subjects, "Registry"))


def authority_record(info: RecordSettings, base_url: str) -> Record:
    """Return the record of the service's naming authority."""
    base = base_url.rstrip("/")
    title = f"{info.publisher} naming authority"
    description = (f"The authority of the IVOA identifiers "
                   f"{info.authority}/..., managed by {info.publisher} "
                   f"in the registry {info.registry_ivoid}.")
    subjects = ("Virtual observatory",)
    content = [*(_E.subject(s) for s in subjects),
               _E.description(description),
               _E.referenceURL(info.reference_url or f"{base}/"),
               _E.type("Organisation")]
    resource = _resource(info, "vg:Authority", title=title,
                         identifier=info.authority, short_name=None,
                         content=content,
                         tail=[_E.managingOrg(info.publisher)])
    return Record(info.authority, info.updated, resource, _dublin_core(
        info, title, info.authority, description, subjects, "Authority"))


def records(info: RecordSettings, base_url: str) -> tuple[Record, ...]:
    """Return the records of the publishing registry, service first."""
    made = [service_record(info, base_url), registry_record(info, base_url)]
    if info.manage_authority:
        made.append(authority_record(info, base_url))
    return tuple(made)


def resource_document(info: RecordSettings, base_url: str) -> bytes:
    """Return ``/resource.xml``: the service's ``ri:Resource`` record."""
    return etree.tostring(service_record(info, base_url).resource,
                          xml_declaration=True, encoding="UTF-8",
                          pretty_print=True)
