"""The job body: ``uws-worker JOBDIR`` (or ``python -m pbs_bridge.worker``).

The local runner starts it as a subprocess of the web service, a PBS
batch job runs it on a compute node; both give it a job directory laid
out as `pbs_bridge.jobfolder` describes, and nothing else.  It reads
``spec.json``, fetches the inputs given by http(s) URL into ``inputs/``,
checks the inputs, runs `qualityfits.assess` and
`qualityfits.products.write_products` into ``results/`` (which ends with
``results/manifest.json``), and keeps ``progress.json`` up to date on
the way.  When the job fails it writes ``error.json`` instead.

Exit status: 0 success; 2 the input is at fault (``error.json`` type
"usage"); 1 any other failure (type "fatal" or "transient"); 128 +
the signal number (143) when SIGTERM (or SIGINT) stops it -- the service
aborting the job or the batch system enforcing its walltime -- without
an ``error.json``.

Import boundary: this module imports ``qualityfits``, ``votable``,
`pbs_bridge.jobfolder` and the standard library only, never the web
stack (pyramid, sqlalchemy, ``uws``), so that a batch node needs only
the science core.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from pbs_bridge.fetch import URL_SCHEMES, FetchError, fetch, policy_from
from pbs_bridge.jobfolder import (
    ERROR_FILE,
    PROGRESS_FILE,
    SPEC_FILE,
    ContractError,
    JobFolder,
    Progress,
    StepState,
    WorkerError,
    WorkerSpec,
    write_atomic,
)
from qualityfits._version import __version__
from qualityfits.cliutil import exit_now
from qualityfits.config import QualityConfig
from qualityfits.errors import (
    InternalError,
    InvalidImageError,
    QualityFitsError,
)
from qualityfits.fitsscan import FitsTooLargeError, scan_fits
from qualityfits.io import (
    HduRole,
    ImageSource,
    image_stem,
    match_extensions,
    primary_header,
)
from qualityfits.parameters import QualityParameters
from qualityfits.pipeline import STEPS, ProgressEvent, assess
from qualityfits.products import PRODUCT_STEPS, write_products

#: The job-level steps of ``progress.json``, in order: the fetch of
#: inputs given by URL, the check of the inputs, the pipeline steps
#: (over all CCDs), the products.
STEP_NAMES: tuple[str, ...] = ("fetch", "check", *STEPS, *PRODUCT_STEPS)

#: Smallest interval between two writes of ``progress.json`` that
#: change only a detail (a step changing state is always written) [s].
PROGRESS_INTERVAL = 0.5

_FINAL = ("done", "failed")
_USAGE = f"usage: uws-worker JOBDIR  (qualityfits {__version__})"


def _utc_now() -> str:
    """Return the time as ISO 8601 UTC, milliseconds, ending in ``Z``."""
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


def log(message: str) -> None:
    """Print one line of the job's log (stdout, which the runner keeps)."""
    print(f"{_utc_now()} uws-worker[{os.getpid()}]: {message}", flush=True)


