"""Runners: where jobs execute.  The local runner is the default.

A runner knows how to start, stop and observe the worker of a job
(``python -m pbs_bridge.worker JOBDIR``); the job service owns the
phases and calls it from one poller thread.  `JobRunner` is the
interface the PBS runner of ``pbs_bridge`` implements too; the
``.ini``'s ``qfits.runner`` chooses (``local``, ``pbs`` or a dotted
``module:Class``).

The local runner starts each job's worker as a child process in its
own session (never inside a web thread), at most ``max_running`` at
once; the others stay QUEUED in the order they were queued.  Workers
survive a restart of the service: a new service re-attaches to a
worker that is still running (by its pid, checked against the
command line) and reads the outcome of one that ended from its files.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pbs_bridge.contract import LOG_FILE
from uws.model import utcnow
from uws.phases import Phase
from uws.settings import Settings
from uws.store import ActiveJob

#: Seconds between SIGTERM and SIGKILL when stopping a worker.
KILL_GRACE = 5.0


@dataclass(frozen=True)
class BackendStatus:
    """What a runner knows of one job.

    ``phase`` is QUEUED, HELD, EXECUTING or SUSPENDED while the backend
    has the job; ``ended`` means the backend is done with it and the
    outcome is to be read from the job folder.  An ended job whose
    ``phase`` is ABORTED was stopped by the backend itself (a batch
    system's walltime, an operator's ``qdel``): unless it left its
    results, it ends ABORTED with ``message``.
    """

    phase: Phase
    ended: bool = False
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

    def submit(self, job_id: str, job_dir: Path,
               execution_duration: int) -> str:
        """Hand a QUEUED job (spec written) to the backend; return its id.

        ``execution_duration`` is the job's limit in seconds (0: none).
        Raise `RunnerError` with the backend's own message on refusal.
        """

    def cancel(self, job_id: str, backend_id: str) -> None:
        """Stop the job's worker if it runs or is queued (idempotent)."""

    def release(self, job_id: str, backend_id: str) -> None:
        """Let a job the backend holds (HELD) run; `RunnerError` if not."""

    def poll(self, jobs: Sequence[ActiveJob]) -> Mapping[str, BackendStatus]:
        """Observe the active jobs (and start local ones); one call per cycle.

        Jobs missing from the answer are unchanged.
        """

    def health(self) -> str | None:
        """Return None when healthy, else what is wrong (availability)."""

    def close(self) -> None:
        """Stop observing (running workers are left to finish)."""


class RunnerError(RuntimeError):
    """The backend refused or failed a request."""


def load_runner(settings: Settings, job_root: Path) -> JobRunner:
    """Build the runner named by ``qfits.runner``."""
    name = settings.runner
    if name == "local":
        return LocalRunner(settings, job_root)
    if name == "pbs":
        name = "pbs_bridge.runner:PbsRunner"
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(
            f"qfits.runner: {settings.runner!r} is not local, pbs or "
            "module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"qfits.runner: cannot load {name}: {exc}"
                         ) from None
    runner: JobRunner = cls(settings, job_root)
    return runner


def worker_command(settings: Settings) -> list[str]:
    """Return the argument list that runs one job (job folder appended)."""
    if settings.worker_command:
        return list(settings.worker_command)
    return [sys.executable, "-m", "pbs_bridge.worker"]


@dataclass
class _Child:
    job_id: str
    popen: subprocess.Popen[bytes] | None  # None: adopted after a restart
    pid: int
    started: datetime


