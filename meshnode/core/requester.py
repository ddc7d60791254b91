"""The requester side: the jobs this node is primary or replica for.

Rules of this module:
- Who is primary is decided by `election.rank` over the reachable requester-capable nodes
  (the `candidates` callable); a node acts as primary only while it is top-ranked in its own
  view. A node that becomes top takes over with a higher term after fetching the newest
  records the other holders have; a primary that is no longer top hands its records over.
- Every change of a job is replicated before it is acted on: messages to compute nodes and
  answers to clients produced in a step are held (`_Held.gated`) until a majority of
  {primary} ∪ replicas has acknowledged the step's `Replicate`.
- Records merge by (term, revision): after failover or a healed partition the higher term
  wins, and executions of both sides are kept (they are idempotent records keyed by id).
- Executions on a node membership declares dead are marked lost (`lost_at`): they stop
  counting, so the job's scheduler places work elsewhere; if the node comes back and reports
  them, they count again and the scheduler stops whatever is now too much.
- Every message to a compute node is retried until acknowledged (`_Held.outstanding`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from msgspec.structs import replace

from meshnode.core.commands import JobAccepted, Publish, Reply
from meshnode.core.effects import Effects
from meshnode.core.election import rank
from meshnode.core.ids import Rng, mint_uuid
from meshnode.core.messages import (
    Adopt,
    AdoptReply,
    AskForBid,
    Bid,
    ExecutionReport,
    FetchJob,
    FetchJobReply,
    Handover,
    HandoverAck,
    JobAck,
    Message,
    Replicate,
    ReplicateAck,
    ReportAck,
    RequesterClaim,
    RequestReply,
    StartRun,
    StopJobRequest,
    StopRun,
    SubmitAck,
    SubmitJob,
    decode_job_record,
    encode_job_record,
)
from meshnode.core.policy import Policy, policy_for
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, NodeInfo
from meshnode.core.resources import DEFAULT_REQUEST, ResourceAmounts, requested_resources
from meshnode.core.scheduler import Plan, plan
from meshnode.core.selection import unsuitability
from meshnode.core.states import (
    DesiredState,
    ExecutionEvent,
    ExecutionState,
    JobEvent,
    JobState,
    next_execution_state,
    next_job_state,
)
from meshnode.errors import RemoteProtocolError
from meshnode.spec import Job

__all__ = ["RequesterParams", "RequesterSide", "merge_records", "newer_record"]

STOPPED_BY_USER: Final = "stopped by the user"
_MAX_RANKINGS: Final = 100_000  # cached job rankings (cleared when membership changes)


@dataclass(frozen=True, slots=True)
class RequesterParams:
    replicas: int = 3
    retry_s: float = 1.0  # resend unacknowledged messages this often
    bid_timeout_s: float = 5.0
    submit_timeout_s: float = 3.0
    # An entry node sends a submission to each requester at most this many times; it tries
    # the top-ranked in its current view first (see `tick`).
    submit_attempts_per_node: int = 2
    fetch_timeout_s: float = 1.0
    handover_retry_s: float = 3.0
    # How long a node that rejected a bid is passed over for this job.
    rejection_cooldown_s: float = 5.0
    finished_memory: int = 10_000  # ended job ids remembered to answer late reports
    finished_records_memory: int = 1_000  # ... and the final records of the newest of them
    require_approval: bool = False


@dataclass(slots=True)
class _Held:
    job: JobRecord
    executions: dict[str, ExecutionRecord]
    role: Literal["primary", "replica", "taking_over"]
    term: int
    primary: str = ""
    seq: int = 0
    committed_seq: int = 0
    replicas: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    replicate_sent_at: dict[str, float] = field(default_factory=dict)
    gated: list[tuple[int, str, Message | JobAccepted | Reply]] = field(default_factory=list)
    # execution id → (to, message, last sent): Start/Stop/AskForBid awaiting an answer
    outstanding: dict[str, tuple[str, Message, float]] = field(default_factory=dict)
    history: list[HistoryEvent] = field(default_factory=list)  # since the last Replicate
    changed: bool = False
    dirty: bool = True
    wake_at: float | None = None
    fetch_waiting: set[str] = field(default_factory=set)
    fetch_deadline: float = 0.0
    handed_to: str = ""  # the node this replica last handed its records to
    handed_at: float = 0.0
    # Whether `handed_to` confirmed it holds the records (a `HandoverAck`, or its Replicate):
    # until then the handover is repeated and this node keeps its copy (a lost handover
    # from a primary that stepped down lost the job: simulator, 50 nodes, seed 0).
    handover_acked: bool = False
    # node id → (the NodeInfo and job version it was computed for, why that node can never
    # run this job): `selection.unsuitability` depends only on the job's spec and the node's
    # offer, which rarely change; computing it for every node on every evaluation was a hot
    # spot at 50 nodes.
    unsuitable: dict[str, tuple[NodeInfo, int, list[str]]] = field(default_factory=dict)

    def executions_sorted(self) -> list[ExecutionRecord]:
        return sorted(self.executions.values(), key=lambda e: (e.created_at, e.id))


@dataclass(slots=True)
class _PendingSubmit:
    job: JobRecord
    tried: list[str]
    deadline: float
    warnings: tuple[str, ...]


@dataclass(slots=True)
class _PendingStop:
    deadline: float


def merge_records(
    ours: Mapping[str, ExecutionRecord], theirs: Iterable[ExecutionRecord]
) -> dict[str, ExecutionRecord]:
    merged = dict(ours)
    for record in theirs:
        current = merged.get(record.id)
        if current is None or newer_record(record, current):
            merged[record.id] = record
    return merged


def newer_record(theirs: JobRecord | ExecutionRecord, ours: JobRecord | ExecutionRecord) -> bool:
    """Whether `theirs` wins a merge: an ended record beats a live one whatever the terms
    (terms grow independently on both sides of a partition, and an end is a fact: a stale
    side must not revive a completed execution or job); otherwise (term, revision) decides."""
    if theirs.state.terminal != ours.state.terminal:
        return theirs.state.terminal
    if isinstance(theirs, ExecutionRecord) and isinstance(ours, ExecutionRecord):
        # Two ends: what the compute node reported (it completed, it exited) beats what a
        # requester decided without it (cancelled while its node was unreachable).
        theirs_rank, ours_rank = _outcome_rank(theirs), _outcome_rank(ours)
        if theirs_rank != ours_rank:
            return theirs_rank > ours_rank
    return (theirs.term, theirs.revision) > (ours.term, ours.revision)


def _outcome_rank(execution: ExecutionRecord) -> int:
    if execution.state is ExecutionState.COMPLETED:
        return 2
    return 1 if execution.exit_code is not None else 0


def _client_answers(held: _Held) -> tuple[tuple[str, SubmitAck | RequestReply], ...]:
    """Answers to clients still waiting for the job's replication (see `Handover.answers`)."""
    return tuple(
        (to, item) for _, to, item in held.gated if isinstance(item, SubmitAck | RequestReply)
    )


