"""Cross-site request protection for the API and the pages.

A browser sends a logged-in user's credentials (HTTP basic, or a
proxy's cookie in ``header`` mode) with any request a foreign page
makes it send, so every state-changing request (POST, PUT, PATCH,
DELETE) is checked:

* its ``Origin`` (else its ``Referer``), when it has one, must be this
  service's own origin (the scheme, host and port of ``qfits.base_url``,
  or of the request when that is empty): a foreign one is a 403.  API
  clients (curl, pyvo, scripts) send neither and are not affected;
* the page's own forms (``/ui/...`` targets) must also carry the token
  of the caller (`form_token`, an HMAC of the caller's name with
  ``qfits.csrf_secret``), which a foreign page cannot read: a missing or
  wrong one is a 403 asking to reload the page.

The check is a tween under the exception views, so its refusals are
rendered like every other error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pyramid.tweens import MAIN

from uws.errors import PermissionDeniedError

#: The form field of the pages' token.
TOKEN_FIELD = "csrf_token"  # noqa: S105 - a field name, not a secret
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """Return ``scheme://host:port`` of a URL (None if it has none)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None:
        return None
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}"


def form_token(secret: bytes, name: str | None) -> str:
    """Return the pages' form token of a caller (None: anonymous)."""
    message = ("user:" + (name or "")).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]


def check_token(secret: bytes, name: str | None, given: str | None) -> None:
    """Refuse a page's form without the caller's token (403)."""
    if given is None or not hmac.compare_digest(
            given.strip(), form_token(secret, name)):
        raise PermissionDeniedError(
            "this form is stale or comes from another site (no valid "
            f"{TOKEN_FIELD}): reload the page and send it again")


def check_origin(request: Any, own: str) -> None:
    """Refuse an unsafe request whose Origin or Referer is foreign."""
    if request.method not in UNSAFE:
        return
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value is None:
            continue
        theirs = origin_of(value) if value.strip() != "null" else None
        if theirs is None or theirs != origin_of(own):
            shown = value.strip()[:80]
            raise PermissionDeniedError(
                f"cross-site request refused: its {header} {shown!r} is "
                f"not this service ({own})")
        return


def origin_tween_factory(handler: Callable[[Any], Any],
                         registry: Any) -> Callable[[Any], Any]:
    """Check every request's origin before its view runs."""
    configured: str = registry.job_service.settings.base_url

    def tween(request: Any) -> Any:
        check_origin(request, configured or str(request.application_url))
        return handler(request)

    return tween


#: Where the tween goes (`pyramid.config.Configurator.add_tween`).
TWEEN_OVER = MAIN
