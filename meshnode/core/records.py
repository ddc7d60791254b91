"""What a node remembers about jobs and executions: the records the core decides on and the
runtime persists.

Rules of this module: records are frozen msgspec Structs, changed only by `replace`, so a
record handed to the runtime can never change under its feet. Times are wall-clock seconds
given to the core by its driver (never read here). Field names are ours; the API maps them to
Bacalhau's shapes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from meshnode.core.resources import ResourceAmounts
from meshnode.core.states import DesiredState, ExecutionState, JobState
from meshnode.spec import Job

__all__ = ["ExecutionRecord", "HistoryEvent", "JobRecord", "LocalRun", "NodeInfo"]


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    spec: Job
    state: JobState = JobState.PENDING
    message: str = ""
    created_at: float
    modified_at: float
    # When the job last entered Queued (QueueTimeout counts from here).
    queued_at: float | None = None
    # Bumped on every change of the record, as Bacalhau's Revision.
    revision: int = 1
    version: int = 1
    node_id: str = ""  # the node that accepted it
    # The requester term that wrote this record (a higher term wins when records merge).
    term: int = 0
    requester: str = ""  # the primary requester that wrote it

    @property
    def name(self) -> str:
        return self.spec.name or self.id


class ExecutionRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    job_id: str
    node_id: str
    state: ExecutionState = ExecutionState.NEW
    desired: DesiredState = DesiredState.PENDING
    message: str = ""
    created_at: float
    modified_at: float
    resources: ResourceAmounts = ResourceAmounts()
    # Set when the node actually starts it (it may wait for capacity before).
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str = ""
    revision: int = 1
    # Higher runs first among executions waiting for capacity.
    priority: int = 0
    term: int = 0  # the requester term that wrote this record
    # Since when its node is unreachable (membership says dead); None while reachable. A lost
    # execution no longer counts as running; if its node comes back it is adopted or stopped.
    lost_at: float | None = None

    @property
    def active(self) -> bool:
        return not self.state.terminal

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self.state.terminal

    @property
    def counted(self) -> bool:
        """Active and on a node we can reach: what the schedulers count."""
        return self.active and self.lost_at is None


class HistoryEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded transition: `job history` shows these."""

    time: float
    job_id: str
    execution_id: str = ""
    kind: Literal["job", "execution"]
    previous: str
    new: str
    message: str = ""
    revision: int = 0


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a node offers: the scheduler's view of a node."""

    id: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    capacity: ResourceAmounts = ResourceAmounts()
    engines: tuple[str, ...] = ()
    input_types: tuple[str, ...] = ()
    publishers: tuple[str, ...] = ()
    # (path prefix, read-write allowed) pairs from --allow-listed-local-paths.
    allowed_local_paths: tuple[tuple[str, bool], ...] = ()
    # Why a feature is missing here, keyed like "engine docker" or "publisher ipfs"
    # (e.g. "Docker is not running on this node").
    unavailable: dict[str, str] = msgspec.field(default_factory=dict)


class LocalRun(msgspec.Struct, frozen=True, kw_only=True):
    """An execution this node runs (its compute side), kept until its end is acknowledged by
    the job's requester. The requester's `ExecutionRecord` is the job's truth; this is the
    compute node's own account, which it reports (and re-reports after failover or a
    partition) until acknowledged."""

    execution: ExecutionRecord  # as the requester sent it
    job: bytes  # the job record, msgpack (`core.messages.decode_job_record`)
    requester: str  # where reports go (re-routed when it is unreachable)
    term: int
    phase: Literal["queued", "running", "ended"] = "queued"
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str = ""
    stop_reason: str = ""  # set when the requester asked to stop it
    report_seq: int = 0
    acked_seq: int = 0

    @property
    def id(self) -> str:
        return self.execution.id

    @property
    def job_id(self) -> str:
        return self.execution.job_id
