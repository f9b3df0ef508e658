"""The job service: every UWS verb, the phase rules, the background work.

Views call these verbs and translate the results to HTTP; the store
persists; the runner executes.  Every phase change goes through
`uws.phases` and a compare-and-set in the store, then wakes the
requests blocked in WAIT.  Two daemon threads do the background work:
the poller (one runner poll per cycle for all active jobs, execution
duration enforcement, outcomes) and the reaper (destruction); a third,
`uws.notify`'s sender, mails the end of a job when asked to and
configured.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from pbs_bridge.jobfolder import (
    LOG_FILE,
    RESULTS_DIR,
    Completed,
    ContractError,
    Failed,
    JobFolder,
    Progress,
    WorkerSpec,
)
from pbs_bridge.runner import (
    BackendPhase,
    BackendStatus,
    JobRunner,
    RunnerError,
    RunnerJob,
)
from qualityfits.errors import InvalidParameterError
from qualityfits.manifest import Manifest
from qualityfits.parameters import QualityParameters
from uws import phases
from uws.auth import Identity
from uws.errors import (
    InvalidPhaseError,
    PermissionDeniedError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnknownJobError,
    UsageError,
)
from uws.forms import Form
from uws.model import (
    ErrorSummary,
    Job,
    JobInfo,
    JobListRow,
    JobRef,
    Parameter,
    Result,
    Step,
    utcnow,
)
from uws.notify import NOTIFIED, JobEnd, Notifier
from uws.params import (
    CONTROL_PARAMETERS,
    INT_MAX,
    SCIENCE_PARAMETERS,
    FitsLimits,
    JobParameters,
    check_names,
    control_values,
    install_inputs,
    parse_instant,
    parse_int,
    parse_job_parameters,
    science_values,
    usage_error,
)
from uws.phases import Phase
from uws.settings import Settings, human_bytes
from uws.store import ANY_OWNER, ActiveJob, JobStore, NewJob, StoreError

log = logging.getLogger(__name__)

#: What `JobService.list_rendered` makes of each page of a job list.
T = TypeVar("T")

#: Phases the poller asks the runner about.
OBSERVED = (Phase.QUEUED, Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED,
            Phase.UNKNOWN)
#: Finished jobs kept in memory for reads.
CACHE_SIZE = 4096
#: Seconds an owner's count of stored jobs is trusted (quota check).
STORED_RECOUNT = 10.0


@dataclass(frozen=True)
class ResultFile:
    """A result or an uploaded parameter to serve."""

    path: Path
    mime: str


class _Waited:
    """A job with requests waiting on it: its condition and counters."""

    __slots__ = ("cond", "version", "waiters")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.waiters = 0
        self.version = 0


class _Changes:
    """Wake WAIT requests when a job's phase changes (this process).

    Each waited job has its own condition (all share one lock): a change
    wakes the requests waiting on that job only, not every blocked
    request (with 100 clients in WAIT, a broadcast woke 100 threads per
    change, each to take the GIL and go back to sleep).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Waited] = {}
        self.waiting = 0

    def join(self, job_id: str, most: int) -> bool:
        """Count one more waiter of the job, unless ``most`` already wait."""
        with self._lock:
            if self.waiting >= most:
                return False
            self.waiting += 1
            waited = self._jobs.get(job_id)
            if waited is None:
                waited = self._jobs[job_id] = _Waited(self._lock)
            waited.waiters += 1
            return True

    def leave(self, job_id: str) -> None:
        """Count one waiter of the job less."""
        with self._lock:
            self.waiting -= 1
            waited = self._jobs[job_id]
            waited.waiters -= 1
            if waited.waiters == 0:
                del self._jobs[job_id]

    def version(self, job_id: str) -> int:
        """Return the job's change count (while it has waiters)."""
        with self._lock:
            waited = self._jobs.get(job_id)
            return waited.version if waited else 0

    def notify(self, job_id: str) -> None:
        """Wake the waiters of the job (a change, or its deletion)."""
        with self._lock:
            waited = self._jobs.get(job_id)
            if waited is None:
                # Nobody waits: a later waiter reads the new phase from
                # the database first.
                return
            waited.version += 1
            waited.cond.notify_all()

    def wait(self, job_id: str, seen: int, timeout: float) -> None:
        """Block until the job changed since ``seen``, at most ``timeout``."""
        with self._lock:
            waited = self._jobs[job_id]
            waited.cond.wait_for(lambda: waited.version != seen, timeout)


