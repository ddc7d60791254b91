"""One scheduler per job type: (job, its executions, the nodes, now) → a plan.

Rules of this module:
- Pure functions of their arguments; the same inputs give the same plan. They never change
  records: the node core applies the plan.
- A plan says which executions to create (on which nodes), which to stop, how the job's state
  moves, and when to look again (`wake_at`) if nothing else happens before.
- Whether a node is busy right now is not considered here: a placed execution waits in the
  node's run queue for capacity. Here only "could this node ever run it" counts
  (`selection.unsuitability`).
- Semantics per type are DESIGN.md §1's table: batch runs `Count` executions on distinct
  nodes and retries failures with backoff; ops runs once on every node matching at submit
  time; daemon keeps one execution on every matching node; service keeps `Count` running.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshnode.core.policy import Policy
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.core.selection import unsuitability
from meshnode.core.states import ExecutionState, JobEvent, JobState

__all__ = ["Placement", "Plan", "plan"]


@dataclass(frozen=True, slots=True)
class Placement:
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    create: tuple[Placement, ...] = ()
    stop: tuple[tuple[str, str], ...] = ()  # (execution id, reason)
    event: JobEvent | None = None
    message: str | None = None  # the job's new message; None keeps it
    # Since when the job has been short of nodes (None: it is not).
    queued_at: float | None = None
    wake_at: float | None = None


@dataclass(slots=True)
class _Context:
    job: JobRecord
    executions: Sequence[ExecutionRecord]
    nodes: Sequence[NodeInfo]
    now: float
    policy: Policy
    request: ResourceAmounts
    excluded: Mapping[str, str] = field(default_factory=dict)
    load: Mapping[str, float] = field(default_factory=dict)
    cooldown_s: float = 0.0
    reasons: dict[str, list[str]] = field(default_factory=dict)
    # Nodes that declined a bid for this job recently: passed over until `cooldown_until`.
    declined: dict[str, str] = field(default_factory=dict)
    cooldown_until: float | None = None
    unsuitable: Callable[[NodeInfo], list[str]] | None = None

    def __post_init__(self) -> None:
        unsuitable = self.unsuitable or (
            lambda node: unsuitability(self.job.spec, node, self.request)
        )
        self.reasons = {node.id: list(unsuitable(node)) for node in self.nodes}
        for node_id, why in self.excluded.items():
            self.reasons.setdefault(node_id, []).insert(0, why)
        for execution in self.executions:
            if execution.state is not ExecutionState.ASK_FOR_BID_REJECTED:
                continue
            until = (execution.ended_at or execution.modified_at) + self.cooldown_s
            if until > self.now:
                self.declined[execution.node_id] = execution.message
                self.cooldown_until = min(until, self.cooldown_until or until)

    @property
    def node_ids(self) -> list[str]:
        ids = [node.id for node in self.nodes]
        return ids + sorted(set(self.excluded) - set(ids))

    @property
    def suitable(self) -> list[str]:
        return [node.id for node in self.nodes if not self.reasons[node.id]]

    @property
    def active(self) -> list[ExecutionRecord]:
        """Not ended, wherever they are (a lost one too): what a job's end must stop."""
        return [e for e in self.executions if e.active]

    @property
    def counted(self) -> list[ExecutionRecord]:
        """Active on a reachable node: what counts toward Count."""
        return [e for e in self.executions if e.counted]

    def explain(self, skip: set[str] | None = None, busy: dict[str, str] | None = None) -> str:
        """Per node, why it was not used."""
        parts = []
        for node_id in self.node_ids:
            if skip and node_id in skip:
                continue
            why = self.reasons[node_id] or ([busy[node_id]] if busy and node_id in busy else [])
            if not why and node_id in self.declined:
                why = [self.declined[node_id]]
            if why:
                parts.append(f"node {node_id}: {'; '.join(why)}")
        if not self.node_ids:
            parts.append("no nodes are known")
        return "; ".join(parts)


