"""The job folder: the one module that knows its files.

The service writes the job spec and hands the folder to a runner; the
worker writes its progress while it runs and, at the end, either the
products with their manifest or an error document.  Nothing else
passes between them, so the same worker runs under the local runner
and on a batch node (the folder is on a filesystem both see).
`JobFolder` reads and writes every file below; nobody else builds a
path into a job folder.

Layout::

    spec.json          WorkerSpec (written by the service, read-only after)
    inputs/            the input files, as inputs/<parameter>/<name>:
                       an upload named by the client's file name (made
                       safe: `upload_name`), a fetched one by the URL's,
                       which messages and run tables then show (jobs
                       made before kept uploads as inputs/image.fits)
    progress.json      Progress: steps with state and times, host, usage
    results/           the product set (worker) and its manifest:
    results/manifest.json   qualityfits.manifest.Manifest (worker)
    error.json         WorkerError, when the job failed (worker)
    worker.log         the worker's standard output and error
    batch.sh           the batch script (PBS runner)
    derived/           files the service derives for its pages
                       (derived/thumbs/: picture thumbnails), never
                       results, removed with the job

Every JSON document carries a ``"version"``; readers refuse versions
they do not know with a clear message.  The spec is at version 2 (the
science parameters as one typed object, `qualityfits.QualityParameters`
in its JSON form); version 1 specs (``zeropoint``/``pixscale`` keys) of
jobs queued before an upgrade are still read.

How a job ended is `JobFolder.outcome`: `Completed` with its manifest,
`Failed` with the worker's error document, or `Vanished` (the worker
left neither: killed, or never started).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from qualityfits.manifest import Manifest, ManifestError

#: Version of the progress and error documents.
CONTRACT_VERSION = 1
#: Version of the spec; `WorkerSpec.from_json` reads 1 and 2.
SPEC_VERSION = 2

SPEC_FILE = "spec.json"
INPUTS_DIR = "inputs"
PROGRESS_FILE = "progress.json"
RESULTS_DIR = "results"
MANIFEST_FILE = "manifest.json"  # inside RESULTS_DIR
ERROR_FILE = "error.json"
LOG_FILE = "worker.log"
BATCH_SCRIPT = "batch.sh"
DERIVED_DIR = "derived"

#: Error types of `WorkerError` (UWS errorSummary ``type`` is fatal or
#: transient; "usage" is a fatal error caused by the input).
ERROR_TYPES = ("fatal", "transient", "usage")


class ContractError(ValueError):
    """A job-directory document that cannot be read."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to run one job (``spec.json``).

    File inputs are either ``inputs/<name>`` paths relative to the job
    directory (uploads) or http(s) URLs the worker fetches first.
    """

    job_id: str
    image: str
    flat: str | None = None
    mask: str | None = None
    weight: str | None = None
    #: The science parameters, `qualityfits.QualityParameters.to_json`.
    parameters: dict[str, Any] = field(default_factory=dict)
    #: CCD worker processes of the pipeline (0: its default).
    ccd_jobs: int = 0
    #: Largest file the worker may fetch by URL [bytes].
    fetch_limit: int = 800_000_000
    #: Seconds before a URL fetch gives up.
    fetch_timeout: float = 60.0
    #: Hosts and networks a fetch may reach besides public addresses
    #: (`pbs_bridge.fetch.FetchPolicy`).
    fetch_allow: list[str] = field(default_factory=list)
    #: Largest input once decompressed [bytes] and most pixels of its
    #: images (`qualityfits.fitsscan`), checked before the pipeline.
    decompressed_limit: int = 2 * 10**9
    pixel_limit: int = 500 * 10**6
    run_id: str | None = None
    #: `qualityfits.QualityConfig` values the service sets for every job
    #: (its ``qfits.grade_*`` limits); the rest keep their defaults.
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Return the versioned JSON document."""
        return json.dumps({"version": SPEC_VERSION, **asdict(self)},
                          indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Parse a document written by `to_json` (or a version 1 spec)."""
        version, data = _load_versioned(text, SPEC_FILE, (1, SPEC_VERSION))
        if version == 1:
            # Version 1 named the two science parameters of its time.
            old = {k: data.pop(k, None) for k in ("zeropoint", "pixscale")}
            data["parameters"] = {k: v for k, v in old.items()
                                  if v is not None}
        if not isinstance(data.get("parameters", {}), dict):
            raise ContractError(f"{SPEC_FILE}: parameters is not an object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{SPEC_FILE}: unknown keys {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ContractError(f"{SPEC_FILE}: {exc}") from None


@dataclass(frozen=True)
class WorkerError:
    """Why a job failed (``error.json``)."""

    type: str
    message: str
    detail: str = ""

    def to_json(self) -> str:
        """Return the versioned JSON document."""
        return json.dumps({"version": CONTRACT_VERSION, **asdict(self)},
                          indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorkerError:
        """Parse a document written by `to_json`."""
        _, data = _load_versioned(text, ERROR_FILE)
        try:
            error = cls(type=str(data["type"]),
                        message=str(data["message"]),
                        detail=str(data.get("detail", "")))
        except KeyError as exc:
            raise ContractError(f"{ERROR_FILE}: no {exc.args[0]}") from None
        if error.type not in ERROR_TYPES:
            raise ContractError(f"{ERROR_FILE}: unknown type {error.type!r}")
        return error


@dataclass(frozen=True)
class StepState:
    """One processing step as the progress file reports it.

    ``state`` is pending, running, done, failed or skipped; times are
    ISO 8601 UTC strings ending in ``Z`` (empty until known).
    """

    name: str
    state: str = "pending"
    start: str = ""
    end: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    """The worker's progress file (``progress.json``)."""

    steps: tuple[StepState, ...] = ()
    host: str = ""
    pid: int = 0
    started: str = ""
    updated: str = ""
    #: Peak resident memory of the worker and its children [kB].
    max_rss_kb: int = 0
    #: CPU time of the worker and its children [s].
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Return the versioned JSON document."""
        data = asdict(self)
        data["steps"] = [asdict(s) for s in self.steps]
        return json.dumps({"version": CONTRACT_VERSION, **data}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Progress:
        """Parse a document written by `to_json`."""
        _, data = _load_versioned(text, PROGRESS_FILE)
        try:
            steps = tuple(StepState(**s) for s in data.pop("steps", []))
            return cls(steps=steps, **data)
        except TypeError as exc:
            raise ContractError(f"{PROGRESS_FILE}: {exc}") from None


def _load_versioned(text: str, name: str,
                    versions: tuple[int, ...] = (CONTRACT_VERSION,)
                    ) -> tuple[int, dict[str, Any]]:
    """Return the version and the other keys of a JSON document."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"{name}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ContractError(f"{name}: not a JSON object")
    version = data.pop("version", None)
    if version not in versions:
        readable = " or ".join(str(v) for v in versions)
        raise ContractError(
            f"{name}: version {version!r}, this program reads "
            f"version {readable}")
    return version, data


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # Readable by the service when a batch job runs as another user.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- how a job ended -----------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """The worker wrote its products: their manifest."""

    manifest: Manifest


@dataclass(frozen=True)
class Failed:
    """The worker wrote an error document (or an unreadable one)."""

    error: WorkerError


@dataclass(frozen=True)
class Vanished:
    """The worker left neither products nor an error document."""


Outcome = Completed | Failed | Vanished

#: Lines of the worker log `JobFolder.log_tail` returns by default.
LOG_TAIL = 40
_TAIL_BYTES = 16384


def _usable_name(name: str) -> bool:
    """Whether ``name`` can be a file's name in the job folder."""
    return bool(name) and not name.startswith(".") and not any(
        c in "/\\" or ord(c) < 32 or c == "\x7f" for c in name)


#: Longest name an upload is stored under (its suffixes kept).
UPLOAD_NAME_MAX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def upload_name(filename: str, label: str) -> str:
    """Return the name an uploaded file is stored under.

    The client's file name, made safe: its base name only (a browser
    may send a whole path, of either kind of slash), accents dropped, every
    run of other characters than ASCII letters, digits and ``._+-``
    one ``_``, no leading dot or dash, at most `UPLOAD_NAME_MAX`
    characters with its suffixes (``.fits.gz``) kept; the label with
    those suffixes (``image.fits`` without any) when nothing of it is
    left to name the file by.
    """
    base = re.split(r"[/\\]", filename)[-1]
    base = "".join(c for c in unicodedata.normalize("NFKD", base)
                   if not unicodedata.combining(c))
    base = _UNSAFE.sub("_", base).lstrip(".-")
    suffix = ""
    for part in reversed(PurePosixPath(base or "x").suffixes[-2:]):
        if not part[1:].isalnum() or len(part) > 10:
            break
        suffix = part + suffix
    stem = base[:len(base) - len(suffix)]
    if not any(c.isalnum() for c in stem):
        return f"{label}{suffix or '.fits'}"
    return stem[:UPLOAD_NAME_MAX - len(suffix)] + suffix


def uploaded_name(stored: str) -> str | None:
    """Return the file name of an upload stored as ``stored``.

    ``stored`` is the path an upload parameter keeps, relative to the
    job folder; None when it has no client's name (a job made before
    uploads kept theirs: ``inputs/image.fits``).
    """
    parts = PurePosixPath(stored).parts
    if len(parts) == 3 and parts[0] == INPUTS_DIR:
        return parts[2]
    return None


class JobFolder:
    """The files of one job (see the module documentation).

    Parameters
    ----------
    path : Path
        The job's folder (it need not exist yet).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec_file = path / SPEC_FILE
        self.inputs = path / INPUTS_DIR
        self.progress_file = path / PROGRESS_FILE
        self.results = path / RESULTS_DIR
        self.manifest_file = self.results / MANIFEST_FILE
        self.error_file = path / ERROR_FILE
        self.log_file = path / LOG_FILE
        self.batch_script = path / BATCH_SCRIPT
        self.derived = path / DERIVED_DIR

    def __repr__(self) -> str:
        """Show the folder."""
        return f"JobFolder({str(self.path)!r})"

    # -- spec ----------------------------------------------------------
    def write_spec(self, spec: WorkerSpec) -> None:
        """Write ``spec.json`` (OSError if the folder is not writable)."""
        write_atomic(self.spec_file, spec.to_json())

    def read_spec(self) -> WorkerSpec:
        """Read ``spec.json`` (OSError, ContractError)."""
        return WorkerSpec.from_json(self.spec_file.read_text(
            encoding="utf-8"))

    def input_path(self, relative: str) -> Path:
        """Return the file of an input given relative to the folder.

        Raises ContractError for an absolute path or one leaving the
        folder (never followed).
        """
        path = Path(relative)
        if path.is_absolute() or ".." in path.parts:
            raise ContractError(
                f"{SPEC_FILE}: {relative!r} is not a path inside the job "
                "folder")
        return self.path / path

    def fetched_input(self, label: str, url: str) -> Path:
        """Return where the input ``label`` given by ``url`` is fetched to.

        ``inputs/<label>/<name>``, the name being the URL's file name
        (its last path segment, decoded), so that a message about the
        file names what the client gave (``image field.fits: ...``),
        not a name of ours; the host's name when the path has no usable
        file name (empty, hidden, or with a control character).
        """
        parts = urlsplit(url)
        name = unquote(parts.path.rsplit("/", 1)[-1]).strip()
        if not _usable_name(name):
            name = parts.hostname or ""
        if not _usable_name(name):
            name = f"{label}.fits"
        return self.inputs / label / name[:120]

    def uploaded_input(self, label: str, filename: str) -> Path:
        """Return where the input ``label`` uploaded as ``filename`` goes.

        ``inputs/<label>/<upload_name(filename)>``: the client's file
        name, made safe, which run tables, pages and messages show.
        """
        return self.inputs / label / upload_name(filename, label)

    def clear_input(self, label: str, keep: str | None = None) -> None:
        """Remove the stored files of the input ``label`` (replaced).

        What is in its folder ``inputs/<label>/`` but ``keep`` (the new
        upload's path relative to the job folder, if any), and the
        ``inputs/<label>.fits`` (``.fits.gz``) of a job made before
        uploads kept their names.
        """
        kept = None if keep is None else self.path / keep
        for path in sorted((self.inputs / label).glob("*")):
            if path != kept:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        for old in (f"{label}.fits", f"{label}.fits.gz"):
            (self.inputs / old).unlink(missing_ok=True)

    # -- progress ------------------------------------------------------
    def progress(self) -> Progress | None:
        """Return the worker's progress; None while absent or unreadable."""
        try:
            return Progress.from_json(self.progress_file.read_text())
        except (OSError, ContractError):
            return None

    def write_progress(self, progress: Progress) -> None:
        """Replace the progress document (worker)."""
        write_atomic(self.progress_file, progress.to_json())

    # -- the end ---------------------------------------------------------
    def write_error(self, error: WorkerError) -> None:
        """Write the error document (worker)."""
        write_atomic(self.error_file, error.to_json())

    def error(self) -> WorkerError | None:
        """Return the worker's error document, if it wrote one.

        An unreadable one is reported as a fatal error saying so.
        """
        try:
            text = self.error_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return WorkerError("fatal", f"unreadable error document: {exc}")
        try:
            return WorkerError.from_json(text)
        except ContractError as exc:
            return WorkerError("fatal", f"unreadable error document: {exc}")

    def clear_outcome(self) -> None:
        """Remove an earlier run's manifest and error document (worker)."""
        for path in (self.error_file, self.manifest_file):
            path.unlink(missing_ok=True)

    def outcome(self) -> Outcome:
        """Say how the worker ended, from its files.

        Products count only with their manifest and without an error
        document; an unreadable manifest is a failure saying why.
        """
        error = self.error()
        if error is not None:
            return Failed(error)
        if not self.manifest_file.exists():
            return Vanished()
        try:
            return Completed(Manifest.read(self.manifest_file))
        except (OSError, ManifestError) as exc:
            return Failed(WorkerError(
                "fatal", f"unreadable results manifest: {exc}"))

    # -- the log ---------------------------------------------------------
    def log_size(self) -> int | None:
        """Size of the worker log in bytes; None if there is none."""
        try:
            return self.log_file.stat().st_size
        except OSError:
            return None

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        """Return the last ``lines`` lines of the worker log ("" if none)."""
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - _TAIL_BYTES))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- files the service derives ---------------------------------------
    def thumbnail(self, result_id: str) -> Path:
        """Where the thumbnail of a picture result is kept."""
        if not result_id or "/" in result_id or result_id.startswith("."):
            raise ContractError(f"{result_id!r} is not a result id")
        return self.derived / "thumbs" / f"{result_id}.png"
