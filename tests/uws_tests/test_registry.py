"""The VO registry: ``/resource.xml`` and the OAI-PMH ``/oai``, live.

A real service on loopback (waitress, SQLite, the local runner) with a
registry identity in its settings answers every document; each is
validated with lxml against the offline IVOA and OAI schemas of
``../shared/schemas`` (a wrapper schema importing ``OAI-PMH.xsd``,
``oai_dc.xsd``, ``RegistryInterface.xsd``, ``VORegistry.xsd``,
``VODataService.xsd`` and ``VOSICapabilities.xsd``: the records inside
an OAI answer are checked strictly, as OAI-PMH.xsd asks).  pyvo has no
reader of a whole VOResource record (``pyvo.registry`` builds its
records from RegTAP rows, which need a searchable registry online), so
the record's capabilities are read by ``pyvo.io.vosi`` (pedantic) once
wrapped in a ``vosi:capabilities`` element, and the rest with lxml.
The harvest test walks the endpoint as a searchable registry does
(Identify, then ListRecords of the set ``ivo_managed``).  Marked
``reference``, STILTS (Xerces) validates the same live documents.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from lxml.builder import ElementMaker
from pyvo.io.vosi import parse_capabilities
from testkit import require_tool
from uwskit import SCHEMAS, LiveService, settings_for

from uws.settings import Settings, SettingsError

OAI = "http://www.openarchives.org/OAI/2.0/"
OAI_DC = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC = "http://purl.org/dc/elements/1.1/"
RI = "http://www.ivoa.net/xml/RegistryInterface/v1.0"
VR = "http://www.ivoa.net/xml/VOResource/v1.0"
VG = "http://www.ivoa.net/xml/VORegistry/v1.0"
VS = "http://www.ivoa.net/xml/VODataService/v1.1"
VOSI_CAPABILITIES = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
NS = {"oai": OAI, "ri": RI, "oai_dc": OAI_DC, "dc": DC}
SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

#: The public base URL of the registered service (behind a proxy).
BASE = "https://vo.example.org/qfits"
IVOID = "ivo://example.org/qfits"
UPDATED = "2026-03-04T05:06:07Z"
REGISTRY = {
    "base_url": BASE,
    "ivoid": IVOID,
    "record_publisher": "Example Observatory Data Centre",
    "record_contact_name": "Ada Observer",
    "record_contact_email": "vo@example.org",
    "record_subjects": "Astronomical instrumentation, Seeing, Photometry",
    "record_title": "Image quality of example.org",
    "record_short_name": "EX QFITS",
    "record_description": "Assesses CCD images.",
    "record_created": "2025-12-01",
    "record_updated": UPDATED,
}
TIMEOUT = 30


@pytest.fixture(scope="module")
def xsd(tmp_path_factory: pytest.TempPathFactory) -> etree.XMLSchema:
    """One validator for OAI answers, records and capabilities."""
    if not (SCHEMAS / "OAI-PMH.xsd").exists():
        pytest.skip(f"IVOA schemas not available: {SCHEMAS} is absent")
    xs = ElementMaker(namespace="http://www.w3.org/2001/XMLSchema",
                      nsmap={"xs": "http://www.w3.org/2001/XMLSchema"})
    wrapper = xs.schema(*(
        xs("import", namespace=namespace,
           schemaLocation=(SCHEMAS / name).as_uri())
        for namespace, name in (
            (OAI, "OAI-PMH.xsd"), (OAI_DC, "oai_dc.xsd"),
            (RI, "RegistryInterface.xsd"), (VG, "VORegistry.xsd"),
            (VS, "VODataService.xsd"),
            (VOSI_CAPABILITIES, "VOSICapabilities.xsd"))))
    path = tmp_path_factory.mktemp("xsd") / "registry-wrapper.xsd"
    etree.ElementTree(wrapper).write(path)
    return etree.XMLSchema(etree.parse(path))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """A service with a registry identity (module-scoped: read only)."""
    root = tmp_path_factory.mktemp("vo")
    service = LiveService(settings_for(root, f"sqlite:///{root}/j.sqlite",
                                       **REGISTRY), threads=4)
    yield service
    service.stop()


def valid(xsd: etree.XMLSchema, response: requests.Response) -> Any:
    """Check status, type and schema; return the parsed document."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/xml")
    assert response.content.startswith(b"<?xml")
    root = etree.fromstring(response.content)
    xsd.assertValid(root)
    return root


