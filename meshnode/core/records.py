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

__all__ = ["ExecutionRecord", "HistoryEvent", "JobRecord", "NodeInfo"]


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

    @property
    def active(self) -> bool:
        return not self.state.terminal

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self.state.terminal


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
