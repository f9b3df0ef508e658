"""Run one task per extension, in worker processes when that helps.

`run_tasks` is the process machinery of `qualityfits.assess`: a pool
of workers (``fork`` or a preloaded ``forkserver``), a bounded queue of
submitted tasks, progress events delivered in order from one thread,
and a failure report for a task whose worker died.  It knows nothing
of what a task measures: the pipeline hands it a module-level function
(``work``) that turns one task into an `ExtensionReport`.

Nothing here imports `qualityfits.pipeline`: the pipeline imports this.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing as mp
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from threadpoolctl import threadpool_limits

from qualityfits import errors
from qualityfits.io import ImageExtension, ImageSource
from qualityfits.report import ErrorInfo, ExtensionReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of one extension started (or the extension finished).

    ``step`` is one of the pipeline's steps
    (`qualityfits.pipeline.STEPS`), or ``"done"`` / ``"failed"`` when
    the extension has finished; ``n_extensions`` is the number of
    extensions of the whole image (a progress bar's size, known from
    the first event).
    """

    extension: str
    index: int
    step: str
    step_number: int
    n_steps: int
    n_extensions: int


ProgressCallback = Callable[[ProgressEvent], None]
#: Called by a task with the name of each step as it starts.
Poster = Callable[[str], None]


class Task(Protocol):
    """What `run_tasks` needs of a task: the extension it is about."""

    @property
    def ext(self) -> ImageExtension:
        """The extension this task assesses."""
        ...


T = TypeVar("T", bound=Task)


def default_jobs() -> int:
    """Return the number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def internal_failure(ext: ImageExtension, why: str) -> ExtensionReport:
    """Report a failure that is not the input's fault."""
    log.error("extension %s: internal error: %s", ext.name, why)
    return ExtensionReport(
        index=ext.index, name=ext.name, shape=ext.data_shape,
        status="failed",
        error=ErrorInfo("InternalError", "internal-error",
                        f"{ext.name}: internal error: {why}"),
    )


def _event(steps: Sequence[str], n_extensions: int, index: int, name: str,
           stepname: str) -> ProgressEvent:
    number = (steps.index(stepname) + 1 if stepname in steps
              else len(steps))
    return ProgressEvent(name, index, stepname, number, len(steps),
                         n_extensions)