def oai(live: LiveService, xsd: etree.XMLSchema, **args: str) -> Any:
    """GET /oai with these arguments; the valid answer."""
    r = live.http.get(f"{live.url}/oai", params=args, timeout=TIMEOUT)
    return valid(xsd, r)


def oai_error(root: Any) -> tuple[str, dict[str, str]]:
    """Return (error code, request attributes) of an error answer."""
    errors = root.findall("oai:error", NS)
    assert len(errors) == 1, etree.tostring(root).decode()
    assert errors[0].text.strip()  # a message for people
    return errors[0].get("code"), dict(root.find("oai:request", NS).attrib)


def canonical(element: Any) -> bytes:
    """Return the element's canonical XML, layout whitespace dropped.

    Exclusive c14n: the namespaces an enclosing OAI document declares
    do not count.
    """
    copy = etree.fromstring(etree.tostring(element))
    for node in copy.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    return bytes(etree.tostring(copy, method="c14n", exclusive=True))


def capabilities_by_pyvo(capabilities: list[Any]) -> dict[str, Any]:
    """Read capability elements with pyvo (pedantic); by standardID."""
    vosi = ElementMaker(namespace=VOSI_CAPABILITIES, nsmap={
        "vosi": VOSI_CAPABILITIES, "vs": VS, "vr": VR,
        "xsi": "http://www.w3.org/2001/XMLSchema-instance"})
    document = etree.tostring(vosi.capabilities(*capabilities))
    parsed = parse_capabilities(io.BytesIO(document), pedantic=True)
    return {c.standardid: c for c in parsed}


# -- /resource.xml ----------------------------------------------------------
def test_resource_record(live: LiveService, xsd: etree.XMLSchema) -> None:
    r = live.http.get(f"{live.url}/resource.xml", timeout=TIMEOUT)
    record = valid(xsd, r)
    assert record.tag == f"{{{RI}}}Resource"
    assert record.get(XSI_TYPE) == "vr:Service"
    assert (record.get("created"), record.get("updated"),
            record.get("status")) == ("2025-12-01T00:00:00Z", UPDATED,
                                      "active")
    assert (record.findtext("title"), record.findtext("shortName"),
            record.findtext("identifier")) == (
        "Image quality of example.org", "EX QFITS", IVOID)
    assert record.findtext("curation/publisher") == (
        "Example Observatory Data Centre")
    assert (record.findtext("curation/contact/name"),
            record.findtext("curation/contact/email")) == (
        "Ada Observer", "vo@example.org")
    assert record.findtext("curation/version")
    assert [s.text for s in record.iterfind("content/subject")] == [
        "Astronomical instrumentation", "Seeing", "Photometry"]
    assert record.findtext("content/description") == "Assesses CCD images."
    assert record.findtext("content/referenceURL") == f"{BASE}/"
    # Access URLs from qfits.base_url, not from the loopback request.
    urls = {c.get("standardID"): (c.find("interface").get(XSI_TYPE),
                                  c.findtext("interface/accessURL"),
                                  c.find("interface/accessURL").get("use"))
            for c in record.iterfind("capability")}
    assert urls == {
        "ivo://ivoa.net/std/UWS#rest-1.1": (
            "vs:ParamHTTP", f"{BASE}/jobs", "base"),
        "ivo://ivoa.net/std/VOSI#capabilities": (
            "vs:ParamHTTP", f"{BASE}/capabilities", "full"),
        "ivo://ivoa.net/std/VOSI#availability": (
            "vs:ParamHTTP", f"{BASE}/availability", "full"),
        None: ("vr:WebBrowser", f"{BASE}/", "full"),
    }
    # pyvo reads the capabilities (its VOSI parser; see the docstring).
    read = capabilities_by_pyvo(list(record.iterfind("capability")))
    uws = read["ivo://ivoa.net/std/UWS#rest-1.1"]
    assert uws.interfaces[0].accessurls[0].content == f"{BASE}/jobs"
    assert uws.interfaces[0].accessurls[0].use == "base"
    assert read[None].interfaces[0].accessurls[0].content == f"{BASE}/"
    # HEAD answers, other methods are refused.
    assert live.http.head(f"{live.url}/resource.xml",
                          timeout=TIMEOUT).status_code == 200
    r = live.http.post(f"{live.url}/resource.xml", data={"a": "b"},
                       timeout=TIMEOUT)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"


