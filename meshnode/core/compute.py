"""The compute side of a node: bids, reservations, the local run queue and reports.

Rules of this module:
- A bid is this node's own judgement: the job's constraints and features against this node
  (`selection.unsuitability`), room for it (capacity minus running, waiting and reserved
  work, with a bounded wait queue), networking allowed, and the operator's probe if one is
  configured. A "no" always carries its reason.
- An accepted bid reserves its resources for `reservation_ttl_s`; a `StartRun` turns the
  reservation into a run. Runs wait in a queue ordered by priority until capacity frees.
- Fencing: per job, the highest requester term seen wins; a `StartRun`/`StopRun` of a lower
  term is refused. Reports go to the requester that started the run, or, when membership
  says it is gone (dead or left; a node it does not know yet is not gone: the requester just
  spoke to it), or when it stops answering, to the job's top-ranked requester now (`route`).
- Every report is retried until acknowledged; an ended run is forgotten only once its end
  is acknowledged, so a node cut off from the mesh keeps its results and reports them when
  it is back. Running runs are re-reported every `refresh_s` (anti-entropy).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from msgspec.structs import replace

from meshnode.core.commands import RunBidProbe, StartExecution, StopExecution
from meshnode.core.effects import Effects
from meshnode.core.messages import (
    Adopt,
    AdoptReply,
    AskForBid,
    Bid,
    ExecutionReport,
    JobAck,
    ReportAck,
    StartRun,
    StopRun,
    decode_job_record,
)
from meshnode.core.records import JobRecord, LocalRun, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.core.selection import unsuitability
from meshnode.errors import RemoteProtocolError

__all__ = ["ComputeParams", "ComputeSide"]

STOPPED: Final = "stopped"


@dataclass(frozen=True, slots=True)
class ComputeParams:
    reservation_ttl_s: float = 10.0
    report_retry_s: float = 1.0
    refresh_s: float = 30.0
    max_waiting_runs: int = 256
    # Unknown-job answers from the top-ranked requester before a run is stopped as orphaned.
    orphan_after_unknowns: int = 3
    accept_networked: bool = True
    # Unanswered report sends before reports go to the job's top-ranked requester instead.
    reroute_after_attempts: int = 3
    # An ended run is dropped as orphaned only after this many times more unknown answers.
    ended_orphan_patience: int = 100
    # Ended runs whose end was acknowledged, remembered so a repeated StartRun (a retry, or a
    # new primary re-sending from stale records) never runs the same execution twice.
    ended_memory: int = 10_000


@dataclass(slots=True)
class _Reservation:
    job_id: str
    resources: ResourceAmounts
    expires_at: float


class ComputeSide:
    def __init__(
        self,
        self_id: str,
        *,
        node: NodeInfo,
        runs: Iterable[LocalRun] = (),
        params: ComputeParams | None = None,
        probe_enabled: bool = False,
        route: Callable[[str], str | None],
        gone: Callable[[str], bool],
        addrs: Callable[[str], tuple[str, ...]],
    ) -> None:
        self.self_id = self_id
        self.node = node
        self.params = params or ComputeParams()
        self._probe_enabled = probe_enabled
        self._route = route
        self._gone = gone
        self._addrs = addrs
        self.runs: dict[str, LocalRun] = {run.id: run for run in runs}
        self._jobs: dict[str, JobRecord] = {}
        self._terms: dict[str, int] = {}
        for run in self.runs.values():
            self._terms[run.job_id] = max(self._terms.get(run.job_id, 0), run.term)
        self._reservations: dict[str, _Reservation] = {}
        self._probing: dict[str, tuple[str, AskForBid]] = {}
        self._sent_at: dict[str, float] = {}
        self._unknown: dict[str, int] = {}
        self._attempts: dict[str, int] = {}  # unacknowledged report sends per run
        self._recovered = False
        # Runs whose end was acknowledged, kept (without their job) to answer an `Adopt` from
        # a requester that never heard the end (the node was cut off from it), bounded.
        self._ended_ids: OrderedDict[str, LocalRun | None] = OrderedDict()
        self.stats: dict[str, int] = {"bids_accepted": 0, "bids_rejected": 0, "fenced": 0}

    # --- views --------------------------------------------------------------------------------

    def used(self) -> ResourceAmounts:
        used = ResourceAmounts()
        for run in self.runs.values():
            if run.phase == "running":
                used += run.execution.resources
        return used

    def committed(self, now: float) -> ResourceAmounts:
        """Running, waiting and reserved work: what a new bid must fit beside."""
        total = ResourceAmounts()
        for run in self.runs.values():
            if run.phase != "ended":
                total += run.execution.resources
        for reservation in self._reservations.values():
            if reservation.expires_at > now:
                total += reservation.resources
        return total

    def running_count(self) -> int:
        return sum(1 for run in self.runs.values() if run.phase == "running")

    def is_live(self, execution_id: str) -> bool:
        run = self.runs.get(execution_id)
        return run is not None and run.phase != "ended"

    def next_deadline(self) -> float | None:
        deadlines = [r.expires_at for r in self._reservations.values()]
        for run in self.runs.values():
            sent = self._sent_at.get(run.id)
            if run.acked_seq < run.report_seq and sent is not None:
                deadlines.append(sent + self.params.report_retry_s)
            elif run.phase == "running" and sent is not None:
                deadlines.append(sent + self.params.refresh_s)
        return min(deadlines, default=None)

    def job_of(self, run: LocalRun) -> JobRecord:
        job = self._jobs.get(run.job_id)
        if job is None:
            job = decode_job_record(run.job)
            self._jobs[run.job_id] = job
        return job

    # --- bids ---------------------------------------------------------------------------------

    def on_ask_for_bid(self, sender: str, message: AskForBid, now: float, fx: Effects) -> None:
        if message.term < self._terms.get(message.job_id, 0):
            self._bid(sender, message, False, "a newer requester term exists for this job", fx)
            return
        self._terms[message.job_id] = message.term
        if message.execution_id in self._reservations or message.execution_id in self.runs:
            self._bid(sender, message, True, "", fx)  # a repeated ask: same answer
            return
        try:
            job = decode_job_record(message.job)
        except RemoteProtocolError as error:
            self._bid(sender, message, False, str(error), fx)
            return
        self._jobs[job.id] = job
        reason = self._refusal(job, message.resources, now)
        if reason:
            self._bid(sender, message, False, reason, fx)
            return
        if self._probe_enabled:
            self._probing[message.execution_id] = (sender, message)
            fx.do(RunBidProbe(message.execution_id, job))
            return
        self._accept(sender, message, now, fx)

    def on_probe_done(
        self, execution_id: str, ok: bool, reason: str, now: float, fx: Effects
    ) -> None:
        pending = self._probing.pop(execution_id, None)
        if pending is None:
            return
        sender, message = pending
        if ok:
            self._accept(sender, message, now, fx)
        else:
            self._bid(sender, message, False, f"the node's bid probe said no: {reason}", fx)

    def _refusal(self, job: JobRecord, request: ResourceAmounts, now: float) -> str:
        problems = unsuitability(job.spec, self.node, request)
        if problems:
            return "; ".join(problems)
        network = job.spec.task.network
        if (
            network is not None
            and network.type not in ("", "None")
            and not (self.params.accept_networked)
        ):
            return f"this node does not accept networked jobs (Network {network.type})"
        waiting = sum(1 for run in self.runs.values() if run.phase == "queued")
        if waiting >= self.params.max_waiting_runs:
            return f"{waiting} executions are already waiting for capacity here"
        free = self.node.capacity - self.committed(now)
        short = request.shortfall(free)
        if short and request.shortfall(self.node.capacity):
            return "not enough capacity: " + "; ".join(short)
        return ""

    def _accept(self, sender: str, message: AskForBid, now: float, fx: Effects) -> None:
        self._reservations[message.execution_id] = _Reservation(
            message.job_id, message.resources, now + self.params.reservation_ttl_s
        )
        self._bid(sender, message, True, "", fx)

    def _bid(
        self, sender: str, message: AskForBid, accepted: bool, reason: str, fx: Effects
    ) -> None:
        self.stats["bids_accepted" if accepted else "bids_rejected"] += 1
        bid = Bid(
            job_id=message.job_id,
            execution_id=message.execution_id,
            accepted=accepted,
            reason=reason,
        )
        fx.send(sender, bid, self._addrs(sender))

    # --- orders from the requester ------------------------------------------------------------

    def _fenced(self, sender: str, job_id: str, execution_id: str, term: int, fx: Effects) -> bool:
        seen = self._terms.get(job_id, 0)
        if term < seen:
            self.stats["fenced"] += 1
            answer = JobAck(job_id=job_id, execution_id=execution_id, ok=False, seen_term=seen)
            fx.send(sender, answer, self._addrs(sender))
            return True
        self._terms[job_id] = term
        return False

    def on_start(self, sender: str, message: StartRun, now: float, fx: Effects) -> None:
        execution = message.execution
        if execution.node_id != self.self_id or execution.job_id != message.job_id:
            raise RemoteProtocolError(f"StartRun for execution {execution.id} of another node")
        if self._fenced(sender, message.job_id, execution.id, message.term, fx):
            return
        self._reservations.pop(execution.id, None)
        run = self.runs.get(execution.id)
        if run is None and execution.id in self._ended_ids:
            # It already ran here and its end was acknowledged (to an earlier requester):
            # never start it again; report it ended so this requester stops waiting for it.
            run = LocalRun(
                execution=execution,
                job=message.job,
                requester=sender,
                term=message.term,
                phase="ended",
                ended_at=now,
                error="the execution had already ended on this node",
            )
            self._put(run, fx)
            self._report(run, now, fx)
        elif run is None:
            run = LocalRun(
                execution=execution, job=message.job, requester=sender, term=message.term
            )
            self._put(run, fx)
            fx.send(
                sender,
                JobAck(job_id=message.job_id, execution_id=execution.id),
                self._addrs(sender),
            )
            self.start_from_queue(now, fx)
            if self.runs[run.id].phase == "queued":  # (a start was reported already)
                self._report(self.runs[run.id], now, fx)
            return
        elif run.requester != sender or run.term != message.term:
            self._put(replace(run, requester=sender, term=message.term), fx)
        fx.send(
            sender, JobAck(job_id=message.job_id, execution_id=execution.id), self._addrs(sender)
        )
        self.start_from_queue(now, fx)

    def on_stop(self, sender: str, message: StopRun, now: float, fx: Effects) -> None:
        if self._fenced(sender, message.job_id, message.execution_id, message.term, fx):
            return
        self._reservations.pop(message.execution_id, None)
        fx.send(
            sender,
            JobAck(job_id=message.job_id, execution_id=message.execution_id),
            self._addrs(sender),
        )
        self._stop(message.execution_id, message.reason or STOPPED, now, fx)

    def on_adopt(self, sender: str, message: Adopt, now: float, fx: Effects) -> None:
        if self._fenced(sender, message.job_id, "", message.term, fx):
            return
        known = []
        for run in list(self.runs.values()):
            if run.job_id == message.job_id:
                adopted = self._put(replace(run, requester=sender, term=message.term), fx)
                self._attempts.pop(run.id, None)  # reports go to the adopter first
                self._report(adopted, now, fx)
                known.append(run.id)
        for ended in list(self._ended_ids.values()):
            if ended is None or ended.job_id != message.job_id or ended.id in self.runs:
                continue
            # Its end was acknowledged to another requester (this node was cut off from the
            # adopter): tell the adopter too, so nothing it did is lost.
            report = ExecutionReport(
                job_id=ended.job_id, execution_id=ended.id, seq=ended.report_seq,
                term=message.term, phase="ended", started_at=ended.started_at,
                ended_at=ended.ended_at, exit_code=ended.exit_code, error=ended.error,
            )  # fmt: skip
            fx.send(sender, report, self._addrs(sender))
            known.append(ended.id)
        reply = AdoptReply(job_id=message.job_id, term=message.term, known=tuple(sorted(known)))
        fx.send(sender, reply, self._addrs(sender))

    def on_report_ack(self, sender: str, message: ReportAck, now: float, fx: Effects) -> None:
        run = self.runs.get(message.execution_id)
        if run is None:
            return
        if message.verdict == "unknown":
            self._unknown[run.id] = self._unknown.get(run.id, 0) + 1
            # A running orphan is stopped; an ended run's results are kept much longer (the
            # answer may come from a node whose view of the mesh is not complete yet).
            patience = self.params.orphan_after_unknowns
            if run.phase == "ended":
                patience *= self.params.ended_orphan_patience
            if self._unknown[run.id] >= patience:
                self._unknown.pop(run.id, None)
                if run.phase == "ended":
                    fx.delete_run(run.id)
                    del self.runs[run.id]
                    self._attempts.pop(run.id, None)
                    self._remember_ended(run.id, run)
                else:
                    self._stop(run.id, "its job is unknown to the mesh", now, fx)
            return
        self._unknown.pop(run.id, None)
        self._attempts.pop(run.id, None)
        if message.seq > run.acked_seq:
            run = self._put(replace(run, acked_seq=message.seq), fx)
        if message.verdict == "stop" and run.phase != "ended":
            self._stop(run.id, "stopped by its requester", now, fx)
            return
        if run.phase == "ended" and run.acked_seq >= run.report_seq:
            del self.runs[run.id]
            self._sent_at.pop(run.id, None)
            fx.delete_run(run.id)
            self._remember_ended(run.id, run)

    # --- the engine's reports -----------------------------------------------------------------

    def on_ended(
        self, execution_id: str, exit_code: int | None, error: str, now: float, fx: Effects
    ) -> None:
        run = self.runs.get(execution_id)
        if run is None or run.phase == "ended":
            return
        if run.stop_reason and not error:
            error = run.stop_reason
        ended = replace(run, phase="ended", ended_at=now, exit_code=exit_code, error=error)
        self._report(self._put(ended, fx), now, fx)
        self.start_from_queue(now, fx)

    def recovered(self, lost: Iterable[str], now: float, fx: Effects) -> None:
        self._recovered = True
        for execution_id in lost:
            self.on_ended(execution_id, None, "the node restarted while it ran", now, fx)
        for run in self.runs.values():
            if run.acked_seq < run.report_seq or run.phase != "ended":
                self._report(run, now, fx)
        self.start_from_queue(now, fx)

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float, fx: Effects) -> None:
        for execution_id in [e for e, r in self._reservations.items() if r.expires_at <= now]:
            del self._reservations[execution_id]
        for run in list(self.runs.values()):
            sent = self._sent_at.get(run.id)
            if sent is None:
                continue
            if run.acked_seq < run.report_seq and now >= sent + self.params.report_retry_s:
                self._send_report(run, now, fx)
            elif run.phase == "running" and now >= sent + self.params.refresh_s:
                self._report(run, now, fx)
        self.start_from_queue(now, fx)

    def start_from_queue(self, now: float, fx: Effects) -> None:
        if not self._recovered:
            return
        waiting = sorted(
            (run for run in self.runs.values() if run.phase == "queued"),
            key=lambda run: (-run.execution.priority, run.execution.created_at, run.id),
        )
        free = self.node.capacity - self.used()
        for run in waiting:
            resources = run.execution.resources
            if resources.shortfall(free):
                continue  # a smaller one behind it may still fit
            free -= resources
            try:
                job = self.job_of(run)
            except RemoteProtocolError as error:
                self.on_ended(run.id, None, str(error), now, fx)
                continue
            started = self._put(replace(run, phase="running", started_at=now), fx)
            fx.do(StartExecution(started.execution, job))
            self._report(started, now, fx)

    # --- helpers ------------------------------------------------------------------------------

    def _stop(self, execution_id: str, reason: str, now: float, fx: Effects) -> None:
        run = self.runs.get(execution_id)
        if run is None or run.phase == "ended":
            return
        if run.phase == "queued":
            ended = replace(run, phase="ended", ended_at=now, error=reason, stop_reason=reason)
            self._report(self._put(ended, fx), now, fx)
            return
        if not run.stop_reason:
            self._put(replace(run, stop_reason=reason), fx)
            fx.do(StopExecution(execution_id, reason))

    def _remember_ended(self, execution_id: str, run: LocalRun | None = None) -> None:
        self._ended_ids[execution_id] = replace(run, job=b"") if run is not None else None
        while len(self._ended_ids) > self.params.ended_memory:
            self._ended_ids.popitem(last=False)

    def _put(self, run: LocalRun, fx: Effects) -> LocalRun:
        self.runs[run.id] = run
        fx.put_run(run)
        return run

    def _report(self, run: LocalRun, now: float, fx: Effects) -> None:
        run = self._put(replace(run, report_seq=run.report_seq + 1), fx)
        self._send_report(run, now, fx)

    def _send_report(self, run: LocalRun, now: float, fx: Effects) -> None:
        # The requester that started the run, unless it is gone or has stopped answering
        # (it may have stepped down after a partition healed): then the job's top-ranked
        # requester now, which holds the job or will take it over.
        attempts = self._attempts.get(run.id, 0) + 1
        self._attempts[run.id] = attempts
        target = run.requester
        if self._gone(target) or attempts > self.params.reroute_after_attempts:
            target = self._route(run.job_id) or target
        self._sent_at[run.id] = now
        report = ExecutionReport(
            job_id=run.job_id,
            execution_id=run.id,
            seq=run.report_seq,
            term=self._terms.get(run.job_id, run.term),
            phase=run.phase,
            started_at=run.started_at,
            ended_at=run.ended_at,
            exit_code=run.exit_code,
            error=run.error,
        )
        fx.send(target, report, self._addrs(target))
