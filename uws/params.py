"""The job parameters: checked once, at the edge, into typed values.

Three shapes (style guide lesson 4): the request's `uws.forms.Form`
→ `JobParameters` (checked here) → the stored, typed parameters (the
``<uws:parameters>`` element) → at RUN, the worker's
`pbs_bridge.jobfolder.WorkerSpec`, whose science parameters are
`qualityfits.QualityParameters` in JSON form.

Science parameters: the files ``image`` (required before the job runs),
``flat``, ``mask`` and ``weight`` — each an uploaded file or an http(s)
URL fetched by the worker —, every parameter
`qualityfits.parameters.PARAMETERS` declares (``zeropoint``,
``pixscale``, ``mask_convention``, ...: their
checks are QualityParameters' own, so a new one needs no change here),
and ``email``.  Job-control parameters accepted at creation:
``phase=RUN``, ``runid``, ``executionduration``, ``destruction``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pbs_bridge.jobfolder import JobFolder
from qualityfits.errors import InvalidImageError, InvalidParameterError
from qualityfits.fitsscan import FitsTooLargeError, scan_fits
from qualityfits.parameters import PARAMETERS, QualityParameters
from uws.errors import UploadTooLargeError, UsageError
from uws.forms import Form, Upload
from uws.model import Parameter, ParameterValue

FILE_PARAMETERS = ("image", "flat", "mask", "weight")
#: The science values: `qualityfits.parameters.PARAMETERS`, in order.
QUALITY_PARAMETERS = tuple(p.name for p in PARAMETERS)
VALUE_PARAMETERS = (*QUALITY_PARAMETERS, "email")
SCIENCE_PARAMETERS = FILE_PARAMETERS + VALUE_PARAMETERS
CONTROL_PARAMETERS = ("phase", "runid", "executionduration", "destruction")

_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_RUNID_MAX = 64
_FITS_BLOCK = 2880
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FitsLimits:
    """How large an input may be once decompressed (settings)."""

    #: Bytes of the decompressed file (``qfits.decompressed_limit``).
    max_bytes: int = 2 * 10**9
    #: Pixels of its images together (``qfits.pixel_limit``).
    max_pixels: int = 500 * 10**6


@dataclass(frozen=True)
class FileInput:
    """An input file: an upload (staged ``path``) or a URL."""

    name: str
    upload: Upload | None = None
    url: str | None = None
    #: Pixels of the image extensions [Mpx] (uploads), for the quote.
    mpix: float = 0.0


@dataclass(frozen=True)
class JobParameters:
    """Checked science parameters of a request (only those given)."""

    files: dict[str, FileInput] = field(default_factory=dict)
    #: The science values given, checked by `QualityParameters`, in
    #: their JSON form (numbers as floats).
    science: dict[str, ParameterValue] = field(default_factory=dict)
    email: str | None = None

    def given(self) -> set[str]:
        """Names of the parameters this request sets."""
        names = set(self.files) | set(self.science)
        if self.email is not None:
            names.add("email")
        return names


def allowed_message(at_creation: bool) -> str:
    """Say which parameter names the service accepts."""
    names = ", ".join(n.upper() for n in SCIENCE_PARAMETERS)
    if at_creation:
        return (f"the service accepts {names}, and RUNID, PHASE=RUN, "
                "EXECUTIONDURATION and DESTRUCTION at job creation")
    return f"the service accepts {names}"


def check_names(form: Form, allowed: tuple[str, ...], *,
                at_creation: bool) -> None:
    """Refuse unknown parameter names (400)."""
    unknown = sorted(form.names() - set(allowed))
    if unknown:
        raise UsageError(
            f"unknown parameter {', '.join(u.upper() for u in unknown)}: "
            + allowed_message(at_creation))


def parse_job_parameters(form: Form,
                         limits: FitsLimits = FitsLimits()) -> JobParameters:
    """Check the science parameters of ``form`` (400 on a bad value)."""
    files: dict[str, FileInput] = {}
    for name in FILE_PARAMETERS:
        upload = form.uploads.get(name)
        value = form.single(name)
        if upload is not None:
            files[name] = FileInput(name, upload=upload,
                                    mpix=check_fits(name, upload.path,
                                                   limits))
        elif value is not None and value.strip():
            files[name] = FileInput(name, url=check_url(name, value))
    science = _science(form)
    email = form.single("email")
    if email is not None:
        email = email.strip() or None
    if email is not None and (len(email) > 254
                              or _EMAIL.match(email) is None):
        raise UsageError(f"EMAIL: {email!r} is not an email address")
    return JobParameters(files=files, science=science, email=email)


def _science(form: Form) -> dict[str, ParameterValue]:
    """Check the science values given (`QualityParameters`' own rules)."""
    given: dict[str, str] = {}
    for name in QUALITY_PARAMETERS:
        text = form.single(name)
        if text is not None and text.strip():
            given[name] = text
    try:
        checked = QualityParameters.from_text(given).to_json()
    except InvalidParameterError as exc:
        raise usage_error(exc) from None
    values: dict[str, ParameterValue] = {}
    for name in given:
        value = checked[name]
        if value is not None:
            values[name] = value
    return values


def usage_error(exc: InvalidParameterError) -> UsageError:
    """Return a parameter error as UWS says it (``ZEROPOINT: ...``)."""
    name, colon, rest = str(exc).partition(": ")
    if colon and name in QUALITY_PARAMETERS:
        return UsageError(f"{name.upper()}: {rest}")
    return UsageError(str(exc))


def science_values(stored: Mapping[str, ParameterValue]
                   ) -> dict[str, ParameterValue]:
    """Pick the stored values that `QualityParameters.from_json` takes."""
    return {name: stored[name] for name in QUALITY_PARAMETERS
            if name in stored}


def check_url(name: str, value: str) -> str:
    """Accept an http(s) URL (the worker fetches it); 400 otherwise."""
    url = value.strip()
    if not re.match(r"^https?://[^\s/]+", url, re.IGNORECASE) or any(
            c.isspace() for c in url):
        raise UsageError(
            f"{name.upper()}: {value!r} is neither an uploaded file nor "
            "an http(s) URL")
    return url


def check_fits(name: str, path: Path,
               limits: FitsLimits = FitsLimits()) -> float:
    """Check that an upload is a complete FITS file; return its Mpx.

    Reads headers only (`qualityfits.fitsscan`): what they announce is
    checked against ``limits`` before any pixel is read, and a
    gzip-compressed file is inflated (and dropped) block by block to
    count what it really holds: a decompression bomb is a 413, a
    corrupt stream a 400.
    """
    with path.open("rb") as fh:
        head = fh.read(_FITS_BLOCK)
    gzipped = head[:2] == _GZIP_MAGIC
    if not gzipped:
        _check_primary_card(name, head)
    try:
        layout = scan_fits(path, max_bytes=limits.max_bytes,
                           max_pixels=limits.max_pixels, label=name.upper())
    except FitsTooLargeError as exc:
        raise UploadTooLargeError(str(exc)) from None
    except InvalidImageError as exc:
        raise UsageError(str(exc)) from None
    if gzipped:
        return layout.pixels / 1e6
    return _fits_mpix(name, path)


def _check_primary_card(name: str, head: bytes) -> None:
    if len(head) < _FITS_BLOCK or not head.startswith(b"SIMPLE  ="):
        raise UsageError(
            f"{name.upper()}: not a FITS file (it must start with a "
            "2880-byte header whose first card is SIMPLE = T)")
    if head[10:30].strip() != b"T":
        raise UsageError(f"{name.upper()}: SIMPLE is not T: not a "
                         "standard FITS file")


def _fits_mpix(name: str, path: Path) -> float:
    import warnings  # noqa: PLC0415

    from astropy.io import fits  # noqa: PLC0415 - the web needs it here only

    size = path.stat().st_size
    mpix = 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Our own handle: astropy leaves its own open when a header
            # card is unreadable (found by tests/uws_tests/test_fuzz.py).
            with path.open("rb") as raw, fits.open(
                    raw, memmap=True, lazy_load_hdus=False) as hdul:
                for hdu in hdul:
                    header = hdu.header
                    keys = (("ZNAXIS1", "ZNAXIS2") if "ZNAXIS1" in header
                            else ("NAXIS1", "NAXIS2"))
                    nx, ny = (header.get(k, 0) or 0 for k in keys)
                    if isinstance(nx, int) and isinstance(ny, int):
                        mpix += nx * ny / 1e6
                # The last HDU ends the file.  (``fileinfo`` walks every
                # HDU before it: called on each, 1000 HDUs took 10 s.)
                info = hdul.fileinfo(len(hdul) - 1)
                end = info["datLoc"] + info["datSpan"]
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UsageError(f"{name.upper()}: not a readable FITS file ({exc})"
                         ) from None
    if end > size:
        raise UsageError(
            f"{name.upper()}: truncated FITS file ({size} bytes, the "
            f"headers announce {end})")
    return mpix


def control_values(form: Form) -> tuple[bool, str | None, str | None,
                                        str | None]:
    """Return (run, runid, executionduration, destruction) of a creation.

    ``phase`` may only be RUN at creation; ``runid`` at most 64
    printable characters.
    """
    phase = form.single("phase")
    run = False
    if phase is not None:
        if phase.strip().upper() != "RUN":
            raise UsageError(
                f"PHASE={phase!r} at job creation: only PHASE=RUN (start "
                "at once) is allowed")
        run = True
    runid = form.single("runid")
    if runid is not None and (len(runid) > _RUNID_MAX
                              or not runid.isprintable()):
        raise UsageError(
            f"RUNID: at most {_RUNID_MAX} printable characters")
    return (run, runid, form.single("executionduration"),
            form.single("destruction"))


def parse_instant(text: str, name: str) -> datetime:
    """Parse an ISO 8601 instant; naive means UTC (400 if unparsable)."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"{name}: {text!r} is not an ISO 8601 instant (e.g. "
            "2026-01-02T03:04:05Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise UsageError(
            f"{name}: {text!r} is out of range (in UTC it falls outside "
            "the years 1 to 9999)") from None


#: The largest integer a client may give where a bound is not stated
#: otherwise (the database's 32-bit integers).
INT_MAX = 2**31 - 1


def parse_int(text: str, name: str, *,
              maximum: int | None = INT_MAX) -> int:
    """Parse an integer parameter (400 otherwise, or above ``maximum``)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not an integer") from None
    if maximum is not None and value > maximum:
        raise UsageError(f"{name}: {text.strip()[:30]!r} is too large (at "
                         f"most {maximum})")
    return value


def install_inputs(params: JobParameters,
                   folder: JobFolder) -> list[Parameter]:
    """Move staged uploads into the job folder; return stored parameters.

    Uploads become ``inputs/<name>/<the client's file name, made
    safe>`` (`JobFolder.uploaded_input`; referenced, served at
    ``{job}/parameters/<name>``); URLs are kept as references; values
    are plain.  The files they replace are the caller's to remove,
    once the job takes the new ones (`JobFolder.clear_input`).
    """
    out: list[Parameter] = []
    for name, item in params.files.items():
        if item.upload is not None:
            dest = folder.uploaded_input(name, item.upload.filename)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(item.upload.path, dest)
            out.append(Parameter(name,
                                 dest.relative_to(folder.path).as_posix(),
                                 by_reference=True, is_post=True))
        elif item.url is not None:
            out.append(Parameter(name, item.url, by_reference=True))
    out.extend(Parameter(name, value)
               for name, value in params.science.items())
    if params.email is not None:
        out.append(Parameter("email", params.email))
    return out