def test_capabilities_link_the_record(live: LiveService,
                                      xsd: etree.XMLSchema) -> None:
    root = valid(xsd, live.http.get(f"{live.url}/capabilities",
                                    timeout=TIMEOUT))
    read = parse_capabilities(
        io.BytesIO(etree.tostring(root)), pedantic=True)
    by_id = {c.standardid: c for c in read}
    assert set(by_id) == {
        "ivo://ivoa.net/std/VOSI#capabilities",
        "ivo://ivoa.net/std/VOSI#availability",
        "ivo://ivoa.net/std/UWS#rest-1.1", None}
    link = by_id[None].interfaces[0].accessurls[0].content
    assert link == f"{BASE}/resource.xml"
    assert "VOResource record" in by_id[None].description
    # The link, made local, is the record.
    local = link.replace(BASE, live.url)
    record = valid(xsd, live.http.get(local, timeout=TIMEOUT))
    assert record.findtext("identifier") == IVOID


def test_no_ivoid_no_record(
        start_service: Callable[..., LiveService],
        xsd: etree.XMLSchema) -> None:
    live = start_service(threads=4)
    for path in ("/resource.xml", "/oai?verb=Identify"):
        r = live.http.get(f"{live.url}{path}", timeout=TIMEOUT)
        assert r.status_code == 404
        assert r.headers["Content-Type"].startswith("text/plain")
        assert len(r.text.strip().splitlines()) == 1
        assert "qfits.ivoid" in r.text
    root = valid(xsd, live.http.get(f"{live.url}/capabilities",
                                    timeout=TIMEOUT))
    assert all(c.get("standardID") for c in root)


def test_record_follows_the_request_without_base_url(
        start_service: Callable[..., LiveService],
        xsd: etree.XMLSchema) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    settings = {k: v for k, v in REGISTRY.items()
                if k not in {"base_url", "record_created", "record_updated"}}
    live = start_service(threads=4, **settings)
    after = datetime.now(UTC)
    record = valid(xsd, live.http.get(f"{live.url}/resource.xml",
                                      timeout=TIMEOUT))
    assert record.findtext("capability/interface/accessURL") == live.jobs
    # Without the record_* instants: the start of the service, to the
    # second, everywhere (record, curation dates, OAI datestamps).
    updated = record.get("updated")
    assert SECONDS.fullmatch(updated)
    assert before <= datetime.fromisoformat(updated) <= after
    assert record.get("created") == updated
    assert [d.text for d in record.iterfind("curation/date")] == [
        updated, updated]
    listed = oai(live, xsd, verb="ListIdentifiers", metadataPrefix="ivo_vor")
    assert {d.text for d in listed.iterfind(".//oai:datestamp", NS)} == {
        updated}
    identify = oai(live, xsd, verb="Identify")
    assert identify.findtext(".//oai:earliestDatestamp", namespaces=NS) == (
        updated)


