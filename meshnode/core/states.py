"""Job and execution lifecycles, each one transition table.

Rules of this module:
- States are Bacalhau's, so its clients read them unchanged: a job's state travels as text
  (`"Running"`), an execution's as Bacalhau's integer (`ExecutionState.BID_ACCEPTED == 5`).
- Every legal move is one row of `_JOB_TRANSITIONS` / `_EXECUTION_TRANSITIONS`; anything
  else raises `LocalProtocolError` (a bug in the caller, never a peer's fault). Terminal
  states have no rows.
- The tables say what may happen, not when: that is the schedulers' business.
"""

from __future__ import annotations

import enum
from typing import Final

from meshnode.errors import LocalProtocolError

__all__ = [
    "DesiredState",
    "ExecutionEvent",
    "ExecutionState",
    "JobEvent",
    "JobState",
    "next_execution_state",
    "next_job_state",
]


class JobState(enum.Enum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_JOB_STATES


class JobEvent(enum.Enum):
    QUEUE = "queue"  # no node can take (all of) it now
    RUN = "run"  # an execution started
    COMPLETE = "complete"
    FAIL = "fail"
    STOP = "stop"  # a user asked


class ExecutionState(enum.IntEnum):
    """Bacalhau's ExecutionStateType, with its integer values."""

    UNDEFINED = 0
    NEW = 1
    ASK_FOR_BID = 2
    ASK_FOR_BID_ACCEPTED = 3
    ASK_FOR_BID_REJECTED = 4
    BID_ACCEPTED = 5  # the execution is the node's to run: running, or waiting to start
    BID_REJECTED = 6
    COMPLETED = 7
    FAILED = 8
    CANCELLED = 9

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_EXECUTION_STATES

    @property
    def display_name(self) -> str:
        return _EXECUTION_NAMES[self]


class DesiredState(enum.IntEnum):
    """Bacalhau's ExecutionDesiredStateType: what the requester wants of an execution."""

    PENDING = 0
    RUNNING = 1
    STOPPED = 2


class ExecutionEvent(enum.Enum):
    ASK_FOR_BID = "ask-for-bid"  # requester → compute
    BID = "bid"  # compute accepts
    DECLINE = "decline"  # compute rejects
    ACCEPT = "accept"  # requester confirms the bid
    REJECT = "reject"  # requester turns the bid down
    COMPLETE = "complete"  # ran and exited 0
    FAIL = "fail"  # could not run, or ran and failed
    CANCEL = "cancel"  # stopped on purpose


_TERMINAL_JOB_STATES: Final = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})
_LIVE_JOB_STATES: Final = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)

_JOB_TRANSITIONS: Final[dict[tuple[JobState, JobEvent], JobState]] = {
    (JobState.PENDING, JobEvent.QUEUE): JobState.QUEUED,
    (JobState.RUNNING, JobEvent.QUEUE): JobState.QUEUED,
    (JobState.PENDING, JobEvent.RUN): JobState.RUNNING,
    (JobState.QUEUED, JobEvent.RUN): JobState.RUNNING,
    **{(state, JobEvent.COMPLETE): JobState.COMPLETED for state in _LIVE_JOB_STATES},
    **{(state, JobEvent.FAIL): JobState.FAILED for state in _LIVE_JOB_STATES},
    **{(state, JobEvent.STOP): JobState.STOPPED for state in _LIVE_JOB_STATES},
}

_TERMINAL_EXECUTION_STATES: Final = frozenset(
    {
        ExecutionState.ASK_FOR_BID_REJECTED,
        ExecutionState.BID_REJECTED,
        ExecutionState.COMPLETED,
        ExecutionState.FAILED,
        ExecutionState.CANCELLED,
    }
)
_LIVE_EXECUTION_STATES: Final = (
    ExecutionState.NEW,
    ExecutionState.ASK_FOR_BID,
    ExecutionState.ASK_FOR_BID_ACCEPTED,
    ExecutionState.BID_ACCEPTED,
)

_EXECUTION_TRANSITIONS: Final[dict[tuple[ExecutionState, ExecutionEvent], ExecutionState]] = {
    (ExecutionState.NEW, ExecutionEvent.ASK_FOR_BID): ExecutionState.ASK_FOR_BID,
    (ExecutionState.ASK_FOR_BID, ExecutionEvent.BID): ExecutionState.ASK_FOR_BID_ACCEPTED,
    (ExecutionState.ASK_FOR_BID, ExecutionEvent.DECLINE): ExecutionState.ASK_FOR_BID_REJECTED,
    (ExecutionState.ASK_FOR_BID_ACCEPTED, ExecutionEvent.ACCEPT): ExecutionState.BID_ACCEPTED,
    (ExecutionState.ASK_FOR_BID_ACCEPTED, ExecutionEvent.REJECT): ExecutionState.BID_REJECTED,
    (ExecutionState.BID_ACCEPTED, ExecutionEvent.COMPLETE): ExecutionState.COMPLETED,
    **{(state, ExecutionEvent.FAIL): ExecutionState.FAILED for state in _LIVE_EXECUTION_STATES},
    **{
        (state, ExecutionEvent.CANCEL): ExecutionState.CANCELLED for state in _LIVE_EXECUTION_STATES
    },
}

_EXECUTION_NAMES: Final = {
    ExecutionState.UNDEFINED: "Undefined",
    ExecutionState.NEW: "New",
    ExecutionState.ASK_FOR_BID: "AskForBid",
    ExecutionState.ASK_FOR_BID_ACCEPTED: "AskForBidAccepted",
    ExecutionState.ASK_FOR_BID_REJECTED: "AskForBidRejected",
    ExecutionState.BID_ACCEPTED: "BidAccepted",
    ExecutionState.BID_REJECTED: "BidRejected",
    ExecutionState.COMPLETED: "Completed",
    ExecutionState.FAILED: "Failed",
    ExecutionState.CANCELLED: "Cancelled",
}


def next_job_state(state: JobState, event: JobEvent) -> JobState:
    try:
        return _JOB_TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(f"a job in state {state.value} cannot {event.value}") from None


def next_execution_state(state: ExecutionState, event: ExecutionEvent) -> ExecutionState:
    try:
        return _EXECUTION_TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(
            f"an execution in state {state.display_name} cannot {event.value}"
        ) from None
