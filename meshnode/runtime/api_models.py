"""The JSON shapes of the HTTP API: Bacalhau's `/api/v1` models as frozen msgspec Structs.

Rules of this module:
- Key spelling and value types are Bacalhau's (v1.4 `pkg/models` and `pkg/publicapi/
  apimodels`), so its clients read our answers unchanged: PascalCase with Bacalhau's acronyms
  (`ID`, `JobID`, `CPU`, `GOOS`…), a job's state as text (`"Running"`), an execution's
  ComputeState/DesiredState as Bacalhau's integers, CreateTime/ModifyTime as int nanoseconds
  since the epoch, history times as RFC 3339 text. Where the generated Python client
  (`bacalhau-apiclient` 1.4.1) spells a key differently from Go's encoder (`nodes`, `node`,
  RunOutput's `stderr`), the client's spelling wins: Go's decoder matches keys
  case-insensitively, the Python client does not.
- These Structs carry no type tag: the shapes are fixed by Bacalhau and a tag would be an
  extra key. They are evolved only by appending fields with defaults.
- Only answers are modelled here. A submitted job is read by the spec reader (its model is
  the only schema of a job), and query parameters by `api.py`.
- Fields that Go marks `omitempty` and that are really optional use `omit_defaults`; every
  other field is always written, as Go writes it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from meshnode.spec import Constraint, Task

__all__ = [
    "AliveResponse",
    "ApiError",
    "ApiProblem",
    "BuildVersionInfo",
    "ComputeNodeInfo",
    "ConnectionState",
    "Execution",
    "ExecutionStateChange",
    "ExecutionStateOf",
    "GetJobResponse",
    "GetNodeResponse",
    "HistoryEvent",
    "Job",
    "JobHistory",
    "JobState",
    "JobStateChange",
    "ListNodesResponse",
    "ListResponse",
    "LogRecord",
    "MeshInfo",
    "NodeInfo",
    "NodeState",
    "PageCursor",
    "PutJobResponse",
    "PutNodeResponse",
    "Resources",
    "RunCommandResult",
    "SpecConfig",
    "StopJobResponse",
]

Item = TypeVar("Item")


class _Wire(msgspec.Struct, frozen=True, kw_only=True, rename="pascal"):
    """Base of the Bacalhau shapes: PascalCase keys; acronyms are named field by field."""


# --- jobs ------------------------------------------------------------------------------------


class JobState(_Wire, frozen=True, kw_only=True):
    state_type: str  # "Pending", "Running"… (Bacalhau writes JobStateType as text)
    message: str = ""


class Job(_Wire, frozen=True, kw_only=True):
    id: str = msgspec.field(name="ID")
    name: str
    namespace: str
    type: str
    priority: int
    count: int
    constraints: tuple[Constraint, ...]
    meta: dict[str, str]
    labels: dict[str, str]
    tasks: tuple[Task, ...]
    state: JobState
    version: int
    revision: int
    create_time: int  # nanoseconds since the epoch
    modify_time: int


class PutJobResponse(_Wire, frozen=True, kw_only=True):
    job_id: str = msgspec.field(name="JobID")
    evaluation_id: str = msgspec.field(name="EvaluationID")
    warnings: tuple[str, ...] = ()


class StopJobResponse(_Wire, frozen=True, kw_only=True):
    evaluation_id: str = msgspec.field(name="EvaluationID")
    # Not in Bacalhau's shape (its clients ignore it): what the node did, e.g. that the job
    # had already ended.
    message: str = ""


class ListResponse(_Wire, Generic[Item], frozen=True, kw_only=True):
    """`{"Items": [...], "NextToken": ""}`: every list answer of the API."""

    items: tuple[Item, ...]
    next_token: str = ""


# --- executions ------------------------------------------------------------------------------


class Resources(_Wire, frozen=True, kw_only=True):
    cpu: float = msgspec.field(default=0.0, name="CPU")  # cores
    memory: int = 0  # bytes
    disk: int = 0  # bytes
    gpu: int = msgspec.field(default=0, name="GPU")


class AllocatedResources(_Wire, frozen=True, kw_only=True):
    tasks: dict[str, Resources]  # by task name


class ExecutionStateOf(_Wire, frozen=True, kw_only=True):
    """Bacalhau's `State[ExecutionStateType]` and `State[ExecutionDesiredStateType]`."""

    state_type: int
    message: str = ""


class SpecConfig(_Wire, frozen=True, kw_only=True):
    type: str
    params: dict[str, object] = msgspec.field(default_factory=dict)


class RunCommandResult(_Wire, frozen=True, kw_only=True):
    stdout: str = ""
    stdout_truncated: bool = False
    # Bacalhau's one lower-case key (`json:"stderr"` in Go).
    stderr: str = msgspec.field(default="", name="stderr")
    stderr_truncated: bool = False
    exit_code: int = -1
    error_msg: str = ""


class Execution(_Wire, frozen=True, kw_only=True):
    id: str = msgspec.field(name="ID")
    namespace: str
    eval_id: str = msgspec.field(default="", name="EvalID")
    name: str
    node_id: str = msgspec.field(name="NodeID")
    job_id: str = msgspec.field(name="JobID")
    allocated_resources: AllocatedResources
    desired_state: ExecutionStateOf
    compute_state: ExecutionStateOf
    published_result: SpecConfig | None = None
    run_output: RunCommandResult | None = None
    previous_execution: str = ""
    next_execution: str = ""
    followup_eval_id: str = msgspec.field(default="", name="FollowupEvalID")
    revision: int
    create_time: int
    modify_time: int


# --- history ---------------------------------------------------------------------------------