# -- /oai -------------------------------------------------------------------
def test_identify(live: LiveService, xsd: etree.XMLSchema) -> None:
    root = oai(live, xsd, verb="Identify")
    assert SECONDS.fullmatch(root.findtext("oai:responseDate", namespaces=NS))
    assert root.find("oai:request", NS).text == f"{BASE}/oai"
    assert root.find("oai:request", NS).get("verb") == "Identify"
    identify = root.find("oai:Identify", NS)
    assert identify.findtext("oai:baseURL", namespaces=NS) == f"{BASE}/oai"
    assert identify.findtext("oai:protocolVersion", namespaces=NS) == "2.0"
    assert identify.findtext("oai:adminEmail", namespaces=NS) == (
        "vo@example.org")
    assert identify.findtext("oai:earliestDatestamp", namespaces=NS) == (
        UPDATED)
    assert identify.findtext("oai:granularity", namespaces=NS) == (
        "YYYY-MM-DDThh:mm:ssZ")
    registry = identify.find("oai:description/ri:Resource", NS)
    assert registry.get(XSI_TYPE) == "vg:Registry"
    assert registry.findtext("identifier") == "ivo://example.org/registry"
    harvest = registry.find("capability")
    assert (harvest.get(XSI_TYPE), harvest.get("standardID")) == (
        "vg:Harvest", "ivo://ivoa.net/std/Registry")
    interface = harvest.find("interface")
    assert (interface.get(XSI_TYPE), interface.get("role"),
            interface.findtext("accessURL")) == (
        "vg:OAIHTTP", "std", f"{BASE}/oai")
    assert registry.findtext("managedAuthority") == "example.org"


def test_metadata_formats_and_sets(live: LiveService,
                                   xsd: etree.XMLSchema) -> None:
    for args in ({}, {"identifier": IVOID}):
        root = oai(live, xsd, verb="ListMetadataFormats", **args)
        formats = {f.findtext("oai:metadataPrefix", namespaces=NS):
                   f.findtext("oai:metadataNamespace", namespaces=NS)
                   for f in root.iterfind(".//oai:metadataFormat", NS)}
        assert formats == {"ivo_vor": RI, "oai_dc": OAI_DC}
    root = oai(live, xsd, verb="ListSets")
    assert [s.text for s in root.iterfind(".//oai:setSpec", NS)] == [
        "ivo_managed"]


def test_get_record(live: LiveService, xsd: etree.XMLSchema) -> None:
    root = oai(live, xsd, verb="GetRecord", identifier=IVOID,
               metadataPrefix="ivo_vor")
    assert dict(root.find("oai:request", NS).attrib) == {
        "verb": "GetRecord", "identifier": IVOID,
        "metadataPrefix": "ivo_vor"}
    header = root.find(".//oai:header", NS)
    assert (header.findtext("oai:identifier", namespaces=NS),
            header.findtext("oai:datestamp", namespaces=NS),
            header.findtext("oai:setSpec", namespaces=NS)) == (
        IVOID, UPDATED, "ivo_managed")
    # The record is /resource.xml's.
    resource = root.find(".//oai:metadata/ri:Resource", NS)
    alone = etree.fromstring(live.http.get(f"{live.url}/resource.xml",
                                           timeout=TIMEOUT).content)
    assert canonical(resource) == canonical(alone)
    root = oai(live, xsd, verb="GetRecord", identifier=IVOID,
               metadataPrefix="oai_dc")
    dc = root.find(".//oai:metadata/oai_dc:dc", NS)
    assert dc.findtext("dc:title", namespaces=NS) == (
        "Image quality of example.org")
    assert dc.findtext("dc:identifier", namespaces=NS) == IVOID
    assert [s.text for s in dc.iterfind("dc:subject", NS)] == [
        "Astronomical instrumentation", "Seeing", "Photometry"]


