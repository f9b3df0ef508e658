"""Plain objects the job store returns and the XML writer reads.

No ORM rows leave `uws.store`: a `Job` is an inert frozen dataclass.
Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from uws.phases import Phase


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Format an instant as UWS writes it: ``2026-01-02T03:04:05.123Z``.

    Parameters
    ----------
    dt : datetime
        A timezone-aware datetime, converted to UTC; sub-millisecond
        digits are truncated.

    Returns
    -------
    str
        ISO 8601, ``T`` separator, milliseconds, trailing ``Z``.

    Raises
    ------
    ValueError
        If ``dt`` is naive: its zone, hence the instant, is unknown.
    """
    if dt.tzinfo is UTC:  # the store's (a job list: 10 000 of them)
        return dt.isoformat(timespec="milliseconds")[:-6] + "Z"
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: the instant is ambiguous")
    utc = dt.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


#: A parameter's value as stored (a JSON column): text (file names,
#: URLs, e-mail addresses), or a number (``zeropoint``, ``pixscale``).
ParameterValue: TypeAlias = str | int | float | bool


@dataclass(frozen=True)
class Parameter:
    """One job parameter as ``<uws:parameter>`` shows it.

    ``by_reference`` values are URLs: an uploaded file is served at
    ``{job}/parameters/{name}``, a by-URL input keeps its URL.  The
    value keeps its type; `text` is what clients read.
    """

    name: str
    value: ParameterValue
    by_reference: bool = False
    is_post: bool = False

    @property
    def text(self) -> str:
        """Return the value as ``<uws:parameter>`` and GET show it."""
        return value_text(self.value)


def value_text(value: ParameterValue) -> str:
    """Return the text of a parameter value.

    Floats as Python's ``repr`` (25.5 → ``25.5``, the shortest text
    that reads back as the same number), booleans as ``true``/``false``
    (XML Schema), integers and strings as they are.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Result:
    """One product of a job (``<uws:result>``).

    ``path`` is relative to the job directory; the service serves it at
    ``{job}/results/{id}``.
    """

    id: str
    path: str
    mime: str
    size: int
    description: str = ""


@dataclass(frozen=True)
class ErrorSummary:
    """Why a job failed or was aborted by the system."""

    type: str  # "fatal" or "transient" (UWS errorSummary type)
    message: str
    has_detail: bool = False


@dataclass(frozen=True)
class Step:
    """One processing step shown in ``jobInfo``."""

    name: str
    state: str
    start: str = ""
    end: str = ""
    detail: str = ""


@dataclass(frozen=True)
class JobInfo:
    """What the original status and progress pages showed."""

    steps: tuple[Step, ...] = ()
    host: str = ""
    queue: str = ""
    backend_id: str = ""
    max_rss_kb: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None


#: A job as the job-list document writes it, in the form cheapest to
#: write: (job id, phase, runId, ownerId, creationTime), the phase as
#: its value and the creation time as `iso` writes it
#: (``2026-01-02T03:04:05.123Z``).  `uws.store.JobStore.list_rows`
#: reads them without a `JobRef` or a datetime per job.
JobListRow = tuple[str, str, str | None, str | None, str]


@dataclass(frozen=True)
class JobRef:
    """A job as the job list shows it (``<uws:jobref>``)."""

    job_id: str
    phase: Phase
    run_id: str | None
    owner: str | None
    creation_time: datetime


@dataclass(frozen=True)
class Job:
    """A UWS job with everything ``<uws:job>`` carries."""

    job_id: str
    phase: Phase
    owner: str | None
    run_id: str | None
    creation_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    execution_duration: int
    destruction: datetime
    quote: datetime | None = None
    parameters: tuple[Parameter, ...] = ()
    results: tuple[Result, ...] = ()
    error: ErrorSummary | None = None
    info: JobInfo = field(default_factory=JobInfo)
    #: Backend bookkeeping (not shown as such): batch id or pid.
    backend_id: str = ""
    #: Expected run time [s] from the image size (for the quote).
    estimate_s: float = 0.0
    #: When it was last queued (PHASE=RUN); not in the UWS document.
    queued_time: datetime | None = None