class JobStateChange(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    previous: str = ""  # omitted for the first event, as Go's omitempty does
    new: str = ""


class ExecutionStateChange(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    previous: int = 0  # 0 is Bacalhau's Undefined: omitted, as Go's omitempty does
    new: int = 0


class HistoryEvent(_Wire, frozen=True, kw_only=True):
    """Bacalhau's `models.Event`."""

    message: str
    topic: str
    timestamp: str  # RFC 3339
    details: dict[str, str] = msgspec.field(default_factory=dict)


class JobHistory(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    type: str  # "JobLevel" | "ExecutionLevel"
    job_id: str = msgspec.field(name="JobID")
    node_id: str = msgspec.field(default="", name="NodeID")
    execution_id: str = msgspec.field(default="", name="ExecutionID")
    job_state: JobStateChange | None = None
    execution_state: ExecutionStateChange | None = None
    new_revision: int
    comment: str = ""
    event: HistoryEvent
    time: str  # RFC 3339 with nanoseconds, UTC


class GetJobResponse(_Wire, frozen=True, kw_only=True, omit_defaults=True):
    job: Job
    executions: ListResponse[Execution] | None = None
    history: ListResponse[JobHistory] | None = None


# --- nodes and the agent -----------------------------------------------------------------------


class BuildVersionInfo(_Wire, frozen=True, kw_only=True):
    major: str
    minor: str
    git_version: str
    git_commit: str
    build_date: str
    goos: str = msgspec.field(name="GOOS")
    goarch: str = msgspec.field(name="GOARCH")


class ComputeNodeInfo(_Wire, frozen=True, kw_only=True):
    execution_engines: tuple[str, ...]
    publishers: tuple[str, ...]
    storage_sources: tuple[str, ...]
    max_capacity: Resources
    queue_capacity: Resources  # what executions waiting for capacity ask for
    available_capacity: Resources
    max_job_requirements: Resources
    running_executions: int
    enqueued_executions: int


class NodeInfo(_Wire, frozen=True, kw_only=True):
    node_id: str = msgspec.field(name="NodeID")
    # Bacalhau knows only "Requester" and "Compute" (its Go client rejects anything else);
    # a node that runs executions is "Compute".
    node_type: str
    labels: dict[str, str]
    compute_node_info: ComputeNodeInfo | None
    bacalhau_version: BuildVersionInfo
    # Not in Bacalhau's shape (its clients ignore it): where the node's libp2p host listens,
    # as full multiaddrs (`/ip4/…/tcp/…/p2p/<NodeID>`), what another node's --peers takes.
    addresses: tuple[str, ...] = ()


class ConnectionState(_Wire, frozen=True, kw_only=True):
    """Bacalhau ≥ 1.6's `NodeState.ConnectionState` (its CLI reads `Status` from here)."""

    status: str  # "CONNECTED" | "DISCONNECTED"
    last_heartbeat: str  # RFC 3339: when this node last heard from it
    connected_since: str  # Go's zero time when not connected
    disconnected_since: str


class NodeState(_Wire, frozen=True, kw_only=True):
    info: NodeInfo
    # "APPROVED" | "PENDING" | "REJECTED" (see api.py for how meshnode's decisions map).
    membership: str = "APPROVED"
    connection: str = "CONNECTED"  # Bacalhau ≤ 1.5's place; ConnectionState.Status after
    connection_state: ConnectionState | None = None
    # Not in Bacalhau's shape: the mesh's view, "alive" | "suspect" | "dead" | "left".
    state: str = "alive"


class ListNodesResponse(_Wire, frozen=True, kw_only=True):
    # `Items` like every other list; `nodes` is the key the Python client reads (and Go's
    # case-insensitive decoder reads as its `Nodes`).
    items: tuple[NodeState, ...]
    nodes: tuple[NodeState, ...] = msgspec.field(default=(), name="nodes")
    next_token: str = ""


class GetNodeResponse(_Wire, frozen=True, kw_only=True):
    node: NodeState = msgspec.field(name="node")  # the Python client's spelling, see above


class PutNodeResponse(_Wire, frozen=True, kw_only=True):
    """The answer to an approve/reject/delete (Bacalhau's `PutNodeResponse`)."""

    success: bool
    error: str = ""
    # Not in Bacalhau's shape: what the node did ("node 12D3KooW… approved").
    message: str = ""


class MeshInfo(_Wire, frozen=True, kw_only=True):
    """`GET /api/v1/agent/mesh` (meshnode's own): this node's view of the mesh."""

    node_id: str = msgspec.field(name="NodeID")
    addresses: tuple[str, ...]
    connected_peers: tuple[str, ...]
    members: dict[str, int]  # how many nodes are alive, suspect, dead, left (this one too)
    stats: dict[str, int]  # counters of the core, membership, transport and forwarding


class AliveResponse(_Wire, frozen=True, kw_only=True):
    status: str = "OK"


# --- errors, logs, paging ----------------------------------------------------------------------


class ApiProblem(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    message: str


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx/5xx body. Bacalhau 1.4 answers errors with echo's `{"error", "message"}`;
    `error` here is a short code from Bacalhau's vocabulary (BadRequest, NotFound,
    ValidationError…), `message` a sentence, `problems` every problem of a rejected spec
    (empty otherwise)."""

    error: str
    message: str
    problems: tuple[ApiProblem, ...] = ()


class LogRecord(_Wire, frozen=True, kw_only=True):
    """One line of `GET …/jobs/{id}/logs`: one JSON object per line (NDJSON)."""

    type: str  # "stdout" | "stderr"
    line: str  # without its newline
    execution_id: str = msgspec.field(name="ExecutionID")


class PageCursor(msgspec.Struct, frozen=True, array_like=True):
    """What a NextToken encodes: where the next page of jobs starts, and its direction."""

    created_at: float
    job_id: str
    newest_first: bool