def test_harvest_like_a_searchable_registry(
        live: LiveService, xsd: etree.XMLSchema) -> None:
    """Identify, then every managed record; they must agree."""
    identify = oai(live, xsd, verb="Identify")
    base = identify.findtext(".//oai:baseURL", namespaces=NS)
    assert base == f"{BASE}/oai"
    own = identify.find(".//oai:description/ri:Resource", NS)
    listed = oai(live, xsd, verb="ListRecords", metadataPrefix="ivo_vor",
                 set="ivo_managed")
    records = {r.findtext("oai:header/oai:identifier", namespaces=NS):
               r.find("oai:metadata/ri:Resource", NS)
               for r in listed.iterfind(".//oai:record", NS)}
    assert {k: v.get(XSI_TYPE) for k, v in records.items()} == {
        IVOID: "vr:Service", "ivo://example.org/registry": "vg:Registry",
        "ivo://example.org": "vg:Authority"}
    # The registry's record is the one Identify shows; it manages the
    # authority of every record it publishes, whose record it gives.
    assert canonical(records["ivo://example.org/registry"]) == canonical(
        own)
    authority = own.findtext("managedAuthority")
    for identifier in records:
        assert identifier.removeprefix("ivo://").split("/")[0] == authority
    assert records["ivo://example.org"].findtext("managingOrg") == (
        "Example Observatory Data Centre")
    identifiers = oai(live, xsd, verb="ListIdentifiers",
                      metadataPrefix="oai_dc")
    assert [i.text for i in identifiers.iterfind(
        ".//oai:header/oai:identifier", NS)] == list(records)
    dublin = oai(live, xsd, verb="ListRecords", metadataPrefix="oai_dc")
    assert len(dublin.findall(".//oai:metadata/oai_dc:dc", NS)) == 3


@pytest.mark.parametrize(("args", "records"), [
    ({"from": "2026-03-04"}, 3),
    ({"from": UPDATED}, 3),
    ({"until": UPDATED}, 3),
    ({"until": "2026-03-04"}, 3),
    ({"from": "2026-03-04", "until": "2026-03-04"}, 3),
    ({"from": "2026-03-04T05:06:08Z"}, 0),
    ({"from": "2026-03-05"}, 0),
    ({"until": "2026-03-04T05:06:06Z"}, 0),
    ({"until": "2026-03-03"}, 0),
    ({"set": "other"}, 0),
])
def test_from_until_set(live: LiveService, xsd: etree.XMLSchema,
                        args: dict[str, str], records: int) -> None:
    for verb in ("ListIdentifiers", "ListRecords"):
        root = oai(live, xsd, verb=verb, metadataPrefix="ivo_vor", **args)
        if records:
            assert len(root.findall(".//oai:header", NS)) == records
        else:
            code, request = oai_error(root)
            assert code == "noRecordsMatch"
            assert request == {"verb": verb, "metadataPrefix": "ivo_vor",
                               **args}


@pytest.mark.parametrize(("query", "code"), [
    ("", "badVerb"),
    ("verb=Delete", "badVerb"),
    ("verb=Identify&verb=Identify", "badVerb"),
    ("verb=identify", "badVerb"),
    ("verb=Identify&metadataPrefix=ivo_vor", "badArgument"),
    ("verb=ListRecords", "badArgument"),
    ("verb=GetRecord&identifier=ivo%3A%2F%2Fexample.org%2Fqfits",
     "badArgument"),
    ("verb=ListRecords&metadataPrefix=ivo_vor&metadataPrefix=oai_dc",
     "badArgument"),
    ("verb=ListRecords&metadataPrefix=ivo_vor&from=yesterday",
     "badArgument"),
    ("verb=ListRecords&metadataPrefix=ivo_vor&from=2026-03-04T05%3A06Z",
     "badArgument"),
    ("verb=ListRecords&metadataPrefix=ivo_vor&from=2026-02-30",
     "badArgument"),
    (("verb=ListRecords&metadataPrefix=ivo_vor&from=2026-03-04"
     "&until=2026-03-05T00%3A00%3A00Z"), "badArgument"),
    (("verb=ListRecords&metadataPrefix=ivo_vor&from=2026-03-05"
     "&until=2026-03-04"), "badArgument"),
    ("verb=ListRecords&metadataPrefix=a%20b", "badArgument"),
    ("verb=ListRecords&metadataPrefix=ivo_vor&resumptionToken=x",
     "badArgument"),
    ("verb=ListRecords&resumptionToken=x", "badResumptionToken"),
    ("verb=ListRecords&metadataPrefix=marc21", "cannotDisseminateFormat"),
    (("verb=GetRecord&identifier=ivo%3A%2F%2Fexample.org%2Fqfits"
     "&metadataPrefix=ivo_dc"), "cannotDisseminateFormat"),
    (("verb=GetRecord&identifier=ivo%3A%2F%2Fexample.org%2Fnone"
     "&metadataPrefix=ivo_vor"), "idDoesNotExist"),
    ("verb=ListMetadataFormats&identifier=ivo%3A%2F%2Fexample.org%2Fnone",
     "idDoesNotExist"),
])
def test_errors(live: LiveService, xsd: etree.XMLSchema, query: str,
                code: str) -> None:
    r = live.http.get(f"{live.url}/oai?{query}", timeout=TIMEOUT)
    found, request = oai_error(valid(xsd, r))
    assert found == code
    if code in {"badVerb", "badArgument"}:
        assert request == {}  # OAI-PMH §3.2: the base URL only
    else:
        assert request["verb"]


