"""Every (state × event) pair of both lifecycle tables: the legal ones move where DESIGN.md §4
says, every other one raises LocalProtocolError."""

from __future__ import annotations

import itertools

import pytest

from meshnode.core.states import (
    ExecutionEvent,
    ExecutionState,
    JobEvent,
    JobState,
    next_execution_state,
    next_job_state,
)
from meshnode.errors import LocalProtocolError

J, JE = JobState, JobEvent
LIVE_JOBS = (J.PENDING, J.QUEUED, J.RUNNING)
EXPECTED_JOB = {
    (J.PENDING, JE.QUEUE): J.QUEUED,
    (J.RUNNING, JE.QUEUE): J.QUEUED,
    (J.PENDING, JE.RUN): J.RUNNING,
    (J.QUEUED, JE.RUN): J.RUNNING,
    **{(s, JE.COMPLETE): J.COMPLETED for s in LIVE_JOBS},
    **{(s, JE.FAIL): J.FAILED for s in LIVE_JOBS},
    **{(s, JE.STOP): J.STOPPED for s in LIVE_JOBS},
}

E, EE = ExecutionState, ExecutionEvent
LIVE_EXECUTIONS = (E.NEW, E.ASK_FOR_BID, E.ASK_FOR_BID_ACCEPTED, E.BID_ACCEPTED)
EXPECTED_EXECUTION = {
    (E.NEW, EE.ASK_FOR_BID): E.ASK_FOR_BID,
    (E.ASK_FOR_BID, EE.BID): E.ASK_FOR_BID_ACCEPTED,
    (E.ASK_FOR_BID, EE.DECLINE): E.ASK_FOR_BID_REJECTED,
    (E.ASK_FOR_BID_ACCEPTED, EE.ACCEPT): E.BID_ACCEPTED,
    (E.ASK_FOR_BID_ACCEPTED, EE.REJECT): E.BID_REJECTED,
    (E.BID_ACCEPTED, EE.COMPLETE): E.COMPLETED,
    **{(s, EE.FAIL): E.FAILED for s in LIVE_EXECUTIONS},
    **{(s, EE.CANCEL): E.CANCELLED for s in LIVE_EXECUTIONS},
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(JobState, JobEvent)))
def test_every_job_state_and_event(state: JobState, event: JobEvent) -> None:
    expected = EXPECTED_JOB.get((state, event))
    if expected is None:
        with pytest.raises(LocalProtocolError, match=state.value):
            next_job_state(state, event)
    else:
        assert next_job_state(state, event) is expected


@pytest.mark.parametrize(
    ("state", "event"), list(itertools.product(ExecutionState, ExecutionEvent))
)
def test_every_execution_state_and_event(state: ExecutionState, event: ExecutionEvent) -> None:
    expected = EXPECTED_EXECUTION.get((state, event))
    if expected is None:
        with pytest.raises(LocalProtocolError, match=state.display_name):
            next_execution_state(state, event)
    else:
        assert next_execution_state(state, event) is expected


def test_terminal_states_have_no_way_out() -> None:
    for state in JobState:
        assert state.terminal == all((state, e) not in EXPECTED_JOB for e in JobEvent)
    for state in ExecutionState:
        if state is ExecutionState.UNDEFINED:
            continue
        leaves = any((state, e) in EXPECTED_EXECUTION for e in ExecutionEvent)
        assert state.terminal == (not leaves)


def test_execution_states_are_bacalhaus_integers() -> None:
    assert [int(s) for s in ExecutionState] == list(range(10))
    assert ExecutionState.BID_ACCEPTED == 5
    assert ExecutionState.CANCELLED.display_name == "Cancelled"
