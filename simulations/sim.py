"""A deterministic discrete-event simulator of a whole mesh of `NodeCore`s in one process.

Rules of this module (the VOPR/FoundationDB habit, DESIGN.md §2 and §9):
- One seed decides everything: the network and the scenario draw from one
  `random.Random(seed)`, each node core from its own rng seeded from (seed, node, boot).
  The same seed gives the same trace hash.
- Time is simulated: a heap of (time, seq, action). Nothing here sleeps or reads a clock.
- The simulator is the ground truth of what really runs where: it carries out
  `StartExecution`/`StopExecution` and decides durations and exit codes. The core's records
  are what the nodes *believe*; invariants compare the two.
- Faults are options (latency, loss, duplication, partitions, crashes with restarts from what
  was persisted, graceful leaves, joins). Safety is checked while faults happen; liveness
  after a quiet period without faults.
- Every failure names its seed and a one-line command that repeats it.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

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
from meshnode.core.compute import ComputeParams
from meshnode.core.membership import MembershipParams
from meshnode.core.messages import Ack, Announce, Message, Ping, PingReq, PushPull, encode
from meshnode.core.node import (
    BidProbeDone,
    CoreParams,
    Event,
    ExecutionEnded,
    GossipReceived,
    Leave,
    MessageReceived,
    NodeCore,
    PeerDiscovered,
    Recovered,
    StopJob,
    SubmitJob,
    Tick,
)
from meshnode.core.records import ExecutionRecord, JobRecord, LocalRun, NodeInfo
from meshnode.core.requester import RequesterParams, newer_record
from meshnode.core.resources import ResourceAmounts, requested_resources
from meshnode.core.selection import unsuitability
from meshnode.core.states import ExecutionState, JobState
from meshnode.spec import Job, job_from_document

__all__ = [
    "JOB_TYPES",
    "Report",
    "SimConfig",
    "Simulation",
    "SimulationFailure",
    "main",
    "make_spec",
    "run",
]

GiB = 1024**3
JOB_TYPES = ("batch", "ops", "daemon", "service")
MEMBERSHIP_MESSAGES = (Ping, Ack, PingReq, PushPull, Announce)
RACKS = ("r0", "r1", "r2", "r3")


class SimulationFailure(AssertionError):  # noqa: N818 (a failed run, as pytest says)
    """An invariant broke or a core raised; the message starts with the seed and a repro."""


@dataclass(frozen=True)
class SimConfig:
    """Every knob of a run; `repro()` turns it back into a command line."""

    nodes: int = 10
    jobs: int = 50
    seed: int = 0
    # The scenario: jobs are submitted during [warmup_s, warmup_s + window_s], faults happen in
    # that window too; then `converge_s` of quiet (no faults, no loss) before the final checks.
    warmup_s: float = 5.0
    window_s: float = 40.0
    converge_s: float = 60.0
    # Network.
    latency_min_ms: float = 1.0
    latency_max_ms: float = 20.0
    loss: float = 0.0
    duplicate: float = 0.0
    # Faults (only with churn): crashes (each restarted later), one partition that heals, one
    # graceful leave, new nodes joining.
    churn: bool = False
    crashes: int = -1  # -1: nodes // 10 (at least 1)
    partitions: int = 1
    leaves: int = 1
    joins: int = 2
    # Job mix (weights) and workload.
    mix: tuple[float, float, float, float] = (0.70, 0.12, 0.04, 0.14)
    batch_min_s: float = 1.0
    batch_max_s: float = 12.0
    fail_fraction: float = 0.1
    stop_fraction: float = 0.2  # of daemon/service jobs, stopped by the user later
    membership_only: bool = False
    check_every_s: float = 0.5

    def repro(self) -> str:
        defaults = SimConfig()
        parts = ["python -m simulations.sim"]
        for item in fields(self):
            value = getattr(self, item.name)
            if value == getattr(defaults, item.name):
                continue
            flag = "--" + item.name.replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else f"--no-{item.name.replace('_', '-')}")
            elif isinstance(value, tuple):
                parts.append(f"{flag} {','.join(f'{v:g}' for v in value)}")
            else:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


@dataclass
class _Disk:
    """What a node persisted: the only thing that survives its crash."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    executions: dict[str, ExecutionRecord] = field(default_factory=dict)
    runs: dict[str, LocalRun] = field(default_factory=dict)
    approvals: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Node:
    info: NodeInfo
    core: NodeCore | None = None
    disk: _Disk = field(default_factory=_Disk)
    up: bool = False
    gone: bool = False  # left for good
    boots: int = 0
    tick_at: float | None = None

    @property
    def id(self) -> str:
        return self.info.id


@dataclass
class _RealRun:
    node_id: str
    job_id: str
    started_at: float
    stopping: bool = False


