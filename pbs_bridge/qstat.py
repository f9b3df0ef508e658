"""Read what PBS/TORQUE commands print: qsub ids and ``qstat -f``.

One tested parser for the two dialects the service meets: real TORQUE
(attribute lines indented by four spaces, long values wrapped onto
lines starting with a tab, ``exit_status``, ``resources_used.*``) and
Slurm's TORQUE-compatible wrappers (package ``slurm-wlm-torque``:
attribute lines indented by a tab, no ``exit_status``, a held job shown
as ``Q`` with ``Priority = 0``); see ``../shared/docs/batch-pbs.md``.

Batch states map to UWS phase *names* through one table, `STATE_PHASES`
(this package never imports the web service); a state that ends the
batch job maps to None: the job directory's files decide the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

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
_ATTRIBUTE = re.compile(r"^(?: {4}|\t)(\S+) = (.*)$")
_DURATION = re.compile(r"^(\d+):(\d{2}):(\d{2})$")
_MEMORY = re.compile(r"^(\d+)([kmgt]?)b$", re.IGNORECASE)
_MEMORY_KB = {"": 1 / 1024, "k": 1, "m": 1024, "g": 1024**2, "t": 1024**3}


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

    Values wrapped onto continuation lines (a tab, then the rest of the
    value, as TORQUE writes long paths and variable lists) are joined.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        header = _HEADER.match(line)
        if header is not None:
            current = jobs.setdefault(header.group(1), {})
            last_key = ""
            continue
        if current is None:
            raise BatchOutputError(
                f"qstat -f: attribute before any 'Job Id:' line: {line!r}")
        attribute = _ATTRIBUTE.match(line)
        if attribute is not None:
            last_key = attribute.group(1)
            current[last_key] = attribute.group(2).rstrip()
        elif line.startswith("\t") and last_key:
            current[last_key] += line.strip()
        else:
            raise BatchOutputError(f"qstat -f: unexpected line {line!r}")
    return jobs


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


@dataclass(frozen=True)
class BatchJob:
    """One batch job as ``qstat -f`` shows it."""

    batch_id: str
    state: str
    #: UWS phase name, or None once the batch job has ended.
    phase: str | None
    name: str = ""
    exit_status: int | None = None
    host: str = ""
    queue: str = ""
    max_rss_kb: int | None = None
    wall_s: int | None = None
    cpu_s: int | None = None


def batch_job(batch_id: str, attributes: Mapping[str, str]) -> BatchJob:
    """Interpret the attributes of one job (one `STATE_PHASES` lookup).

    A job the Slurm wrapper shows as ``Q`` with ``Priority = 0`` is
    held (the wrapper has no ``H``).
    """
    state = attributes.get("job_state", "").strip().upper()
    if state not in STATE_PHASES:
        raise BatchOutputError(
            f"qstat -f: job {batch_id} has an unknown state {state!r}")
    phase = STATE_PHASES[state]
    if state == "Q" and attributes.get("Priority", "").strip() == "0":
        phase = "HELD"
    exit_text = (attributes.get("exit_status")
                 or attributes.get("Exit_status") or "").strip()
    try:
        exit_status = int(exit_text) if exit_text else None
    except ValueError:
        exit_status = None
    host = attributes.get("exec_host", "").split("+")[0].split("/")[0]
    return BatchJob(
        batch_id=batch_id, state=state, phase=phase,
        name=attributes.get("Job_Name", "").strip(),
        exit_status=exit_status, host=host,
        queue=attributes.get("queue", "").strip(),
        max_rss_kb=memory_kb(attributes.get("resources_used.mem", "")),
        wall_s=duration_s(attributes.get("resources_used.walltime", "")),
        cpu_s=duration_s(attributes.get("resources_used.cput", "")))