def plan(
    job: JobRecord,
    executions: Sequence[ExecutionRecord],
    nodes: Sequence[NodeInfo],
    now: float,
    policy: Policy,
    request: ResourceAmounts,
    *,
    excluded: Mapping[str, str] | None = None,
    load: Mapping[str, float] | None = None,
    cooldown_s: float = 0.0,
    unsuitable: Callable[[NodeInfo], list[str]] | None = None,
) -> Plan:
    """`excluded`: nodes that get no work, with why (e.g. not approved); `load`: how busy
    each node is (0 idle … 1 full), for ranking; `cooldown_s`: how long a node that declined
    a bid for this job is passed over; `unsuitable`: `selection.unsuitability` of this job
    for a node, when the caller caches it (it depends only on the job and the node)."""
    if job.state.terminal:
        return Plan()
    context = _Context(
        job,
        executions,
        nodes,
        now,
        policy,
        request,
        excluded or {},
        load or {},
        cooldown_s,
        unsuitable=unsuitable,
    )
    total = _total_timeout(context)
    if total is not None:
        return total
    scheduler = _SCHEDULERS[job.spec.type]
    result = scheduler(context)
    return _with_deadline(result, _total_deadline(job))


def _total_deadline(job: JobRecord) -> float | None:
    timeouts = job.spec.task.timeouts
    if timeouts is None or timeouts.total_timeout <= 0:
        return None
    return job.created_at + timeouts.total_timeout


def _total_timeout(context: _Context) -> Plan | None:
    deadline = _total_deadline(context.job)
    if deadline is None or context.now < deadline:
        return None
    seconds = context.job.spec.task.timeouts.total_timeout if context.job.spec.task.timeouts else 0
    reason = f"the job exceeded its TotalTimeout of {seconds} s"
    return Plan(
        stop=tuple((e.id, reason) for e in context.active),
        event=JobEvent.FAIL,
        message=reason,
    )


def _with_deadline(result: Plan, deadline: float | None) -> Plan:
    if deadline is None or result.event in (JobEvent.COMPLETE, JobEvent.FAIL, JobEvent.STOP):
        return result
    wake_at = deadline if result.wake_at is None else min(result.wake_at, deadline)
    return Plan(
        create=result.create,
        stop=result.stop,
        event=result.event,
        message=result.message,
        queued_at=result.queued_at,
        wake_at=wake_at,
    )


def _run_event(context: _Context, running: bool) -> JobEvent | None:
    if running and context.job.state is not JobState.RUNNING:
        return JobEvent.RUN
    return None


def _failure_text(execution: ExecutionRecord) -> str:
    if execution.error:
        return execution.error
    if execution.exit_code is not None:
        return f"exited with code {execution.exit_code}"
    return execution.message or "failed"


# --- batch -------------------------------------------------------------------------------------


def _rank_key(context: _Context, node: str, failed_on: set[str]) -> tuple[bool, int, bytes]:
    """Nodes where this job failed come last; then less loaded first (in tenths, so small
    differences do not matter); then a tie-break that differs per job, so equal nodes share
    the work instead of the first name taking everything."""
    load_tenths = round(10 * context.load.get(node, 0.0))
    tie = hashlib.blake2b(f"{context.job.id}/{node}".encode(), digest_size=8).digest()
    return (node in failed_on, load_tenths, tie)


def _batch(context: _Context) -> Plan:
    job, executions = context.job, context.executions
    count = job.spec.count or 0
    completed = [e for e in executions if e.state is ExecutionState.COMPLETED]
    failed = [e for e in executions if e.state is ExecutionState.FAILED]
    active = context.active
    if len(completed) >= count:
        return Plan(
            stop=tuple((e.id, "the job has completed") for e in active),
            event=JobEvent.COMPLETE,
            message=f"{len(completed)} of {count} executions completed",
        )
    if len(failed) > context.policy.max_retries:
        last = max(failed, key=lambda e: (e.ended_at or 0.0, e.id))
        retries = context.policy.max_retries
        return Plan(
            stop=tuple((e.id, "the job has failed") for e in active),
            event=JobEvent.FAIL,
            message=(
                f"execution {last.id} on node {last.node_id} failed: {_failure_text(last)} "
                f"(after {retries} {'retry' if retries == 1 else 'retries'})"
            ),
        )
    counted = context.counted
    needed = count - len(completed) - len(counted)
    if needed < 0:  # e.g. a node came back with a run that was replaced: stop the newest
        extras = sorted(counted, key=lambda e: (e.started_at is not None, e.created_at, e.id))
        extras = extras[:-needed]
        return Plan(
            stop=tuple((e.id, "more executions than Count") for e in extras),
            event=_run_event(context, running=True),
            queued_at=None,
        )
    if needed == 0:
        return Plan(event=_run_event(context, running=True), queued_at=None)
    if failed:
        last_end = max(e.ended_at or e.modified_at for e in failed)
        retry_at = last_end + context.policy.retry_delay_s(len(failed))
        if context.now < retry_at:
            return Plan(
                event=_run_event(context, running=bool(active)),
                message=f"retrying in {retry_at - context.now:.1f} s after {len(failed)} failed",
                queued_at=job.queued_at,
                wake_at=retry_at,
            )
    return _place_on_distinct_nodes(context, needed, count, queueable=True)


