"""The service's protocol errors, each with its HTTP status.

Views raise these (or let the job service raise them); one exception
view renders them as ``text/plain`` ``"{code}: {message}"``
(``uws.md`` §3, style guide lesson 11).  Anything else escaping a view
is a 500, logged with the job id.
"""

from __future__ import annotations


class UWSError(Exception):
    """A request the service refuses; ``status`` is the HTTP status."""

    status = 400
    code = "UsageError"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class UsageError(UWSError):
    """A malformed or out-of-range value (HTTP 400)."""


class NotAuthenticatedError(UWSError):
    """Credentials are needed (HTTP 401)."""

    status = 401
    code = "NotAuthenticated"


class InvalidPhaseError(UWSError):
    """A request illegal in the job's phase (HTTP 403)."""

    status = 403
    code = "InvalidPhase"


class PermissionDeniedError(UWSError):
    """Another owner's job, or a refused job creation (HTTP 403)."""

    status = 403
    code = "PermissionDenied"


class UnknownJobError(UWSError):
    """No such job, sub-resource or result (HTTP 404)."""

    status = 404
    code = "NotFound"


class UploadTooLargeError(UWSError):
    """An upload over the configured limit (HTTP 413)."""

    status = 413
    code = "TooLarge"


class TooManyRequestsError(UWSError):
    """The caller must slow down (failed logins, too many active jobs)."""

    status = 429
    code = "TooManyRequests"


class ServiceUnavailableError(UWSError):
    """The database or the runner cannot serve now (HTTP 503)."""

    status = 503
    code = "ServiceUnavailable"
