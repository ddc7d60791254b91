"""What the HTTP API may ask of a running node: the seam between `api.py` and `node.py`.

Reads go to the store (jobs, executions, history) or the files of an execution (logs,
results); writes (submit, stop) go through the node's core loop and wait for its answer.
`MeshService` is what a node with a mesh adds (`runtime.node.Node` has it): the members it
knows, its libp2p addresses and counters, and operators' approval decisions. The API checks
for it at run time, so a service without a mesh still answers for itself alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from meshnode.core.records import NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.runtime.store import Store
from meshnode.spec import Job

if TYPE_CHECKING:
    from meshnode.core.node import NodeCore

__all__ = ["AgentInfo", "MeshService", "NodeService", "SubmitResult"]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job_id: str
    evaluation_id: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentInfo:
    version: str
    started_at: float  # wall-clock seconds
    api_address: str  # host:port the API listens on
    data_dir: Path


class NodeService(Protocol):
    @property
    def store(self) -> Store: ...

    @property
    def node_info(self) -> NodeInfo: ...

    @property
    def agent(self) -> AgentInfo: ...

    def used_resources(self) -> ResourceAmounts:
        """What running executions hold now (capacity minus this is what is free)."""
        ...

    async def submit(self, spec: Job) -> SubmitResult:
        """Accept a validated spec; the job is persisted before this returns."""
        ...

    async def stop(self, job_id: str, reason: str) -> str:
        """Stop a live job; raises `store.NotFoundError` for an unknown id. Returns a
        message ("job j-… stopped", or that it had already ended)."""
        ...

    def execution_dir(self, execution_id: str) -> Path:
        """The folder of an execution: `stdout`, `stderr`, `exitCode` and a folder per
        ResultPath once it ends (the local publisher's results)."""
        ...

    def is_execution_live(self, execution_id: str) -> bool:
        """Whether its logs may still grow (for `logs --follow`)."""
        ...


@runtime_checkable
class MeshService(Protocol):
    """Optional on a NodeService: the mesh this node is part of."""

    @property
    def core(self) -> NodeCore:
        """Read only: `members()`, `membership.approval_of(id)`, `params`."""
        ...

    def listen_addrs(self) -> list[str]:
        """This node's full multiaddrs (`/ip4/…/tcp/…/p2p/<id>`)."""
        ...

    def connected_peers(self) -> list[str]: ...

    def mesh_stats(self) -> dict[str, int]: ...

    async def remote_logs(
        self, node_id: str, execution_id: str, *, follow: bool
    ) -> AsyncIterator[bytes]:
        """The NDJSON log records of an execution that ran on another node, streamed from
        that node over the mesh (whole lines only)."""
        ...

    async def decide_approval(self, node_id: str, decision: str) -> str:
        """`decision`: "approved" | "rejected" | "deleted". Raises `store.NotFoundError` for a
        node nobody knows; returns a message ("node 12D3KooW… approved")."""
        ...
