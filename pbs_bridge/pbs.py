"""The PBS runner: `pbs_bridge.runner.JobRunner` on a batch system.

Selected by ``qfits.runner = pbs``.  Each job becomes one batch job
(``qsub``) whose script runs the same worker as the local runner
(``python -m pbs_bridge.worker JOBDIR``, the interpreter named by its
absolute path) on the job folder, which must be on a filesystem the
batch nodes share with the service.  The service's one poller thread
calls `PbsRunner.poll` with every active job; that is one ``qstat -f``
for all of them per cycle (plus, on Slurm, one ``scontrol`` in the
cycles where some job ended).  Batch states become phases through
`pbs_bridge.qstat.STATE_PHASES`; a job that ended is concluded by the
service from its folder (results manifest: COMPLETED, error document:
ERROR), the batch system's word deciding the rest (walltime reached or
cancelled outside the service: ``stopped``, so ABORTED; otherwise ERROR
with the exit status).  Nothing is kept in memory that a restarted
service would miss: it finds its batch jobs again by the ids stored
with the jobs.  Its settings are `PbsSettings` (the ``qfits.pbs_*``
keys, and ``ccd_jobs`` and ``worker_command`` as the local runner).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pbs_bridge.batch import (
    BatchError,
    BatchSystem,
    Ending,
    Submission,
    bare_id,
    torque_ending,
)
from pbs_bridge.config import SettingsError, option
from pbs_bridge.jobfolder import ContractError, WorkerSpec
from pbs_bridge.qstat import BatchJob
from pbs_bridge.runner import (
    BackendPhase,
    BackendStatus,
    RunnerError,
    RunnerJob,
    worker_command,
)
from qualityfits.errors import QualityFitsError
from qualityfits.fitsscan import scan_fits

log = logging.getLogger(__name__)

#: Prefix of batch job names (``qf-<job id>``).
NAME_PREFIX = "qf-"


@dataclass(frozen=True)
class PbsSettings:
    """The PBS runner's settings (``qfits.*`` keys, docs/service.md)."""

    #: Folder of qsub/qstat/qdel/qrls (empty: the PATH).
    pbs_bin: str = option("", "str")
    #: Queue to submit to (empty: the batch system's default).
    pbs_queue: str = option("", "str")
    #: Seconds a batch command may take.
    pbs_timeout: float = option(30.0, "float", minimum=0.01)
    #: First and longest pause between tries while the batch system
    #: does not answer [s] (doubling from the first).
    pbs_backoff_min: float = option(1.0, "float", minimum=0.01)
    pbs_backoff_max: float = option(60.0, "float", minimum=0.01)
    #: Memory requested for a job: base + factor x the image's size.
    pbs_memory_base: int = option(512 * 2**20, "size")
    pbs_memory_factor: float = option(2.0, "float", minimum=0.0)
    #: Names of the service's environment variables a batch job gets
    #: (``qsub -v``; it has its login environment besides).
    pbs_environment: tuple[str, ...] = option((), "names")
    #: Batch jobs expected to run at once (the quote only).
    pbs_slots: int = option(1, "int", minimum=1)
    #: Cores each batch job asks for and its pipeline uses.
    ccd_jobs: int = option(1, "int", minimum=0)
    #: Command that runs one job on the node (the job folder appended;
    #: empty: this Python's ``-m pbs_bridge.worker``).
    worker_command: tuple[str, ...] = option((), "words")

    def __post_init__(self) -> None:
        """Refuse a queue name qsub would misread, and ccd_jobs = 0."""
        if self.ccd_jobs == 0:
            raise SettingsError(
                "qfits.ccd_jobs = 0 (one per core of the machine) cannot be "
                "asked of a batch system: give the cores a job may use "
                "(default with runner = pbs: 1)")
        if self.pbs_queue and not re.match(r"^[A-Za-z0-9._-]+$",
                                           self.pbs_queue):
            raise SettingsError(
                f"qfits.pbs_queue: {self.pbs_queue!r} is not a queue name")


