"""The local runner: workers as child processes of the service.

``qfits.runner = local`` (the default).  It starts each job's worker
(``python -m pbs_bridge.worker JOBDIR``) as a child process in its own
session (never inside a web thread), at most ``qfits.max_running`` at
once; the others stay QUEUED in the order they were queued.  Workers
survive a restart of the service: a new service re-attaches to a
worker that is still running (by its pid, checked against the command
line) and reads the outcome of one that ended from its folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pbs_bridge.config import option
from pbs_bridge.jobfolder import JobFolder, WorkerSpec
from pbs_bridge.runner import (
    BackendPhase,
    BackendStatus,
    RunnerJob,
    worker_command,
)

#: Seconds between SIGTERM and SIGKILL when stopping a worker.
KILL_GRACE = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LocalSettings:
    """The local runner's settings (``qfits.*`` keys, docs/service.md)."""

    #: Jobs executing at once; the rest stay QUEUED.
    max_running: int = option(1, "int", minimum=1)
    #: CCD worker processes of one job (0: one per core).
    ccd_jobs: int = option(0, "int", minimum=0)
    #: Command that runs one job (the job folder is appended; empty:
    #: this Python's ``-m pbs_bridge.worker``).
    worker_command: tuple[str, ...] = option((), "words")


@dataclass
class _Child:
    job_id: str
    popen: subprocess.Popen[bytes] | None  # None: adopted after a restart
    pid: int
    started: datetime


class LocalRunner:
    """Run workers as child processes of the service, FIFO, N at once."""

    name = "local"
    settings_type = LocalSettings

    def __init__(self, settings: LocalSettings) -> None:
        self.slots = settings.max_running
        self.ccd_jobs = settings.ccd_jobs
        self.command = worker_command(settings.worker_command)
        self.host = socket.gethostname()
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()

    def submit(self, job: RunnerJob, spec: WorkerSpec,
               execution_duration: int) -> str:
        """Queue the job: the next `poll` starts it when a slot is free.

        The service itself enforces the execution duration.
        """
        del job, spec, execution_duration
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

    def poll(self, jobs: Sequence[RunnerJob]) -> dict[str, BackendStatus]:
        """Observe running workers, then start queued jobs in order."""
        out: dict[str, BackendStatus] = {}
        active = {job.job_id: job for job in jobs}
        with self._lock:
            self._reap_forgotten(active)
            for job in jobs:
                if job.phase is BackendPhase.EXECUTING:
                    status = self._observe(job)
                    if status is not None:
                        out[job.job_id] = status
            running = sum(1 for j in jobs if j.job_id in self._children)
            for job in jobs:
                if job.phase is not BackendPhase.QUEUED or running >= \
                        self.slots:
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
    def _start(self, job: RunnerJob) -> BackendStatus:
        job_dir = job.folder.path
        argv = [*self.command, str(job_dir)]
        try:
            with job.folder.log_file.open("ab") as log:
                popen = subprocess.Popen(  # noqa: S603 - argument list
                    argv, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=job_dir,
                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return BackendStatus(
                BackendPhase.QUEUED, ended=True,
                message=f"cannot start the worker {argv[0]}: {exc}")
        now = _now()
        self._children[job.job_id] = _Child(job.job_id, popen, popen.pid,
                                            now)
        return BackendStatus(BackendPhase.EXECUTING,
                             backend_id=f"pid:{popen.pid}",
                             host=self.host, queue="local",
                             start_time=now)

    def _observe(self, job: RunnerJob) -> BackendStatus | None:
        child = self._children.get(job.job_id)
        if child is None:
            pid = _pid_of(job.backend_id)
            if pid is not None and _is_worker(pid, job.folder):
                # A worker of a previous service process: adopt it.
                self._children[job.job_id] = _Child(
                    job.job_id, None, pid, job.start_time or _now())
                return None
            return BackendStatus(BackendPhase.EXECUTING, ended=True,
                                 message="the worker is gone (the service "
                                 "was restarted while it ran)")
        if child.popen is not None:
            code = child.popen.poll()
            if code is None:
                return None
            del self._children[job.job_id]
            return BackendStatus(
                BackendPhase.EXECUTING, ended=True,
                exit_status=code if code >= 0 else None,
                signal=-code if code < 0 else None, end_time=_now())
        if _alive(child.pid):
            return None
        del self._children[job.job_id]
        return BackendStatus(BackendPhase.EXECUTING, ended=True,
                             end_time=_now())

    def _reap_forgotten(self, active: Mapping[str, RunnerJob]) -> None:
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


def _is_worker(pid: int, folder: JobFolder) -> bool:
    """Whether ``pid`` is a live worker of ``folder`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(str(folder.path)) in argv


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