def run_tasks(
    tasks: Sequence[T],
    work: Callable[[T, Poster | None], ExtensionReport],
    *,
    jobs: int,
    steps: Sequence[str],
    prepare: Callable[[T], T] | None = None,
    progress: ProgressCallback | None = None,
) -> list[ExtensionReport]:
    """Run ``work`` on every task, in worker processes when that helps.

    Parameters
    ----------
    tasks : sequence
        One task per extension (anything with an ``ext``); picklable.
    work : callable
        A module-level function (workers import it by name) that
        assesses one task, calling its poster, when given one, with
        each step name as it starts.  A `QualityFitsError` it raises
        in this process propagates; any other exception becomes an
        internal-error report of its extension.
    jobs : int
        Worker processes; 1 (or a single task) runs in this process.
    steps : sequence of str
        The step names, for the progress events' numbers.
    prepare : callable, optional
        Applied to a task just before it is submitted (in-memory inputs
        get their pixels then, so that few are copied at a time).
    progress : callable, optional
        Called with a `ProgressEvent` as each step of each extension
        starts and when each extension finishes, from one thread, in
        order for each extension.

    Returns
    -------
    list of ExtensionReport
        In the order of ``tasks``.
    """
    def ready(task: T) -> T:
        return prepare(task) if prepare is not None else task

    if jobs == 1 or len(tasks) == 1:
        return [_run_here(ready(task), work, steps, len(tasks), progress)
                for task in tasks]
    ctx = _pool_context(work.__module__)
    forked = ctx.get_start_method() == "fork"
    events = ctx.Queue() if progress is not None else None
    results: dict[int, ExtensionReport] = {}
    pending: dict[Future[ExtensionReport], T] = {}
    limit = 2 * jobs
    todo = list(tasks)

    def submit_more(pool: ProcessPoolExecutor) -> None:
        while todo and len(pending) < limit:
            task = ready(todo.pop(0))
            pending[pool.submit(_run_pooled, work, task)] = task

    prepared = _ready_to_fork() if forked else nullcontext()
    with prepared, ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)), mp_context=ctx,
            initializer=_init_worker,
            initargs=(events, not forked)) as pool:
        # The first submission starts the workers (all of them, under
        # "fork"): before the progress thread exists.
        submit_more(pool)
        with _progress_pump(progress, events, steps, len(tasks)):
            try:
                while pending:
                    done, _ = wait(list(pending),
                                   return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        results[task.ext.index] = _result(future, task.ext,
                                                          events)
                    submit_more(pool)
            finally:
                # Workers gone, every event they posted is in the queue
                # ahead of the pump's end marker.
                pool.shutdown(wait=True, cancel_futures=True)
    return [results[t.ext.index] for t in tasks]


def _run_here(task: T, work: Callable[[T, Poster | None], ExtensionReport],
              steps: Sequence[str], n_extensions: int,
              progress: ProgressCallback | None) -> ExtensionReport:
    """Run one task in this process."""
    global _OPENMP_USED  # noqa: PLW0603 - a fact about this process
    # The task may start astroscrappy's OpenMP pool in this process.
    _OPENMP_USED = True
    post: Poster | None = None
    if progress is not None:
        def post(stepname: str, ext: ImageExtension = task.ext) -> None:
            assert progress is not None
            progress(_event(steps, n_extensions, ext.index, ext.name,
                            stepname))
    try:
        return work(task, post)
    except errors.QualityFitsError:
        raise
    except Exception as exc:
        log.exception("extension %s failed", task.ext.name)
        rep = internal_failure(task.ext, f"{type(exc).__name__}: {exc}")
        if post is not None:
            post("failed")
        return rep


def _result(future: Future[ExtensionReport], ext: ImageExtension,
            events: Any) -> ExtensionReport:
    """Return a worker's report, or one saying why it could not give it."""
    try:
        return future.result()
    except BrokenProcessPool:
        rep = internal_failure(ext, _broken_pool_reason())
    except Exception as exc:  # noqa: BLE001 - reported below
        rep = internal_failure(ext, f"{type(exc).__name__}: {exc}")
    # The worker could not say it failed: say it for it.
    if events is not None:
        events.put((ext.index, ext.name, "failed"))
    return rep


def _broken_pool_reason() -> str:
    """Why worker processes died, as far as the parent can tell."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and (
            getattr(main, "__file__", None) is not None):
        # A script run by path is re-imported by every new worker: without
        # the guard, each worker tries to start workers itself and dies.
        return ("the worker processes died; a script that calls assess() "
                "with jobs > 1 must do so under 'if __name__ == "
                "\"__main__\":' (or use jobs=1); otherwise they were "
                "killed or ran out of memory")
    return "the worker process died (killed, or out of memory)"


# -- progress -----------------------------------------------------------------
_DONE = None  # sentinel that ends the progress pump


@contextmanager
def _progress_pump(callback: ProgressCallback | None, events: Any,
                   steps: Sequence[str],
                   n_extensions: int) -> Iterator[None]:
    """Deliver worker events to the callback, in order, from one thread.

    Every event -- steps, and "done"/"failed" -- goes through the one
    queue, so the callback sees each extension's events in order and is
    never called from two threads at once; on exit the queue is drained
    before `run_tasks` returns.
    """
    if callback is None or events is None:
        yield
        return

    def pump() -> None:
        while True:
            try:
                item = events.get()
            except (EOFError, OSError):
                return
            if item is _DONE:
                return
            index, name, stepname = item
            callback(_event(steps, n_extensions, index, name, stepname))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        events.put(_DONE)
        thread.join()


# -- worker processes ---------------------------------------------------------
_EVENTS: Any = None  # the queue a worker posts progress events to
_IN_WORKER = False  # True in the pool's worker processes


def _init_worker(events: Any, limit_blas: bool) -> None:
    global _EVENTS, _IN_WORKER  # noqa: PLW0603 - per worker process
    _EVENTS = events
    _IN_WORKER = True
    warnings.simplefilter("ignore")
    _keep_freed_memory()
    # One CCD per core: a worker's native libraries (astroscrappy's
    # OpenMP median filters, BLAS) must not start a thread per core each,
    # which left the cosmic-ray step 3 times slower, spinning.  A forked
    # worker has its BLAS limit from its parent (`_ready_to_fork`).
    threadpool_limits(1, user_api=None if limit_blas else "openmp")


def _keep_freed_memory() -> None:
    """Let glibc reuse freed CCD-size buffers instead of returning them.

    Each CCD allocates and frees many full-size arrays; by default glibc
    maps and unmaps each one, and faulting the fresh pages in again cost
    ~15 % of a worker's CPU in the benchmark.  Worker processes only;
    harmless where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2**31 - 1)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt codes
