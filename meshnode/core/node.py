"""The node core: every decision one node makes about jobs and executions.

Rules of this module:
- `NodeCore.handle(event, now)` is the only entry point besides construction; it returns the
  commands the driver must carry out, in order. The first command of a step that changed
  anything is a `Persist` holding every changed record: the driver writes it (one
  transaction) before it acts on the rest, so nothing is acted on that a crash could forget.
- `next_deadline()` says when the driver must call `handle(Tick(), now)` at the latest.
- On one node this core is requester and compute at once: it places executions (through the
  per-type schedulers), "bids" for them locally, and runs them from a run queue ordered by
  job priority as capacity frees. The mesh milestone splits those roles across nodes.
- Memory is bounded by live work: a job leaves the core once it and all its executions are
  terminal (the store keeps it for queries).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from msgspec.structs import replace

from meshnode.core.ids import Rng, mint_uuid
from meshnode.core.policy import Policy, policy_for
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, NodeInfo
from meshnode.core.resources import DEFAULT_REQUEST, ResourceAmounts, requested_resources
from meshnode.core.scheduler import Plan, plan
from meshnode.core.states import (
    DesiredState,
    ExecutionEvent,
    ExecutionState,
    JobEvent,
    JobState,
    next_execution_state,
    next_job_state,
)
from meshnode.spec import Job

__all__ = [
    "Command",
    "Event",
    "ExecutionEnded",
    "ExecutionLost",
    "JobAccepted",
    "NodeChanged",
    "NodeCore",
    "Persist",
    "Recovered",
    "Reply",
    "StartExecution",
    "StopExecution",
    "StopJob",
    "SubmitJob",
    "Tick",
]

STOPPED_BY_USER: Final = "stopped by the user"

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
class Tick:
    """Time has passed (a deadline from `next_deadline()` was reached)."""


Event = SubmitJob | StopJob | ExecutionEnded | ExecutionLost | Recovered | NodeChanged | Tick

# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    jobs: tuple[JobRecord, ...]
    executions: tuple[ExecutionRecord, ...]
    history: tuple[HistoryEvent, ...]


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


Command = Persist | JobAccepted | Reply | StartExecution | StopExecution


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
    ) -> None:
        self._node = node
        self._rng = rng
        self._defaults = policy or Policy()
        self._default_request = default_request
        self._jobs: dict[str, JobRecord] = {job.id: job for job in jobs if not job.state.terminal}
        self._executions: dict[str, ExecutionRecord] = {
            e.id: e for e in executions if e.job_id in self._jobs
        }
        self._wake_at: dict[str, float] = {}
        self._recovered = False
        # Changes of the current step, flushed as one Persist.
        self._changed_jobs: dict[str, JobRecord] = {}
        self._changed_executions: dict[str, ExecutionRecord] = {}
        self._history: list[HistoryEvent] = []
        self._pending_stops: list[StopExecution] = []
        self._dirty: set[str] = set(self._jobs)  # jobs to evaluate

    # --- queries (read-only views for the driver and tests) -------------------------------

    @property
    def node(self) -> NodeInfo:
        return self._node

    def job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def execution(self, execution_id: str) -> ExecutionRecord | None:
        return self._executions.get(execution_id)

    def executions_of(self, job_id: str) -> list[ExecutionRecord]:
        return sorted(
            (e for e in self._executions.values() if e.job_id == job_id),
            key=lambda e: (e.created_at, e.id),
        )

    @property
    def live_job_ids(self) -> list[str]:
        return sorted(self._jobs)

    def used_resources(self) -> ResourceAmounts:
        used = ResourceAmounts()
        for execution in self._executions.values():
            if execution.running:
                used += execution.resources
        return used

    def next_deadline(self) -> float | None:
        return min(self._wake_at.values(), default=None)

    # --- the entry point --------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        commands: list[Command] = []
        match event:
            case SubmitJob():
                commands.extend(self._submit(event, now))
            case StopJob():
                commands.extend(self._stop_job(event, now))
            case ExecutionEnded():
                self._ended(event, now)
            case ExecutionLost():
                self._lost(event.execution_id, event.reason, now)
            case Recovered():
                self._recovered = True
                for execution_id in event.lost:
                    self._lost(execution_id, "the node restarted while it ran", now)
            case NodeChanged():
                self._node = event.node
                self._dirty.update(self._jobs)
            case Tick():
                pass
        self._dirty.update(job_id for job_id, at in self._wake_at.items() if at <= now)
        self._evaluate(now)
        if self._recovered:
            commands.extend(self._start_from_queue(now))
        self._evict_finished()
        return self._flush(commands)

    # --- requests ---------------------------------------------------------------------------

    def _submit(self, event: SubmitJob, now: float) -> list[Command]:
        job_id = f"j-{mint_uuid(self._rng)}"
        _, warnings = policy_for(event.spec, self._defaults)
        job = JobRecord(
            id=job_id,
            spec=event.spec,
            created_at=now,
            modified_at=now,
            node_id=self._node.id,
            message="submitted",
        )
        self._jobs[job_id] = job
        self._changed_jobs[job_id] = job
        self._record(now, job_id, "", "job", "", JobState.PENDING.value, "submitted", 1)
        self._dirty.add(job_id)
        evaluation_id = mint_uuid(self._rng)
        return [JobAccepted(event.request_id, job_id, evaluation_id, tuple(warnings))]

    def _stop_job(self, event: StopJob, now: float) -> list[Command]:
        job = self._jobs.get(event.job_id)
        if job is None:
            return [Reply(event.request_id, False, f"job {event.job_id} is not running")]
        reason = event.reason or STOPPED_BY_USER
        self._transition_job(job, JobEvent.STOP, reason, now)
        for execution in self.executions_of(job.id):
            if execution.active:
                self._stop_execution(execution, reason, now)
        return [Reply(event.request_id, True, f"job {job.id} stopped")]

    # --- execution reports --------------------------------------------------------------------

    def _ended(self, event: ExecutionEnded, now: float) -> None:
        execution = self._executions.get(event.execution_id)
        if execution is None or execution.state.terminal:
            return  # a late or repeated report: nothing to do
        changes = {"ended_at": now, "exit_code": event.exit_code, "error": event.error}
        if execution.desired is DesiredState.STOPPED:
            self._move(execution, ExecutionEvent.CANCEL, execution.message, now, **changes)
        elif event.exit_code == 0 and not event.error:
            self._move(execution, ExecutionEvent.COMPLETE, "completed", now, **changes)
        else:
            why = event.error or f"exited with code {event.exit_code}"
            self._move(execution, ExecutionEvent.FAIL, why, now, **changes)
        self._dirty.add(execution.job_id)

    def _lost(self, execution_id: str, reason: str, now: float) -> None:
        execution = self._executions.get(execution_id)
        if execution is None or execution.state.terminal:
            return
        event = ExecutionEvent.CANCEL
        if execution.desired is not DesiredState.STOPPED:
            event = ExecutionEvent.FAIL
        self._move(execution, event, reason, now, ended_at=now, error=reason)
        self._dirty.add(execution.job_id)

    # --- evaluation ---------------------------------------------------------------------------

    def _evaluate(self, now: float) -> None:
        for job_id in sorted(self._dirty, key=self._priority_order):
            job = self._jobs.get(job_id)
            self._wake_at.pop(job_id, None)
            if job is None:
                continue
            policy, _ = policy_for(job.spec, self._defaults)
            request = requested_resources(job.spec, self._default_request)
            result = plan(job, self.executions_of(job_id), [self._node], now, policy, request)
            self._apply(job, result, request, now)
        self._dirty.clear()

    def _priority_order(self, job_id: str) -> tuple[int, float, str]:
        job = self._jobs.get(job_id)
        return (-(job.spec.priority if job else 0), job.created_at if job else 0.0, job_id)

    def _apply(self, job: JobRecord, result: Plan, request: ResourceAmounts, now: float) -> None:
        for execution_id, reason in result.stop:
            self._stop_execution(self._executions[execution_id], reason, now)
        for placement in result.create:
            self._create_execution(job, placement.node_id, request, now)
        job = self._jobs[job.id]
        if result.queued_at != job.queued_at:
            job = self._update_job(job, now, queued_at=result.queued_at)
        if result.event is not None:
            job = self._transition_job(job, result.event, result.message or job.message, now)
        elif result.message is not None and result.message != job.message:
            job = self._update_job(job, now, message=result.message)
        if result.wake_at is not None and not job.state.terminal:
            self._wake_at[job.id] = result.wake_at

    def _create_execution(
        self, job: JobRecord, node_id: str, request: ResourceAmounts, now: float
    ) -> None:
        execution = ExecutionRecord(
            id=f"e-{mint_uuid(self._rng)}",
            job_id=job.id,
            node_id=node_id,
            created_at=now,
            modified_at=now,
            resources=request,
            priority=job.spec.priority,
            desired=DesiredState.RUNNING,
        )
        self._executions[execution.id] = execution
        self._record(now, job.id, execution.id, "execution", "", "New", "created", 1)
        # On one node the bid round is local: ask, bid, accept, recorded step by step.
        execution = self._move(execution, ExecutionEvent.ASK_FOR_BID, "asked for a bid", now)
        execution = self._move(execution, ExecutionEvent.BID, "the node can run it", now)
        self._move(execution, ExecutionEvent.ACCEPT, "waiting to start", now)

    def _stop_execution(self, execution: ExecutionRecord, reason: str, now: float) -> None:
        if execution.state.terminal:
            return
        if execution.running:
            if execution.desired is not DesiredState.STOPPED:
                self._put_execution(
                    replace(execution, desired=DesiredState.STOPPED, message=reason), now
                )
                self._pending_stops.append(StopExecution(execution.id, reason))
        else:
            self._move(execution, ExecutionEvent.CANCEL, reason, now, desired=DesiredState.STOPPED)

    # --- the run queue ------------------------------------------------------------------------

    def _start_from_queue(self, now: float) -> list[Command]:
        waiting = sorted(
            (
                e
                for e in self._executions.values()
                if e.state is ExecutionState.BID_ACCEPTED
                and e.started_at is None
                and e.node_id == self._node.id
            ),
            key=lambda e: (-e.priority, e.created_at, e.id),
        )
        free = self._node.capacity - self.used_resources()
        commands: list[Command] = []
        for execution in waiting:
            if execution.resources.shortfall(free):
                continue  # a smaller one behind it may still fit
            free -= execution.resources
            started = self._put_execution(
                replace(execution, started_at=now, message="running"), now
            )
            job = self._jobs[execution.job_id]
            if job.state is not JobState.RUNNING:
                job = self._transition_job(job, JobEvent.RUN, "running", now)
            commands.append(StartExecution(started, job))
        return commands

    # --- record keeping -----------------------------------------------------------------------

    def _transition_job(
        self, job: JobRecord, event: JobEvent, message: str, now: float
    ) -> JobRecord:
        new_state = next_job_state(job.state, event)
        # `queued_at` ("short of nodes since") is the scheduler's to set, not the state's.
        updated = self._update_job(job, now, state=new_state, message=message)
        self._record(
            now, job.id, "", "job", job.state.value, new_state.value, message, updated.revision
        )
        if new_state.terminal:
            self._wake_at.pop(job.id, None)
        return updated

    def _update_job(self, job: JobRecord, now: float, **changes: object) -> JobRecord:
        updated = replace(job, modified_at=now, revision=job.revision + 1, **changes)
        self._jobs[job.id] = updated
        self._changed_jobs[job.id] = updated
        return updated

    def _move(
        self,
        execution: ExecutionRecord,
        event: ExecutionEvent,
        message: str,
        now: float,
        **changes: object,
    ) -> ExecutionRecord:
        new_state = next_execution_state(execution.state, event)
        if new_state.terminal:
            changes.setdefault("desired", DesiredState.STOPPED)  # nothing more is wanted of it
        updated = self._put_execution(
            replace(execution, state=new_state, message=message, **changes), now
        )
        self._record(
            now,
            execution.job_id,
            execution.id,
            "execution",
            execution.state.display_name,
            new_state.display_name,
            message,
            updated.revision,
        )
        return updated

    def _put_execution(self, execution: ExecutionRecord, now: float) -> ExecutionRecord:
        updated = replace(execution, modified_at=now, revision=execution.revision + 1)
        self._executions[execution.id] = updated
        self._changed_executions[execution.id] = updated
        return updated

    def _record(
        self,
        now: float,
        job_id: str,
        execution_id: str,
        kind: Literal["job", "execution"],
        previous: str,
        new: str,
        message: str,
        revision: int,
    ) -> None:
        self._history.append(
            HistoryEvent(
                time=now,
                job_id=job_id,
                execution_id=execution_id,
                kind=kind,
                previous=previous,
                new=new,
                message=message,
                revision=revision,
            )
        )

    def _evict_finished(self) -> None:
        for job_id in [j for j, job in self._jobs.items() if job.state.terminal]:
            if any(e.active for e in self._executions.values() if e.job_id == job_id):
                continue
            del self._jobs[job_id]
            self._wake_at.pop(job_id, None)
            for execution_id in [e.id for e in self._executions.values() if e.job_id == job_id]:
                del self._executions[execution_id]

    def _flush(self, commands: list[Command]) -> list[Command]:
        stops: list[Command] = list(self._pending_stops)
        self._pending_stops.clear()
        if not (self._changed_jobs or self._changed_executions or self._history):
            return stops + commands
        persist = Persist(
            jobs=tuple(self._changed_jobs.values()),
            executions=tuple(self._changed_executions.values()),
            history=tuple(self._history),
        )
        self._changed_jobs.clear()
        self._changed_executions.clear()
        self._history.clear()
        return [persist, *stops, *commands]
