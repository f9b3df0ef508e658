"""The UWS phase rules, pair by pair, against a table written out here."""

from __future__ import annotations

import itertools

import pytest

from uws.phases import (
    ACTIVE,
    FINAL,
    IllegalPhaseError,
    Phase,
    can_move,
    check_move,
    on_abort,
    on_run,
    parameters_editable,
)

P = Phase
#: Every allowed (from, to) pair; all others are forbidden.
ALLOWED = {
    (P.PENDING, P.QUEUED), (P.PENDING, P.HELD), (P.PENDING, P.ABORTED),
    (P.PENDING, P.ERROR),
    (P.QUEUED, P.EXECUTING), (P.QUEUED, P.HELD), (P.QUEUED, P.ABORTED),
    (P.QUEUED, P.ERROR),
    (P.EXECUTING, P.COMPLETED), (P.EXECUTING, P.ERROR),
    (P.EXECUTING, P.ABORTED), (P.EXECUTING, P.SUSPENDED),
    (P.EXECUTING, P.HELD),
    (P.HELD, P.QUEUED), (P.HELD, P.EXECUTING), (P.HELD, P.ABORTED),
    (P.HELD, P.ERROR),
    (P.SUSPENDED, P.EXECUTING), (P.SUSPENDED, P.ABORTED),
    (P.SUSPENDED, P.ERROR),
    (P.UNKNOWN, P.QUEUED), (P.UNKNOWN, P.EXECUTING), (P.UNKNOWN, P.HELD),
    (P.UNKNOWN, P.SUSPENDED), (P.UNKNOWN, P.COMPLETED),
    (P.UNKNOWN, P.ERROR), (P.UNKNOWN, P.ABORTED),
    (P.COMPLETED, P.ARCHIVED), (P.ERROR, P.ARCHIVED),
    (P.ABORTED, P.ARCHIVED),
}


@pytest.mark.parametrize(("source", "target"),
                         list(itertools.product(Phase, Phase)))
def test_every_pair(source, target):
    allowed = (source, target) in ALLOWED
    assert can_move(source, target) is allowed
    if allowed:
        check_move(source, target)
    else:
        with pytest.raises(IllegalPhaseError, match=f"{source}.*{target}"):
            check_move(source, target)


def test_the_phase_names_are_the_standard_ones():
    assert {p.value for p in Phase} == {
        "PENDING", "QUEUED", "EXECUTING", "COMPLETED", "ERROR", "ABORTED",
        "UNKNOWN", "HELD", "SUSPENDED", "ARCHIVED"}
    assert str(Phase.QUEUED) == "QUEUED"


def test_final_phases_lead_nowhere_but_archive():
    for phase in FINAL:
        assert {t for t in Phase if can_move(phase, t)} <= {P.ARCHIVED}
    assert {P.PENDING, P.QUEUED, P.EXECUTING} == ACTIVE


RUN = {P.PENDING: P.QUEUED, P.HELD: P.QUEUED, P.QUEUED: None,
       P.EXECUTING: None, P.SUSPENDED: None, P.UNKNOWN: None}
ABORT = {P.PENDING: P.ABORTED, P.QUEUED: P.ABORTED, P.EXECUTING: P.ABORTED,
         P.HELD: P.ABORTED, P.SUSPENDED: P.ABORTED, P.UNKNOWN: P.ABORTED,
         P.ABORTED: None}


@pytest.mark.parametrize("phase", list(Phase))
def test_client_run(phase):
    if phase in RUN:
        assert on_run(phase) is RUN[phase]
        if RUN[phase] is not None:
            assert can_move(phase, RUN[phase])
    else:
        with pytest.raises(IllegalPhaseError, match="has ended"):
            on_run(phase)


@pytest.mark.parametrize("phase", list(Phase))
def test_client_abort(phase):
    if phase in ABORT:
        assert on_abort(phase) is ABORT[phase]
        if ABORT[phase] is not None:
            assert can_move(phase, ABORT[phase])
    else:
        with pytest.raises(IllegalPhaseError, match="already ended"):
            on_abort(phase)


def test_only_pending_jobs_take_new_parameters():
    assert [p for p in Phase if parameters_editable(p)] == [P.PENDING]
