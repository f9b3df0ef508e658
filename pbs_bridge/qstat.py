"""Read what PBS/TORQUE commands print: qsub ids and ``qstat -f``.

One tested parser for the two dialects the service meets, both tested
on recordings (``docs/service.md``):

* real TORQUE (4.2.8 recorded): ``Job Id: ID``, attribute lines
  indented by four spaces, ``exit_status``, ``resources_used.*``.
  ``qstat`` wraps a long value at a fixed width (77 columns) onto
  lines starting with a tab, after a comma where it can and in the
  middle of a word where it cannot; the rest of the value follows the
  tab as it was, so the lines are joined with nothing in between.
* Slurm's TORQUE-compatible wrappers (package ``slurm-wlm-torque``):
  ``Job Id:<TAB>ID``, attribute lines indented by a tab, no wrapping,
  no ``exit_status``, a held job shown as ``Q`` with ``Priority = 0``;
  see ``../shared/docs/batch-pbs.md``.

The first attribute line of a job says which dialect it is in; only
under TORQUE's four spaces is a line starting with a tab the rest of
the value above it (even when it reads like ``key = value``).

Batch states map to UWS phase *names* through one table, `STATE_PHASES`
(this package never imports the web service); a state that ends the
batch job maps to None: the job directory's files decide the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

#: Batch job state letter -> UWS phase name, or None when the batch job
#: has ended (C TORQUE completed, F/X PBS Pro finished): the outcome is
#: read from the job directory.
STATE_PHASES: Mapping[str, str | None] = {
    "Q": "QUEUED",      # queued
    "W": "QUEUED",      # waiting for its start time
    "T": "QUEUED",      # in transit
    "M": "QUEUED",      # PBS Pro: moved to another server
    "H": "HELD",        # held by user, operator or system
    "R": "EXECUTING",   # running
    "E": "EXECUTING",   # exiting after having run: results not final
    "B": "EXECUTING",   # PBS Pro: array job begun
    "S": "SUSPENDED",   # suspended
    "U": "SUSPENDED",   # PBS Pro: user-suspended
    "C": None,          # TORQUE: completed
    "F": None,          # PBS Pro: finished
    "X": None,          # PBS Pro: subjob finished
}

_JOB_ID = re.compile(r"^\s*(\d+(?:\.[A-Za-z0-9._-]+)?)\s*$")
_HEADER = re.compile(r"^Job Id:\s*(\S+)\s*$")
#: An attribute line: its indentation (TORQUE's four spaces or the
#: Slurm wrapper's tab), name and value (``name = `` when empty).
_ATTRIBUTE = re.compile(r"^( {4}|\t)(\S+) =(?: (.*))?$")
_TORQUE_INDENT = " " * 4
_DURATION = re.compile(r"^(\d+):(\d{2}):(\d{2})$")
_MEMORY = re.compile(r"^(\d+)([kmgt]?)b$", re.IGNORECASE)
_MEMORY_KB = {"": 1 / 1024, "k": 1, "m": 1024, "g": 1024**2, "t": 1024**3}
#: C's ``ctime()`` layout, which TORQUE and the Slurm wrapper print
#: (always English names, day padded with a space).
_CTIME = re.compile(r"^[A-Z][a-z]{2} ([A-Z][a-z]{2}) +(\d{1,2}) "
                    r"(\d{2}):(\d{2}):(\d{2}) (\d{4})$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
           "Oct", "Nov", "Dec")
_SLOTS = re.compile(r"^(\d+)(?:-(\d+))?$")


class BatchOutputError(ValueError):
    """Output of a batch command that cannot be understood."""


def parse_qsub(stdout: str) -> str:
    """Return the job id ``qsub`` printed (``3`` or ``3.server``).

    The whole token is kept: ``qdel`` and ``qstat`` want it as given.
    """
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if len(lines) != 1 or (match := _JOB_ID.match(lines[0])) is None:
        shown = stdout.strip()[:200] or "nothing"
        raise BatchOutputError(f"qsub printed {shown!r}, not a job id")
    return match.group(1)


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """Parse ``qstat -f`` output into attributes per job id.

    A TORQUE value wrapped onto continuation lines is joined as TORQUE
    split it: each continuation line less its one leading tab, appended
    with nothing in between (a space at the end of a line is kept when
    more of the value follows).  Trailing blanks of a whole value go.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    indent = ""
    last_key = ""
    for line in text.splitlines():
        if current is not None and indent == _TORQUE_INDENT \
                and line.startswith("\t"):
            current[last_key] += line[1:]
            continue
        if not line.strip():
            continue
        header = _HEADER.match(line)
        if header is not None:
            current = jobs.setdefault(header.group(1), {})
            indent = last_key = ""
            continue
        if current is None:
            raise BatchOutputError(
                f"qstat -f: attribute before any 'Job Id:' line: {line!r}")
        attribute = _ATTRIBUTE.match(line)
        if attribute is None or indent not in ("", attribute.group(1)):
            raise BatchOutputError(f"qstat -f: unexpected line {line!r}")
        indent, last_key = attribute.group(1), attribute.group(2)
        current[last_key] = attribute.group(3) or ""
    return {job: {key: value.rstrip() for key, value in attributes.items()}
            for job, attributes in jobs.items()}