class JobError(Exception):
    """The job cannot go on; ``error`` says why (``error.json``)."""

    def __init__(self, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.error = WorkerError(type=kind, message=message, detail=detail)


# -- resource usage ------------------------------------------------------


def _descendants() -> list[int]:
    """Process ids of the live descendants of this process (Linux)."""
    found: list[int] = []
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with suppress(OSError, ValueError):
                kids = [int(k) for k in (task / "children").read_text()
                        .split()]
                found.extend(kids)
                todo.extend(kids)
    return found


def _proc_usage(pid: int) -> tuple[float, int]:
    """CPU time [s] and peak resident memory [kB] of a live process.

    The CPU time includes the children the process has waited for (a
    forkserver's workers).  Zeros when ``/proc`` cannot tell.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0
    # Fields after the command name, which may hold spaces: state is
    # field 3, utime..cstime fields 14-17.
    fields = stat.rpartition(")")[2].split()
    try:
        ticks = sum(int(v) for v in fields[11:15])
    except ValueError:
        ticks = 0
    peak = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            with suppress(ValueError, IndexError):
                peak = int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), peak


def resource_usage() -> tuple[int, float]:
    """Peak resident memory [kB] and CPU time [s] of the job so far.

    `resource.getrusage` of this process and of its children that have
    ended, plus the live descendants read from ``/proc`` (the pipeline's
    worker processes run until the end of `assess`).  The memory is the
    sum of the peaks: an upper bound of the job's peak.
    """
    me = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + ended.ru_utime + ended.ru_stime
    live_cpu, live_rss = 0.0, 0
    for pid in _descendants():
        pid_cpu, pid_rss = _proc_usage(pid)
        live_cpu += pid_cpu
        live_rss += pid_rss
    rss = me.ru_maxrss + max(ended.ru_maxrss, live_rss)
    return int(rss), cpu + live_cpu


# -- progress ------------------------------------------------------------


class ProgressFile:
    """The job's steps, written to ``progress.json`` as they change.

    Pipeline steps are aggregated over the CCDs: pending until a CCD
    reaches the step, running while some CCD still has it to pass, done
    when every CCD has passed it (or failed before), detail ``"12/36
    CCDs"``.  A change of a step's state is written at once; a change of
    a detail at most every `PROGRESS_INTERVAL` seconds.

    Parameters
    ----------
    path : Path
        The ``progress.json`` to write.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._steps = {name: StepState(name) for name in STEP_NAMES}
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._started = _utc_now()
        self._last_write = -math.inf
        self._rss = 0
        self._cpu = 0.0
        self._extra: dict[str, Any] = {}
        self._ccds = 0
        self._at: dict[int, int] = {}  # CCD index -> index in STEPS
        self._ended: dict[int, bool] = {}  # CCD index -> ok
        self._product: str | None = None
        self._write_failed = False

    @property
    def steps(self) -> tuple[StepState, ...]:
        """The steps as they are now."""
        with self._lock:
            return tuple(self._steps.values())

    def set_extra(self, **values: Any) -> None:
        """Add items to the ``extra`` mapping (written with the next)."""
        with self._lock:
            self._extra.update(values)

    def set_ccds(self, count: int) -> None:
        """Say how many CCDs the pipeline will assess."""
        with self._lock:
            self._ccds = count
            self._extra["ccds"] = count

    def set(self, name: str, state: str, detail: str | None = None) -> None:
        """Change one step and write the file."""
        with self._lock:
            self._set(name, state, detail)
            self._write(force=True)

    def write(self) -> None:
        """Write the file now (usage refreshed)."""
        with self._lock:
            self._write(force=True)

    def ccd_event(self, event: ProgressEvent) -> None:
        """Take a `qualityfits.assess` progress event."""
        with self._lock:
            index = event.index
            if event.step in STEPS:
                self._at[index] = max(self._at.get(index, 0),
                                      STEPS.index(event.step))
            else:  # "done" or "failed": the CCD has finished
                self._at.setdefault(index, 0)
                self._ended[index] = event.step == "done"
            changed = self._aggregate()
            self._write(force=changed)

    def pipeline_done(self) -> None:
        """Mark every pipeline step done (`assess` has returned)."""
        with self._lock:
            for name in STEPS:
                if self._steps[name].state != "done":
                    self._set(name, "done")
            self._write(force=True)

    def product_step(self, name: str) -> None:
        """Take a `write_products` step: the previous one is done."""
        with self._lock:
            if self._product is not None:
                self._set(self._product, "done")
            self._product = name
            self._set(name, "running")
            self._write(force=True)

    def products_done(self) -> None:
        """Mark the last product step done (`write_products` returned)."""
        with self._lock:
            for name in PRODUCT_STEPS:
                if self._steps[name].state != "done":
                    self._set(name, "done")
            self._write(force=True)

    def fail(self, phase: Sequence[str] = ()) -> None:
        """Mark the running steps failed.

        Parameters
        ----------
        phase : sequence of str
            The steps of the phase that failed: when none of them is
            running (`assess` failed before its first event), its first
            step that is not done is marked failed.
        """
        with self._lock:
            for step in list(self._steps.values()):
                if step.state == "running":
                    self._set(step.name, "failed")
            if phase and not any(self._steps[name].state == "failed"
                                 for name in phase):
                for name in phase:
                    if self._steps[name].state != "done":
                        self._set(name, "failed")
                        break
            self._write(force=True)

    # -- under the lock --------------------------------------------------
    def _set(self, name: str, state: str, detail: str | None = None) -> bool:
        old = self._steps[name]
        if state == old.state:
            if detail is not None and detail != old.detail:
                self._steps[name] = StepState(name, state, old.start,
                                              old.end, detail)
            return False
        now = _utc_now()
        start = old.start or (now if state in ("running", *_FINAL) else "")
        end = now if state in _FINAL else ""
        new = StepState(name, state, start, end,
                        old.detail if detail is None else detail)
        self._steps[name] = new
        log(f"step {name}: {state}" + (f" ({new.detail})" if new.detail
                                       else ""))
        return True

    def _aggregate(self) -> bool:
        """Derive the pipeline steps from the CCDs; say if a state changed.

        A CCD passed step k when it finished well or is beyond k; one
        that failed at step f passed the steps before f, failed f and
        will never reach the steps after.
        """
        total = max(self._ccds, len(self._at))
        changed = False
        for k, name in enumerate(STEPS):
            passed = failed = inside = gone = 0
            for index, at in self._at.items():
                ok = self._ended.get(index)
                if ok or at > k:
                    passed += 1
                elif at < k:
                    gone += ok is False
                elif ok is False:
                    failed += 1
                else:
                    inside += 1
            if passed + failed + inside == 0:
                continue  # pending
            detail = f"{passed}/{total} CCDs" + (
                f", {failed} failed" if failed else "")
            if passed + failed + gone < total:
                state = "running"
            else:
                state = "done" if passed else "failed"
            changed |= self._set(name, state, detail)
        return changed

    def _write(self, *, force: bool) -> None:
        clock = time.monotonic()
        if not force and clock - self._last_write < PROGRESS_INTERVAL:
            return
        self._last_write = clock
        rss, cpu = resource_usage()
        self._rss = max(self._rss, rss)
        self._cpu = max(self._cpu, cpu)
        doc = Progress(
            steps=tuple(self._steps.values()), host=self._host,
            pid=self._pid, started=self._started, updated=_utc_now(),
            max_rss_kb=self._rss, cpu_s=round(self._cpu, 3),
            extra=dict(self._extra))
        try:
            write_atomic(self._path, doc.to_json())
        except OSError as exc:
            # Progress is a courtesy: the job goes on without it.
            if not self._write_failed:
                log(f"warning: cannot write {self._path}: {exc}")
            self._write_failed = True


# -- fetching inputs -----------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


# -- the job -------------------------------------------------------------


def _check_spec(spec: WorkerSpec) -> WorkerSpec:
    """Refuse values of the wrong type (the JSON is not typed)."""
    problems = []
    if not isinstance(spec.image, str) or not spec.image:
        problems.append("image must be a non-empty string")
    problems.extend(f"{name} must be a string or null"
                    for name in ("flat", "mask", "weight")
                    if getattr(spec, name) is not None
                    and not isinstance(getattr(spec, name), str))
    if (not isinstance(spec.ccd_jobs, int) or isinstance(spec.ccd_jobs, bool)
            or spec.ccd_jobs < 0):
        problems.append("ccd_jobs must be an integer >= 0")
    if not isinstance(spec.fetch_limit, int) or spec.fetch_limit <= 0:
        problems.append("fetch_limit must be a positive integer")
    if (not isinstance(spec.fetch_timeout, int | float)
            or not spec.fetch_timeout > 0):
        problems.append("fetch_timeout must be a positive number")
    if problems:
        raise ContractError(f"{SPEC_FILE}: {'; '.join(problems)}")
    return spec


class Job:
    """One run of the job body in a job directory.

    Parameters
    ----------
    job_dir : Path
        The job directory (see `pbs_bridge.jobfolder`).
    """

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.folder = JobFolder(job_dir)
        self.results = self.folder.results
        self.progress = ProgressFile(self.folder.progress_file)
        #: Partial files and folders a signal handler removes.
        self.cleanup: list[Path] = []
        #: The steps of the phase under way (for a failure's report).
        self.phase: tuple[str, ...] = ()
        #: The inputs given by URL, once fetched.
        self.fetched: set[str] = set()
        #: The image's HDU roles, once checked.
        self.roles: tuple[HduRole, ...] | None = None
        self._pid = os.getpid()

    def run(self) -> int:
        """Run the job; return the exit status."""
        start = time.monotonic()
        handlers = self._install_handlers()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # astropy header chatter
                status = self._run()
        finally:
            for path in list(self.cleanup):
                _remove(path)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        log(f"exit status {status} after {time.monotonic() - start:.1f} s")
        return status

    def _run(self) -> int:
        with suppress(OSError):  # a rerun of the job must not show it
            self.folder.clear_outcome()
        log(f"job directory {self.job_dir} on {socket.gethostname()}, "
            f"qualityfits {__version__}")
        self.progress.write()
        try:
            spec = self._read_spec()
            self.progress.set_extra(job_id=spec.job_id)
            log(f"job {spec.job_id}: image {spec.image}"
                + (f", flat {spec.flat}" if spec.flat else "")
                + (f", mask {spec.mask}" if spec.mask else "")
                + (f", weight {spec.weight}" if spec.weight else ""))
            inputs = self._inputs(spec)
            self._check(inputs, spec)
            count = self._assess_and_write(spec, inputs)
        except JobError as exc:
            return self._failed(exc.error)
        except QualityFitsError as exc:
            return self._failed(_quality_error(exc))
        except Exception as exc:  # noqa: BLE001 - reported in error.json
            return self._failed(WorkerError(
                "fatal", f"internal error: {type(exc).__name__}: {exc}",
                traceback.format_exc()))
        log(f"job {spec.job_id} completed: {count} products in "
            f"{self.results}")
        return 0

    def _failed(self, error: WorkerError) -> int:
        self.progress.fail(self.phase)
        # A manifest says the products are complete: a failure while
        # writing the archive must not leave the first one behind.
        with suppress(OSError):
            self.folder.manifest_file.unlink(missing_ok=True)
        log(f"job failed ({error.type}): {error.message}")
        if error.detail:
            print(error.detail, end="" if error.detail.endswith("\n")
                  else "\n", flush=True)
        try:
            self.folder.write_error(error)
        except OSError as exc:
            print(f"uws-worker: cannot write {ERROR_FILE}: {exc}",
                  file=sys.stderr, flush=True)
        return 2 if error.type == "usage" else 1

    def _read_spec(self) -> WorkerSpec:
        try:
            text = self.folder.spec_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read {SPEC_FILE}: {exc}"
            raise JobError("fatal", message) from None
        try:
            return _check_spec(WorkerSpec.from_json(text))
        except ContractError as exc:
            raise JobError("fatal", str(exc)) from None

    # -- steps -----------------------------------------------------------
    def _inputs(self, spec: WorkerSpec) -> dict[str, Path]:
        """Return the local path of each input; fetch those given by URL."""
        given = {label: value for label, value in
                 (("image", spec.image), ("flat", spec.flat),
                  ("mask", spec.mask), ("weight", spec.weight))
                 if value is not None}
        urls = {label: value for label, value in given.items()
                if urlsplit(value).scheme}
        paths = {label: self._local(label, value)
                 for label, value in given.items() if label not in urls}
        if not urls:
            self.progress.set("fetch", "skipped")
            return paths
        self.progress.set("fetch", "running")
        policy = policy_from(spec.fetch_allow)
        fetched = []
        for label, value in urls.items():
            scheme = urlsplit(value).scheme.lower()
            if scheme not in URL_SCHEMES:
                raise JobError(
                    "usage", f"{label}: cannot fetch {value}: the "
                    f"{scheme} scheme is not supported (http or https "
                    "only)")
            dest = self.folder.fetched_input(label, value)
            begin = time.monotonic()
            try:
                size = fetch(label, value, dest, limit=spec.fetch_limit,
                             timeout=spec.fetch_timeout, policy=policy,
                             user_agent=f"qualityfits-uws-worker/"
                             f"{__version__}", cleanup=self.cleanup)
            except FetchError as exc:
                raise JobError(exc.kind, exc.message) from None
            log(f"fetched {label} {value}: {_size(size)} in "
                f"{time.monotonic() - begin:.1f} s")
            fetched.append(f"{label} {_size(size)}")
            paths[label] = dest
            self.fetched.add(label)
        self.progress.set("fetch", "done", ", ".join(fetched))
        return paths

    def _local(self, label: str, value: str) -> Path:
        try:
            return self.folder.input_path(value)
        except ContractError:
            raise JobError(
                "fatal", f"{SPEC_FILE}: {label} {value!r} is not a path "
                "inside the job directory") from None

    def _check(self, inputs: dict[str, Path], spec: WorkerSpec) -> None:
        """Open the inputs (flat and mask matching the image).

        First their headers are walked, bounded (`qualityfits.fitsscan`):
        an input that announces or inflates to more than the limits is
        refused before the pipeline reads a pixel of it.
        """
        self.progress.set("check", "running")
        for label, path in inputs.items():
            if not path.is_file():
                continue  # a missing one: ImageSource says so below
            try:
                scan_fits(path, max_bytes=spec.decompressed_limit,
                          max_pixels=spec.pixel_limit,
                          label=f"{label} {path.name}")
            except FitsTooLargeError:
                raise
            except InvalidImageError:
                # A fetched file had no check yet (an upload had the
                # service's, this one): its header's fault, said here.
                if label in self.fetched:
                    raise
                # Else ImageSource names what is wrong with it below.
        with ExitStack() as stack:
            image = stack.enter_context(ImageSource(inputs["image"],
                                                    roles=True))
            for label in ("flat", "mask", "weight"):
                if label in inputs:
                    other = stack.enter_context(
                        ImageSource(inputs[label], label=label))
                    match_extensions(image, other)
            count = len(image.extensions)
            # Handed to assess, which would otherwise decide them again.
            self.roles = image.hdus
        try:
            self.results.mkdir(exist_ok=True)
        except OSError as exc:
            raise JobError("fatal", f"cannot write the products in "
                           f"{self.results}: {exc}") from None
        self.progress.set_ccds(count)
        self.progress.set("check", "done",
                          f"{count} CCD" + ("s" if count != 1 else ""))

    def _assess_and_write(self, spec: WorkerSpec,
                          inputs: dict[str, Path]) -> int:
        image = inputs["image"]
        # The service's image (uploaded or fetched: inputs/image/<the
        # client's file name>, or inputs/image.fits before) names its
        # products "image", not after the client's file.
        stem = ("image" if image.parent == self.folder.inputs / "image"
                else image_stem(image.name))
        maps_dir = self.results / f".{stem}_maps.partial"
        _remove(maps_dir)  # pieces of an earlier attempt
        self.cleanup.append(maps_dir)
        self.phase = STEPS
        try:
            report = assess(
                image, flat=inputs.get("flat"), mask=inputs.get("mask"),
                weight=inputs.get("weight"),
                parameters=QualityParameters.from_json(spec.parameters),
                config=QualityConfig.from_dict(spec.config),
                jobs=spec.ccd_jobs or None,
                progress=self.progress.ccd_event, maps_dir=maps_dir,
                roles=self.roles)
            self.progress.pipeline_done()
            failed = [e.name for e in report.extensions if not e.ok]
            n_ccds = len(report.extensions)
            log(f"assessed {n_ccds} CCD{'s' if n_ccds != 1 else ''}"
                + (f", failed: {', '.join(failed)}" if failed else ""))
            self.phase = PRODUCT_STEPS
            try:
                manifest = write_products(
                    report, self.results, stem, maps_dir=maps_dir,
                    image_header=primary_header(str(image)),
                    step=self.progress.product_step)
            except OSError as exc:
                raise JobError("fatal", f"cannot write the products in "
                               f"{self.results}: {exc}") from None
            self.progress.products_done()
        finally:
            _remove(maps_dir)
            self.cleanup.remove(maps_dir)
        return len(manifest.products)

    # -- signals ---------------------------------------------------------
    def _install_handlers(self) -> dict[int, Any]:
        """Stop at once on SIGTERM/SIGINT; return the previous handlers."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            if handler is not None:
                previous[signum] = handler
                signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """End the job now: no error.json, no worker process left."""
        status = 128 + signum
        if os.getpid() != self._pid:  # a forked pipeline worker
            os._exit(status)
        # The pipeline's workers are busy in native code: kill them
        # rather than wait for them to see a signal.
        with suppress(Exception):
            children = multiprocessing.active_children()
            for child in children:
                if child.pid is not None:  # never 0: our process group
                    with suppress(OSError):
                        os.kill(child.pid, signal.SIGKILL)
            for child in children:  # reaped: no zombie left behind
                child.join(timeout=1)
        for path in list(self.cleanup):
            _remove(path)
        for stray in self.job_dir.glob(f".{PROGRESS_FILE}.*"):
            with suppress(OSError):
                stray.unlink()
        with suppress(Exception):
            sys.stdout.flush()
        with suppress(OSError):
            os.write(1, (f"{_utc_now()} uws-worker[{self._pid}]: stopped "
                         f"by {signal.Signals(signum).name}, exit status "
                         f"{status}\n").encode())
        os._exit(status)


def _quality_error(exc: QualityFitsError) -> WorkerError:
    """Return the error document of a pipeline exception.

    Bad input is the user's ("usage"); a report whose every CCD failed
    on an internal error (a full disk, ...) is not.
    """
    kind = "fatal" if isinstance(exc, InternalError) else "usage"
    return WorkerError(kind, str(exc))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job in ``JOBDIR``; return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        ``[JOBDIR]`` (default: the command line).

    Returns
    -------
    int
        0 success, 2 the input is at fault (or a wrong command line), 1
        any other failure; see the module documentation.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0
    if len(args) != 1:
        print(_USAGE, file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    if not job_dir.is_dir():
        print(f"uws-worker: error: {job_dir}: not a directory",
              file=sys.stderr)
        return 2
    return Job(job_dir).run()


def run() -> NoReturn:
    """Run the ``uws-worker`` command: `main`, then `exit_now`."""
    exit_now(main())


if __name__ == "__main__":
    run()