class JobService:
    """The UWS verbs over a store and a runner.

    ``owner`` arguments are the caller's `uws.auth.Identity`: its name
    is recorded with the jobs it creates; it sees and touches only its
    own jobs unless it sees everyone (anonymous mode).
    """

    def __init__(self, settings: Settings, store: JobStore,
                 runner: JobRunner, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.clock = clock
        self.job_root = settings.job_dir
        self.staging_root = settings.job_dir / ".uploads"
        self.up_since = clock()
        self._changes = _Changes()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._poll_lock = threading.Lock()
        self._cache: OrderedDict[str, Job] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.runner_health: str | None = None
        self.notifier = Notifier(settings)
        self.limits = FitsLimits(settings.decompressed_limit,
                                 settings.pixel_limit)
        self._stored: dict[str | None, tuple[int, int, float]] = {}
        self._stored_lock = threading.Lock()
        self.job_root.mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start the poller, the reaper and the e-mail sender threads."""
        self.notifier.start()
        for name, target in (("uws-poller", self._poller),
                             ("uws-reaper", self._reaper)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the threads; running workers go on (a restart adopts them).

        The e-mails of the jobs that ended are sent first (waiting at
        most a little over ``qfits.smtp_timeout``).
        """
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.notifier.close()
        self.runner.close()
        self.store.close()

    # -- creation and parameters ----------------------------------------
    def create(self, owner: Identity, form: Form) -> str:
        """Create a job from a creation request; return its id.

        Raises `UsageError` (400) for a bad parameter; the uploads of a
        refused request are removed.
        """
        try:
            check_names(form, SCIENCE_PARAMETERS + CONTROL_PARAMETERS,
                        at_creation=True)
            run, run_id, duration, destruction = control_values(form)
            params = parse_job_parameters(form, self.limits)
            # Kept at the precision the job shows (milliseconds): AFTER
            # compares with the stored instant, clients with the shown
            # one; AFTER=<a job's creationTime> must exclude that job.
            now = self.clock()
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            execution = self._execution_duration(duration)
            destroy = self._destruction(destruction, now)
            if run and "image" not in params.files:
                raise UsageError(
                    "PHASE=RUN: the job has no IMAGE (upload a FITS file "
                    "or give its http(s) URL)")
            self._check_stored(owner.name, _upload_bytes(params),
                               new_job=True)
            job_id = self._new_id()
            job_dir = self.folder(job_id).path
            try:
                job_dir.mkdir(parents=True)
                stored = install_inputs(params, self.folder(job_id))
            except OSError as exc:
                shutil.rmtree(job_dir, ignore_errors=True)
                raise ServiceUnavailableError(
                    f"cannot write the job folder: {exc.strerror}") from exc
            try:
                self.store.create(NewJob(
                    job_id=job_id, owner=owner.name, run_id=run_id,
                    creation_time=now, execution_duration=execution,
                    destruction=destroy, parameters=tuple(stored),
                    email=params.email, estimate_s=self._estimate(params),
                    stored_bytes=_folder_bytes(job_dir)))
            except BaseException:
                # No row, no folder: nothing would ever reap it.
                shutil.rmtree(job_dir, ignore_errors=True)
                raise
        finally:
            form.discard()
        log.info("job %s created (owner %s, run id %s)", job_id, owner,
                 run_id)
        if run:
            self.run(job_id, owner)
        return job_id

    def set_parameters(self, job_id: str, owner: Identity,
                       form: Form) -> None:
        """Add or change parameters of a PENDING job."""
        try:
            job = self._job(job_id, owner)
            check_names(form, SCIENCE_PARAMETERS, at_creation=False)
            if not phases.parameters_editable(job.phase):
                raise InvalidPhaseError(
                    f"parameters can change only while the job is PENDING "
                    f"(it is {job.phase})")
            params = parse_job_parameters(form, self.limits)
            adding = _upload_bytes(params)
            if adding:
                self._check_stored(job.owner, adding)
            try:
                stored = install_inputs(params, self.folder(job_id))
            except OSError as exc:
                raise ServiceUnavailableError(
                    f"cannot write the job folder: {exc.strerror}") from exc
            estimate = (self._estimate(params) if "image" in params.files
                        else None)
            if not self.store.set_parameters(job_id, stored,
                                             only_in=Phase.PENDING,
                                             estimate_s=estimate):
                _drop_new_uploads(self.folder(job_id), job, stored)
                raise InvalidPhaseError(
                    "parameters can change only while the job is PENDING")
            # The files of the inputs given anew: only the new ones stay.
            for param in stored:
                if param.name in params.files:
                    self.folder(job_id).clear_input(
                        param.name, param.text if param.is_post else None)
            self._record_size(job_id)
            if params.email is not None:
                self.store.update(job_id, email=params.email)
        finally:
            form.discard()

    def set_execution_duration(self, job_id: str, owner: Identity,
                               value: str) -> None:
        """Change the execution duration of a PENDING job."""
        job = self._job(job_id, owner)
        if not phases.parameters_editable(job.phase):
            raise InvalidPhaseError(
                "EXECUTIONDURATION can change only while the job is "
                f"PENDING (it is {job.phase})")
        duration = self._execution_duration(value)
        if not self.store.transition(job_id, [Phase.PENDING], None,
                                     execution_duration=duration):
            raise InvalidPhaseError("the job is no longer PENDING")

    def set_destruction(self, job_id: str, owner: Identity,
                        value: str) -> None:
        """Change the destruction time (the service may shorten it)."""
        job = self._job(job_id, owner)
        when = self._destruction(value, job.creation_time)
        self.store.update(job_id, destruction=when)
        self._uncache(job_id)

    def _execution_duration(self, value: str | None) -> int:
        settings = self.settings
        if value is None or not value.strip():
            return settings.execution_duration
        seconds = parse_int(value, "EXECUTIONDURATION", maximum=None)
        if seconds < 0:
            raise UsageError(f"EXECUTIONDURATION: {seconds} is negative")
        limit = settings.execution_duration_max
        if limit and (seconds == 0 or seconds > limit):
            return limit  # the server may substitute its maximum
        if seconds > INT_MAX:
            raise UsageError(f"EXECUTIONDURATION: {seconds} s is too long "
                             f"(at most {INT_MAX})")
        return seconds

    def _destruction(self, value: str | None, created: datetime) -> datetime:
        settings = self.settings
        latest = created + timedelta(seconds=settings.destruction_max)
        if value is None or not value.strip():
            return created + timedelta(seconds=settings.destruction)
        when = parse_instant(value, "DESTRUCTION")
        if when <= self.clock():
            raise UsageError(
                f"DESTRUCTION: {value.strip()!r} is in the past (the job "
                "would be destroyed at once)")
        return min(when, latest)

    def _estimate(self, params: JobParameters) -> float:
        image = params.files.get("image")
        mpix = image.mpix if image is not None else 0.0
        return (self.settings.quote_overhead_s
                + mpix * self.settings.quote_s_per_mpix)

    def _new_id(self) -> str:
        return secrets.token_hex(8)

    def check_room(self, owner: Identity) -> None:
        """Refuse an upload before its body is read when no byte is left.

        The request's own bytes are checked once they are known
        (`create`, `set_parameters`); this spares reading the body of
        an owner already at ``qfits.max_stored_bytes`` (403).
        """
        self._check_stored(owner.name, 0)

    def _check_stored(self, owner: str | None, adding: int, *,
                      new_job: bool = False) -> None:
        """Refuse a job or ``adding`` bytes beyond the owner's quotas (403).

        ``qfits.max_stored_jobs`` counts the jobs (when ``new_job``),
        ``qfits.max_stored_bytes`` the bytes of their folders.  Both are
        read from the database at most every `STORED_RECOUNT` seconds
        per owner and kept up to date by this process's creations in
        between (a count of 10 000 jobs costs as much as a creation);
        a job's end, which adds its results, makes the next check
        count again.
        """
        most_jobs = self.settings.max_stored_jobs if new_job else 0
        most_bytes = self.settings.max_stored_bytes
        if not most_jobs and not most_bytes:
            return
        with self._stored_lock:
            count, size, when = self._stored.get(owner, (0, 0, -math.inf))
            # At a limit, count again: deletions since free room.
            if (_beyond(count + 1, most_jobs)
                    or _beyond(size + adding, most_bytes)
                    or time.monotonic() - when > STORED_RECOUNT):
                (count, size), when = self.store.usage_of(owner), \
                    time.monotonic()
            if _beyond(count + 1, most_jobs):
                raise PermissionDeniedError(
                    f"{_whose(owner)} {most_jobs} stored jobs are the "
                    "limit (qfits.max_stored_jobs): delete some, or wait "
                    "for their destruction")
            if _beyond(size + adding, most_bytes):
                what = (f"with this upload of {human_bytes(adding, 1)} they "
                        "would pass" if adding else "they are over")
                raise PermissionDeniedError(
                    f"{_whose(owner)} stored jobs take "
                    f"{human_bytes(size, 1)}; {what} the limit of "
                    f"{human_bytes(most_bytes)} "
                    "(qfits.max_stored_bytes): delete some jobs, or wait "
                    "for their destruction")
            self._stored[owner] = (count + (1 if new_job else 0),
                                   size + adding, when)

    def _record_size(self, job_id: str) -> None:
        """Store the bytes of the job's folder (for the quota)."""
        self.store.update(job_id,
                          stored_bytes=_folder_bytes(self.folder(job_id).path))

    def _check_active(self, owner: str | None) -> None:
        """Refuse a RUN beyond ``qfits.max_active_jobs`` (429)."""
        limit = self.settings.max_active_jobs
        if limit and self.store.count_of(owner, ACTIVE_PHASES) >= limit:
            raise TooManyRequestsError(
                f"{_whose(owner)} {limit} queued or executing jobs are the "
                "limit (qfits.max_active_jobs): run this one when one of "
                "them has ended")

    def folder(self, job_id: str) -> JobFolder:
        """Return the folder of a job (`pbs_bridge.jobfolder`)."""
        return JobFolder(self.job_root / job_id)

    # -- reading -----------------------------------------------------------
    def get(self, job_id: str, owner: Identity) -> Job:
        """Return the job with its progress and quote (403/404 checked).

        A job that has ended changes only by its destruction time or
        its deletion, both made here: it is served from a small cache
        (most reads are of finished jobs; no SQL, no progress file).
        """
        with self._cache_lock:
            cached = self._cache.get(job_id)
            if cached is not None:
                self._cache.move_to_end(job_id)
        if cached is not None:
            self._check_owner(cached, owner)
            return cached
        job = self._job(job_id, owner)
        info = job.info
        if job.phase not in (Phase.PENDING, Phase.ARCHIVED):
            info = _with_progress(info, self.folder(job_id).progress(),
                                  job, self.clock())
        job = replace(job, info=info, quote=self._quote(job))
        if job.phase in phases.FINAL:
            with self._cache_lock:
                self._cache[job_id] = job
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return job

    def _uncache(self, job_id: str) -> None:
        with self._cache_lock:
            self._cache.pop(job_id, None)

    def list_jobs(self, owner: Identity, *, phases_: Sequence[Phase] = (),
                  after: datetime | None = None,
                  last: int | None = None,
                  before: tuple[datetime, str] | None = None,
                  ) -> list[JobRef]:
        """List the caller's jobs (every job in anonymous mode).

        ``before``: only those after this (creation time, job id) in the
        list's order (`JobStore.list_pages`).
        """
        who: object = ANY_OWNER if owner.sees_all else owner.name
        return self.store.list_jobs(owner=who, phases=phases_, after=after,
                                    last=last, before=before)

    def list_rendered(self, owner: Identity,
                      render: Callable[[list[JobListRow]], T], *,
                      phases_: Sequence[Phase] = (),
                      after: datetime | None = None,
                      last: int | None = None) -> Iterator[T]:
        """Return `list_jobs` a page at a time, each page rendered.

        ``render`` takes a page of rows (`JobStore.list_rendered`).
        """
        who: object = ANY_OWNER if owner.sees_all else owner.name
        return self.store.list_rendered(render, owner=who, phases=phases_,
                                        after=after, last=last)

    def _job(self, job_id: str, owner: Identity) -> Job:
        try:
            job = self.store.get(job_id)
        except StoreError as exc:
            raise ServiceUnavailableError(str(exc)) from exc
        if job is None:
            raise UnknownJobError(f"no job {job_id}")
        self._check_owner(job, owner)
        return job

    def _check_owner(self, job: Job, owner: Identity) -> None:
        if not owner.may_see(job.owner):
            raise PermissionDeniedError(f"job {job.job_id} is not yours")

    def _quote(self, job: Job) -> datetime | None:
        """When the job is likely to be done, in whole seconds.

        Whole seconds of a whole-second clock: the job document and the
        ``/quote`` resource read within one second say the same.
        """
        quote = self._quote_exact(job)
        if quote is None:
            return None
        whole = quote.replace(microsecond=0)
        return whole if whole == quote else whole + timedelta(seconds=1)

    def _quote_exact(self, job: Job) -> datetime | None:
        if job.phase in phases.FINAL or job.estimate_s <= 0:
            return None
        now = self.clock().replace(microsecond=0)
        if job.phase is Phase.EXECUTING and job.start_time is not None:
            return max(now, job.start_time
                       + timedelta(seconds=job.estimate_s))
        ahead = 0.0
        if job.phase is Phase.QUEUED:
            for other, estimate in self.store.queued_estimates():
                if other == job.job_id:
                    break
                ahead += estimate
        slots = max(1, self.runner.slots)
        return now + timedelta(seconds=ahead / slots + job.estimate_s)

    def error_detail(self, job_id: str, owner: Identity) -> str:
        """Return the error document of a failed job (404 otherwise)."""
        job = self._job(job_id, owner)
        if job.error is None:
            raise UnknownJobError(f"job {job_id} has no error")
        lines = [f"{job.error.type}: {job.error.message}"]
        folder = self.folder(job_id)
        error = folder.error()
        if error is not None and error.detail:
            lines += ["", error.detail.rstrip()]
        tail = folder.log_tail()
        if tail:
            lines += ["", f"Last lines of {LOG_FILE}:", tail]
        return "\n".join(lines) + "\n"

    def result_file(self, job_id: str, owner: Identity,
                    result_id: str) -> ResultFile:
        """Return the file of a result (404 if unknown)."""
        job = self._job(job_id, owner)
        for result in job.results:
            if result.id == result_id:
                return ResultFile(self.folder(job_id).path / result.path,
                                  result.mime)
        raise UnknownJobError(f"job {job_id} has no result {result_id!r}")

    def parameter_value(self, job_id: str, owner: Identity,
                        name: str) -> ResultFile | str:
        """Return an uploaded file, or the text of a parameter (404)."""
        job = self._job(job_id, owner)
        for param in job.parameters:
            if param.name == name.lower():
                if param.is_post:
                    return ResultFile(
                        self.folder(job_id).path / str(param.value),
                        "application/fits")
                return param.text
        raise UnknownJobError(f"job {job_id} has no parameter {name!r}")

    # -- phase changes requested by the client ------------------------------
    def run(self, job_id: str, owner: Identity) -> None:
        """PHASE=RUN: queue a PENDING (or HELD) job."""
        job = self._job(job_id, owner)
        try:
            target = phases.on_run(job.phase)
        except phases.IllegalPhaseError as exc:
            raise InvalidPhaseError(str(exc)) from None
        if target is None:
            return
        if not any(p.name == "image" for p in job.parameters):
            raise UsageError(
                "PHASE=RUN: the job has no IMAGE parameter yet (POST it "
                f"to {job_id}/parameters)")
        if job.phase is Phase.HELD and job.backend_id:
            self._release(job)
            return
        self._check_active(job.owner)
        spec = self._write_spec(job)
        if not self.store.transition(job_id, [job.phase], Phase.QUEUED,
                                     queued_time=self.clock()):
            raise InvalidPhaseError(
                f"the job changed phase meanwhile (it was {job.phase})")
        self._changes.notify(job_id)
        self._submit(job_id, spec, job.execution_duration)

    def _submit(self, job_id: str, spec: WorkerSpec,
                execution_duration: int) -> None:
        """Hand a QUEUED job to the runner; ERROR if the backend refuses."""
        job = RunnerJob(job_id, BackendPhase.QUEUED, "", None,
                        self.folder(job_id))
        try:
            backend_id = self.runner.submit(job, spec, execution_duration)
        except RunnerError as exc:
            self._finish(job_id, [Phase.QUEUED], Phase.ERROR,
                         ErrorSummary("transient", f"the batch system "
                                      f"refused the job: {exc}"))
            return
        if backend_id:
            # The backend has it (a batch system): the next regular poll
            # sees it; waking the poller at each submission would run a
            # qstat per job.
            self.store.update(job_id, backend_id=backend_id)
        else:
            self._wake.set()  # the local runner starts jobs when polled

    def _release(self, job: Job) -> None:
        """RUN on a job the batch system holds: release it (``qrls``)."""
        # Under the poll lock: a poll cycle that read the batch system
        # before the release must not put the job back to HELD.
        with self._poll_lock:
            try:
                self.runner.release(job.job_id, job.backend_id)
            except RunnerError as exc:
                raise ServiceUnavailableError(str(exc)) from None
            if self.store.transition(job.job_id, [Phase.HELD],
                                     Phase.QUEUED):
                self._changes.notify(job.job_id)
        self._wake.set()

    def abort(self, job_id: str, owner: Identity) -> None:
        """PHASE=ABORT."""
        job = self._job(job_id, owner)
        try:
            target = phases.on_abort(job.phase)
        except phases.IllegalPhaseError as exc:
            raise InvalidPhaseError(str(exc)) from None
        if target is None:
            return
        self._abort(job, None)

    def _abort(self, job: Job | ActiveJob, reason: str | None) -> bool:
        error = None if reason is None else ErrorSummary("fatal", reason,
                                                         has_detail=True)
        sources = [p for p in Phase if phases.can_move(p, Phase.ABORTED)]
        moved = self._finish(job.job_id, sources, Phase.ABORTED, error)
        if moved and job.phase in OBSERVED:
            with contextlib.suppress(RunnerError):
                self.runner.cancel(job.job_id, job.backend_id)
            self._wake.set()
        return moved

    def delete(self, job_id: str, owner: Identity) -> None:
        """DELETE: abort if needed, remove the files, forget the job."""
        job = self._job(job_id, owner)
        self._destroy(job_id, job.phase, job.backend_id)

    def _destroy(self, job_id: str, phase: Phase, backend_id: str) -> None:
        if phase in OBSERVED:
            with contextlib.suppress(RunnerError):
                self.runner.cancel(job_id, backend_id)
        self.store.delete(job_id)
        self._uncache(job_id)
        shutil.rmtree(self.folder(job_id).path, ignore_errors=True)
        self._changes.notify(job_id)
        log.info("job %s destroyed", job_id)

    # -- WAIT --------------------------------------------------------------
    def wait(self, job_id: str, owner: Identity, seconds: int,
             phase: Phase | None) -> Job:
        """Block while the job is active and unchanged (UWS §2.2.1.1).

        Returns at once when the job is not in PENDING, QUEUED or
        EXECUTING, or not in ``phase`` when one is given; else when its
        phase changes or after ``seconds`` (-1: the cap), at most the
        configured cap.  Beyond ``wait_clients`` blocked requests, it
        answers at once (clients poll again).
        """
        job = self.get(job_id, owner)
        cap = self.settings.wait_max
        limit = cap if seconds < 0 else min(seconds, cap)
        changes = self._changes
        if (limit <= 0 or job.phase not in phases.ACTIVE
                or (phase is not None and job.phase is not phase)
                or not changes.join(job_id, self.settings.wait_clients)):
            return job
        try:
            deadline = time.monotonic() + limit
            start_phase = job.phase
            while True:
                seen = changes.version(job_id)
                current = self.store.phase_of(job_id)
                left = deadline - time.monotonic()
                if current != start_phase or left <= 0:
                    break
                # The in-process event wakes us at once; the re-check
                # every few seconds covers another process's changes.
                changes.wait(job_id, seen, min(left, 5.0))
        finally:
            changes.leave(job_id)
        return self.get(job_id, owner)

    # -- background work ---------------------------------------------------
    def _poller(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("runner poll failed")
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()

    def _reaper(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval):
            try:
                self.reap_expired()
            except Exception:
                log.exception("reaper failed")

    def poll_once(self) -> None:
        """One poller cycle: runner states, outcomes, duration limits."""
        with self._poll_lock:
            active = self.store.active(OBSERVED)
            if not active:
                return
            try:
                states = self.runner.poll([self._runner_job(job)
                                           for job in active])
                self.runner_health = self.runner.health()
            except RunnerError as exc:
                # The backend does not answer: no phase changes, not even
                # a duration overrun (the job may still run there).
                self.runner_health = str(exc)
                return
            now = self.clock()
            for job in active:
                status = states.get(job.job_id)
                if status is not None:
                    self._apply(job, status)
                elif job.phase is Phase.EXECUTING:
                    self._check_duration(job, now)

    def _runner_job(self, job: ActiveJob) -> RunnerJob:
        return RunnerJob(job.job_id, BackendPhase(job.phase.value),
                         job.backend_id, job.start_time,
                         self.folder(job.job_id))

    def _apply(self, job: ActiveJob, status: BackendStatus) -> None:
        if status.ended:
            self._conclude(job, status)
            return
        phase = Phase(status.phase.value)
        if phase is job.phase:
            self._check_duration(job, self.clock())
            return
        values: dict[str, object] = {}
        if status.backend_id:
            values["backend_id"] = status.backend_id
        if status.host:
            values["host"] = status.host
        if status.queue:
            values["queue"] = status.queue
        if phase is Phase.EXECUTING and job.start_time is None:
            values["start_time"] = status.start_time or self.clock()
        if not phases.can_move(job.phase, phase):
            log.warning("job %s: runner reports %s after %s (ignored)",
                        job.job_id, phase, job.phase)
            return
        if self.store.transition(job.job_id, [job.phase], phase, **values):
            self._changes.notify(job.job_id)
        elif phase is Phase.EXECUTING:
            # Aborted or deleted meanwhile: the worker must not run.
            with contextlib.suppress(RunnerError):
                self.runner.cancel(job.job_id, status.backend_id)

    def _check_duration(self, job: ActiveJob, now: datetime) -> None:
        if (job.phase is not Phase.EXECUTING or job.start_time is None
                or job.execution_duration <= 0):
            return
        if now - job.start_time > timedelta(seconds=job.execution_duration):
            self._abort(job, f"execution duration of "
                        f"{job.execution_duration} s exceeded: the job "
                        "was stopped")

    def _conclude(self, job: ActiveJob, status: BackendStatus) -> None:
        """Read a finished worker's outcome from its job folder."""
        folder = self.folder(job.job_id)
        ended = status.end_time or self.clock()
        usage: dict[str, object] = {
            "end_time": ended,
            **_usage(folder.progress(), job.start_time, ended)}
        for key in ("max_rss_kb", "wall_s", "cpu_s"):
            if usage.get(key) is None and getattr(status, key) is not None:
                usage[key] = getattr(status, key)
        outcome = folder.outcome()
        # The results (or a fetched input) add to the owner's bytes: the
        # next quota check reads the total again.
        usage["stored_bytes"] = _folder_bytes(folder.path)
        with self._stored_lock:
            self._stored.clear()
        if isinstance(outcome, Completed):
            self.store.set_results(
                job.job_id, _results(outcome.manifest) + _log_result(folder))
            self._finish(job.job_id, [job.phase], Phase.COMPLETED, None,
                         **usage)
            return
        self.store.set_results(job.job_id, _log_result(folder))
        if isinstance(outcome, Failed):
            kind = "transient" if outcome.error.type == "transient" \
                else "fatal"
            error = ErrorSummary(kind, outcome.error.message,
                                 has_detail=True)
        elif status.stopped:
            # Stopped by the backend (walltime, an operator's qdel).
            self._finish(job.job_id, [job.phase], Phase.ABORTED,
                         ErrorSummary("fatal", status.message,
                                      has_detail=True), **usage)
            return
        else:
            error = _vanished(status)
        self._finish(job.job_id, [job.phase], Phase.ERROR, error, **usage)

    def _finish(self, job_id: str, sources: Sequence[Phase], target: Phase,
                error: ErrorSummary | None, **values: object) -> bool:
        if error is not None:
            values.update(error_type=error.type,
                          error_message=error.message,
                          error_detail=error.has_detail)
        ended = values.setdefault("end_time", self.clock())
        moved = self.store.transition(job_id, sources, target, **values)
        if moved:
            log.info("job %s: %s%s", job_id, target,
                     f" ({error.message})" if error else "")
            self._changes.notify(job_id)
            if target in NOTIFIED and isinstance(ended, datetime):
                # Once per job: only the thread whose compare-and-set
                # moved it gets here.
                self._mail_end(JobEnd(job_id, target, ended,
                                      error.message if error else None))
        return moved

    def _mail_end(self, end: JobEnd) -> None:
        """Queue the e-mail of a job that ended, if it gave an address."""
        if not self.notifier.enabled:
            return
        try:
            address = self.store.email_of(end.job_id)
        except StoreError as exc:
            log.warning("job %s: no e-mail notification: %s", end.job_id,
                        exc)
            return
        if address:
            self.notifier.job_ended(end, address)

    def reap_expired(self) -> int:
        """Destroy the jobs whose destruction time has passed."""
        count = 0
        for job_id in self.store.expired(self.clock()):
            job = self.store.get(job_id)
            if job is not None:
                self._destroy(job_id, job.phase, job.backend_id)
                count += 1
        return count

    def recover(self) -> None:
        """At start: check the jobs a previous process left active.

        Queued jobs are handed to the runner again (in queue order);
        executing ones are re-attached or concluded by the next poll.
        """
        for job in self.store.active([Phase.QUEUED]):
            try:
                spec = self.folder(job.job_id).read_spec()
            except (OSError, ContractError):
                self._finish(job.job_id, [Phase.QUEUED], Phase.ERROR,
                             ErrorSummary("fatal", "the job folder was lost "
                                          "while the service was down"))
                continue
            if not job.backend_id:
                self._submit(job.job_id, spec, job.execution_duration)
        self._wake.set()

    # -- availability ------------------------------------------------------
    def availability(self) -> tuple[bool, list[str]]:
        """Whether the service can take jobs, with notes."""
        notes: list[str] = []
        ok = True
        try:
            self.store.ping()
        except StoreError as exc:
            ok = False
            notes.append(str(exc))
        if self.runner_health:
            notes.append(f"degraded: {self.runner_health}")
        probe = self.job_root / ".probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            ok = False
            notes.append(f"the job folder is not writable: {exc.strerror}")
        if ok and not notes:
            notes.append("accepting jobs")
        return ok, notes

    # -- worker spec ---------------------------------------------------------
    def _write_spec(self, job: Job) -> WorkerSpec:
        """Write the worker's spec from the stored parameters; return it.

        The stored values are typed (`uws.params.science_values`); they
        become `QualityParameters` once more here, so that a rule that
        changed since the job was created is still applied (400).
        """
        values = {p.name: p.value for p in job.parameters}
        try:
            science = QualityParameters.from_json(science_values(values))
        except InvalidParameterError as exc:
            raise usage_error(exc) from None
        spec = WorkerSpec(
            job_id=job.job_id, image=str(values["image"]),
            flat=_optional_text(values.get("flat")),
            mask=_optional_text(values.get("mask")),
            weight=_optional_text(values.get("weight")),
            parameters=science.to_json(),
            ccd_jobs=self.runner.ccd_jobs,
            fetch_limit=self.settings.upload_limit,
            fetch_timeout=self.settings.fetch_timeout,
            fetch_allow=list(self.settings.fetch_allow),
            decompressed_limit=self.settings.decompressed_limit,
            pixel_limit=self.settings.pixel_limit,
            run_id=job.run_id,
            config=self.settings.grade_config())
        try:
            self.folder(job.job_id).write_spec(spec)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"cannot write the job spec: {exc.strerror}") from exc
        return spec


#: The phases that count as active for ``qfits.max_active_jobs``.
ACTIVE_PHASES = (Phase.QUEUED, Phase.EXECUTING, Phase.HELD,
                 Phase.SUSPENDED)


def _whose(owner: str | None) -> str:
    return "everybody's" if owner is None else f"{owner}'s"


def _beyond(value: int, limit: int) -> bool:
    """Whether ``value`` passes ``limit`` (0: no limit)."""
    return bool(limit) and value > limit


def _drop_new_uploads(folder: JobFolder, job: Job,
                      stored: Sequence[Parameter]) -> None:
    """Remove the uploads a refused change installed (the job's stay)."""
    kept = {p.text for p in job.parameters if p.is_post}
    for param in stored:
        if param.is_post and param.text not in kept:
            (folder.path / param.text).unlink(missing_ok=True)


def _upload_bytes(params: JobParameters) -> int:
    """Return the bytes of a request's staged uploads."""
    return sum(item.upload.size for item in params.files.values()
               if item.upload is not None)


def _folder_bytes(path: Path) -> int:
    """Return the bytes of the files below ``path`` (0 if it is gone)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _folder_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed meanwhile
    return total


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def _results(manifest: Manifest) -> list[Result]:
    return [Result(id=p.id, path=f"{RESULTS_DIR}/{p.file}", mime=p.mime,
                   size=p.size, description=p.description)
            for p in manifest.products]


def _log_result(folder: JobFolder) -> list[Result]:
    size = folder.log_size()
    if size is None:
        return []
    return [Result("log", LOG_FILE, "text/plain", size, "the worker's log")]


def _vanished(status: BackendStatus) -> ErrorSummary:
    """Return the error of a worker that left no result and no error."""
    if status.message:
        return ErrorSummary("fatal", status.message, has_detail=True)
    how = ""
    if status.signal is not None:
        with contextlib.suppress(ValueError):
            how = f" (killed by {signal.Signals(status.signal).name})"
    elif status.exit_status is not None:
        how = f" (exit status {status.exit_status})"
    return ErrorSummary(
        "fatal", f"the worker ended without a result{how}; see the log",
        has_detail=True)


def _usage(progress: Progress | None, start: datetime | None,
           now: datetime) -> dict[str, object]:
    values: dict[str, object] = {}
    if progress is not None:
        if start is None and progress.started:
            # Ended before a poll saw it run: the worker says when it
            # started.
            with contextlib.suppress(ValueError):
                start = datetime.fromisoformat(progress.started)
                values["start_time"] = start
        if progress.max_rss_kb:
            values["max_rss_kb"] = progress.max_rss_kb
        if progress.cpu_s:
            values["cpu_s"] = round(progress.cpu_s, 3)
        if progress.host:
            values["host"] = progress.host
    if start is not None:
        values["wall_s"] = round((now - start).total_seconds(), 3)
    return values


def _with_progress(info: JobInfo, progress: Progress | None, job: Job,
                   now: datetime) -> JobInfo:
    if progress is None:
        return info
    steps = tuple(Step(s.name, s.state, s.start, s.end, s.detail)
                  for s in progress.steps)
    changes: dict[str, object] = {"steps": steps}
    if job.phase is Phase.EXECUTING:
        changes["max_rss_kb"] = progress.max_rss_kb or None
        changes["cpu_s"] = progress.cpu_s or None
        if job.start_time is not None:
            changes["wall_s"] = round(
                (now - job.start_time).total_seconds(), 1)
        if progress.host:
            changes["host"] = progress.host
    return replace(info, **changes)  # type: ignore[arg-type]