def duration_s(value: str) -> int | None:
    """Parse ``HH:MM:SS`` (hours may exceed 24) into seconds."""
    match = _DURATION.match(value.strip())
    if match is None:
        return None
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def walltime(seconds: int) -> str:
    """Format an execution duration as a ``-l walltime`` value."""
    if seconds <= 0:
        raise ValueError("a walltime must be positive")
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def memory_kb(value: str) -> int | None:
    """Parse a PBS memory value (``1808kb``, ``2gb``, ``512b``) into kB."""
    match = _MEMORY.match(value.strip())
    if match is None:
        return None
    return round(int(match.group(1)) * _MEMORY_KB[match.group(2).lower()])


def qstat_time(value: str) -> datetime | None:
    """Parse a time as ``qstat -f`` prints it (``Fri Oct 20 04:25:05 2017``).

    The result has no time zone: the batch server prints its own local
    time and does not say which.
    """
    match = _CTIME.match(value.strip())
    if match is None or match.group(1) not in _MONTHS:
        return None
    month, day, hour, minute, second, year = match.groups()
    try:
        # No tzinfo: the server's local time, zone unknown.
        return datetime(  # noqa: DTZ001
            int(year), _MONTHS.index(month) + 1, int(day),
            int(hour), int(minute), int(second))
    except ValueError:
        return None


def exec_slots(exec_host: str) -> tuple[str, ...]:
    """Split ``exec_host`` into its slots, ``host/N`` each.

    TORQUE 4 joins one ``host/N`` a slot with ``+``
    (``brncl-31/0+brncl-31/1``); later TORQUE writes ranges and lists
    (``node1/0-3,5+node2/0``), which are spelled out here.
    """
    slots: list[str] = []
    for part in exec_host.strip().split("+"):
        if not part:
            continue
        host, _, numbers = part.partition("/")
        spelled: list[str] = []
        for item in numbers.split(","):
            match = _SLOTS.match(item)
            if match is None:
                spelled = [part]
                break
            first = int(match.group(1))
            last = int(match.group(2) or first)
            spelled += [f"{host}/{n}" for n in range(first, last + 1)]
        slots += spelled
    return tuple(slots)


@dataclass(frozen=True)
class BatchJob:
    """One batch job as ``qstat -f`` shows it."""

    batch_id: str
    state: str
    #: UWS phase name, or None once the batch job has ended.
    phase: str | None
    name: str = ""
    exit_status: int | None = None
    #: The first execution host's name (the job's node).
    host: str = ""
    queue: str = ""
    max_rss_kb: int | None = None
    wall_s: int | None = None
    cpu_s: int | None = None
    #: ``exec_host`` as the batch system wrote it (every slot).
    exec_host: str = ""
    #: When the job started, in the batch server's local time.
    start_time: datetime | None = None

    @property
    def slots(self) -> tuple[str, ...]:
        """The job's slots, ``host/N`` each (see `exec_slots`)."""
        return exec_slots(self.exec_host)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The distinct execution hosts, in the order of the slots."""
        return tuple(dict.fromkeys(s.partition("/")[0] for s in self.slots))


def batch_job(batch_id: str, attributes: Mapping[str, str]) -> BatchJob:
    """Interpret the attributes of one job (one `STATE_PHASES` lookup).

    A job the Slurm wrapper shows as ``Q`` with ``Priority = 0`` is
    held (the wrapper has no ``H``).  TORQUE's ``Q`` with
    ``Priority = 0`` is an ordinary queued job (0 is TORQUE's default
    priority; a held job is ``H``): TORQUE prints ``Hold_Types`` for
    every job, the wrapper never does.
    """
    state = attributes.get("job_state", "").strip().upper()
    if state not in STATE_PHASES:
        raise BatchOutputError(
            f"qstat -f: job {batch_id} has an unknown state {state!r}")
    phase = STATE_PHASES[state]
    if (state == "Q" and "Hold_Types" not in attributes
            and attributes.get("Priority", "").strip() == "0"):
        phase = "HELD"
    exit_text = (attributes.get("exit_status")
                 or attributes.get("Exit_status") or "").strip()
    try:
        exit_status = int(exit_text) if exit_text else None
    except ValueError:
        exit_status = None
    exec_host = attributes.get("exec_host", "").strip()
    return BatchJob(
        batch_id=batch_id, state=state, phase=phase,
        name=attributes.get("Job_Name", "").strip(),
        exit_status=exit_status,
        host=exec_host.split("+")[0].split("/")[0],
        queue=attributes.get("queue", "").strip(),
        max_rss_kb=memory_kb(attributes.get("resources_used.mem", "")),
        wall_s=duration_s(attributes.get("resources_used.walltime", "")),
        cpu_s=duration_s(attributes.get("resources_used.cput", "")),
        exec_host=exec_host,
        start_time=qstat_time(attributes.get("start_time", "")))