def test_post(live: LiveService, xsd: etree.XMLSchema) -> None:
    args = {"verb": "GetRecord", "identifier": IVOID,
            "metadataPrefix": "ivo_vor"}
    posted = valid(xsd, live.http.post(f"{live.url}/oai", data=args,
                                       timeout=TIMEOUT))
    got = oai(live, xsd, **args)
    for root in (posted, got):
        root.remove(root.find("oai:responseDate", NS))
    assert canonical(posted) == canonical(got)
    # Anything but a urlencoded body is a one-line 400.
    r = live.http.post(f"{live.url}/oai", files={"verb": (None, "Identify")},
                       timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.text.startswith("UsageError: POST to /oai takes application/"
                             "x-www-form-urlencoded")
    assert len(r.text.strip().splitlines()) == 1
    r = live.http.post(f"{live.url}/oai", data={
        "verb": "Identify", "x": "y" * 70_000}, timeout=TIMEOUT)
    assert r.status_code == 413
    assert "at most 65536 bytes" in r.text
    r = live.http.delete(f"{live.url}/oai", timeout=TIMEOUT)
    assert r.status_code == 405


def test_public_under_basic_authentication(
        start_service: Callable[..., LiveService], xsd: etree.XMLSchema,
        tmp_path: Path) -> None:
    """A harvester has no account: the record and /oai need none."""
    users = tmp_path / "users"
    # As an operator adds a user (tests/uws_tests/test_auth.py).
    done = subprocess.run(
        [sys.executable, "-m", "uws.auth", str(users), "alice"],
        input="a long enough password\n", text=True, capture_output=True,
        check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    live = start_service(threads=4, **REGISTRY, auth="basic",
                         auth_user_file=str(users))
    anonymous = requests.Session()
    try:
        assert anonymous.get(live.jobs, timeout=TIMEOUT).status_code == 401
        valid(xsd, anonymous.get(f"{live.url}/resource.xml",
                                 timeout=TIMEOUT))
        root = valid(xsd, anonymous.post(
            f"{live.url}/oai", data={"verb": "Identify"}, timeout=TIMEOUT))
        assert root.find("oai:Identify", NS) is not None
    finally:
        anonymous.close()


def test_authority_managed_elsewhere(
        start_service: Callable[..., LiveService],
        xsd: etree.XMLSchema) -> None:
    live = start_service(threads=4, **REGISTRY, registry_authority="false",
                         registry_ivoid="ivo://example.org/qfits/oai")
    listed = oai(live, xsd, verb="ListRecords", metadataPrefix="ivo_vor")
    records = {r.findtext("oai:header/oai:identifier", namespaces=NS):
               r.find("oai:metadata/ri:Resource", NS)
               for r in listed.iterfind(".//oai:record", NS)}
    assert list(records) == [IVOID, "ivo://example.org/qfits/oai"]
    assert records["ivo://example.org/qfits/oai"].find(
        "managedAuthority") is None
    code, _ = oai_error(oai(live, xsd, verb="GetRecord",
                            identifier="ivo://example.org",
                            metadataPrefix="ivo_vor"))
    assert code == "idDoesNotExist"


STILTS_QUERIES = [
    "", "?verb=Identify", "?verb=ListRecords&metadataPrefix=ivo_vor",
    "?verb=ListRecords&metadataPrefix=oai_dc&set=ivo_managed",
    "?verb=ListMetadataFormats", "?verb=ListSets",
    "?verb=GetRecord&metadataPrefix=oai_dc&identifier=ivo://example.org",
    "?verb=ListIdentifiers&metadataPrefix=ivo_vor&from=2030-01-01",
    "?verb=Bogus"]


@pytest.mark.reference
@pytest.mark.parametrize("query", STILTS_QUERIES)
def test_stilts_validates(live: LiveService, xsd: etree.XMLSchema,
                          query: str) -> None:
    """A second validator (Xerces in STILTS) over the live documents."""
    stilts = require_tool("stilts")
    del xsd  # skips when the schemas are absent
    url = f"{live.url}/resource.xml" if not query else f"{live.url}/oai"
    locations = " ".join(f"{namespace}={SCHEMAS / name}" for namespace, name
                         in ((OAI, "OAI-PMH.xsd"), (OAI_DC, "oai_dc.xsd"),
                             (RI, "RegistryInterface.xsd"),
                             (VG, "VORegistry.xsd"),
                             (VS, "VODataService.xsd")))
    run = subprocess.run(
        [stilts, "xsdvalidate", f"doc={url}{query}", "uselocals=true",
         f"schemaloc={locations}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ERROR" not in run.stdout + run.stderr


# -- settings --------------------------------------------------------------
def _settings(tmp_path: Path, **registry: str) -> Settings:
    ini = {"qfits.database_url": "sqlite://", "qfits.job_dir": str(tmp_path)}
    ini.update({f"qfits.{k}": v for k, v in registry.items()})
    return Settings.from_ini(ini)


GOOD = {"ivoid": IVOID, "record_publisher": "Example",
        "record_contact_email": "vo@example.org"}


@pytest.mark.parametrize(("change", "message"), [
    ({"ivoid": "example.org/qfits"}, ("qfits.ivoid: 'example.org/qfits' is "
     "not an IVOA identifier")),
    ({"ivoid": "ivo://ex"}, "qfits.ivoid"),
    ({"registry_ivoid": "http://example.org/reg"}, "qfits.registry_ivoid"),
    ({"registry_ivoid": IVOID}, ("qfits.registry_ivoid (ivo://example.org/"
     "qfits) must differ")),
    ({"ivoid": "ivo://example.org/registry"}, ("qfits.registry_ivoid "
     "(ivo://example.org/registry) must differ")),
    ({"record_publisher": ""}, "qfits.record_publisher is required"),
    ({"record_contact_email": ""}, "qfits.record_contact_email is required"),
    ({"record_contact_email": "nobody"}, "not an e-mail address"),
    ({"record_contact_email": "vo@localhost"}, "not an e-mail address"),
    ({"ivoid": "ivo://example.org"}, "names an authority, not a resource"),
    ({"registry_ivoid": "ivo://example.org"}, ("qfits.registry_ivoid: "
     "'ivo://example.org' names an authority")),
    ({"record_description": "a\x01b"}, ("qfits.record_description: "
     "control characters")),
    ({"record_short_name": "QualityFITS-UWS-X"}, "longer than 16"),
    ({"record_subjects": " , "}, "qfits.record_subjects"),
    ({"record_title": " "}, "qfits.record_title"),
    ({"record_reference_url": "docs"}, "qfits.record_reference_url"),
    ({"record_updated": "last week"}, "qfits.record_updated: 'last week'"),
    ({"record_created": "0001-01-01T00:00:00+14:00"},
     "qfits.record_created: '0001-01-01T00:00:00+14:00' is not"),
    ({"record_created": "2026-02-01", "record_updated": "2026-01-01"},
     "qfits.record_created is after"),
])
def test_bad_registry_settings(tmp_path: Path, change: dict[str, str],
                               message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        _settings(tmp_path, **{**GOOD, **change})


def test_registry_settings_are_optional(tmp_path: Path) -> None:
    assert _settings(tmp_path).ivoid == ""
    # Without qfits.ivoid the record settings are not required.
    assert _settings(tmp_path, record_short_name="x" * 20).ivoid == ""
    assert _settings(tmp_path, **GOOD).registry_authority is True


# -- generated requests ----------------------------------------------------
OAI_NAMES = ["verb", "identifier", "metadataPrefix", "from", "until", "set",
             "resumptionToken", "Verb", "x"]
OAI_VALUES = st.one_of(
    st.sampled_from(["Identify", "ListMetadataFormats", "ListSets",
                     "GetRecord", "ListIdentifiers", "ListRecords",
                     "ivo_vor", "oai_dc", "ivo_managed", IVOID,
                     "ivo://example.org/registry", UPDATED, "2026-03-04",
                     "2026-13-45", "", " ", "ivo://", "\x01",
                     "ivo://example.org/a\x0cb", "ivo://example.org/a b",
                     "ivo://example.org/\u00e9\U0001f600"]),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10).map(
        lambda s: "ivo://example.org/" + s),
    st.datetimes().map(lambda d: d.isoformat()),
)
#: Well-formed requests, of which the generated ones change one value.
OAI_REQUESTS = [
    [("verb", "GetRecord"), ("metadataPrefix", "ivo_vor"),
     ("identifier", IVOID)],
    [("verb", "ListRecords"), ("metadataPrefix", "oai_dc"),
     ("from", "2026-03-04"), ("until", UPDATED), ("set", "ivo_managed")],
    [("verb", "ListIdentifiers"), ("metadataPrefix", "ivo_vor")],
    [("verb", "ListSets"), ("resumptionToken", "0")],
    [("verb", "ListMetadataFormats"), ("identifier", IVOID)],
]


@st.composite
def _mutated(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs = list(draw(st.sampled_from(OAI_REQUESTS)))
    index = draw(st.integers(0, len(pairs) - 1))
    name = pairs[index][0]
    pairs[index] = (draw(st.sampled_from([name, name.upper(), "x"])),
                    draw(OAI_VALUES))
    return pairs


OAI_ARGS = st.one_of(
    st.lists(st.tuples(st.sampled_from(OAI_NAMES), OAI_VALUES),
             max_size=5),
    _mutated())


ODD_VALUES = ["", " ", "\x01", "a\x00b", "\x0c", "ivo://example.org/a b",
              "ivo://example.org/a\x7fb", "ivo://example.org/\u00e9",
              "<x/>", "2026-03-04T05:06:07+01:00", "9999-12-31",
              "0000-01-01", "\U0001f600" * 3]


def test_every_argument_with_odd_values(live: LiveService,
                                        xsd: etree.XMLSchema) -> None:
    """Each argument of each well-formed request given each odd value."""
    for pairs in OAI_REQUESTS:
        for index, (name, _) in enumerate(pairs):
            for value in ODD_VALUES:
                changed = [*pairs[:index], (name, value), *pairs[index + 1:]]
                for post in (False, True):
                    if post:
                        r = live.http.post(f"{live.url}/oai", data=changed,
                                           timeout=TIMEOUT)
                    else:
                        r = live.http.get(f"{live.url}/oai", params=changed,
                                          timeout=TIMEOUT)
                    assert r.status_code == 200, (changed, r.text)
                    xsd.assertValid(etree.fromstring(r.content))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(pairs=OAI_ARGS, post=st.booleans())
def test_generated_oai_requests(live: LiveService, xsd: etree.XMLSchema,
                                pairs: list[tuple[str, str]],
                                post: bool) -> None:
    """Any arguments: a valid OAI-PMH answer, or a one-line 400."""
    if post:
        r = live.http.post(f"{live.url}/oai", data=pairs, timeout=TIMEOUT)
    else:
        r = live.http.get(f"{live.url}/oai", params=pairs, timeout=TIMEOUT)
    if r.status_code == 400:
        assert r.text.startswith("UsageError: ")
        assert r.text.count("\n") == 1, r.text
        return
    root = valid(xsd, r)
    verbs = [v for k, v in pairs if k == "verb"]
    if root.find("oai:error", NS) is None:
        assert len(verbs) == 1
        assert root.find(f"oai:{verbs[0]}", NS) is not None
