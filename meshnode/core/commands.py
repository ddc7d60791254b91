"""What the core asks its driver to do: the commands every part of the core returns.

Rules of this module: commands are plain frozen dataclasses (they never go on the wire);
`Persist`, when present, comes first in a step's commands and must be written before any
other command of that step is carried out.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnode.core.messages import Approval, Message
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, LocalRun

__all__ = [
    "Command",
    "JobAccepted",
    "Persist",
    "Publish",
    "Reply",
    "RunBidProbe",
    "Send",
    "StartExecution",
    "StopExecution",
]


@dataclass(frozen=True, slots=True)
class Persist:
    jobs: tuple[JobRecord, ...] = ()
    executions: tuple[ExecutionRecord, ...] = ()
    history: tuple[HistoryEvent, ...] = ()
    # This node's own runs (its compute side): written, and deleted once fully reported.
    runs: tuple[LocalRun, ...] = ()
    deleted_runs: tuple[str, ...] = ()
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True, slots=True)
class Send:
    """A direct message to one peer; `addrs` are where it was last heard of (dial hints).
    Delivery is best effort: the core retries what matters."""

    to: str
    message: Message
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Publish:
    """A gossip message for every node (GossipSub); best effort, repaired by push-pull."""

    message: Message


@dataclass(frozen=True, slots=True)
class JobAccepted:
    request_id: str
    job_id: str
    evaluation_id: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a request that is not a submission (e.g. `StopJob`)."""

    request_id: str
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class StartExecution:
    execution: ExecutionRecord
    job: JobRecord


@dataclass(frozen=True, slots=True)
class StopExecution:
    execution_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunBidProbe:
    """Run the operator's bid probe with the job as JSON on stdin; answer `BidProbeDone`."""

    execution_id: str
    job: JobRecord


Command = (
    Persist | Send | Publish | JobAccepted | Reply | StartExecution | StopExecution | RunBidProbe
)