@dataclass
class _Submission:
    request_id: str
    at: float
    job_type: str
    count: int
    entry: str
    job_id: str = ""
    accepted_at: float | None = None
    refused: str = ""
    # The entry node crashed before answering: the client's request died with it (it would
    # retry); not a lost job, since the mesh never said it accepted it.
    entry_lost: bool = False
    stop_requested: bool = False


@dataclass
class Report:
    config: SimConfig
    wall_s: float = 0.0
    end_s: float = 0.0
    trace_hash: str = ""
    submitted: int = 0
    accepted: int = 0
    entry_lost: int = 0  # unanswered when their entry node crashed
    states: Counter[str] = field(default_factory=Counter)
    batch_latency_p50_s: float = math.nan
    batch_latency_p99_s: float = math.nan
    bytes_per_node_s: float = 0.0
    messages_per_node_s: float = 0.0
    membership_bytes_per_node_s: float = 0.0
    membership_messages_per_node_s: float = 0.0
    # Membership alone during the quiet period (after every fault and the boot's first
    # `warmup + window + 20` s): the steady-state cost, without the boot's dissemination.
    membership_quiet_bytes_per_node_s: float = 0.0
    membership_quiet_by_type: dict[str, int] = field(default_factory=dict)
    replacement_p50_s: float = math.nan
    replacement_max_s: float = math.nan
    replacements_missing: int = 0
    transient_violations: int = 0  # (job, instant) samples with too many running, during faults
    handled_events: int = 0
    dropped_messages: int = 0
    spin_ticks: int = 0
    bytes_by_type: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        return (
            f"seed {self.config.seed}: {self.wall_s:.1f} s wall, {self.end_s:.0f} s simulated, "
            f"{self.handled_events} events; jobs {self.submitted} submitted, {self.accepted} "
            f"accepted ({states}), {self.entry_lost} unanswered (entry crashed); "
            f"batch submit→end p50 {self.batch_latency_p50_s:.1f} s p99 "
            f"{self.batch_latency_p99_s:.1f} s; per node {self.messages_per_node_s:.1f} msg/s "
            f"{self.bytes_per_node_s:.0f} B/s (membership {self.membership_bytes_per_node_s:.0f}"
            f" B/s, quiet {self.membership_quiet_bytes_per_node_s:.0f} B/s); crash→replaced p50 "
            f"{self.replacement_p50_s:.1f} s max "
            f"{self.replacement_max_s:.1f} s; transient violations {self.transient_violations}; "
            f"hash {self.trace_hash[:12]}"
        )


_SPEC_CACHE: dict[tuple[str, int, str], Job] = {}


def make_spec(job_type: str, count: int = 1, rack: str = "", **extra: Any) -> Job:
    """A docker job of `job_type`; `rack` confines it to nodes with that label."""
    key = (job_type, count, rack)
    if not extra and key in _SPEC_CACHE:
        return _SPEC_CACHE[key]
    document: dict[str, Any] = {
        "Type": job_type,
        "Tasks": [
            {
                "Engine": {"Type": "docker", "Params": {"Image": "busybox"}},
                "Resources": {"CPU": "500m", "Memory": "256Mb"},
            }
        ],
    }
    if job_type in ("batch", "service"):
        document["Count"] = count
    if rack:
        document["Constraints"] = [{"Key": "rack", "Operator": "=", "Values": [rack]}]
    document.update(extra)
    job = job_from_document(document)
    if not extra:
        _SPEC_CACHE[key] = job
    return job


