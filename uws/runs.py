"""Runs in the service: the jobs of an owner that share a RUNID.

A run is UWS's own grouping (``RUNID`` at job creation, stored as
``job.run_id``), owner-scoped as jobs are: an owner sees the runs of
their own jobs only.  `load_run` gathers a run's jobs and reads the
summary (result ``summary_json``) of each completed one into a
`qualityfits.runs.RunExposure`, so that the service's run table, trend
plots and page show the same numbers as ``qualityfits run``.

Only RUNIDs that are safe tokens (`SAFE_RUN_ID`: letters, digits,
``.``, ``_`` and ``-``) have run resources: the others are refused
with a 400 saying so (UWS itself accepts any printable RUNID).

The run's pictures (`qualityfits.runplots.write_run_plots`) are drawn
once per state of the run into ``<job_dir>/.runs/<run>/<key>/``: the key
is a digest of the run's jobs, their phases and end times, so that a
job added to the run, or ending, draws them anew (older keys are
removed then).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from pbs_bridge.jobfolder import uploaded_name
from qualityfits._version import __version__
from qualityfits.runplots import write_run_plots
from qualityfits.runs import RunExposure
from uws.auth import Identity
from uws.errors import (
    ServiceUnavailableError,
    UnknownJobError,
    UsageError,
    UWSError,
)
from uws.model import Job
from uws.phases import FINAL, Phase
from uws.service import JobService
from uws.store import ANY_OWNER, StoreError

#: A RUNID that has run resources (it is a path segment of their URLs).
SAFE_RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The result each exposure's numbers come from.
SUMMARY_JSON: Final = "summary_json"
#: The run's pictures (`qualityfits.runplots`), in the page's order.
PLOT_NAMES: Final = ("run_trends", "run_ccd_fwhm")
#: Trimmed summaries kept in memory (a completed job's never changes).
SUMMARY_CACHE_SIZE: Final = 2048
#: Where the pictures are kept, below the service's job folder.
PLOT_CACHE: Final = ".runs"
#: A run's pictures not drawn again for this long are removed
#: (`prune_plots`) when another run's are drawn [s].
PLOT_CACHE_UNUSED_S: Final = 86400.0

_summaries: OrderedDict[tuple[str, int], Mapping[str, Any]] = OrderedDict()
_summaries_lock = threading.Lock()
#: One run's pictures drawn at a time (matplotlib is CPU-hungry).
_plot_lock = threading.Lock()


def is_safe_run_id(run_id: str | None) -> bool:
    """Return whether a RUNID can name run resources (`SAFE_RUN_ID`)."""
    return run_id is not None and SAFE_RUN_ID.fullmatch(run_id) is not None


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe token; `UsageError` (400) if not."""
    if not is_safe_run_id(run_id):
        shown = run_id if len(run_id) <= 70 else run_id[:67] + "..."
        raise UsageError(
            f"RUNID {shown!r} has no run resources: a run is named by 1 "
            "to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit")
    return run_id


def run_page_path(run_id: str | None) -> str | None:
    """Return the run page's path for a job's RUNID (None: it has none)."""
    return f"/ui/runs/{run_id}" if is_safe_run_id(run_id) else None


@dataclass(frozen=True)
class Run:
    """The jobs of one owner's run, newest first, and its state key."""

    run_id: str
    jobs: tuple[Job, ...]
    key: str

    @property
    def waiting(self) -> list[Job]:
        """Return the jobs not yet in a final phase, oldest first."""
        return [j for j in reversed(self.jobs) if j.phase not in FINAL]

    @property
    def completed(self) -> int:
        """Return the number of COMPLETED jobs."""
        return sum(j.phase is Phase.COMPLETED for j in self.jobs)


def who(owner: Identity) -> object:
    """Return whose jobs the store lists for this caller."""
    return ANY_OWNER if owner.sees_all else owner.name


def find_run(service: JobService, owner: Identity, run_id: str) -> Run:
    """Return the caller's jobs of run ``run_id`` (400, 404 checked)."""
    check_run_id(run_id)
    refs = service.store.list_jobs(owner=who(owner), run_id=run_id)
    jobs = []
    for ref in refs:
        if ref.phase in FINAL:  # served from the service's cache
            try:
                jobs.append(service.get(ref.job_id, owner))
            except UnknownJobError:
                continue  # deleted meanwhile
            continue
        # Not the service's get: no progress file and no quote (a quote
        # of a queued job reads the whole queue) for each of a run.
        try:
            job = service.store.get(ref.job_id)
        except StoreError as exc:
            raise ServiceUnavailableError(str(exc)) from exc
        if job is not None:
            jobs.append(job)
    if not jobs:
        raise UnknownJobError(
            f"no run {run_id!r}: none of your jobs has RUNID={run_id}")
    digest = hashlib.sha256()
    for job in jobs:
        end = job.end_time.isoformat() if job.end_time else ""
        digest.update(f"{job.job_id} {job.phase.value} {end}\n".encode())
    return Run(run_id, tuple(jobs), digest.hexdigest()[:24])