def _place_on_distinct_nodes(
    context: _Context, needed: int, count: int, *, queueable: bool
) -> Plan:
    """Place up to `needed` executions on suitable nodes that hold none of this job's live or
    completed executions; nodes where it failed before come last."""
    executions = context.executions
    # A node with a lost execution of this job is not given another: if it is reachable
    # again it is being asked about the first (`Adopt`), which may still complete.
    taken = {e.node_id for e in executions if e.active or e.state is ExecutionState.COMPLETED}
    failed_on = {e.node_id for e in executions if e.state is ExecutionState.FAILED}
    candidates = sorted(
        (node for node in context.suitable if node not in taken and node not in context.declined),
        key=lambda node: _rank_key(context, node, failed_on),
    )
    chosen = candidates[:needed]
    create = tuple(Placement(node, "selected") for node in chosen)
    shortfall = needed - len(chosen)
    running = bool(context.counted or create)
    if shortfall <= 0:
        return Plan(create=create, event=_run_event(context, running), queued_at=None)

    busy = {node: "already has an execution of this job" for node in taken}
    usable = len(context.suitable)
    detail = context.explain(busy=busy)
    message = f"needs {count} node{'' if count == 1 else 's'}, {usable} can run it" + (
        f": {detail}" if detail else ""
    )
    queued_at = context.job.queued_at if context.job.queued_at is not None else context.now
    timeouts = context.job.spec.task.timeouts
    queue_timeout = float(timeouts.queue_timeout if timeouts else 0)
    queue_timeout = queue_timeout or context.policy.default_queue_timeout_s
    if not queueable:
        return Plan(
            create=create,
            event=_run_event(context, running),
            message=message,
            queued_at=None,
            wake_at=context.cooldown_until,
        )
    lost = [e for e in context.active if e.lost_at is not None]
    if lost:
        # Its node is unreachable, not known to have failed: an edge node cut off keeps
        # running and reports when it is back. Wait for it (or for another node).
        back_by = min(e.lost_at or context.now for e in lost) + context.policy.lost_node_grace_s
        if context.now < back_by:
            nodes = ", ".join(sorted({e.node_id for e in lost}))
            return Plan(
                create=create,
                event=_run_event(context, running) if running else None,
                message=message + f"; waiting up to {back_by - context.now:.0f} s for "
                f"unreachable node {nodes} to come back",
                queued_at=queued_at,
                wake_at=back_by,
            )
    if queue_timeout <= 0 or context.now >= queued_at + queue_timeout:
        waited = (
            " (QueueTimeout is 0: no waiting)"
            if queue_timeout <= 0
            else (f" (waited {queue_timeout:g} s, the QueueTimeout)")
        )
        return Plan(
            stop=tuple((e.id, "the job has failed") for e in context.active),
            event=JobEvent.FAIL,
            message=message + waited,
        )
    if running:
        event = _run_event(context, running)
    else:
        event = JobEvent.QUEUE if context.job.state is not JobState.QUEUED else None
    wake_at = queued_at + queue_timeout
    if context.cooldown_until is not None:
        wake_at = min(wake_at, context.cooldown_until)
    return Plan(
        create=create,
        event=event,
        message=message + f"; waiting up to {queue_timeout:g} s for more nodes",
        queued_at=queued_at,
        wake_at=wake_at,
    )


# --- ops ---------------------------------------------------------------------------------------


def _ops(context: _Context) -> Plan:
    executions = context.executions
    if not executions:
        suitable = context.suitable
        if not suitable:
            return Plan(
                event=JobEvent.FAIL, message=f"no node can run this job: {context.explain()}"
            )
        return Plan(
            create=tuple(Placement(node, "matches at submit time") for node in suitable),
            event=JobEvent.RUN,
        )
    if context.active:
        return Plan(event=_run_event(context, running=True))
    failed = [e for e in executions if e.state is not ExecutionState.COMPLETED]
    if not failed:
        return Plan(event=JobEvent.COMPLETE, message=f"completed on {len(executions)} nodes")
    summary = "; ".join(f"node {e.node_id}: {_failure_text(e)}" for e in failed)
    return Plan(
        event=JobEvent.FAIL,
        message=f"{len(failed)} of {len(executions)} executions did not complete: {summary}",
    )


# --- daemon and service ------------------------------------------------------------------------


