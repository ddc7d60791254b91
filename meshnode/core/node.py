"""The node core: one node's whole protocol, sans-IO.

Rules of this module:
- `NodeCore.handle(event, now)` is the only entry point besides construction; it returns the
  commands the driver must carry out, in order, `Persist` first (written before anything
  else is done). `next_deadline()` says when to call `handle(Tick(), now)` at the latest.
- It composes three parts and routes between them: `Membership` (who is alive),
  `RequesterSide` (jobs this node is primary or replica for), `ComputeSide` (executions this
  node runs). They talk through messages even inside one node: a message to itself is
  handled in the same step (`Effects.loopback`), so one node alone runs the very protocol a
  mesh runs.
- A peer's bytes are decoded here; anything malformed or hostile is dropped and counted in
  `stats` (a peer can never crash a node).
- Memory is bounded by live work: ended jobs leave the requester, acknowledged runs leave
  the compute side (the store keeps them for queries).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from msgspec.structs import replace

from meshnode.core.commands import (
    Command,
    JobAccepted,
    Persist,
    Publish,
    Reply,
    RunBidProbe,
    Send,
    StartExecution,
    StopExecution,
)
from meshnode.core.compute import ComputeParams, ComputeSide
from meshnode.core.effects import Effects
from meshnode.core.ids import Rng
from meshnode.core.membership import Member, MemberChange, Membership, MembershipParams
from meshnode.core.messages import (
    Ack,
    Adopt,
    Announce,
    Approval,
    AskForBid,
    MemberInfo,
    Message,
    Ping,
    PingReq,
    PushPull,
    ReportAck,
    RequesterClaim,
    StartRun,
    StopRun,
    decode,
)
from meshnode.core.policy import Policy
from meshnode.core.records import ExecutionRecord, JobRecord, LocalRun, NodeInfo
from meshnode.core.requester import RequesterParams, RequesterSide
from meshnode.core.resources import DEFAULT_REQUEST, ResourceAmounts
from meshnode.core.states import JobState
from meshnode.errors import RemoteProtocolError
from meshnode.spec import Job

__all__ = [
    "STOPPED_BY_USER",
    "ApproveNode",
    "BidProbeDone",
    "Command",
    "CoreParams",
    "Event",
    "ExecutionEnded",
    "ExecutionLost",
    "GossipReceived",
    "JobAccepted",
    "Leave",
    "MessageReceived",
    "NodeChanged",
    "NodeCore",
    "PeerDiscovered",
    "Persist",
    "Publish",
    "Recovered",
    "Reply",
    "RunBidProbe",
    "Send",
    "StartExecution",
    "StopExecution",
    "StopJob",
    "SubmitJob",
    "Tick",
]

STOPPED_BY_USER: Final = "stopped by the user"
# Loopback rounds in one step before the core gives up (a bug guard, never reached normally).
_MAX_ROUNDS: Final = 10_000
_GOSSIP_TYPES: Final = (Announce, RequesterClaim)
_MEMBERSHIP_TYPES: Final = (Ping, Ack, PingReq, PushPull)
_COMPUTE_TYPES: Final = (AskForBid, StartRun, StopRun, Adopt, ReportAck)
_NO_PLAN_CHANGE: Final = frozenset({"load", "suspect"})
_NODE_GONE: Final = frozenset({"dead", "left"})

# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitJob:
    request_id: str
    spec: Job


@dataclass(frozen=True, slots=True)
class StopJob:
    request_id: str
    job_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExecutionEnded:
    """The engine finished the run (`exit_code` None when it did not exit by itself)."""

    execution_id: str
    exit_code: int | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ExecutionLost:
    """The run could not start, or was lost (e.g. the node restarted while it ran)."""

    execution_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """Sent once after a restart: executions that were running and are gone."""

    lost: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeChanged:
    node: NodeInfo


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A frame from a peer's direct stream; `sender` is the peer id the transport verified."""

    sender: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class GossipReceived:
    sender: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class PeerDiscovered:
    """A peer found outside the mesh protocol: a bootstrap address or mDNS."""

    node_id: str
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BidProbeDone:
    execution_id: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ApproveNode:
    request_id: str
    node_id: str
    decision: str  # "approved" | "rejected" | "deleted"