_SOURCES: dict[Path, ImageSource] = {}  # a worker's open inputs


@contextmanager
def open_input(path: Path) -> Iterator[ImageSource]:
    """Open an input for reading one of its extensions.

    In a worker process, each input is opened once (its headers parsed
    once: a 36-CCD file costs ~25 ms to open, and each worker reads
    many of its extensions) and the few most recent stay open; in this
    process it is opened and closed again.
    """
    if not _IN_WORKER:
        with ImageSource(path) as source:
            yield source
        return
    if path not in _SOURCES:
        while len(_SOURCES) >= 4:
            _SOURCES.pop(next(iter(_SOURCES))).close()
        _SOURCES[path] = ImageSource(path)
    yield _SOURCES[path]


def _queue_poster(ext: ImageExtension) -> Poster | None:
    """Progress poster of a worker process (None without a queue)."""
    if _EVENTS is None:
        return None
    events = _EVENTS

    def post(stepname: str) -> None:
        events.put((ext.index, ext.name, stepname))

    return post


def _run_pooled(work: Callable[[T, Poster | None], ExtensionReport],
                task: T) -> ExtensionReport:
    """``work`` in a worker process, posting progress to the queue."""
    return work(task, _queue_poster(task.ext))


# -- how workers start --------------------------------------------------------
def _native_threads() -> int:
    """Threads of this process, native ones included (0 if unknown)."""
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:  # not Linux
        return 0


#: Threads when the pipeline was loaded (numpy's BLAS starts its own,
#: which are safe to fork: the library re-creates them in the child).
_BASE_THREADS = _native_threads()


#: True once this process has run a task itself (an extension assessed
#: here, not in a worker): astroscrappy's OpenMP thread pool may then be
#: alive.
_OPENMP_USED = False


def _single_threaded() -> bool:
    """Say whether no thread was started since the pipeline was loaded.

    Python's own count misses the threads of native libraries: an
    OpenMP pool (astroscrappy's median filters start one when this
    process assessed a CCD itself) whose lock a forked child inherits
    held deadlocks the child.
    """
    return (threading.active_count() == 1 and not _OPENMP_USED
            and _native_threads() <= _BASE_THREADS)


@contextmanager
def _ready_to_fork() -> Iterator[None]:
    """Prepare this process to fork its workers; restore it after.

    The objects alive now leave the cyclic collector's reach
    (`gc.freeze`, as CPython's documentation advises before forking
    workers: their collections then never walk, and so never copy, the
    pages of the objects they inherit), and BLAS gets one thread, which
    forked workers inherit (set in a worker, the limit would start
    OpenBLAS's thread pools again there, which the fork had stopped,
    and their threads would spin for ~0.1 s).  Both are undone when the
    workers are gone: a caller that assesses file after file in one
    process must not keep the reference cycles it dropped before each
    call.  (Kept frozen, the interpreter's final collection would also
    be ~0.15 s shorter; not worth a leak in a library.)
    """
    gc.collect(1)
    gc.freeze()
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        gc.unfreeze()


def _pool_context(preload: str) -> Any:
    """Pick how worker processes start.

    "fork" when this process runs no other thread: the workers start at
    once with the pipeline already loaded (~0.5 s sooner, and ~2 s of
    CPU less over a MegaCam exposure).  Forking a process with other
    threads can deadlock (a lock held by one of them stays held in the
    child), so otherwise "forkserver", preloaded with ``preload`` (the
    module of the work function).
    """
    if (_single_threaded()
            and "fork" in mp.get_all_start_methods()):
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([preload])
    return ctx
