"""UWS 1.1 execution phases and the one table of their transitions.

Everything that changes a job's phase -- a client's ``PHASE=RUN`` or
``PHASE=ABORT``, a runner reporting progress, the reaper -- asks this
module first; nothing else in the service decides what may follow what.

The edges are those of the UWS 1.1 state diagram (§2.1.3) with what the
text adds: HELD as an answer to RUN, QUEUED after a repeated RUN, and
ABORTED or ERROR at any time before a final phase.  ARCHIVED follows a
final phase at destruction.  See ``../shared/docs/uws.md`` §7.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Phase(StrEnum):
    """The execution phases of UWS 1.1 (``uws:ExecutionPhase``)."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"
    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"


#: A job in one of these will never run again.
FINAL: frozenset[Phase] = frozenset(
    {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED})

#: Phases in which a blocking WAIT blocks (UWS 1.1 §2.2.1.1).
ACTIVE: frozenset[Phase] = frozenset(
    {Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})

#: Phase -> the phases it may move to (server or client).  QUEUED ->
#: HELD is a batch system holding a queued job (PBS state H).
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.QUEUED, Phase.HELD, Phase.ABORTED,
                              Phase.ERROR}),
    Phase.QUEUED: frozenset({Phase.EXECUTING, Phase.HELD, Phase.ABORTED,
                             Phase.ERROR}),
    Phase.EXECUTING: frozenset({Phase.COMPLETED, Phase.ERROR,
                                Phase.ABORTED, Phase.SUSPENDED,
                                Phase.HELD}),
    Phase.HELD: frozenset({Phase.QUEUED, Phase.EXECUTING, Phase.ABORTED,
                           Phase.ERROR}),
    Phase.SUSPENDED: frozenset({Phase.EXECUTING, Phase.ABORTED,
                                Phase.ERROR}),
    # Once known again, any phase but a new start.
    Phase.UNKNOWN: frozenset({Phase.QUEUED, Phase.EXECUTING, Phase.HELD,
                              Phase.SUSPENDED, Phase.COMPLETED,
                              Phase.ERROR, Phase.ABORTED}),
    Phase.COMPLETED: frozenset({Phase.ARCHIVED}),
    Phase.ERROR: frozenset({Phase.ARCHIVED}),
    Phase.ABORTED: frozenset({Phase.ARCHIVED}),
    Phase.ARCHIVED: frozenset(),
}


class IllegalPhaseError(Exception):
    """A request that the job's phase does not allow (HTTP 403)."""


def can_move(source: Phase, target: Phase) -> bool:
    """Whether a job in ``source`` may move to ``target``."""
    return target in TRANSITIONS[source]


def check_move(source: Phase, target: Phase) -> None:
    """Raise `IllegalPhaseError` unless ``source`` may move to ``target``."""
    if not can_move(source, target):
        raise IllegalPhaseError(
            f"a job in phase {source} cannot become {target}")


def on_run(phase: Phase) -> Phase | None:
    """Return the phase a client's ``PHASE=RUN`` leads to, or None.

    None means "no change" (RUN on a job already queued or running is a
    harmless repeat, answered 303); `IllegalPhaseError` (403) on a job
    that has ended.
    """
    if phase in (Phase.PENDING, Phase.HELD):
        return Phase.QUEUED
    if phase in (Phase.QUEUED, Phase.EXECUTING, Phase.SUSPENDED,
                 Phase.UNKNOWN):
        return None
    raise IllegalPhaseError(
        f"PHASE=RUN: the job has ended (phase {phase}); create a new job")


def on_abort(phase: Phase) -> Phase | None:
    """Return the phase a client's ``PHASE=ABORT`` leads to, or None.

    Aborting an aborted job is a harmless repeat; aborting a job that
    completed, failed or was archived is `IllegalPhaseError` (403).
    """
    if phase is Phase.ABORTED:
        return None
    if phase in FINAL:
        raise IllegalPhaseError(
            f"PHASE=ABORT: the job has already ended (phase {phase})")
    return Phase.ABORTED


def parameters_editable(phase: Phase) -> bool:
    """Whether parameters and the execution duration may change (PENDING)."""
    return phase is Phase.PENDING