class RequesterSide:
    def __init__(
        self,
        self_id: str,
        *,
        rng: Rng,
        policy: Policy,
        params: RequesterParams,
        candidates: Callable[[], list[str]],
        compute_nodes: Callable[[], tuple[list[NodeInfo], dict[str, str], dict[str, float]]],
        reachable: Callable[[str], bool],
        addrs: Callable[[str], tuple[str, ...]],
        jobs: Iterable[JobRecord] = (),
        executions: Iterable[ExecutionRecord] = (),
        default_request: ResourceAmounts = DEFAULT_REQUEST,
    ) -> None:
        self.self_id = self_id
        self._rng = rng
        self._defaults = policy
        self.params = params
        self._candidates = candidates
        self._compute_nodes = compute_nodes
        self._reachable = reachable
        self._addrs = addrs
        self._default_request = default_request
        by_job: dict[str, dict[str, ExecutionRecord]] = {}
        for execution in executions:
            by_job.setdefault(execution.job_id, {})[execution.id] = execution
        self.held: dict[str, _Held] = {}
        for job in jobs:
            if job.state.terminal and not any(e.active for e in by_job.get(job.id, {}).values()):
                continue
            self.held[job.id] = _Held(
                job=job,
                executions=by_job.get(job.id, {}),
                role="replica",
                term=job.term,
                primary=job.requester,
            )
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._to_persist: dict[str, JobRecord] = {}
        # The last records of recently ended jobs, to hand to a side that missed the end.
        self._final_records: OrderedDict[str, tuple[JobRecord, tuple[ExecutionRecord, ...]]] = (
            OrderedDict()
        )
        self._now = 0.0  # the time of the step being handled
        self._submits: dict[str, _PendingSubmit] = {}
        self._stops: dict[str, _PendingStop] = {}
        self.stats: dict[str, int] = {"forged": 0, "stale_term": 0, "takeovers": 0}
        self._ranked_for: list[str] | None = None
        # Set by the node core once its view of the mesh has settled after a (re)start:
        # before, this node takes over nothing (`review_roles` runs when it settles).
        self.settled = True
        self._rankings: dict[str, list[str]] = {}

    # --- views --------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        held = self.held.get(job_id)
        return held.job if held else None

    def executions_of(self, job_id: str) -> list[ExecutionRecord]:
        held = self.held.get(job_id)
        return held.executions_sorted() if held else []

    def execution(self, execution_id: str) -> ExecutionRecord | None:
        for held in self.held.values():
            if execution_id in held.executions:
                return held.executions[execution_id]
        return None

    def primary_of(self, job_id: str) -> str | None:
        ranking = self.ranking(job_id)
        return ranking[0] if ranking else None

    def ranking(self, job_id: str) -> list[str]:
        """The job's requesters best first in this node's view (do not change the list).
        Cached while the candidates stay the same object (the node core rebuilds them only
        when membership changes): ranking every held job on every tick was most of the
        simulator's time at 50 nodes."""
        candidates = self._candidates()
        if candidates is not self._ranked_for:
            self._ranked_for = candidates
            self._rankings.clear()
        ranking = self._rankings.get(job_id)
        if ranking is None:
            ranking = rank(job_id, candidates)
            if len(self._rankings) < _MAX_RANKINGS:
                self._rankings[job_id] = ranking
        return ranking

    def pending_submission(self, request_id: str) -> str | None:
        """The job id of a submission this node has sent and not had answered yet."""
        pending = self._submits.get(request_id)
        return pending.job.id if pending else None

    def is_primary(self, job_id: str) -> bool:
        held = self.held.get(job_id)
        return held is not None and held.role == "primary"

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for held in self.held.values():
            if held.wake_at is not None:
                deadlines.append(held.wake_at)
            if held.role == "taking_over":
                deadlines.append(held.fetch_deadline)
            if held.role == "primary":
                deadlines.extend(at + self.params.retry_s for _, _, at in held.outstanding.values())
                if held.committed_seq < held.seq:
                    deadlines.extend(
                        at + self.params.retry_s
                        for replica, at in held.replicate_sent_at.items()
                        if replica in held.replicas
                    )
        deadlines.extend(p.deadline for p in self._submits.values())
        deadlines.extend(p.deadline for p in self._stops.values())
        return min(deadlines, default=None)

    # --- requests from this node's API --------------------------------------------------------

    def submit(self, request_id: str, spec: Job, now: float, fx: Effects) -> None:
        job_id = f"j-{mint_uuid(self._rng)}"
        _, warnings = policy_for(spec, self._defaults)
        job = JobRecord(
            id=job_id,
            spec=spec,
            created_at=now,
            modified_at=now,
            node_id=self.self_id,
            message="submitted",
        )
        ranking = self.ranking(job_id) or [self.self_id]
        target = ranking[0]
        self._submits[request_id] = _PendingSubmit(
            job, [target], now + self.params.submit_timeout_s, tuple(warnings)
        )
        fx.send(
            target,
            SubmitJob(request_id=request_id, job=encode_job_record(job)),
            self._addrs(target),
        )

    def stop(self, request_id: str, job_id: str, reason: str, now: float, fx: Effects) -> None:
        held = self.held.get(job_id)
        target = self.self_id if held is not None and held.role == "primary" else None
        target = target or self.primary_of(job_id) or self.self_id
        self._stops[request_id] = _PendingStop(now + self.params.submit_timeout_s)
        message = StopJobRequest(request_id=request_id, job_id=job_id, reason=reason)
        fx.send(target, message, self._addrs(target))

    # --- messages -----------------------------------------------------------------------------

    def on_message(self, sender: str, message: Message, now: float, fx: Effects) -> None:
        match message:
            case SubmitJob():
                self._on_submit(sender, message, now, fx)
            case SubmitAck():
                pending = self._submits.pop(message.request_id, None)
                if pending is not None:
                    evaluation_id = mint_uuid(self._rng)
                    fx.do(
                        JobAccepted(
                            message.request_id, message.job_id, evaluation_id, pending.warnings
                        )
                    )
            case StopJobRequest():
                self._on_stop_request(sender, message, now, fx)
            case RequestReply():
                if self._stops.pop(message.request_id, None) is not None:
                    fx.do(Reply(message.request_id, message.ok, message.message))
            case Replicate():
                self._on_replicate(sender, message, now, fx)
            case ReplicateAck():
                self._on_replicate_ack(sender, message, now, fx)
            case FetchJob():
                held = self.held.get(message.job_id)
                reply = FetchJobReply(
                    job_id=message.job_id, ended=self._finished.get(message.job_id, "")
                )
                if held is not None:
                    reply = FetchJobReply(
                        job_id=message.job_id,
                        term=held.term,
                        job=encode_job_record(held.job),
                        executions=tuple(held.executions.values()),
                    )
                fx.send(sender, reply, self._addrs(sender))
            case FetchJobReply():
                self._on_fetch_reply(sender, message, now, fx)
            case Handover():
                self._on_handover(sender, message, now, fx)
            case HandoverAck():
                self._on_handover_ack(sender, message)
            case RequesterClaim():
                held = self.held.get(message.job_id)
                if held is not None and held.role == "primary" and message.term > held.term:
                    self._step_down(held, message.node_id, now, fx)
            case Bid():
                self._on_bid(sender, message, now, fx)
            case JobAck():
                self._on_job_ack(sender, message, now, fx)
            case ExecutionReport():
                self._on_report(sender, message, now, fx)
            case AdoptReply():
                self._on_adopt_reply(sender, message, now, fx)
            case _:
                raise AssertionError(f"not a requester message: {type(message).__name__}")

    def _on_submit(self, sender: str, message: SubmitJob, now: float, fx: Effects) -> None:
        job = decode_job_record(message.job)
        held = self.held.get(job.id)
        if held is None and job.id in self._finished:
            held = None
            fx.send(
                sender, SubmitAck(request_id=message.request_id, job_id=job.id), self._addrs(sender)
            )
            return
        if held is not None and held.role != "primary":
            # The job is already held here (a replica, or a node taking it over) and by its
            # primary: it was accepted. Answer now; becoming primary of it again here would
            # start a second term-1 history of a job that has a higher term elsewhere.
            answer = SubmitAck(request_id=message.request_id, job_id=job.id)
            fx.send(sender, answer, self._addrs(sender))
            return
        if held is None:
            job = replace(job, term=1, requester=self.self_id)
            held = _Held(job=job, executions={}, role="primary", term=1, primary=self.self_id)
            self.held[job.id] = held
            held.replicas = self._replicas(job.id)
            self._changed_job(held, job)
            fx.record(now, job.id, "", "job", "", JobState.PENDING.value, "submitted", 1)
            held.history.append(fx.history[-1])
        answer = SubmitAck(request_id=message.request_id, job_id=job.id)
        held.gated.append((held.seq + 1, sender, answer))
        held.changed = True  # replicate (again): the answer waits for a majority

    def _on_stop_request(
        self, sender: str, message: StopJobRequest, now: float, fx: Effects
    ) -> None:
        held = self.held.get(message.job_id)
        if held is None or held.role != "primary":
            known = self._finished.get(message.job_id)
            text = (
                f"job {message.job_id} had already ended ({known})"
                if known
                else f"job {message.job_id} is not running"
            )
            fx.send(
                sender,
                RequestReply(request_id=message.request_id, ok=known is not None, message=text),
            )
            return
        reason = message.reason or STOPPED_BY_USER
        if not held.job.state.terminal:
            self._transition_job(held, JobEvent.STOP, reason, now, fx)
            for execution in held.executions_sorted():
                if execution.active:
                    self._stop_execution(held, execution, reason, now, fx)
        answer = RequestReply(
            request_id=message.request_id, ok=True, message=f"job {held.job.id} stopped"
        )
        held.gated.append((held.seq + 1, sender, answer))
        held.changed = True

    # --- replication --------------------------------------------------------------------------

    def _replicas(self, job_id: str) -> list[str]:
        holders = self.ranking(job_id)[: self.params.replicas]
        return [node for node in holders if node != self.self_id][: self.params.replicas - 1]

    def _replicate(self, held: _Held, now: float, fx: Effects) -> None:
        held.seq += 1
        held.changed = False
        message = Replicate(
            job_id=held.job.id,
            term=held.term,
            seq=held.seq,
            job=encode_job_record(held.job),
            executions=tuple(held.executions.values()),
            history=tuple(held.history),
        )
        held.history = []
        for replica in held.replicas:
            fx.send(replica, message, self._addrs(replica))
            held.replicate_sent_at[replica] = now
        self._commit(held, fx)

    def _commit(self, held: _Held, fx: Effects) -> None:
        votes = sorted([held.seq, *(held.acked.get(r, 0) for r in held.replicas)], reverse=True)
        majority = (len(held.replicas) + 1) // 2 + 1
        committed = votes[majority - 1]
        if committed <= held.committed_seq:
            return
        held.committed_seq = committed
        still: list[tuple[int, str, Message | JobAccepted | Reply]] = []
        for seq, to, item in held.gated:
            if seq > committed:
                still.append((seq, to, item))
            elif isinstance(item, JobAccepted | Reply):
                fx.do(item)
            else:
                fx.send(to, item, self._addrs(to))
        held.gated = still

    def _on_replicate(self, sender: str, message: Replicate, now: float, fx: Effects) -> None:
        held = self.held.get(message.job_id)
        if held is None and message.job_id in self._finished:
            # The job ended here while the sender was cut off: an ended job never comes back
            # (whatever the terms say, they grew independently on both sides of a partition).
            live = not decode_job_record(message.job).state.terminal if message.job else False
            self._tell_ended(sender, message.job_id, message.term, message.seq, fx, records=live)
            return
        if held is not None and held.term > message.term:
            self.stats["stale_term"] += 1
            refusal = ReplicateAck(
                job_id=message.job_id,
                term=message.term,
                seq=message.seq,
                ok=False,
                seen_term=held.term,
            )
            fx.send(sender, refusal, self._addrs(sender))
            return
        job = decode_job_record(message.job)
        if job.id != message.job_id:
            raise RemoteProtocolError("Replicate names one job and carries another")
        if held is None:
            held = _Held(job=job, executions={}, role="replica", term=message.term, primary=sender)
            self.held[job.id] = held
            fx.jobs[job.id] = job  # a new copy: `_merge` writes only newer records
        elif held.role != "replica":
            held.role = "replica"  # a higher (or equal, newer) term is primary now
        held.term, held.primary = message.term, sender
        if held.handed_to == sender:
            held.handover_acked = True
            held.gated = []  # client answers handed over: the new primary releases them
        self._merge(held, job, message.executions, fx)
        fx.history.extend(message.history)
        ack = ReplicateAck(job_id=job.id, term=message.term, seq=message.seq)
        fx.send(sender, ack, self._addrs(sender))
        self._forget_if_done(held)

    def _on_replicate_ack(
        self, sender: str, message: ReplicateAck, now: float, fx: Effects
    ) -> None:
        held = self.held.get(message.job_id)
        if held is not None and message.ended:
            self._conclude(held, message.ended, sender, now, fx)
            if (
                held.role == "primary"
                and held.job.state.terminal
                and message.term == held.term
                and sender in held.replicas
                and self.held.get(held.job.id) is held
            ):
                # The replica holds the job as ended, which is all an ended job's records
                # need: count it as an ack. Otherwise this primary's last orders (stopping
                # what its side still runs) waited for a majority that never came, and it
                # re-sent its whole state every second forever (simulator, a stop during a
                # partition).
                held.acked[sender] = max(held.acked.get(sender, 0), message.seq)
                if held.acked[sender] >= held.seq:
                    held.replicate_sent_at.pop(sender, None)
                self._commit(held, fx)
            return
        if held is None or held.role != "primary":
            return
        if not message.ok:
            if message.seen_term > held.term:
                self._step_down(held, sender, now, fx)
            return
        if message.term != held.term or sender not in held.replicas:
            return
        held.acked[sender] = max(held.acked.get(sender, 0), message.seq)
        if held.acked[sender] >= held.seq:
            held.replicate_sent_at.pop(sender, None)
        self._commit(held, fx)

    def _merge(
        self, held: _Held, job: JobRecord, executions: Iterable[ExecutionRecord], fx: Effects
    ) -> None:
        if newer_record(job, held.job):
            held.job = job
            fx.jobs[job.id] = job
        merged = merge_records(held.executions, executions)
        for execution_id, record in merged.items():
            ours = held.executions.get(execution_id)
            if (
                ours is not None
                and ours is not record
                and ours.lost_at is not None
                and record.state.terminal
            ):
                # What it did while this side could not reach it: kept, and said so.
                text = (
                    f"node {record.node_id} is reachable again; its outcome reached requester "
                    f"{job.requester or 'another node'}: {record.state.display_name}"
                )
                self._note(held, record, text, record.revision, self._now, fx)
        for execution_id, record in merged.items():
            if held.executions.get(execution_id) is not record:
                fx.executions[execution_id] = record
        held.executions = merged

    # --- roles: takeover, handover, stepping down ----------------------------------------------

    def review_roles(self, now: float, fx: Effects) -> None:
        """After membership changed: who should be primary of each held job now?"""
        self._now = now
        for held in list(self.held.values()):
            ranking = self.ranking(held.job.id)
            top = ranking[0] if ranking else self.self_id
            if top == self.self_id:
                if held.role == "replica":
                    self._take_over(held, now, fx)
                elif held.role == "primary":
                    replicas = self._replicas(held.job.id)
                    if replicas != held.replicas:
                        held.replicas = replicas
                        held.acked = {r: a for r, a in held.acked.items() if r in replicas}
                        held.replicate_sent_at = {
                            r: at for r, at in held.replicate_sent_at.items() if r in replicas
                        }
                        held.changed = True  # new replicas get the whole state
                    held.dirty = True
            elif held.role == "primary":
                self._step_down(held, top, now, fx)
            elif held.role == "replica":
                if top not in (held.primary, held.handed_to):
                    # The job's new top may hold nothing of it (a node that just joined, or the
                    # primary died): hand it what this replica has; it merges and takes over.
                    self._hand_over(held, top, fx)
                if self.self_id not in ranking[: self.params.replicas] and (
                    not held.handed_to or held.handover_acked
                ):
                    del self.held[held.job.id]  # no longer a holder: the store keeps a copy

    def _take_over(self, held: _Held, now: float, fx: Effects) -> None:
        others = [
            node
            for node in self.ranking(held.job.id)[: self.params.replicas + 1]
            if node != self.self_id
        ]
        if held.primary and held.primary != self.self_id and self._reachable(held.primary):
            others.append(held.primary)
        held.role = "taking_over"
        held.fetch_waiting = set(others)
        held.fetch_deadline = now + self.params.fetch_timeout_s
        for node in sorted(held.fetch_waiting):
            fx.send(node, FetchJob(job_id=held.job.id), self._addrs(node))
        if not held.fetch_waiting:
            self._become_primary(held, now, fx)

    def _on_fetch_reply(self, sender: str, message: FetchJobReply, now: float, fx: Effects) -> None:
        held = self.held.get(message.job_id)
        if held is None or held.role != "taking_over":
            return
        held.fetch_waiting.discard(sender)
        if message.ended:
            self._conclude(held, message.ended, sender, now, fx)
            return
        if message.job:
            job = decode_job_record(message.job)
            held.term = max(held.term, message.term)
            self._merge(held, job, message.executions, fx)
        if not held.fetch_waiting:
            self._become_primary(held, now, fx)

    def _become_primary(self, held: _Held, now: float, fx: Effects) -> None:
        self.stats["takeovers"] += 1
        held.role = "primary"
        held.term = max(held.term, held.job.term) + 1
        held.primary = self.self_id
        held.replicas = self._replicas(held.job.id)
        held.acked = {}
        held.replicate_sent_at = {}
        held.committed_seq = held.seq
        self._changed_job(held, replace(held.job, term=held.term, requester=self.self_id))
        fx.do(Publish(RequesterClaim(job_id=held.job.id, term=held.term, node_id=self.self_id)))
        nodes = sorted({e.node_id for e in held.executions.values() if e.active})
        for node in nodes:
            adopt = Adopt(job_id=held.job.id, term=held.term)
            held.gated.append((held.seq + 1, node, adopt))
        self._resume_orders(held, now)
        # Nodes that died while this node was only a replica were never marked lost here
        # (`node_lost` acts for primaries): mark them now, or the job waits on them forever.
        # Found by the simulator: killing a primary that also ran one of the job's executions.
        unreachable = {
            e.node_id
            for e in held.executions.values()
            if e.active and e.lost_at is None and not self._reachable(e.node_id)
        }
        for node_id in sorted(unreachable):
            self.node_lost(node_id, now, fx)
        held.dirty = True

    def _resume_orders(self, held: _Held, now: float) -> None:
        """Orders in flight under an older term (or another primary) are re-sent under this
        one: the compute side treats repeats as no-ops, and a start it already finished is
        answered with the end."""
        for execution in held.executions.values():
            if not execution.active or execution.lost_at is not None:
                continue
            if execution.state is ExecutionState.ASK_FOR_BID:
                self._ask_for_bid(held, execution, now)
            elif execution.state is ExecutionState.BID_ACCEPTED:
                if execution.desired is DesiredState.STOPPED:
                    stop = StopRun(
                        job_id=held.job.id, term=held.term, execution_id=execution.id,
                        reason=execution.message,
                    )  # fmt: skip
                    self._order(held, execution.node_id, execution.id, stop, now)
                elif execution.started_at is None:
                    start = StartRun(
                        job_id=held.job.id, term=held.term, execution=execution,
                        job=encode_job_record(held.job),
                    )  # fmt: skip
                    self._order(held, execution.node_id, execution.id, start, now)

    def _hand_over(self, held: _Held, to: str, fx: Effects) -> None:
        handover = Handover(
            job_id=held.job.id,
            term=held.term,
            job=encode_job_record(held.job),
            executions=tuple(held.executions.values()),
            answers=_client_answers(held),
        )
        fx.send(to, handover, self._addrs(to))
        held.handed_to = to
        held.handed_at = self._now
        held.handover_acked = False

    def _step_down(self, held: _Held, new_primary: str, now: float, fx: Effects) -> None:
        self._hand_over(held, new_primary, fx)
        held.role = "replica"
        held.primary = new_primary
        held.gated = [g for g in held.gated if isinstance(g[2], SubmitAck | RequestReply)]
        held.outstanding.clear()
        held.wake_at = None

    def _on_handover(self, sender: str, message: Handover, now: float, fx: Effects) -> None:
        job = decode_job_record(message.job)
        held = self.held.get(job.id)
        if held is None and job.id in self._finished:
            if job.state.terminal:  # both ended: nothing to tell (and no echo back)
                fx.send(sender, HandoverAck(job_id=job.id, term=message.term), self._addrs(sender))
                return
            self._tell_ended(sender, job.id, message.term, 0, fx, records=True)  # as _on_replicate
            return
        if held is None:
            held = _Held(job=job, executions={}, role="replica", term=message.term, primary=sender)
            self.held[job.id] = held
            fx.jobs[job.id] = job  # a new copy: `_merge` writes only newer records
        held.term = max(held.term, message.term)
        self._merge(held, job, message.executions, fx)
        fx.send(sender, HandoverAck(job_id=job.id, term=held.term), self._addrs(sender))
        # The old primary's unanswered clients: answered here once replicated (as primary),
        # or carried on with this node's own handover (as a replica).
        waiting = {(to, answer.request_id) for to, answer in _client_answers(held)}
        for to, answer in message.answers:
            if (to, answer.request_id) not in waiting:
                held.gated.append((held.seq + 1, to, answer))
                held.changed = held.changed or held.role == "primary"
        if held.role == "primary" and held.job.state.terminal:
            # The records said it ended: replicate the end; evaluation stops what still runs.
            held.changed = held.dirty = True
        elif held.role == "primary":
            held.term += 1  # outrank the records just merged
            self._changed_job(held, replace(held.job, term=held.term))
            # The merged executions reported to the other primary: ask their nodes.
            for node in sorted({e.node_id for e in held.executions.values() if e.active}):
                held.gated.append((held.seq + 1, node, Adopt(job_id=held.job.id, term=held.term)))
            self._resume_orders(held, now)
            held.dirty = True
        elif self.settled:  # a node that just joined or restarted knows too little yet
            self.review_roles(now, fx)

    def _on_handover_ack(self, sender: str, message: HandoverAck) -> None:
        held = self.held.get(message.job_id)
        if held is None or held.role != "replica" or held.handed_to != sender:
            return
        held.handover_acked = True
        held.gated = []  # the client answers travelled with the records
        ranking = self.ranking(held.job.id)
        if self.self_id not in ranking[: self.params.replicas]:
            del self.held[held.job.id]  # no longer a holder: the store keeps a copy

    def _tell_ended(
        self, to: str, job_id: str, term: int, seq: int, fx: Effects, *, records: bool
    ) -> None:
        """`records`: the other side still sees the job live, so it gets the final records
        too (never to a side that ended it as well: that would echo forever)."""
        final = self._final_records.get(job_id) if records else None
        if final is not None:
            # The final records first (same stream, so they arrive first): the other side
            # merges what really happened (a run completed while it could not see it)
            # instead of ending the job on a guess.
            job, executions = final
            handover = Handover(
                job_id=job_id, term=job.term, job=encode_job_record(job), executions=executions
            )
            fx.send(to, handover, self._addrs(to))
        ended = self._finished[job_id]
        refusal = ReplicateAck(job_id=job_id, term=term, seq=seq, ok=False, ended=ended)
        fx.send(to, refusal, self._addrs(to))

    def _conclude(self, held: _Held, ended: str, sender: str, now: float, fx: Effects) -> None:
        """Another holder ended this job (and forgot it) while this node was cut off from it.
        A primary (or a node taking over) ends it too and stops what its side still runs; a
        replica records the end and lets go. Found by the simulator: without this, a stale
        side resurrected a completed job and ran it again, or kept it Running forever."""
        if held.job.state.terminal:
            return
        state = JobState(ended)
        why = f"the job had already ended ({ended}) on requester {sender}"
        if held.role == "replica":
            previous = held.job.state.value
            updated = self._update_job(held, now, state=state, message=why)
            self._history(held, fx, now, "", "job", previous, ended, why, updated.revision)
            del self.held[held.job.id]
            self._remember_finished(held.job.id, ended, held)
            return
        if held.role == "taking_over":
            self._become_primary(held, now, fx)
        event = {
            JobState.COMPLETED: JobEvent.COMPLETE,
            JobState.FAILED: JobEvent.FAIL,
            JobState.STOPPED: JobEvent.STOP,
        }[state]
        self._transition_job(held, event, why, now, fx)
        for execution in held.executions_sorted():
            if execution.active and execution.lost_at is not None:
                # On a node this side could not reach: the side that ended the job holds its
                # real outcome; cancelling it here would overwrite that with a guess.
                del held.executions[execution.id]
            elif execution.active:
                self._stop_execution(held, execution, why, now, fx)

    # --- evaluation -----------------------------------------------------------------------------

    def evaluate(self, now: float, fx: Effects) -> None:
        due = [
            h
            for h in self.held.values()
            if h.role == "primary" and (h.dirty or (h.wake_at is not None and h.wake_at <= now))
        ]
        if due:
            nodes, excluded, load = self._compute_nodes()
            for held in sorted(
                due, key=lambda h: (-h.job.spec.priority, h.job.created_at, h.job.id)
            ):
                held.dirty = False
                held.wake_at = None
                self._evaluate_one(held, nodes, excluded, load, now, fx)
        for held in list(self.held.values()):
            if held.role == "primary" and held.changed:
                self._replicate(held, now, fx)
            if held.role == "primary":
                self._forget_if_done(held)

    def _evaluate_one(
        self,
        held: _Held,
        nodes: list[NodeInfo],
        excluded: dict[str, str],
        load: dict[str, float],
        now: float,
        fx: Effects,
    ) -> None:
        job = held.job
        if job.state.terminal:
            # The end may have come in a record merged from another holder (failover, a
            # healed partition): whatever this side still runs must stop.
            for execution in held.executions_sorted():
                if execution.active:
                    self._stop_execution(held, execution, job.message or "the job ended", now, fx)
            return
        policy, _ = policy_for(job.spec, self._defaults)
        request = requested_resources(job.spec, self._default_request)
        self._expire_bids(held, now, fx)
        result = plan(
            job,
            held.executions_sorted(),
            nodes,
            now,
            policy,
            request,
            excluded=excluded,
            load=load,
            cooldown_s=self.params.rejection_cooldown_s,
            unsuitable=lambda node: self._unsuitable(held, node, request),
        )
        self._apply(held, result, request, now, fx)

    def _unsuitable(self, held: _Held, node: NodeInfo, request: ResourceAmounts) -> list[str]:
        cached = held.unsuitable.get(node.id)
        version = held.job.version
        if cached is not None and cached[1] == version and (cached[0] is node or cached[0] == node):
            return cached[2]
        reasons = unsuitability(held.job.spec, node, request)
        held.unsuitable[node.id] = (node, version, reasons)
        return reasons

    def _apply(
        self, held: _Held, result: Plan, request: ResourceAmounts, now: float, fx: Effects
    ) -> None:
        for execution_id, reason in result.stop:
            self._stop_execution(held, held.executions[execution_id], reason, now, fx)
        for placement in result.create:
            self._create_execution(held, placement.node_id, request, now, fx)
        job = held.job
        if result.queued_at != job.queued_at:
            job = self._update_job(held, now, queued_at=result.queued_at)
        if result.event is not None:
            job = self._transition_job(held, result.event, result.message or job.message, now, fx)
        elif result.message is not None and result.message != job.message:
            job = self._update_job(held, now, message=result.message)
        wakes = [w for w in (result.wake_at, self._bid_deadline(held)) if w is not None]
        if wakes and not job.state.terminal:
            held.wake_at = min(wakes)

    def _bid_deadline(self, held: _Held) -> float | None:
        asked = [
            e.modified_at + self.params.bid_timeout_s
            for e in held.executions.values()
            if e.state is ExecutionState.ASK_FOR_BID
        ]
        return min(asked, default=None)

    def _expire_bids(self, held: _Held, now: float, fx: Effects) -> None:
        for execution in list(held.executions.values()):
            if execution.state is ExecutionState.ASK_FOR_BID and (
                now >= execution.modified_at + self.params.bid_timeout_s
            ):
                timeout = self.params.bid_timeout_s
                why = f"node {execution.node_id} did not answer within {timeout:g} s"
                self._move(held, execution, ExecutionEvent.DECLINE, why, now, fx, ended_at=now)
                held.outstanding.pop(execution.id, None)

    def _create_execution(
        self, held: _Held, node_id: str, request: ResourceAmounts, now: float, fx: Effects
    ) -> None:
        execution = ExecutionRecord(
            id=f"e-{mint_uuid(self._rng)}",
            job_id=held.job.id,
            node_id=node_id,
            created_at=now,
            modified_at=now,
            resources=request,
            priority=held.job.spec.priority,
            desired=DesiredState.RUNNING,
            term=held.term,
        )
        held.executions[execution.id] = execution
        fx.executions[execution.id] = execution
        self._history(
            held, fx, now, execution.id, "execution", "", "New", f"placed on node {node_id}", 1
        )
        execution = self._move(
            held, execution, ExecutionEvent.ASK_FOR_BID, f"asked node {node_id} for a bid", now, fx
        )
        self._ask_for_bid(held, execution, now)

    def _ask_for_bid(self, held: _Held, execution: ExecutionRecord, now: float) -> None:
        message = AskForBid(
            job_id=held.job.id,
            term=held.term,
            execution_id=execution.id,
            job=encode_job_record(held.job),
            resources=execution.resources,
        )
        self._order(held, execution.node_id, execution.id, message, now)

    def _order(self, held: _Held, to: str, execution_id: str, message: Message, now: float) -> None:
        """Send once the step is replicated; resend until answered."""
        held.gated.append((held.seq + 1, to, message))
        held.outstanding[execution_id] = (to, message, now)
        held.changed = True

    def _stop_execution(
        self, held: _Held, execution: ExecutionRecord, reason: str, now: float, fx: Effects
    ) -> None:
        if execution.state.terminal:
            return
        stop = StopRun(job_id=held.job.id, term=held.term, execution_id=execution.id, reason=reason)
        if execution.state is ExecutionState.BID_ACCEPTED and execution.lost_at is None:
            if execution.desired is not DesiredState.STOPPED:
                self._put_execution(
                    held, replace(execution, desired=DesiredState.STOPPED, message=reason), now, fx
                )
                self._order(held, execution.node_id, execution.id, stop, now)
            return
        if execution.state is not ExecutionState.NEW:
            held.gated.append((held.seq + 1, execution.node_id, stop))  # release what it holds
        held.outstanding.pop(execution.id, None)
        if execution.lost_at is not None:
            reason = f"{reason} (its node was unreachable)"
        self._move(
            held, execution, ExecutionEvent.CANCEL, reason, now, fx, desired=DesiredState.STOPPED
        )

    # --- answers from compute nodes -----------------------------------------------------------

    def _own_execution(
        self, sender: str, job_id: str, execution_id: str
    ) -> tuple[_Held, ExecutionRecord] | None:
        held = self.held.get(job_id)
        if held is None or held.role != "primary":
            return None
        execution = held.executions.get(execution_id)
        if execution is None:
            return None
        if execution.node_id != sender:
            self.stats["forged"] += 1
            raise RemoteProtocolError(
                f"node {sender} spoke for execution {execution_id} of node {execution.node_id}"
            )
        return held, execution

    def _on_bid(self, sender: str, message: Bid, now: float, fx: Effects) -> None:
        found = self._own_execution(sender, message.job_id, message.execution_id)
        if found is None:
            return
        held, execution = found
        if execution.state is not ExecutionState.ASK_FOR_BID:
            return  # a repeated answer
        held.outstanding.pop(execution.id, None)
        if not message.accepted:
            why = f"node {sender} declined: {message.reason or 'no reason given'}"
            self._move(held, execution, ExecutionEvent.DECLINE, why, now, fx, ended_at=now)
            held.dirty = True
            return
        execution = self._move(held, execution, ExecutionEvent.BID, f"node {sender} bid", now, fx)
        if held.job.state.terminal or execution.desired is DesiredState.STOPPED:
            self._move(
                held, execution, ExecutionEvent.REJECT, "no longer needed", now, fx, ended_at=now
            )
            held.gated.append(
                (
                    held.seq + 1,
                    sender,
                    StopRun(
                        job_id=held.job.id,
                        term=held.term,
                        execution_id=execution.id,
                        reason="no longer needed",
                    ),
                )
            )
            return
        execution = self._move(
            held, execution, ExecutionEvent.ACCEPT, f"waiting to start on node {sender}", now, fx
        )
        start = StartRun(
            job_id=held.job.id, term=held.term, execution=execution, job=encode_job_record(held.job)
        )
        self._order(held, sender, execution.id, start, now)
        held.dirty = True

    def _on_job_ack(self, sender: str, message: JobAck, now: float, fx: Effects) -> None:
        held = self.held.get(message.job_id)
        if held is None or held.role != "primary":
            return
        if not message.ok and message.seen_term > held.term:
            self._saw_higher_term(held, message.seen_term, sender, now, fx)
            return
        pending = held.outstanding.get(message.execution_id)
        if pending is not None and pending[0] == sender:
            del held.outstanding[message.execution_id]

    def _on_adopt_reply(self, sender: str, message: AdoptReply, now: float, fx: Effects) -> None:
        """What this primary believes runs on `sender` but the node does not have is lost:
        it ends as failed (so batch retries it and services replace it)."""
        held = self.held.get(message.job_id)
        if held is None or held.role != "primary" or message.term != held.term:
            return
        known = set(message.known)
        for execution in list(held.executions.values()):
            if (
                execution.node_id != sender
                or execution.state is not ExecutionState.BID_ACCEPTED
                or execution.id in known
                or execution.id in held.outstanding  # its StartRun is still being delivered
            ):
                continue
            why = f"node {sender} has no record of it"
            self._move(held, execution, ExecutionEvent.FAIL, why, now, fx, ended_at=now, error=why)
            held.dirty = True

    def _saw_higher_term(
        self, held: _Held, seen_term: int, sender: str, now: float, fx: Effects
    ) -> None:
        """Another node led this job with a higher term: if this node is top-ranked in its own
        view it takes over again above that term (after fetching), otherwise it steps down."""
        self.stats["stale_term"] += 1
        top = self.primary_of(held.job.id) or sender
        if top == self.self_id:
            held.term = seen_term
            self._take_over(held, now, fx)
        else:
            self._step_down(held, top, now, fx)

    def _on_report(self, sender: str, message: ExecutionReport, now: float, fx: Effects) -> None:
        def answer(verdict: str, term: int = 0) -> None:
            ack = ReportAck(
                job_id=message.job_id,
                execution_id=message.execution_id,
                seq=message.seq,
                verdict=verdict,
                term=term,
            )
            fx.send(sender, ack, self._addrs(sender))

        held = self.held.get(message.job_id)
        if held is None or held.role != "primary":
            if message.job_id in self._finished:
                answer("stop")
            elif held is None and self.primary_of(message.job_id) == self.self_id:
                answer("unknown")
            return  # a replica or stranger stays silent: the compute node re-routes
        found = self._own_execution(sender, message.job_id, message.execution_id)
        if found is None:
            answer("unknown")
            return
        held, execution = found
        if message.term > held.term:
            self._saw_higher_term(held, message.term, sender, now, fx)
            return
        if execution.lost_at is not None and not self._reachable(sender):
            if message.phase != "ended":
                return  # a late word from a node that is gone revives nothing (no ack)
        elif execution.lost_at is not None:
            self._note(
                held, execution, f"node {sender} is reachable again", execution.revision, now, fx
            )
            execution = self._put_execution(held, replace(execution, lost_at=None), now, fx)
            held.dirty = True
        if execution.state.terminal:
            if message.phase != "ended":
                answer("stop", held.term)
                return
            if execution.exit_code is None and message.ended_at is not None:
                # It finished while cut off: keep what it did, without changing the outcome.
                detail = (
                    "completed"
                    if message.exit_code == 0 and not message.error
                    else (message.error or f"exited with code {message.exit_code}")
                )
                self._note(
                    held,
                    execution,
                    f"late report from node {sender}: {detail}",
                    execution.revision,
                    now,
                    fx,
                )
                self._put_execution(held, replace(execution, exit_code=message.exit_code), now, fx)
            answer("", held.term)
            return
        if message.phase == "running" and execution.started_at is None:
            replicate_now = held.changed
            execution = self._put_execution(
                held,
                replace(execution, started_at=message.started_at or now, message="running"),
                now,
                fx,
            )
            if held.job.state is not JobState.RUNNING and not held.job.state.terminal:
                self._transition_job(held, JobEvent.RUN, "running", now, fx)
                replicate_now = True
            if not replicate_now and execution.desired is not DesiredState.STOPPED:
                # That it started changes no decision: it rides on the job's next Replicate
                # (a new primary would learn it from the node anyway), and the node is
                # answered at once. One replication round less per execution.
                held.changed = False
                ack = ReportAck(
                    job_id=message.job_id, execution_id=message.execution_id,
                    seq=message.seq, term=held.term,
                )  # fmt: skip
                fx.send(sender, ack, self._addrs(sender))
                return
        elif message.phase == "ended":
            self._ended(held, execution, message, now, fx)
        held.dirty = True
        verdict = (
            "stop" if execution.desired is DesiredState.STOPPED and message.phase != "ended" else ""
        )
        held.gated.append(
            (
                held.seq + 1,
                sender,
                ReportAck(
                    job_id=message.job_id,
                    execution_id=message.execution_id,
                    seq=message.seq,
                    verdict=verdict,
                    term=held.term,
                ),
            )
        )
        held.changed = True

    def _ended(
        self,
        held: _Held,
        execution: ExecutionRecord,
        report: ExecutionReport,
        now: float,
        fx: Effects,
    ) -> None:
        changes: dict[str, object] = {
            "ended_at": report.ended_at or now,
            "exit_code": report.exit_code,
            "error": report.error,
        }
        if execution.started_at is None:
            changes["started_at"] = report.started_at
        if execution.state is not ExecutionState.BID_ACCEPTED:
            event = ExecutionEvent.FAIL
            self._move(
                held,
                execution,
                event,
                report.error or "failed before it started",
                now,
                fx,
                **changes,
            )
            return
        if execution.desired is DesiredState.STOPPED:
            self._move(
                held, execution, ExecutionEvent.CANCEL, execution.message, now, fx, **changes
            )
        elif report.exit_code == 0 and not report.error:
            self._move(held, execution, ExecutionEvent.COMPLETE, "completed", now, fx, **changes)
        else:
            why = report.error or f"exited with code {report.exit_code}"
            self._move(held, execution, ExecutionEvent.FAIL, why, now, fx, **changes)

    # --- node loss and return -----------------------------------------------------------------

    def node_lost(self, node_id: str, now: float, fx: Effects) -> None:
        for held in self.held.values():
            if held.role != "primary":
                continue
            for execution in list(held.executions.values()):
                if (
                    execution.node_id != node_id
                    or not execution.active
                    or execution.lost_at is not None
                ):
                    continue
                why = f"node {node_id} is unreachable"
                held.outstanding.pop(execution.id, None)
                # Work that never reached the node ends without counting as a failure of the
                # job (no retry is spent); ops work is about that node, so it fails.
                before_start = {
                    ExecutionState.NEW: ExecutionEvent.CANCEL,
                    ExecutionState.ASK_FOR_BID: ExecutionEvent.DECLINE,
                    ExecutionState.ASK_FOR_BID_ACCEPTED: ExecutionEvent.REJECT,
                }
                if held.job.spec.type == "ops":
                    self._move(
                        held, execution, ExecutionEvent.FAIL, why, now, fx, ended_at=now, error=why
                    )
                elif execution.state in before_start:
                    event = before_start[execution.state]
                    self._move(held, execution, event, why, now, fx, ended_at=now)
                else:
                    self._put_execution(held, replace(execution, lost_at=now, message=why), now, fx)
                    self._note(held, execution, why, execution.revision + 1, now, fx)
                held.dirty = True

    def node_back(self, node_id: str, now: float, fx: Effects) -> None:
        for held in self.held.values():
            if held.role != "primary":
                continue
            if any(
                e.node_id == node_id and e.lost_at is not None for e in held.executions.values()
            ):
                fx.send(node_id, Adopt(job_id=held.job.id, term=held.term), self._addrs(node_id))

    # --- time -----------------------------------------------------------------------------------

    def tick(self, now: float, fx: Effects) -> None:
        self._now = now
        for request_id, pending in list(self._submits.items()):
            if now < pending.deadline:
                continue
            # The top-ranked requester in the current view first, again: after a partition
            # heals, or once a dead top is noticed, the view's top is the job's primary (it
            # holds the job, or a replica hands it over). Walking down the ranking instead
            # ended, after a partition, at nodes that did not hold the job, each of which
            # started a rogue term-1 copy of it and never answered (simulator, 50 nodes).
            limit = self.params.submit_attempts_per_node
            ranking = self.ranking(pending.job.id) or [self.self_id]
            untried = [n for n in ranking if pending.tried.count(n) < limit]
            if not untried:
                del self._submits[request_id]
                fx.do(Reply(request_id, False, "no requester answered; try again"))
                continue
            target = untried[0]
            pending.tried.append(target)
            pending.deadline = now + self.params.submit_timeout_s
            message = SubmitJob(request_id=request_id, job=encode_job_record(pending.job))
            fx.send(target, message, self._addrs(target))
        for request_id, stop in list(self._stops.items()):
            if now >= stop.deadline:
                del self._stops[request_id]
                fx.do(Reply(request_id, False, "the job's requester did not answer; try again"))
        for held in list(self.held.values()):
            if held.role == "taking_over" and now >= held.fetch_deadline:
                self._become_primary(held, now, fx)
            if held.role == "replica" and now >= held.handed_at + self.params.handover_retry_s:
                # A handover may be lost: until the top-ranked node confirms it holds the
                # job (a HandoverAck, or its Replicate), hand over again.
                top = self.primary_of(held.job.id)
                unconfirmed = top == held.handed_to and not held.handover_acked
                if top and top != self.self_id and (top != held.primary or unconfirmed):
                    self._hand_over(held, top, fx)
                elif top == self.self_id and self.settled:
                    # Top in this node's view, yet a replica: e.g. two primaries of the
                    # same term (a restarted one, one that took over) each took the other's
                    # Replicate as its new primary, and nobody led the job any more
                    # (simulator, 30 nodes, seed 15). Nothing else would bring it back.
                    held.handed_at = now
                    self._take_over(held, now, fx)
            if held.role != "primary":
                continue
            not_yet_released = {id(item) for _, _, item in held.gated}
            for execution_id, (to, order, sent) in list(held.outstanding.items()):
                if now >= sent + self.params.retry_s:
                    held.outstanding[execution_id] = (to, order, now)
                    if id(order) not in not_yet_released:  # (a held order waits its turn)
                        fx.send(to, order, self._addrs(to))
            if held.committed_seq < held.seq:
                for replica in held.replicas:
                    sent_at = held.replicate_sent_at.get(replica)
                    if sent_at is not None and now >= sent_at + self.params.retry_s:
                        held.changed = True  # the next replicate carries the whole state

    # --- record keeping -------------------------------------------------------------------------

    def _changed_job(self, held: _Held, job: JobRecord) -> None:
        held.job = job
        held.changed = True
        self._to_persist[job.id] = job

    def _transition_job(
        self, held: _Held, event: JobEvent, message: str, now: float, fx: Effects
    ) -> JobRecord:
        job = held.job
        new_state = next_job_state(job.state, event)
        updated = self._update_job(held, now, state=new_state, message=message)
        self._history(
            held, fx, now, "", "job", job.state.value, new_state.value, message, updated.revision
        )
        if new_state.terminal:
            held.wake_at = None
        return updated

    def _update_job(self, held: _Held, now: float, **changes: object) -> JobRecord:
        updated = replace(
            held.job, modified_at=now, revision=held.job.revision + 1, term=held.term, **changes
        )
        self._changed_job(held, updated)
        return updated

    def _move(
        self,
        held: _Held,
        execution: ExecutionRecord,
        event: ExecutionEvent,
        message: str,
        now: float,
        fx: Effects,
        **changes: object,
    ) -> ExecutionRecord:
        new_state = next_execution_state(execution.state, event)
        if new_state.terminal:
            changes.setdefault("desired", DesiredState.STOPPED)
        updated = self._put_execution(
            held, replace(execution, state=new_state, message=message, **changes), now, fx
        )
        self._history(
            held,
            fx,
            now,
            execution.id,
            "execution",
            execution.state.display_name,
            new_state.display_name,
            message,
            updated.revision,
        )
        return updated

    def _put_execution(
        self, held: _Held, execution: ExecutionRecord, now: float, fx: Effects
    ) -> ExecutionRecord:
        updated = replace(
            execution, modified_at=now, revision=execution.revision + 1, term=held.term
        )
        held.executions[execution.id] = updated
        fx.executions[execution.id] = updated
        held.changed = True
        return updated

    def _history(
        self,
        held: _Held,
        fx: Effects,
        now: float,
        execution_id: str,
        kind: Literal["job", "execution"],
        previous: str,
        new: str,
        message: str,
        revision: int,
    ) -> None:
        fx.record(now, held.job.id, execution_id, kind, previous, new, message, revision)
        held.history.append(fx.history[-1])

    def _note(
        self,
        held: _Held,
        execution: ExecutionRecord,
        text: str,
        revision: int,
        now: float,
        fx: Effects,
    ) -> None:
        """A fact about an execution that does not change its state (its node went away or
        came back, a late report): recorded in the job's history all the same."""
        state = execution.state.display_name
        self._history(held, fx, now, execution.id, "execution", state, state, text, revision)

    def flush_jobs(self, fx: Effects) -> None:
        fx.jobs.update(self._to_persist)
        self._to_persist.clear()

    def _forget_if_done(self, held: _Held) -> None:
        if not held.job.state.terminal or any(e.active for e in held.executions.values()):
            return
        if held.role == "primary" and (held.gated or held.committed_seq < held.seq):
            return
        del self.held[held.job.id]
        self._remember_finished(held.job.id, held.job.state.value, held)

    def _remember_finished(self, job_id: str, state: str, held: _Held | None = None) -> None:
        self._finished[job_id] = state
        if held is not None:
            self._final_records[job_id] = (held.job, tuple(held.executions.values()))
            while len(self._final_records) > self.params.finished_records_memory:
                self._final_records.popitem(last=False)
        while len(self._finished) > self.params.finished_memory:
            self._finished.popitem(last=False)
