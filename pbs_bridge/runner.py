"""Runners: the interface between the job service and where jobs execute.

A runner starts, stops and observes the worker of a job
(``python -m pbs_bridge.worker JOBDIR``); the job service owns the
phases and calls it from one poller thread.  Two runners come with the
project: `pbs_bridge.local.LocalRunner` (``qfits.runner = local``, the
default: worker processes on this machine) and
`pbs_bridge.pbs.PbsRunner` (``pbs``: qsub/qstat/qdel/qrls).  Any other
is named ``module:Class`` and needs no change in the service:

* the class has a ``settings_type``: a frozen dataclass of
  `pbs_bridge.config.option` fields, read from the ``qfits.*`` keys of
  the ini (the service refuses keys that neither it nor the chosen
  runner and authentication policy declare);
* it is built as ``Class(settings)`` and implements `JobRunner`
  (each job comes with its folder, in `RunnerJob`).

This module and the runners import nothing from ``uws``: the service
speaks to them in `RunnerJob` and `BackendStatus`, whose phases are
`BackendPhase` (named like the UWS phases they become).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pbs_bridge.config import SettingsError
from pbs_bridge.jobfolder import JobFolder, WorkerSpec

#: The runners known by a short name (``qfits.runner``).
RUNNERS = {
    "local": "pbs_bridge.local:LocalRunner",
    "pbs": "pbs_bridge.pbs:PbsRunner",
}


class BackendPhase(StrEnum):
    """Where a job is, as a backend sees it (UWS phase names)."""

    QUEUED = "QUEUED"
    HELD = "HELD"
    EXECUTING = "EXECUTING"
    SUSPENDED = "SUSPENDED"
    #: The service lost track of the job (UWS UNKNOWN).
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class RunnerJob:
    """What a runner is told of an active job."""

    job_id: str
    phase: BackendPhase
    #: The runner's own id of the job ("" until it has one).
    backend_id: str
    start_time: datetime | None
    folder: JobFolder


@dataclass(frozen=True)
class BackendStatus:
    """What a runner knows of one job.

    ``phase`` is where the backend has the job while ``ended`` is
    false.  An ``ended`` job is concluded by the service from its
    folder (`pbs_bridge.jobfolder.JobFolder.outcome`); if the worker
    left no result, ``stopped`` (the backend stopped it itself: a batch
    system's walltime, an operator's ``qdel``) ends it ABORTED with
    ``message``, otherwise it ends in ERROR with ``message`` or the
    exit status.
    """

    phase: BackendPhase
    ended: bool = False
    stopped: bool = False
    exit_status: int | None = None
    #: Signal that ended the worker, if any.
    signal: int | None = None
    backend_id: str = ""
    host: str = ""
    queue: str = ""
    start_time: datetime | None = None
    #: When the backend saw the job end (the end time of the job).
    end_time: datetime | None = None
    message: str = ""
    #: Usage as the backend reports it (filling what the worker's own
    #: progress file does not say).
    max_rss_kb: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None


class JobRunner(Protocol):
    """The interface between the job service and an execution backend."""

    #: Short name shown in jobInfo (``local``, ``pbs``).
    name: str
    #: Jobs the backend runs at once (the quote's queue arithmetic).
    slots: int
    #: CCD worker processes a job may start (0: one per core), written
    #: into each job's spec.
    ccd_jobs: int

    def submit(self, job: RunnerJob, spec: WorkerSpec,
               execution_duration: int) -> str:
        """Hand a QUEUED job (spec written) to the backend; return its id.

        ``execution_duration`` is the job's limit in seconds (0: none).
        Raise `RunnerError` with the backend's own message on refusal.
        """

    def cancel(self, job_id: str, backend_id: str) -> None:
        """Stop the job's worker if it runs or is queued (idempotent)."""

    def release(self, job_id: str, backend_id: str) -> None:
        """Let a job the backend holds (HELD) run; `RunnerError` if not."""

    def poll(self, jobs: Sequence[RunnerJob]) -> Mapping[str, BackendStatus]:
        """Observe the active jobs (and start local ones); one call per cycle.

        Jobs missing from the answer are unchanged.
        """

    def health(self) -> str | None:
        """Return None when healthy, else what is wrong (availability)."""

    def close(self) -> None:
        """Stop observing (running workers are left to finish)."""


class RunnerError(RuntimeError):
    """The backend refused or failed a request."""


def load_class(key: str, name: str, known: Mapping[str, str]) -> Any:
    """Return the class a plug-in setting names: a short name or module:Class.

    ``key`` is the setting (for messages), ``known`` the short names.
    """
    path = known.get(name, name)
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise SettingsError(
            f"{key}: {name!r} is not {', '.join(known)} or module:Class")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"{key}: cannot load {path}: {exc}") from None


def runner_class(name: str) -> Any:
    """Return the runner class ``qfits.runner`` names (SettingsError)."""
    cls = load_class("qfits.runner", name, RUNNERS)
    if not hasattr(cls, "settings_type"):
        raise SettingsError(
            f"qfits.runner: {name} has no settings_type (see "
            "pbs_bridge.runner)")
    return cls


def worker_command(command: Sequence[str] = ()) -> list[str]:
    """Return the argument list that runs one job (job folder appended).

    ``command`` is ``qfits.worker_command`` (empty: this Python's
    ``-m pbs_bridge.worker``).
    """
    if command:
        return list(command)
    return [sys.executable, "-m", "pbs_bridge.worker"]