@dataclass(frozen=True, slots=True)
class Leave:
    """A graceful stop: tell the mesh before going."""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time has passed (a deadline from `next_deadline()` was reached)."""


Event = (
    SubmitJob
    | StopJob
    | ExecutionEnded
    | ExecutionLost
    | Recovered
    | NodeChanged
    | MessageReceived
    | GossipReceived
    | PeerDiscovered
    | BidProbeDone
    | ApproveNode
    | Leave
    | Tick
)


@dataclass(frozen=True, slots=True)
class CoreParams:
    membership: MembershipParams = field(default_factory=MembershipParams)
    requester: RequesterParams = field(default_factory=RequesterParams)
    compute: ComputeParams = field(default_factory=ComputeParams)
    roles: tuple[str, ...] = ("requester", "compute")
    bid_probe: bool = False
    # Free resources are re-advertised when they moved by this share of capacity ...
    advertise_change: float = 0.2
    # ... but not more often than this.
    advertise_every_s: float = 2.0
    # After a restart with peers to find, role decisions wait this long for the mesh view.
    settle_s: float = 0.0


class NodeCore:
    def __init__(
        self,
        node: NodeInfo,
        *,
        rng: Rng,
        policy: Policy | None = None,
        default_request: ResourceAmounts = DEFAULT_REQUEST,
        jobs: Iterable[JobRecord] = (),
        executions: Iterable[ExecutionRecord] = (),
        runs: Iterable[LocalRun] = (),
        approvals: Iterable[Approval] = (),
        params: CoreParams | None = None,
        addrs: tuple[str, ...] = (),
        api: str = "",
        version: str = "",
        now: float = 0.0,
    ) -> None:
        self.params = params or CoreParams()
        self._node = node
        self._rng = rng
        info = MemberInfo(
            node=node,
            addrs=addrs,
            roles=self.params.roles,
            version=version,
            api=api,
            free=node.capacity,
        )
        self.membership = Membership(
            node.id, info, rng=rng, now=now, params=self.params.membership, approvals=approvals
        )
        self.compute = ComputeSide(
            node.id,
            node=node,
            runs=runs,
            params=self.params.compute,
            probe_enabled=self.params.bid_probe,
            route=self._primary_of,
            gone=self.membership.is_gone,
            addrs=self.membership.addrs_of,
        )
        self.requester = RequesterSide(
            node.id,
            rng=rng,
            policy=policy or Policy(),
            params=self.params.requester,
            candidates=self._requester_candidates,
            compute_nodes=self._compute_nodes,
            reachable=self.membership.is_reachable,
            addrs=self.membership.addrs_of,
            jobs=jobs,
            executions=executions,
            default_request=default_request,
        )
        self._settle_at = now + self.params.settle_s
        self._settled = False
        self.requester.settled = False
        self._advertised_at = now
        self._advertised_free = node.capacity
        self._advertised_running = 0
        self._candidates_cache: list[str] | None = None
        self._candidates_version = -1
        self.stats: dict[str, int] = {"messages_dropped": 0, "messages_handled": 0}
        self.last_drop: str = ""

    # --- queries (read-only views for the driver and tests) -------------------------------

    @property
    def node(self) -> NodeInfo:
        return self._node

    @property
    def node_id(self) -> str:
        return self._node.id

    def job(self, job_id: str) -> JobRecord | None:
        return self.requester.job(job_id)

    def execution(self, execution_id: str) -> ExecutionRecord | None:
        return self.requester.execution(execution_id)

    def executions_of(self, job_id: str) -> list[ExecutionRecord]:
        return self.requester.executions_of(job_id)

    @property
    def live_job_ids(self) -> list[str]:
        return sorted(self.requester.held)

    def run(self, execution_id: str) -> LocalRun | None:
        return self.compute.runs.get(execution_id)

    @property
    def runs(self) -> list[LocalRun]:
        return sorted(self.compute.runs.values(), key=lambda r: r.id)

    def used_resources(self) -> ResourceAmounts:
        return self.compute.used()

    def members(self) -> list[Member]:
        return sorted(self.membership.members.values(), key=lambda m: m.id)

    def primary_of(self, job_id: str) -> str | None:
        return self._primary_of(job_id)

    def job_deadline(self, job_id: str) -> float | None:
        """When the job's scheduler wants to look at it again (tests, `job describe`)."""
        held = self.requester.held.get(job_id)
        return held.wake_at if held else None

    def next_deadline(self) -> float | None:
        deadlines = [self.membership.next_deadline()]
        for part in (self.requester.next_deadline(), self.compute.next_deadline()):
            if part is not None:
                deadlines.append(part)
        if not self._settled:
            deadlines.append(self._settle_at)
        return min(deadlines)

    # --- the entry point --------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        fx = Effects(self._node.id)
        match event:
            case SubmitJob():
                self.requester.submit(event.request_id, event.spec, now, fx)
            case StopJob():
                self.requester.stop(event.request_id, event.job_id, event.reason, now, fx)
            case ExecutionEnded():
                self.compute.on_ended(event.execution_id, event.exit_code, event.error, now, fx)
            case ExecutionLost():
                self.compute.on_ended(event.execution_id, None, event.reason, now, fx)
            case Recovered():
                self.compute.recovered(event.lost, now, fx)
            case NodeChanged():
                self._node_changed(event.node, now)
            case MessageReceived():
                self._receive(event.sender, event.frame, now, fx, gossip=False)
            case GossipReceived():
                self._receive(event.sender, event.frame, now, fx, gossip=True)
            case PeerDiscovered():
                self.membership.add_seed(event.node_id, event.addrs, now)
            case BidProbeDone():
                self.compute.on_probe_done(event.execution_id, event.ok, event.reason, now, fx)
            case ApproveNode():
                self._approve(event, now, fx)
            case Leave():
                self.membership.leave(now)
            case Tick():
                pass
        self.membership.tick(now)
        self.compute.tick(now, fx)
        if not self._settled and now >= self._settle_at:
            self._settled = True
            self.requester.settled = True
            self.requester.review_roles(now, fx)
        self.requester.tick(now, fx)
        self._run_to_quiescence(now, fx)
        self._advertise(now)
        self._take_membership_outputs(now, fx)
        return fx.flush()

    # --- routing --------------------------------------------------------------------------------

    def _receive(self, sender: str, frame: bytes, now: float, fx: Effects, *, gossip: bool) -> None:
        try:
            message = decode(frame)
            if gossip != isinstance(message, _GOSSIP_TYPES):
                where = "gossip" if gossip else "a direct stream"
                raise RemoteProtocolError(f"{type(message).__name__} is not expected on {where}")
            self._dispatch(sender, message, now, fx)
        except RemoteProtocolError as error:
            self.stats["messages_dropped"] += 1
            self.last_drop = f"from {sender}: {error}"

    def _dispatch(self, sender: str, message: Message, now: float, fx: Effects) -> None:
        self.stats["messages_handled"] += 1
        if sender != self._node.id:
            self.membership.heard_from(sender, now)
        if isinstance(message, (*_MEMBERSHIP_TYPES, Announce)):
            self.membership.on_message(sender, message, now)
        elif isinstance(message, _COMPUTE_TYPES):
            match message:
                case AskForBid():
                    self.compute.on_ask_for_bid(sender, message, now, fx)
                case StartRun():
                    self.compute.on_start(sender, message, now, fx)
                case StopRun():
                    self.compute.on_stop(sender, message, now, fx)
                case Adopt():
                    self.compute.on_adopt(sender, message, now, fx)
                case ReportAck():
                    self.compute.on_report_ack(sender, message, now, fx)
        else:
            self.requester.on_message(sender, message, now, fx)

    def _run_to_quiescence(self, now: float, fx: Effects) -> None:
        for _ in range(_MAX_ROUNDS):
            while fx.loopback:
                sender, message = fx.loopback.popleft()
                try:
                    self._dispatch(sender, message, now, fx)
                except RemoteProtocolError as error:  # our own message: a bug
                    raise AssertionError(f"a node rejected its own message: {error}") from error
            self._take_membership_outputs(now, fx)
            if self._settled:
                self.requester.evaluate(now, fx)
            self.requester.flush_jobs(fx)
            if not fx.loopback:
                return
        raise AssertionError("the core did not settle within one step")

    def _take_membership_outputs(self, now: float, fx: Effects) -> None:
        commands, changes = self.membership.take_outputs()
        for command in commands:
            if isinstance(command, Send):
                fx.send(command.to, command.message, command.addrs)
            else:
                fx.do(command)
        if changes:
            self._members_changed(changes, now, fx)

    def _members_changed(self, changes: list[MemberChange], now: float, fx: Effects) -> None:
        fx.approvals.extend(
            self.membership.approvals[c.node_id]
            for c in changes
            if c.kind == "approval" and c.node_id in self.membership.approvals
        )
        for change in changes:
            if change.kind in ("dead", "left"):
                self.requester.node_lost(change.node_id, now, fx)
            elif change.kind == "alive":
                self.requester.node_back(change.node_id, now, fx)
        kinds = {change.kind for change in changes}
        if kinds <= _NO_PLAN_CHANGE:
            # Load and suspicion change neither who leads a job nor what a plan can do (a
            # suspect still counts as reachable; load only orders candidates): evaluating
            # every held job on each of them was a large share of the cost at 50 nodes.
            return
        if self._settled:
            self.requester.review_roles(now, fx)
        offers_changed = not kinds <= _NODE_GONE | _NO_PLAN_CHANGE
        for held in self.requester.held.values():
            # A node that is gone frees no capacity: only jobs that wait for nodes (their
            # message lists them) need a look; `node_lost` marked those that ran there.
            if offers_changed or held.job.state in (JobState.PENDING, JobState.QUEUED):
                held.dirty = True

    # --- views for the parts ----------------------------------------------------------------

    def _requester_candidates(self) -> list[str]:
        """Reachable requester-capable nodes, sorted. Rebuilt only after membership changed
        (`Membership.version`): the same list object otherwise, which lets the requester
        cache its rankings."""
        if self._candidates_cache is None or self._candidates_version != self.membership.version:
            self._candidates_version = self.membership.version
            membership = self.membership
            candidates = []
            for node_id in membership.reachable_ids():
                info = membership.info_of(node_id)
                if info is None or "requester" not in info.roles:
                    continue
                if membership.approval_of(node_id) in ("rejected", "deleted"):
                    continue
                candidates.append(node_id)
            if candidates != self._candidates_cache:  # (an info update keeps the same list)
                self._candidates_cache = candidates
        return self._candidates_cache

    def _primary_of(self, job_id: str) -> str | None:
        return self.requester.primary_of(job_id)

    def _compute_nodes(self) -> tuple[list[NodeInfo], dict[str, str], dict[str, float]]:
        membership = self.membership
        nodes: list[NodeInfo] = []
        excluded: dict[str, str] = {}
        load: dict[str, float] = {}
        require = self.params.requester.require_approval
        for node_id in membership.reachable_ids():
            info = membership.info_of(node_id)
            if info is None or "compute" not in info.roles:
                continue
            approval = membership.approval_of(node_id)
            if approval in ("rejected", "deleted"):
                excluded[node_id] = f"the node was {approval} by an operator"
                continue
            if require and approval != "approved":
                excluded[node_id] = (
                    f"the node is not approved yet (meshnode node approve {node_id})"
                )
                continue
            if node_id == self._node.id:
                nodes.append(self._node)
                load[node_id] = _load(self._node.capacity, self.compute.committed(0.0))
            else:
                nodes.append(info.node)
                load[node_id] = _load(info.node.capacity, info.node.capacity - info.free)
        return nodes, excluded, load

    # --- this node's own advertisement --------------------------------------------------------

    def _node_changed(self, node: NodeInfo, now: float) -> None:
        self._node = node
        self.compute.node = node
        info = replace(self.membership.info, node=node)
        self.membership.update_self(info, now, announce=True)
        for held in self.requester.held.values():
            held.dirty = True

    def _advertise(self, now: float) -> None:
        if now < self._advertised_at + self.params.advertise_every_s:
            return
        free = self._node.capacity - self.compute.committed(now)
        running = self.compute.running_count()
        moved = abs(
            _load(self._node.capacity, free) - _load(self._node.capacity, self._advertised_free)
        )
        if moved < self.params.advertise_change and (running > 0) == (self._advertised_running > 0):
            return
        self._advertised_at, self._advertised_free, self._advertised_running = now, free, running
        info = replace(self.membership.info, free=free, running=running)
        self.membership.update_self(info, now, announce=False)

    def set_address(self, addrs: tuple[str, ...], api: str, now: float) -> None:
        """The driver learned where this node listens (after its transport started)."""
        info = replace(self.membership.info, addrs=addrs, api=api)
        self.membership.update_self(info, now, announce=True)

    def _approve(self, event: ApproveNode, now: float, fx: Effects) -> None:
        membership = self.membership
        known = event.node_id == self._node.id or event.node_id in membership.members
        if not known and event.node_id not in membership.approvals:
            fx.do(Reply(event.request_id, False, f"no node {event.node_id} is known"))
            return
        membership.decide_approval(event.node_id, event.decision, now)
        fx.do(Reply(event.request_id, True, f"node {event.node_id} {event.decision}"))


def _load(capacity: ResourceAmounts, used: ResourceAmounts) -> float:
    shares = []
    if capacity.cpu_millicores:
        shares.append(used.cpu_millicores / capacity.cpu_millicores)
    if capacity.memory_bytes:
        shares.append(used.memory_bytes / capacity.memory_bytes)
    return max(shares, default=0.0)