class LocalRunner:
    """Run workers as child processes of the service, FIFO, N at once."""

    name = "local"

    def __init__(self, settings: Settings, job_root: Path) -> None:
        self.max_running = settings.max_running
        self.job_root = job_root
        self.command = worker_command(settings)
        self.host = socket.gethostname()
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str, job_dir: Path,
               execution_duration: int) -> str:
        """Queue the job: the next `poll` starts it when a slot is free.

        The service itself enforces the execution duration.
        """
        del job_id, job_dir, execution_duration
        return ""

    def release(self, job_id: str, backend_id: str) -> None:
        """Do nothing: the local runner never holds a job."""
        del job_id, backend_id

    def cancel(self, job_id: str, backend_id: str) -> None:
        """Terminate the job's worker (its whole process group)."""
        with self._lock:
            child = self._children.get(job_id)
        pid = child.pid if child is not None else _pid_of(backend_id)
        if pid is None:
            return
        _terminate_group(pid)
        if child is not None and child.popen is not None:
            threading.Thread(target=_reap_later, args=(child.popen,),
                             daemon=True).start()

    def poll(self, jobs: Sequence[ActiveJob]) -> dict[str, BackendStatus]:
        """Observe running workers, then start queued jobs in order."""
        out: dict[str, BackendStatus] = {}
        active = {job.job_id: job for job in jobs}
        with self._lock:
            self._reap_forgotten(active)
            for job in jobs:
                if job.phase is Phase.EXECUTING:
                    status = self._observe(job)
                    if status is not None:
                        out[job.job_id] = status
            running = sum(1 for j in jobs if j.job_id in self._children)
            for job in jobs:
                if job.phase is not Phase.QUEUED or running >= \
                        self.max_running:
                    continue
                if job.job_id in self._children:
                    continue
                out[job.job_id] = self._start(job)
                if not out[job.job_id].ended:
                    running += 1
        return out

    def health(self) -> str | None:
        """Return None: local workers need nothing but this machine."""
        return None

    def close(self) -> None:
        """Forget the children (they run on, and a new service adopts them)."""
        with self._lock:
            self._children.clear()

    # -- internals ---------------------------------------------------------
    def _start(self, job: ActiveJob) -> BackendStatus:
        job_dir = self.job_root / job.job_id
        argv = [*self.command, str(job_dir)]
        try:
            with (job_dir / LOG_FILE).open("ab") as log:
                popen = subprocess.Popen(  # noqa: S603 - argument list
                    argv, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=job_dir,
                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return BackendStatus(
                Phase.ERROR, ended=True,
                message=f"cannot start the worker {argv[0]}: {exc}")
        now = utcnow()
        self._children[job.job_id] = _Child(job.job_id, popen, popen.pid,
                                            now)
        return BackendStatus(Phase.EXECUTING, backend_id=f"pid:{popen.pid}",
                             host=self.host, queue="local",
                             start_time=now)

    def _observe(self, job: ActiveJob) -> BackendStatus | None:
        child = self._children.get(job.job_id)
        if child is None:
            pid = _pid_of(job.backend_id)
            if pid is not None and _is_worker(pid, self.job_root /
                                              job.job_id):
                # A worker of a previous service process: adopt it.
                self._children[job.job_id] = _Child(
                    job.job_id, None, pid, job.start_time or utcnow())
                return None
            return BackendStatus(Phase.EXECUTING, ended=True,
                                 message="the worker is gone (the service "
                                 "was restarted while it ran)")
        if child.popen is not None:
            code = child.popen.poll()
            if code is None:
                return None
            del self._children[job.job_id]
            return BackendStatus(
                Phase.EXECUTING, ended=True,
                exit_status=code if code >= 0 else None,
                signal=-code if code < 0 else None, end_time=utcnow())
        if _alive(child.pid):
            return None
        del self._children[job.job_id]
        return BackendStatus(Phase.EXECUTING, ended=True, end_time=utcnow())

    def _reap_forgotten(self, active: Mapping[str, ActiveJob]) -> None:
        """Drop children of jobs that are no longer active (aborted)."""
        for job_id in [j for j in self._children if j not in active]:
            child = self._children.pop(job_id)
            if child.popen is not None and child.popen.poll() is None:
                threading.Thread(target=_reap_later, args=(child.popen,),
                                 daemon=True).start()


def _pid_of(backend_id: str) -> int | None:
    if backend_id.startswith("pid:"):
        with contextlib.suppress(ValueError):
            return int(backend_id[4:])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_worker(pid: int, job_dir: Path) -> bool:
    """Whether ``pid`` is a live worker of ``job_dir`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(job_dir)) in argv


def _terminate_group(pid: int) -> None:
    """SIGTERM the worker's process group, SIGKILL it after a grace."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)

    def _kill() -> None:
        deadline = time.monotonic() + KILL_GRACE
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    threading.Thread(target=_kill, daemon=True).start()


def _reap_later(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=KILL_GRACE + 5)