class PbsRunner:
    """Run each job as a batch job through qsub/qstat/qdel/qrls."""

    name = "pbs"
    settings_type = PbsSettings

    def __init__(self, settings: PbsSettings) -> None:
        self.settings = settings
        self.slots = settings.pbs_slots
        self.ccd_jobs = settings.ccd_jobs
        self.batch = BatchSystem(settings.pbs_bin, settings.pbs_timeout)
        self.command = worker_command(settings.worker_command)
        self._lock = threading.Lock()
        self._trouble: str | None = None
        self._failures = 0
        self._retry_at = 0.0

    # -- the JobRunner interface ------------------------------------------
    def submit(self, job: RunnerJob, spec: WorkerSpec,
               execution_duration: int) -> str:
        """Write the batch script and ``qsub`` it; return the batch id."""
        job_id, folder = job.job_id, job.folder
        script = folder.batch_script
        try:
            script.write_text(self._script(folder.path))
            script.chmod(0o755)
        except OSError as exc:
            raise RunnerError(
                f"cannot write the batch script: {exc.strerror}") from None
        submission = Submission(
            name=NAME_PREFIX + job_id, script=script,
            log=folder.log_file, walltime_s=execution_duration,
            memory_mb=self._memory_mb(job, spec),
            cpus=self.ccd_jobs,  # PbsSettings refuses 0
            queue=self.settings.pbs_queue,
            environment=self._environment(job_id))
        try:
            batch_id = self.batch.submit(submission)
        except BatchError as exc:
            raise RunnerError(str(exc)) from None
        log.info("job %s: batch job %s", job_id, batch_id)
        return batch_id

    def cancel(self, job_id: str, backend_id: str) -> None:
        """``qdel`` the job (already ended: nothing to do)."""
        if not backend_id:
            return
        try:
            self.batch.delete(backend_id)
        except BatchError as exc:
            log.warning("job %s: %s", job_id, exc)
            raise RunnerError(str(exc)) from None

    def release(self, job_id: str, backend_id: str) -> None:
        """``qrls`` a held job."""
        try:
            self.batch.release(backend_id)
        except BatchError as exc:
            raise RunnerError(
                f"the batch system did not release job {job_id}: {exc}"
            ) from None

    def poll(self, jobs: Sequence[RunnerJob]) -> dict[str, BackendStatus]:
        """One ``qstat -f`` for all the jobs with a batch id.

        While the batch system does not answer, raise `RunnerError`
        (the service then changes no phase) and try again after a
        delay that doubles up to ``qfits.pbs_backoff_max``.
        """
        tracked = {bare_id(j.backend_id): j for j in jobs if j.backend_id}
        if not tracked:
            return {}
        with self._lock:
            if self._trouble is not None and time.monotonic() < \
                    self._retry_at:
                raise RunnerError(self._trouble)
            try:
                seen = self.batch.jobs([j.backend_id for j in
                                        tracked.values()])
            except BatchError as exc:
                self._fail(str(exc))
                raise RunnerError(self._trouble or str(exc)) from None
            self._trouble, self._failures = None, 0
        out: dict[str, BackendStatus] = {}
        ended: list[tuple[str, RunnerJob, BatchJob | None]] = []
        for key, job in tracked.items():
            batch = seen.get(key)
            if batch is not None and batch.name and \
                    batch.name != NAME_PREFIX + job.job_id:
                batch = None  # the id was reused (the batch system reset)
            if batch is None or batch.phase is None:
                ended.append((key, job, batch))
                continue
            out[job.job_id] = BackendStatus(
                BackendPhase(batch.phase), backend_id=job.backend_id,
                host=batch.host, queue=batch.queue)
        if ended:
            endings = self.batch.endings([j.backend_id for _, j, _ in ended])
            for key, job, batch in ended:
                ending = endings.get(key)
                if ending is None and batch is not None and \
                        batch.exit_status is not None:
                    ending = torque_ending(batch.exit_status)
                out[job.job_id] = ended_status(job, batch, ending)
        return out

    def health(self) -> str | None:
        """Return what is wrong with the batch system, or None."""
        return self._trouble

    def close(self) -> None:
        """Nothing to stop: the batch jobs run on."""

    # -- internals ---------------------------------------------------------
    def _fail(self, message: str) -> None:
        self._failures += 1
        delay = min(self.settings.pbs_backoff_min * 2 ** self._failures,
                    self.settings.pbs_backoff_max)
        self._retry_at = time.monotonic() + delay
        self._trouble = (f"the batch system does not answer: {message} "
                         f"(next try in {delay:.0f} s)")
        log.warning("%s", self._trouble)

    def _environment(self, job_id: str) -> dict[str, str]:
        """Variables for ``qsub -v``: the job id, and those the ini names.

        Always some: with ``-v``, Slurm's qsub gives the job the login
        environment plus these, as TORQUE does, instead of the whole
        environment of the service.
        """
        env = {"QFITS_JOB_ID": job_id}
        env.update({name: os.environ[name]
                    for name in self.settings.pbs_environment
                    if name in os.environ})
        return env

    def _script(self, job_dir: Path) -> str:
        argv = [*self.command, str(job_dir)]
        return ("#!/bin/sh\n"
                "# QualityFITS-UWS: one job, written by the PBS runner.\n"
                f"cd {shlex.quote(str(job_dir))} || exit 1\n"
                f"exec {shlex.join(argv)}\n")

    def _memory_mb(self, job: RunnerJob, spec: WorkerSpec) -> int:
        """Memory to request: a base plus a multiple of the image size.

        The size is that of the image once decompressed (its headers
        walked, a compressed stream inflated, tile-compressed images
        counted decompressed: `qualityfits.fitsscan`);
        an image given by URL is not fetched yet, nor is one that cannot
        be read (the worker will say why): the decompressed limit is
        its size at most.
        """
        size = spec.decompressed_limit
        if "://" not in spec.image:
            with contextlib.suppress(ContractError, OSError,
                                     QualityFitsError):
                size = scan_fits(job.folder.input_path(spec.image),
                                 max_bytes=spec.decompressed_limit,
                                 max_pixels=spec.pixel_limit).expanded
        total = self.settings.pbs_memory_base + \
            self.settings.pbs_memory_factor * size
        return math.ceil(total / 2**20)


