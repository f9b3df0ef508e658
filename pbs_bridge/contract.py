"""The files a worker and the service exchange in a job directory.

The service writes the job spec and starts the worker; the worker
writes its progress while it runs and, at the end, either the products
with their manifest or an error document.  Nothing else passes between
them, so the same worker runs under the local runner and on a batch
node (the job directory is on a filesystem both see).

Job directory layout::

    spec.json          WorkerSpec (written by the service, read-only after)
    inputs/            uploaded files, named by parameter (image.fits, ...)
    progress.json      steps with state and times, host, usage (worker)
    results/           the product set and results/manifest.json (worker)
    error.json         WorkerError, when the job failed (worker)
    worker.log         the worker's standard output and error

Every JSON document carries ``"version": 1``; readers refuse other
versions with a clear message.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Version of the JSON documents below.
CONTRACT_VERSION = 1

SPEC_FILE = "spec.json"
INPUTS_DIR = "inputs"
PROGRESS_FILE = "progress.json"
RESULTS_DIR = "results"
MANIFEST_FILE = "manifest.json"  # inside RESULTS_DIR
ERROR_FILE = "error.json"
LOG_FILE = "worker.log"

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
    zeropoint: float | None = None
    pixscale: float | None = None
    #: CCD worker processes of the pipeline (0: its default).
    ccd_jobs: int = 0
    #: Largest file the worker may fetch by URL [bytes].
    fetch_limit: int = 800_000_000
    #: Seconds before a URL fetch gives up.
    fetch_timeout: float = 60.0
    run_id: str | None = None

    def to_json(self) -> str:
        """Return the versioned JSON document."""
        return json.dumps({"version": CONTRACT_VERSION, **asdict(self)},
                          indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Parse a document written by `to_json`."""
        data = _load_versioned(text, SPEC_FILE)
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
        data = _load_versioned(text, ERROR_FILE)
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
        data = _load_versioned(text, PROGRESS_FILE)
        try:
            steps = tuple(StepState(**s) for s in data.pop("steps", []))
            return cls(steps=steps, **data)
        except TypeError as exc:
            raise ContractError(f"{PROGRESS_FILE}: {exc}") from None


def _load_versioned(text: str, name: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ContractError(f"{name}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ContractError(f"{name}: not a JSON object")
    version = data.pop("version", None)
    if version != CONTRACT_VERSION:
        raise ContractError(
            f"{name}: version {version!r}, this program reads "
            f"version {CONTRACT_VERSION}")
    return data


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