def _short_runs(context: _Context, executions: Sequence[ExecutionRecord]) -> tuple[int, float]:
    """Consecutive recent runs that ended before the stable period, and when the last ended."""
    ended = sorted(
        (e for e in executions if e.state in (ExecutionState.COMPLETED, ExecutionState.FAILED)),
        key=lambda e: (e.ended_at or e.modified_at, e.id),
        reverse=True,
    )
    short = 0
    for execution in ended:
        ran_for = (execution.ended_at or 0.0) - (execution.started_at or execution.created_at)
        if ran_for >= context.policy.restart_stable_after_s:
            break
        short += 1
    last_end = (ended[0].ended_at or ended[0].modified_at) if ended else context.now
    return short, last_end


def _daemon(context: _Context) -> Plan:
    suitable = set(context.suitable)
    create: list[Placement] = []
    wake: list[float] = []
    # A lost execution (its node unreachable) is left alone: its node is not suitable now,
    # and if it comes back, the execution is adopted.
    reachable = {node.id for node in context.nodes}
    stop = [
        (e.id, f"node {e.node_id} no longer matches the job")
        for e in context.counted
        if e.node_id not in suitable and e.node_id in reachable
    ]
    # Two on one node (placed by both sides of a partition that healed): keep the oldest.
    by_node: dict[str, list[ExecutionRecord]] = {}
    for execution in context.counted:
        if execution.node_id in suitable:
            by_node.setdefault(execution.node_id, []).append(execution)
    for on_node in by_node.values():
        extras = sorted(on_node, key=lambda e: (e.created_at, e.id))[1:]
        stop.extend((e.id, "another execution of this daemon runs on its node") for e in extras)
    for node in sorted(suitable):
        on_node = [e for e in context.executions if e.node_id == node]
        if any(e.active for e in on_node):
            continue
        if node in context.declined:
            wake.append(context.cooldown_until or context.now)
            continue
        short, last_end = _short_runs(context, on_node)
        restart_at = last_end + context.policy.restart_delay_s(short)
        if not on_node or context.now >= restart_at:
            create.append(Placement(node, "restart" if on_node else "matching node"))
        else:
            wake.append(restart_at)
    message = None if suitable else f"no matching node yet: {context.explain()}"
    return Plan(
        create=tuple(create),
        stop=tuple(stop),
        event=_run_event(context, running=True),
        message=message,
        wake_at=min(wake) if wake else None,
    )


def _service(context: _Context) -> Plan:
    count = context.job.spec.count or 0
    active = context.counted
    suitable = set(context.suitable)
    reachable = {node.id for node in context.nodes}
    stop = [
        (e.id, f"node {e.node_id} no longer matches the job")
        for e in active
        if e.node_id not in suitable and e.node_id in reachable
    ]
    keep = [e for e in active if e.node_id in suitable or e.node_id not in reachable]
    # Two on one node (placed by both sides of a partition that healed, or by a primary and
    # a stale one): Count means distinct nodes, so keep the oldest, as `_daemon` does.
    first_on_node: dict[str, ExecutionRecord] = {}
    for execution in sorted(keep, key=lambda e: (e.created_at, e.id)):
        if execution.node_id in first_on_node:
            stop.append((execution.id, "another execution of this service runs on its node"))
        else:
            first_on_node[execution.node_id] = execution
    keep = [e for e in keep if first_on_node[e.node_id] is e]
    if len(keep) > count:  # too many (e.g. after Count was lowered): stop the newest
        extras = sorted(keep, key=lambda e: (e.created_at, e.id))[count:]
        stop.extend((e.id, "more executions than Count") for e in extras)
        keep = keep[: len(keep) - len(extras)]
    needed = count - len(keep)
    if needed <= 0:
        return Plan(stop=tuple(stop), event=_run_event(context, running=True), queued_at=None)
    short, last_end = _short_runs(context, context.executions)
    restart_at = last_end + context.policy.restart_delay_s(short)
    if short and context.now < restart_at:
        return Plan(
            stop=tuple(stop),
            event=_run_event(context, running=True),
            message=f"restarting in {restart_at - context.now:.1f} s",
            wake_at=restart_at,
        )
    placed = _place_on_distinct_nodes(context, needed, count, queueable=False)
    return Plan(
        create=placed.create,
        stop=tuple(stop),
        event=_run_event(context, running=True),
        message=placed.message,
    )


_SCHEDULERS: dict[str, Callable[[_Context], Plan]] = {
    "batch": _batch,
    "ops": _ops,
    "daemon": _daemon,
    "service": _service,
}