def node_info(node_id: str, rack: str) -> NodeInfo:
    return NodeInfo(
        id=node_id,
        labels={"Operating-System": "linux", "rack": rack},
        capacity=ResourceAmounts(cpu_millicores=8000, memory_bytes=16 * GiB, disk_bytes=64 * GiB),
        engines=("wasm", "docker"),
        input_types=("localDirectory", "urlDownload", "inline"),
        publishers=("local", "noop"),
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Simulation:
    """A mesh in one process. Build, then `boot()`, schedule a scenario, `run_until(t)`."""

    def __init__(self, config: SimConfig, params: CoreParams | None = None) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.params = params or CoreParams(
            membership=MembershipParams(),
            requester=RequesterParams(),
            compute=ComputeParams(),
        )
        self.now = 0.0
        self._heap: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        self.nodes: dict[str, _Node] = {}
        self._next_node = 0
        self.side: dict[str, int] = {}  # partition side of every node; one side when healed
        self.loss = config.loss
        self.duplicate = config.duplicate
        self._pair_clock: dict[tuple[str, str], float] = {}
        # Ground truth of executions.
        self.running: dict[str, _RealRun] = {}
        self.started: dict[str, tuple[str, str, float]] = {}  # execution → (node, job, at)
        self.double_starts: list[str] = []
        # Jobs.
        self.submissions: dict[str, _Submission] = {}
        self.by_job: dict[str, _Submission] = {}
        self.unanswered_jobs: set[str] = set()  # submitted through an entry that crashed
        self.job_types: dict[str, str] = {}
        self.terminal_at: dict[str, float] = {}
        self.replies: dict[str, Reply] = {}
        # Faults.
        self.fault_until = -1.0  # violations before this instant count as transient
        self.partitioned = False
        self.crash_log: list[tuple[float, str, list[tuple[str, str]]]] = []
        # Metrics.
        self.bytes_total = 0
        self.messages_total = 0
        self.membership_bytes = 0
        self.membership_messages = 0
        self.bytes_by_type: Counter[str] = Counter()
        self.quiet_since = math.nan  # `mark_quiet`: start of the steady-state measurement
        self.membership_quiet_bytes = 0
        self.membership_quiet_by_type: Counter[str] = Counter()
        self.handled = 0
        self.spin_ticks = 0
        self.transient_violations = 0
        self._reported_violations: set[str] = set()
        self.failures: list[str] = []
        self._trace = hashlib.blake2b(digest_size=16)
        self._failed_fast = False
        # Debugging aid: when set, every persisted history event, per job, with its node.
        self.keep_history = False
        self.history: dict[str, list[tuple[float, str, Any]]] = defaultdict(list)

    # --- failures -----------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        text = (
            f"seed {self.config.seed} at t={self.now:.3f}: {what}\n  repro: {self.config.repro()}"
        )
        self.failures.append(text)

    def raise_failures(self) -> None:
        if self.failures:
            shown = "\n".join(self.failures[:20])
            more = len(self.failures) - 20
            extra = f"\n  ... and {more} more" if more > 0 else ""
            raise SimulationFailure(f"{len(self.failures)} failure(s):\n{shown}{extra}")

    # --- the event loop -----------------------------------------------------------------------

    def at(self, when: float, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, args))

    def call_at(self, when: float, action: Callable[[], None]) -> None:
        self.at(when, "call", action)

    def run_until(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, kind, args = heapq.heappop(heap)
            self.now = when
            getattr(self, "_on_" + kind)(*args)
            if self._failed_fast:
                break
        self.now = max(self.now, until)

    def _on_call(self, action: Callable[[], None]) -> None:
        action()

    def _on_tick(self, node_id: str, boots: int, when: float) -> None:
        node = self.nodes[node_id]
        if not node.up or node.boots != boots or node.tick_at != when:
            return  # superseded by a later deadline, or the node went down
        node.tick_at = None
        self.step(node, Tick())

    def _on_deliver(
        self, to: str, boots: int, sender: str, frame: bytes, gossip: bool, side: int
    ) -> None:
        node = self.nodes.get(to)
        if node is None or not node.up or node.boots != boots:
            return  # the connection died with the process
        if self.side.get(sender, 0) != self.side.get(to, 0) or side != self.side.get(to, 0):
            return  # cut by a partition while in flight
        event: Event = GossipReceived(sender, frame) if gossip else MessageReceived(sender, frame)
        self.step(node, event)

    def _on_ended(
        self, node_id: str, boots: int, execution_id: str, exit_code: int | None, error: str
    ) -> None:
        node = self.nodes[node_id]
        real = self.running.get(execution_id)
        if not node.up or node.boots != boots or real is None or real.node_id != node_id:
            return
        del self.running[execution_id]
        self.step(node, ExecutionEnded(execution_id, exit_code, error))

    def _on_check(self) -> None:
        self.check_running(final=False)
        self.at(self.now + self.config.check_every_s, "check")

    # --- one node step ------------------------------------------------------------------------

    def step(self, node: _Node, event: Event) -> list[Command]:
        core = node.core
        assert core is not None
        self.handled += 1
        self._trace.update(f"{self.now:.6f}|{node.id}|{type(event).__name__}".encode())
        try:
            commands = core.handle(event, self.now)
        except Exception as error:
            self.fail(f"node {node.id} raised {error!r} handling {type(event).__name__}")
            self._failed_fast = True
            raise SimulationFailure(self.failures[-1]) from error
        self._carry_out(node, commands)
        self._schedule_tick(node)
        return commands

    def _schedule_tick(self, node: _Node) -> None:
        assert node.core is not None
        deadline = node.core.next_deadline()
        if deadline is None:
            return
        if deadline <= self.now:
            self.spin_ticks += 1
            deadline = self.now + 0.001
        if node.tick_at is not None and node.tick_at <= deadline:
            return  # an earlier tick is already due; it will reschedule
        node.tick_at = deadline
        self.at(deadline, "tick", node.id, node.boots, deadline)

    def _carry_out(self, node: _Node, commands: list[Command]) -> None:
        trace = self._trace
        for command in commands:
            match command:
                case Persist():
                    self._persist(node, command)
                case Send():
                    frame = encode(command.message)
                    trace.update(frame)
                    self._account(command.message, frame, 1)
                    self._transmit(node.id, command.to, frame, gossip=False)
                case Publish():
                    frame = encode(command.message)
                    trace.update(frame)
                    receivers = [
                        n
                        for n in self.nodes.values()
                        if n.up and n.id != node.id and self._reachable(node.id, n.id)
                    ]
                    self._account(command.message, frame, len(receivers))
                    for receiver in receivers:
                        self._transmit(node.id, receiver.id, frame, gossip=True)
                case JobAccepted():
                    self._accepted(command)
                case Reply():
                    self.replies[command.request_id] = command
                    submission = self.submissions.get(command.request_id)
                    if submission is not None and not command.ok and not submission.job_id:
                        submission.refused = command.message
                case StartExecution():
                    self._start(node, command)
                case StopExecution():
                    self._stop(node, command)
                case RunBidProbe():
                    self.at(self.now + 0.01, "probe", node.id, node.boots, command.execution_id)

    def _on_probe(self, node_id: str, boots: int, execution_id: str) -> None:
        node = self.nodes[node_id]
        if node.up and node.boots == boots:
            self.step(node, BidProbeDone(execution_id, True))

    def _persist(self, node: _Node, persist: Persist) -> None:
        disk = node.disk
        for job in persist.jobs:
            disk.jobs[job.id] = job
            if job.state.terminal and job.id not in self.terminal_at:
                self.terminal_at[job.id] = self.now
        for execution in persist.executions:
            disk.executions[execution.id] = execution
        for run in persist.runs:
            disk.runs[run.id] = run
        for execution_id in persist.deleted_runs:
            disk.runs.pop(execution_id, None)
        for approval in persist.approvals:
            disk.approvals[approval.node_id] = approval
        if self.keep_history:
            for event in persist.history:
                self.history[event.job_id].append((self.now, node.id, event))

    def _account(self, message: Message, frame: bytes, copies: int) -> None:
        size = len(frame) * copies
        self.bytes_total += size
        self.messages_total += copies
        name = type(message).__name__
        self.bytes_by_type[name] += size
        if isinstance(message, MEMBERSHIP_MESSAGES):
            self.membership_bytes += size
            self.membership_messages += copies
            if self.now >= self.quiet_since:
                self.membership_quiet_bytes += size
                self.membership_quiet_by_type[name] += size

    # --- the network --------------------------------------------------------------------------

    def _reachable(self, a: str, b: str) -> bool:
        return self.side.get(a, 0) == self.side.get(b, 0)

    def _latency(self) -> float:
        low, high = self.config.latency_min_ms / 1000, self.config.latency_max_ms / 1000
        median = math.sqrt(low * high)
        sample = self.rng.lognormvariate(math.log(median), 0.5)
        return min(high, max(low, sample))

    def _transmit(self, sender: str, to: str, frame: bytes, *, gossip: bool) -> None:
        target = self.nodes.get(to)
        if target is None or not target.up or not self._reachable(sender, to):
            return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.loss and self.rng.random() < self.loss:
                continue
            when = self.now + self._latency()
            # One long-lived stream per peer pair: frames arrive in the order they were sent.
            pair = (sender, to)
            when = max(when, self._pair_clock.get(pair, 0.0) + 1e-6)
            self._pair_clock[pair] = when
            self.at(when, "deliver", to, target.boots, sender, frame, gossip, self.side.get(to, 0))

    # --- executions (the ground truth) --------------------------------------------------------

    def _start(self, node: _Node, command: StartExecution) -> None:
        execution = command.execution
        if execution.id in self.running or execution.id in self.started:
            self.double_starts.append(execution.id)
            self.fail(f"execution {execution.id} started twice (now on {node.id})")
            return
        job_type = command.job.spec.type
        self.job_types.setdefault(command.job.id, job_type)
        self.running[execution.id] = _RealRun(node.id, execution.job_id, self.now)
        self.started[execution.id] = (node.id, execution.job_id, self.now)
        if job_type in ("batch", "ops"):
            duration = self.rng.uniform(self.config.batch_min_s, self.config.batch_max_s)
            failed = self.rng.random() < self.config.fail_fraction
            self.at(
                self.now + duration,
                "ended",
                node.id,
                node.boots,
                execution.id,
                1 if failed else 0,
                "",
            )

    def _stop(self, node: _Node, command: StopExecution) -> None:
        real = self.running.get(command.execution_id)
        if real is None or real.node_id != node.id or real.stopping:
            return
        real.stopping = True
        self.at(self.now + 0.1, "ended", node.id, node.boots, command.execution_id, None, "stopped")

    # --- nodes --------------------------------------------------------------------------------

    def new_node_id(self) -> str:
        node_id = f"n{self._next_node:03d}"
        self._next_node += 1
        return node_id

    def add_node(self, *, seeds: Iterable[str] = ()) -> str:
        node_id = self.new_node_id()
        rack = RACKS[(self._next_node - 1) % len(RACKS)]
        node = _Node(info=node_info(node_id, rack))
        self.nodes[node_id] = node
        self.side[node_id] = 0
        self._boot(node, seeds=list(seeds))
        return node_id

    def _boot(self, node: _Node, *, seeds: list[str], lost: tuple[str, ...] = ()) -> None:
        node.boots += 1
        node.up = True
        node.tick_at = None
        disk = node.disk
        # As the runtime does: a node started with peers to find waits for its view of the
        # mesh before it takes over jobs.
        params = replace(self.params, settle_s=3.0) if seeds else self.params
        node.core = NodeCore(
            node.info,
            rng=random.Random(f"{self.config.seed}/{node.id}/{node.boots}"),
            params=params,
            jobs=list(disk.jobs.values()),
            executions=list(disk.executions.values()),
            runs=list(disk.runs.values()),
            approvals=list(disk.approvals.values()),
            addrs=(f"/sim/{node.id}",),
            now=self.now,
        )
        self.step(node, Recovered(lost=lost))
        for seed in seeds:
            if seed != node.id:
                self.step(node, PeerDiscovered(seed, (f"/sim/{seed}",)))

    def live_ids(self) -> list[str]:
        return sorted(n.id for n in self.nodes.values() if n.up)

    def crash(self, node_id: str) -> None:
        """The process dies: in-flight messages to it and its executions are gone."""
        node = self.nodes[node_id]
        if not node.up:
            return
        lost = []
        for execution_id, real in list(self.running.items()):
            if real.node_id == node_id:
                del self.running[execution_id]
                lost.append((execution_id, real.job_id))
        self.crash_log.append((self.now, node_id, lost))
        for submission in self.submissions.values():
            if submission.entry == node_id and not submission.job_id and not submission.refused:
                submission.entry_lost = True
                # The mesh may have accepted it all the same: it may run, but nobody checks it.
                assert node.core is not None
                job_id = node.core.requester.pending_submission(submission.request_id)
                if job_id:
                    self.unanswered_jobs.add(job_id)
        node.up = False
        node.core = None
        node.boots += 1  # anything addressed to the old process is dropped
        node.tick_at = None
        self._mark_fault(30.0)

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.up or node.gone:
            return
        lost = tuple(sorted(r.id for r in node.disk.runs.values() if r.phase == "running"))
        peers = [n for n in self.live_ids() if n != node_id]
        seeds = self.rng.sample(peers, min(3, len(peers)))
        self._boot(node, seeds=seeds, lost=lost)
        self._mark_fault(30.0)

    def leave(self, node_id: str) -> None:
        """A graceful stop: `Leave`, a moment to spread the word, then the process ends."""
        node = self.nodes[node_id]
        if not node.up:
            return
        # The core's Leave does not stop the node's runs: the process ends them as it exits.
        # Model that as happening at once, so the mesh replacing them is no Count violation.
        for execution_id, real in list(self.running.items()):
            if real.node_id == node_id:
                del self.running[execution_id]
        self.step(node, Leave())
        node.gone = True
        self.call_at(self.now + 0.5, lambda: self.crash(node_id))

    def join(self) -> str:
        live = self.live_ids()
        return self.add_node(seeds=[self.rng.choice(live)] if live else [])

    def partition(self, group: Iterable[str]) -> None:
        self.partitioned = True
        for node_id in group:
            self.side[node_id] = 1
        self._mark_fault(math.inf)

    def heal(self) -> None:
        self.partitioned = False
        for node_id in self.side:
            self.side[node_id] = 0
        self.fault_until = self.now + 30.0

    def _mark_fault(self, grace_s: float) -> None:
        self.fault_until = max(self.fault_until, self.now + grace_s)

    # --- the client ---------------------------------------------------------------------------

    def submit(self, spec: Job, *, entry: str | None = None) -> str:
        live = self.live_ids()
        entry = entry or self.rng.choice(live)
        request_id = f"r{len(self.submissions):05d}"
        count = spec.count or 1 if spec.type in ("batch", "service") else 0
        self.submissions[request_id] = _Submission(request_id, self.now, spec.type, count, entry)
        self.step(self.nodes[entry], SubmitJob(request_id, spec))
        return request_id

    def _accepted(self, command: JobAccepted) -> None:
        submission = self.submissions.get(command.request_id)
        if submission is None or submission.job_id:
            return
        submission.job_id = command.job_id
        submission.accepted_at = self.now
        self.by_job[command.job_id] = submission
        self.job_types[command.job_id] = submission.job_type

    def stop_job(self, job_id: str, *, entry: str | None = None) -> None:
        submission = self.by_job[job_id]
        submission.stop_requested = True
        entry = entry or self.rng.choice(self.live_ids())
        self.step(self.nodes[entry], StopJob(f"stop-{job_id}", job_id, "enough"))

    # --- views --------------------------------------------------------------------------------

    def core(self, node_id: str) -> NodeCore:
        core = self.nodes[node_id].core
        assert core is not None, f"node {node_id} is down"
        return core

    def primary_of(self, job_id: str) -> str | None:
        """The live node that acts as the job's primary (None if none does)."""
        primaries = [
            n.id
            for n in self.nodes.values()
            if n.up and n.core is not None and n.core.requester.is_primary(job_id)
        ]
        return primaries[0] if len(primaries) == 1 else None

    def running_of(self, job_id: str) -> list[str]:
        """Nodes that really run an execution of the job now, one entry per execution."""
        return sorted(r.node_id for r in self.running.values() if r.job_id == job_id)

    def newest_job(self, job_id: str) -> JobRecord | None:
        best: JobRecord | None = None
        for node in self.nodes.values():
            if not node.up:
                continue
            record = node.disk.jobs.get(job_id)
            if record is not None and (best is None or newer_record(record, best)):
                best = record
        return best

    def newest_executions(self, job_id: str) -> dict[str, ExecutionRecord]:
        merged: dict[str, ExecutionRecord] = {}
        for node in self.nodes.values():
            if not node.up:
                continue
            for record in node.disk.executions.values():
                if record.job_id != job_id:
                    continue
                current = merged.get(record.id)
                if current is None or newer_record(record, current):
                    merged[record.id] = record
        return merged

    # --- invariants ---------------------------------------------------------------------------

    def check_running(self, *, final: bool) -> None:
        """No batch or service job runs more than Count executions on one side of a partition."""
        per_job: dict[str, list[str]] = defaultdict(list)
        for real in self.running.values():
            per_job[real.job_id].append(real.node_id)
        for job_id, node_ids in per_job.items():
            submission = self.by_job.get(job_id)
            if submission is None or submission.job_type not in ("batch", "service"):
                continue
            sides = Counter(self.side.get(n, 0) for n in node_ids)
            worst = max(sides.values())
            if worst <= submission.count:
                continue
            what = (
                f"{submission.job_type} job {job_id} runs {worst} executions on one side, "
                f"Count is {submission.count} (nodes {sorted(node_ids)})"
            )
            if final:
                self.fail(what + " after convergence")
            elif self.now < self.fault_until or self.loss > 0 or self.duplicate > 0:
                self.transient_violations += 1
            elif job_id not in self._reported_violations:  # once per job: it may last
                self._reported_violations.add(job_id)
                self.fail(what + " with no fault in the last 30 s")

    def check_final(self) -> None:
        """After a quiet period: every accepted job is where its type says it should be."""
        self.check_running(final=True)
        live = [n for n in self.nodes.values() if n.up and n.core is not None]
        for run_id in self.double_starts:
            self.fail(f"execution {run_id} was started twice")
        for job_id, submission in sorted(self.by_job.items()):
            job = self.newest_job(job_id)
            if job is None:
                self.fail(f"accepted {submission.job_type} job {job_id} is known to no live node")
                continue
            running = self.running_of(job_id)
            state = job.state
            primaries = [
                n.id for n in live if n.core is not None and n.core.requester.is_primary(job_id)
            ]
            stop_reply = self.replies.get(f"stop-{job_id}")
            if submission.stop_requested and (state.terminal or (stop_reply and stop_reply.ok)):
                if not state.terminal:
                    self.fail(f"job {job_id} was stopped by the user but is {state.value}")
                if running:
                    self.fail(f"stopped job {job_id} still runs on {running}")
                continue
            if submission.job_type in ("batch", "ops"):
                if not state.terminal:
                    self.fail(
                        f"{submission.job_type} job {job_id} is still {state.value} after "
                        f"convergence ({job.message}); primaries {primaries}"
                    )
                    continue
                if running:
                    self.fail(f"ended {submission.job_type} job {job_id} still runs on {running}")
                if submission.job_type == "batch" and state is JobState.COMPLETED:
                    done = [
                        e
                        for e in self.newest_executions(job_id).values()
                        if e.state is ExecutionState.COMPLETED
                    ]
                    if len(done) < submission.count:
                        self.fail(
                            f"batch job {job_id} completed with {len(done)} completed executions,"
                            f" Count is {submission.count}"
                        )
                continue
            # daemon and service: they run until stopped
            if state is not JobState.RUNNING:
                self.fail(f"{submission.job_type} job {job_id} is {state.value}: {job.message}")
                continue
            if len(primaries) != 1:
                self.fail(f"{submission.job_type} job {job_id} has primaries {primaries}")
            if submission.job_type == "service":
                if len(running) != submission.count:
                    self.fail(
                        f"service job {job_id} runs {len(running)} executions, Count is "
                        f"{submission.count} (on {running})"
                    )
                elif len(set(running)) != len(running):
                    self.fail(f"service job {job_id} runs twice on one node: {running}")
            else:
                request = requested_resources(job.spec)
                matching = sorted(
                    n.id for n in live if not unsuitability(job.spec, n.info, request)
                )
                if running != matching:
                    self.fail(
                        f"daemon job {job_id} runs on {running}, the live matching nodes are "
                        f"{matching}"
                    )
        # Nothing runs for a job nobody knows about.
        for execution_id, real in sorted(self.running.items()):
            if real.job_id not in self.by_job and real.job_id not in self.unanswered_jobs:
                self.fail(f"execution {execution_id} of unknown job {real.job_id} still runs")

    # --- metrics ------------------------------------------------------------------------------

    def replacement_times(self) -> tuple[list[float], int]:
        """For each batch/service execution lost in a crash: how long until another execution
        of its job started on another node (missing: never, or the job no longer needed it)."""
        starts_by_job: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for node_id, job_id, started_at in self.started.values():
            starts_by_job[job_id].append((started_at, node_id))
        times: list[float] = []
        missing = 0
        used: set[tuple[str, float, str]] = set()
        for crashed_at, node_id, lost in self.crash_log:
            for _, job_id in lost:
                if self.job_types.get(job_id) not in ("batch", "service"):
                    continue
                later = sorted(
                    (at, where)
                    for at, where in starts_by_job[job_id]
                    if at >= crashed_at and where != node_id and (job_id, at, where) not in used
                )
                if later:
                    used.add((job_id, *later[0]))
                    times.append(later[0][0] - crashed_at)
                else:
                    missing += 1
        return times, missing

    def report(self, wall_s: float) -> Report:
        report = Report(config=self.config, wall_s=wall_s, end_s=self.now)
        report.trace_hash = self._trace.hexdigest()
        report.submitted = len(self.submissions)
        report.accepted = len(self.by_job)
        report.entry_lost = sum(
            1 for s in self.submissions.values() if s.entry_lost and not s.job_id
        )
        for job_id in self.by_job:
            job = self.newest_job(job_id)
            report.states[job.state.value if job else "lost"] += 1
        latencies = [
            self.terminal_at[job_id] - s.at
            for job_id, s in self.by_job.items()
            if s.job_type == "batch" and job_id in self.terminal_at
        ]
        report.batch_latency_p50_s = _quantile(latencies, 0.5)
        report.batch_latency_p99_s = _quantile(latencies, 0.99)
        node_seconds = max(1e-9, len(self.nodes) * self.now)
        report.bytes_per_node_s = self.bytes_total / node_seconds
        report.messages_per_node_s = self.messages_total / node_seconds
        report.membership_bytes_per_node_s = self.membership_bytes / node_seconds
        report.membership_messages_per_node_s = self.membership_messages / node_seconds
        if not math.isnan(self.quiet_since):
            quiet_node_seconds = max(1e-9, len(self.live_ids()) * (self.now - self.quiet_since))
            report.membership_quiet_bytes_per_node_s = (
                self.membership_quiet_bytes / quiet_node_seconds
            )
            report.membership_quiet_by_type = dict(self.membership_quiet_by_type.most_common())
        times, missing = self.replacement_times()
        report.replacement_p50_s = _quantile(times, 0.5)
        report.replacement_max_s = max(times) if times else math.nan
        report.replacements_missing = missing
        report.transient_violations = self.transient_violations
        report.handled_events = self.handled
        report.spin_ticks = self.spin_ticks
        report.dropped_messages = sum(
            n.core.stats["messages_dropped"] for n in self.nodes.values() if n.core is not None
        )
        report.bytes_by_type = dict(self.bytes_by_type.most_common())
        report.failures = list(self.failures)
        return report

    # --- scenarios ----------------------------------------------------------------------------

    def boot(self, count: int) -> list[str]:
        """`count` nodes, the first is everyone's bootstrap peer; boots spread over 1 s."""
        first = self.add_node()
        ids = [first]
        for _ in range(count - 1):
            ids.append(self.add_node(seeds=[first]))
        self.at(self.now + self.config.check_every_s, "check")
        return ids

    def schedule_workload(self) -> None:
        config = self.config
        start, end = config.warmup_s, config.warmup_s + config.window_s
        for _ in range(config.jobs):
            when = self.rng.uniform(start, end)
            job_type = self.rng.choices(JOB_TYPES, weights=config.mix)[0]
            count = self.rng.randint(1, 3) if job_type in ("batch", "service") else 0
            rack = self.rng.choice(RACKS) if job_type in ("ops", "daemon") else ""
            spec = make_spec(job_type, count, rack)
            self.call_at(when, lambda spec=spec: self._submit_if_possible(spec))
            if job_type in ("daemon", "service") and self.rng.random() < config.stop_fraction:
                self.call_at(when + self.rng.uniform(5, 30), lambda w=when: self._stop_one(w))

    def _submit_if_possible(self, spec: Job) -> None:
        if self.live_ids():
            self.submit(spec)

    def _stop_one(self, submitted_at: float) -> None:
        """Stop the long-running job submitted at that instant, if it was accepted."""
        for submission in self.submissions.values():
            if submission.at == submitted_at and submission.job_id:
                self.stop_job(submission.job_id)
                return

    def schedule_faults(self) -> None:
        config = self.config
        start, end = config.warmup_s, config.warmup_s + config.window_s
        crashes = config.crashes if config.crashes >= 0 else max(1, config.nodes // 10)
        originals = sorted(self.nodes)
        victims = self.rng.sample(originals, min(len(originals) - 1, crashes + config.leaves))
        for node_id in victims[:crashes]:
            down = self.rng.uniform(start, end)
            self.call_at(down, lambda n=node_id: self.crash(n))
            self.call_at(down + self.rng.uniform(5, 20), lambda n=node_id: self.restart(n))
        for node_id in victims[crashes:]:
            self.call_at(self.rng.uniform(start, end), lambda n=node_id: self.leave(n))
        for _ in range(config.partitions):
            cut = self.rng.uniform(start, end)
            group = self.rng.sample(originals, max(1, len(originals) * 3 // 10))
            self.call_at(cut, lambda g=group: self.partition(g))
            self.call_at(cut + self.rng.uniform(5, 15), self.heal)
        for _ in range(config.joins):
            self.call_at(self.rng.uniform(start, end), self.join)

    def quiesce(self) -> None:
        """End every fault: heal, restart whatever crashed, no more loss."""
        self.heal()
        self.loss = 0.0
        self.duplicate = 0.0
        for node in list(self.nodes.values()):
            if not node.up and not node.gone:
                self.restart(node.id)


def run(config: SimConfig, *, raise_on_failure: bool = True) -> Report:
    """One whole scenario for one seed: boot, workload (and faults), quiet, checks."""
    started = time.perf_counter()
    sim = Simulation(config)
    try:
        sim.boot(config.nodes)
        if not config.membership_only:
            sim.schedule_workload()
        if config.churn:
            sim.schedule_faults()
        window_end = config.warmup_s + config.window_s
        sim.run_until(window_end + 20.0)  # faults end within 20 s of the window's end
        sim.quiesce()
        sim.quiet_since = sim.now
        sim.run_until(sim.now + config.converge_s)
        if not config.membership_only:
            sim.check_final()
    except SimulationFailure:
        if raise_on_failure:
            raise
    report = sim.report(time.perf_counter() - started)
    if raise_on_failure:
        sim.raise_failures()
    return report


def _parse_args(argv: list[str] | None) -> tuple[SimConfig, int]:
    parser = argparse.ArgumentParser(prog="python -m simulations.sim", description=__doc__)
    defaults = SimConfig()
    for item in fields(SimConfig):
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction)
        elif isinstance(default, tuple):
            parser.add_argument(
                flag, dest=item.name, type=lambda s: tuple(map(float, s.split(",")))
            )
        else:
            parser.add_argument(flag, dest=item.name, type=type(default))
    parser.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    args = parser.parse_args(argv)
    values = {
        item.name: getattr(args, item.name)
        for item in fields(SimConfig)
        if getattr(args, item.name) is not None
    }
    return SimConfig(**values), args.seeds


def main(argv: list[str] | None = None) -> int:
    base, seeds = _parse_args(argv)
    reports = []
    failed = 0
    started = time.perf_counter()
    for seed in range(base.seed, base.seed + seeds):
        config = SimConfig(
            **{**{f.name: getattr(base, f.name) for f in fields(base)}, "seed": seed}
        )
        report = run(config, raise_on_failure=False)
        reports.append(report)
        print(report.summary(), flush=True)
        for failure in report.failures:
            failed += 1
            print("FAIL " + failure, flush=True)
    wall = time.perf_counter() - started
    print(f"\n{len(reports)} seeds in {wall:.1f} s; {failed} failures")
    if reports:

        def mean(values: list[float]) -> float:
            finite = [v for v in values if not math.isnan(v)]
            return statistics.fmean(finite) if finite else math.nan

        print(
            f"mean per node: {mean([r.messages_per_node_s for r in reports]):.1f} msg/s, "
            f"{mean([r.bytes_per_node_s for r in reports]):.0f} B/s; membership "
            f"{mean([r.membership_messages_per_node_s for r in reports]):.1f} msg/s, "
            f"{mean([r.membership_bytes_per_node_s for r in reports]):.0f} B/s (quiet "
            f"{mean([r.membership_quiet_bytes_per_node_s for r in reports]):.0f} B/s); "
            f"batch p50 {mean([r.batch_latency_p50_s for r in reports]):.1f} s, p99 "
            f"{mean([r.batch_latency_p99_s for r in reports]):.1f} s; crash→replaced p50 "
            f"{mean([r.replacement_p50_s for r in reports]):.1f} s"
        )
        top = Counter[str]()
        for r in reports:
            top.update(r.bytes_by_type)
        total = sum(top.values()) or 1
        print(
            "bytes by message: "
            + ", ".join(f"{name} {100 * size / total:.0f}%" for name, size in top.most_common(8))
        )
        quiet = Counter[str]()
        for r in reports:
            quiet.update(r.membership_quiet_by_type)
        quiet_total = sum(quiet.values()) or 1
        print(
            "membership bytes in the quiet period: "
            + ", ".join(
                f"{name} {100 * size / quiet_total:.0f}%" for name, size in quiet.most_common()
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