def ended_status(job: RunnerJob, batch: BatchJob | None,
                 ending: Ending | None) -> BackendStatus:
    """Return the status of a batch job that has ended (or vanished)."""
    backend = job.backend_id
    if ending is not None and (ending.timed_out or ending.cancelled):
        return BackendStatus(BackendPhase.EXECUTING, ended=True,
                             stopped=True, backend_id=backend,
                             signal=ending.signal,
                             message=f"{ending.message} (batch job "
                             f"{backend}, {ending.state})")
    gone = "ended" if batch is not None else "is gone from the batch system"
    how = ""
    if ending is not None and ending.signal is not None:
        how = f" (signal {ending.signal})"
    elif ending is not None and ending.exit_status is not None:
        how = f" (exit status {ending.exit_status})"
    message = f"batch job {backend} {gone} without a result{how}"
    if ending is not None and ending.message:
        message += f": {ending.message}"
    return BackendStatus(
        BackendPhase.EXECUTING, ended=True, backend_id=backend,
        exit_status=None if ending is None else ending.exit_status,
        signal=None if ending is None else ending.signal,
        host="" if batch is None else batch.host,
        max_rss_kb=None if batch is None else batch.max_rss_kb,
        wall_s=None if batch is None else batch.wall_s,
        cpu_s=None if batch is None else batch.cpu_s,
        message=message + "; see the log")
