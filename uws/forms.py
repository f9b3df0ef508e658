"""Read a request's parameters: query string and both body encodings.

Parameter names are case-insensitive (DALI): every name is lower-cased
here, once, for the query string, ``application/x-www-form-urlencoded``
and ``multipart/form-data`` bodies alike.  Text is decoded here too,
strictly: the query string as UTF-8 (RFC 3986), a body in the charset
its Content-Type names (UTF-8 by default); bytes that are not valid in
it, or a charset Python does not know, are a 400 naming the parameter,
never an error further in.  File parts of a multipart
body stream straight to files in a staging folder, in 1 MB chunks, so
memory does not grow with the upload; the size limit is enforced while
reading.  Client file names are kept only as labels, never as paths.
"""

from __future__ import annotations

import codecs
import contextlib
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import multipart
from webob.datetime_utils import parse_date

from uws.errors import (
    ServiceUnavailableError,
    UploadTooLargeError,
    UsageError,
)
from uws.settings import human_bytes

#: Largest urlencoded body or multipart text field [bytes].
FORM_LIMIT = 1 << 20
#: Room for the multipart envelope and text fields beside the files.
ENVELOPE = 1 << 20
CHUNK = 1 << 20
#: One byte range as WebOb serves it: ``first-last``, ``first-`` or
#: ``-suffix`` (RFC 9110 14.1.1; the unit without case).
_ONE_RANGE = re.compile(r"\s*bytes=(?:([0-9]+)-([0-9]*)|-([0-9]+))\s*",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart body, saved in the staging folder."""

    name: str
    path: Path
    size: int
    filename: str


@dataclass
class Form:
    """Parameters of one request, names lower-cased."""

    values: dict[str, list[str]] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    staging: Path | None = None

    def add(self, name: str, value: str) -> None:
        """Append a value (repeated names keep every value)."""
        self.values.setdefault(name.lower(), []).append(value)

    def names(self) -> set[str]:
        """Every parameter name given, values and files."""
        return set(self.values) | set(self.uploads)

    def single(self, name: str) -> str | None:
        """Return the one value of ``name``; 400 if given twice."""
        values = self.values.get(name, [])
        if len(values) + (name in self.uploads) > 1:
            raise UsageError(f"{name.upper()} given more than once")
        return values[0] if values else None

    def discard(self) -> None:
        """Remove the staged uploads (those not moved into a job)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def read_form(request: Any, *, staging_root: Path, upload_limit: int,
              with_body: bool = True) -> Form:
    """Return the parameters of a WebOb request.

    Parameters
    ----------
    request : webob.Request
    staging_root : Path
        File parts are saved in a new folder below this one.
    upload_limit : int
        Largest file part [bytes]; 413 beyond it.
    with_body : bool
        Read the body too (POST), not only the query string.
    """
    form = Form()
    for name, value in _decoded_pairs(request.environ.get(
            "QUERY_STRING", "").encode("latin-1"), "utf-8"):
        form.add(name, value)
    if not with_body or request.method not in {"POST", "PUT"}:
        return form
    ctype = (request.content_type or "").lower()
    length = request.content_length
    if ctype == "multipart/form-data":
        limit = upload_limit + ENVELOPE
        if length is not None and length > limit:
            raise UploadTooLargeError(
                f"upload too large ({human_bytes(length)}): the limit is "
                f"{human_bytes(upload_limit)} per file")
        _read_multipart(request, form, staging_root, upload_limit)
    elif ctype in {"application/x-www-form-urlencoded", ""}:
        too_large = UploadTooLargeError(
            f"form too large: the limit for a urlencoded body is "
            f"{human_bytes(FORM_LIMIT)}; send files as "
            "multipart/form-data")
        if length is not None and length > FORM_LIMIT:
            raise too_large
        body = request.body_file_raw.read(FORM_LIMIT + 1) \
            if length is None else request.body
        if len(body) > FORM_LIMIT:
            raise too_large
        for name, value in _decoded_pairs(body, _body_charset(request)):
            form.add(name, value)
    else:
        raise UsageError(
            f"unsupported request body {ctype}: use "
            "application/x-www-form-urlencoded or multipart/form-data")
    return form


def _charset(name: str | None, where: str) -> str:
    """Return the codec of a charset name (UTF-8 if none); 400 if unknown.

    ``where`` says whose charset it is, for the message.
    """
    wanted = (name or "utf-8").strip()
    try:
        codec = codecs.lookup(wanted).name
        with contextlib.suppress(UnicodeError):
            b"x".decode(codec)  # rot13, base64...: not text (LookupError)
    except LookupError:
        raise UsageError(f"unknown charset {wanted[:40]!r} {where} (use "
                         "UTF-8)") from None
    return codec


def _body_charset(request: Any) -> str:
    _, options = multipart.parse_options_header(
        request.headers.get("Content-Type", ""))
    return _charset(options.get("charset"), "in the Content-Type")


def _decoded_pairs(raw: bytes, charset: str) -> list[tuple[str, str]]:
    """Split ``name=value&...`` and decode each part strictly (400)."""
    pairs = []
    for chunk in raw.split(b"&"):
        if not chunk:
            continue
        name_raw, _, value_raw = chunk.partition(b"=")
        name = _decode(name_raw, charset, None)
        pairs.append((name, _decode(value_raw, charset, name)))
    return pairs


def _decode(raw: bytes, charset: str, name: str | None) -> str:
    """Decode one percent-encoded part of a query string or form."""
    return _text(urllib.parse.unquote_to_bytes(raw.replace(b"+", b" ")),
                 charset, name)


def _text(data: bytes, charset: str, name: str | None) -> str:
    """Decode ``data`` strictly: 400 naming the parameter otherwise.

    ``name`` is the parameter's (None: the bytes are a name).
    """
    try:
        return data.decode(charset)
    except UnicodeError:  # punycode and idna raise the base class
        what = "a parameter name" if name is None else \
            f"{name.upper()[:40]}: the value"
        label = "UTF-8" if charset == "utf-8" else charset
        raise UsageError(
            f"{what} is not valid {label} (percent-encode the bytes of "
            "UTF-8 text)") from None


def _read_multipart(request: Any, form: Form, staging_root: Path,
                    upload_limit: int) -> None:
    _, options = multipart.parse_options_header(
        request.headers.get("Content-Type", ""))
    boundary = options.get("boundary")
    if not boundary:
        raise UsageError("multipart/form-data without a boundary")
    try:
        staging_root.mkdir(parents=True, exist_ok=True)
        form.staging = Path(tempfile.mkdtemp(prefix="upload-",
                                             dir=staging_root))
    except OSError as exc:
        raise ServiceUnavailableError(
            f"cannot stage the upload: {exc.strerror}") from exc
    stream: BinaryIO = request.body_file_raw
    parser = multipart.PushMultipartParser(
        boundary, content_length=request.content_length or -1,
        max_segment_count=64)
    part: Any = None
    sink: BinaryIO | None = None
    text = bytearray()
    try:
        for event in parser.parse_blocking(stream.read, CHUNK):
            if isinstance(event, multipart.MultipartSegment):
                part, text = event, bytearray()
                if part.filename is not None:
                    sink = _open_sink(form, part)
            elif event is None:
                if sink is not None:
                    sink.close()
                    sink = None
                    _record_upload(form, part)
                else:
                    form.add(part.name or "", _field_text(part, text))
            elif sink is not None:
                _check_size(part, part.bytes_received, upload_limit)
                sink.write(event)
            else:
                text += event
                _check_size(part, len(text), FORM_LIMIT, field=True)
    except multipart.MultipartError as exc:
        form.discard()
        # Its first argument says what; a second is Python's own error.
        what = exc.args[0] if exc.args else type(exc).__name__
        raise UsageError(f"malformed multipart/form-data body: {what}"
                         ) from None
    except OSError as exc:
        # A full or failing disk: the service's fault, not the client's.
        if sink is not None:
            sink.close()
        form.discard()
        raise ServiceUnavailableError(
            f"cannot store the upload: {exc.strerror}") from exc
    except BaseException:
        if sink is not None:
            sink.close()
        form.discard()
        raise


def _field_text(part: Any, data: bytearray) -> str:
    """Decode a multipart text field in its own charset (400)."""
    name = part.name or ""
    return _text(bytes(data), _charset(
        part.charset, f"of form field {name[:40]!r}"), name)


def _check_size(part: Any, size: int, limit: int, *,
                field: bool = False) -> None:
    if size <= limit:
        return
    if field:
        raise UploadTooLargeError(
            f"form field {part.name!r} longer than {human_bytes(limit)}")
    raise UploadTooLargeError(
        f"upload {part.name!r} too large: the limit is "
        f"{human_bytes(limit)} per file")


def _open_sink(form: Form, part: Any) -> BinaryIO:
    name = (part.name or "").lower()
    if not name or not name.replace("_", "").isalnum():
        raise UsageError(f"file part with an unusable name {part.name!r}")
    if name in form.uploads:
        raise UsageError(f"{name.upper()} given more than once")
    assert form.staging is not None
    return (form.staging / name).open("wb")


def _record_upload(form: Form, part: Any) -> None:
    name = part.name.lower()
    assert form.staging is not None
    if part.size == 0 and not part.filename:
        # A browser form's file input left empty.
        (form.staging / name).unlink(missing_ok=True)
        return
    form.uploads[name] = Upload(name, form.staging / name, part.size,
                                part.filename or "")


# -- conditional and range headers ---------------------------------------
def ignore_unusable_conditions(environ: dict[str, Any]) -> None:
    """Drop the range and date conditions WebOb cannot take (RFC 9110).

    WebOb reads them when a file is answered, after the exception views:
    ``Range: bytes=-`` (``int('')``) or an ``If-Modified-Since`` in the
    year 10000 was a 500 with an empty body.  RFC 9110 lets a server
    ignore a range set it does not serve (14.2: here, anything but one
    well-formed range, which WebOb would otherwise cut to its first
    range) and makes it ignore a date it cannot read (13.1.3, 13.1.4);
    an ``If-Range`` date that cannot be read matches nothing, so the
    whole file is sent (13.1.5).
    """
    asked = environ.get("HTTP_RANGE")
    if asked is not None:
        one = _ONE_RANGE.fullmatch(asked)
        if one is None or (one.group(2) and
                           int(one.group(2)) < int(one.group(1))):
            del environ["HTTP_RANGE"]
    for key in ("HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE"):
        if key in environ and _http_date(environ[key]) is None:
            del environ[key]
    validator = environ.get("HTTP_IF_RANGE", "")
    # WebOb takes a value ending in " GMT" for a date, else an ETag.
    if validator.endswith(" GMT") and _http_date(validator) is None:
        del environ["HTTP_IF_RANGE"]
        environ.pop("HTTP_RANGE", None)


def _http_date(value: str) -> Any:
    """Return WebOb's reading of an HTTP-date, or None if it has none."""
    try:
        return parse_date(value)
    except (ValueError, OverflowError, OSError):
        return None


def conditions_tween_factory(handler: Callable[[Any], Any],
                             registry: Any) -> Callable[[Any], Any]:
    """Apply `ignore_unusable_conditions` to every request."""
    del registry

    def tween(request: Any) -> Any:
        ignore_unusable_conditions(request.environ)
        return handler(request)

    return tween
