"""HTTP ⇄ the VO registry: ``/resource.xml`` and ``/oai``.

Both are public (no owner is asked for: a registry record is for
everybody) and exist only when the deployment sets ``qfits.ivoid``;
otherwise they are 404s saying so.  The records are built per request
from the settings (`uws.registry`) and the public base URL, so that
their access URLs follow ``qfits.base_url`` as every other link does.
"""

from __future__ import annotations

from typing import Any, Final

from pyramid.response import Response
from pyramid.view import view_config

from uws import oai, registry
from uws.errors import UnknownJobError, UploadTooLargeError, UsageError
from uws.views import XML_TYPE, allow_methods, base_url, service_of

__all__ = ["VO_ROUTES", "record_settings"]

#: Route name -> pattern (added by `uws.app`).
VO_ROUTES: Final = (
    ("vo_resource", "/resource.xml"),
    ("vo_oai", "/oai"),
)
#: Largest OAI-PMH POST body [bytes]: a few short arguments.
OAI_BODY_LIMIT: Final = 64 * 1024
_FORM_TYPE: Final = "application/x-www-form-urlencoded"


def record_settings(request: Any) -> registry.RecordSettings:
    """Return what the records say (404 when ``qfits.ivoid`` is unset)."""
    service = service_of(request)
    info = registry.RecordSettings.from_settings(service.settings,
                                                 service.up_since)
    if info is None:
        raise UnknownJobError(
            f"no VO registry record at {request.path}: this deployment "
            'sets no qfits.ivoid (docs/service.md, "The VO registry")')
    return info


def _xml(body: bytes) -> Response:
    return Response(body=body, content_type=XML_TYPE, charset="utf-8")


@view_config(route_name="vo_resource")
def resource_view(request: Any) -> Response:
    """GET the service's VOResource record (``ri:Resource``)."""
    allow_methods(request, "GET", "HEAD")
    info = record_settings(request)
    return _xml(registry.resource_document(info, base_url(request)))


def _pairs(request: Any) -> list[tuple[str, str]]:
    """Return the OAI arguments: the query, or a urlencoded POST body."""
    if request.method != "POST":
        source = request.GET
    else:
        if request.content_type != _FORM_TYPE:
            raise UsageError(
                f"POST to /oai takes {_FORM_TYPE}, not "
                f"{request.content_type or 'no content type'}")
        if (request.content_length or 0) > OAI_BODY_LIMIT:
            raise UploadTooLargeError(
                f"an OAI-PMH request body is at most {OAI_BODY_LIMIT} "
                "bytes")
        source = request.POST
    try:
        return [(str(k), str(v)) for k, v in source.items()]
    except UnicodeDecodeError:
        raise UsageError("the OAI-PMH arguments are not UTF-8 (percent-"
                         "encode the bytes of UTF-8 text)") from None


@view_config(route_name="vo_oai")
def oai_view(request: Any) -> Response:
    """Answer an OAI-PMH 2.0 request (GET or urlencoded POST)."""
    allow_methods(request, "GET", "HEAD", "POST")
    info = record_settings(request)
    base = base_url(request)
    repository = oai.Repository(
        records=registry.records(info, base),
        registry_id=info.registry_ivoid,
        name=f"{info.title}: publishing registry",
        admin_email=info.contact_email,
        base_url=f"{base}/oai")
    now = service_of(request).clock()
    return _xml(oai.respond(_pairs(request), repository, now))