def image_name(job: Job) -> str:
    """Return how a job's image is named in the run table.

    An image given by URL is named by the URL's last path segment, an
    upload by its client's file name (made safe when it was stored:
    `pbs_bridge.jobfolder.upload_name`); an upload of a job made before
    uploads kept their names, by its job.
    """
    image = next((p for p in job.parameters if p.name == "image"), None)
    if image is None:
        return f"no image ({job.job_id})"
    if image.is_post:
        return uploaded_name(image.text) or f"upload {job.job_id}"
    name = unquote(urlsplit(image.text).path.rstrip("/").rsplit("/", 1)[-1])
    return name or image.text


def _trim(summary: Any) -> Mapping[str, Any]:
    """Keep what a run needs of a summary (it may be megabytes)."""
    exposure = summary.get("exposure") or {}
    return {
        "observation": summary.get("observation") or {},
        "n_failed": summary.get("n_failed", 0),
        "exposure": {key: exposure.get(key) for key in
                     ("metrics", "flags", "grade") if key in exposure},
        "extensions": [
            {key: ext.get(key) for key in ("name", "status", "metrics",
                                           "flags")}
            for ext in summary.get("extensions") or ()],
    }


def _summary(service: JobService, owner: Identity,
             job: Job) -> Mapping[str, Any]:
    """Read a completed job's summary (trimmed, cached); ValueError."""
    found = service.result_file(job.job_id, owner, SUMMARY_JSON)
    try:
        stamp = found.path.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"the summary is missing ({exc.strerror})"
                         ) from None
    key = (job.job_id, stamp)
    with _summaries_lock:
        cached = _summaries.get(key)
        if cached is not None:
            _summaries.move_to_end(key)
            return cached
    try:
        trimmed = _trim(json.loads(found.path.read_bytes()))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"the summary cannot be read: {exc}") from None
    with _summaries_lock:
        _summaries[key] = trimmed
        while len(_summaries) > SUMMARY_CACHE_SIZE:
            _summaries.popitem(last=False)
    return trimmed


def exposures_of(service: JobService, owner: Identity, run: Run,
                 base: str) -> list[RunExposure]:
    """Return the run's jobs as exposures (summaries of the completed).

    ``base`` is the public base URL: each exposure links to its job's
    results page (completed) or processing report (the others).
    """
    out = []
    for job in run.jobs:
        summary = None
        error = job.error.message if job.error is not None else ""
        link = f"{base}/ui/jobs/{job.job_id}"
        if job.phase is Phase.COMPLETED:
            link += "/results"
            if any(r.id == SUMMARY_JSON for r in job.results):
                try:
                    summary = _summary(service, owner, job)
                except (ValueError, UWSError) as exc:
                    error = str(exc)
            else:
                error = "the job has no summary (summary_json)"
        out.append(RunExposure(image_name(job), summary, job.job_id,
                               job.phase.value, error, link))
    return out


def _plot_folder(service: JobService, owner: Identity, run: Run) -> Path:
    whose = "" if owner.sees_all else f"{owner.name}"
    digest = hashlib.sha256(f"{whose}\0{run.run_id}".encode()).hexdigest()
    return service.job_root / PLOT_CACHE / digest[:32]


def prune_plots(cache: Path, *, keep: Path,
                unused_s: float = PLOT_CACHE_UNUSED_S) -> int:
    """Remove the pictures of runs not drawn for ``unused_s`` seconds.

    They are drawn again when a run's page asks for them, so removing
    them loses nothing; without it the pictures of runs whose jobs were
    deleted or expired would pile up.  Returns the folders removed.
    """
    limit = time.time() - unused_s
    removed = 0
    for folder in cache.iterdir():
        try:
            stale = folder != keep and folder.stat().st_mtime < limit
        except OSError:
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def plot_file(service: JobService, owner: Identity, run: Run, base: str,
              name: str) -> Path:
    """Return a picture of the run, drawn now unless already drawn.

    `UnknownJobError` (404) for an unknown picture, or when no job of
    the run is completed yet (nothing to draw).
    """
    if name not in PLOT_NAMES:
        raise UnknownJobError(
            f"no run picture {name!r} (there are {', '.join(PLOT_NAMES)})")
    folder = _plot_folder(service, owner, run)
    wanted = folder / run.key / f"{name}.png"
    if wanted.exists():
        return wanted
    with _plot_lock:
        if wanted.exists():  # drawn by another request meanwhile
            return wanted
        exposures = exposures_of(service, owner, run, base)
        folder.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".draw-"))
        try:
            plots = write_run_plots(exposures, scratch)
            if plots and not (folder / run.key).exists():
                scratch.replace(folder / run.key)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for old in folder.iterdir():
            if old.name != run.key:
                shutil.rmtree(old, ignore_errors=True)
        prune_plots(service.job_root / PLOT_CACHE, keep=folder)
    if not wanted.exists():
        raise UnknownJobError(
            f"run {run.run_id} has no picture yet: none of its jobs is "
            "COMPLETED with a summary")
    return wanted


def has_plots(exposures: Sequence[RunExposure]) -> bool:
    """Return whether the run has pictures (an exposure was assessed)."""
    return any(e.summary is not None for e in exposures)


def versions() -> dict[str, str]:
    """Return the software versions the run's tables record."""
    return {"qualityfits": __version__}

