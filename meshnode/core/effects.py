"""What one step of the core changed and wants done, collected until the step ends.

Rules of this module: the parts of the core (membership, requester, compute) write into one
`Effects` per step; `flush` turns it into commands with `Persist` first. A message to this
node itself never leaves the core: it is queued on `loopback` and handled in the same step,
so a node that is its own requester and its own compute node runs the same protocol as a
mesh of many, without a network.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from meshnode.core.commands import Command, Persist, Send
from meshnode.core.messages import Approval, Message
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord, LocalRun

__all__ = ["Effects"]


class Effects:
    def __init__(self, self_id: str) -> None:
        self.self_id = self_id
        self.commands: list[Command] = []
        self.loopback: deque[tuple[str, Message]] = deque()
        self.jobs: dict[str, JobRecord] = {}
        self.executions: dict[str, ExecutionRecord] = {}
        self.history: list[HistoryEvent] = []
        self.runs: dict[str, LocalRun] = {}
        self.deleted_runs: set[str] = set()
        self.approvals: list[Approval] = []

    def send(self, to: str, message: Message, addrs: tuple[str, ...] = ()) -> None:
        if to == self.self_id:
            self.loopback.append((to, message))
        else:
            self.commands.append(Send(to, message, addrs))

    def do(self, command: Command) -> None:
        self.commands.append(command)

    def record(
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
        self.history.append(
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

    def put_run(self, run: LocalRun) -> None:
        self.runs[run.id] = run
        self.deleted_runs.discard(run.id)

    def delete_run(self, execution_id: str) -> None:
        self.runs.pop(execution_id, None)
        self.deleted_runs.add(execution_id)

    def flush(self) -> list[Command]:
        commands = self.commands
        self.commands = []
        if (
            self.jobs
            or self.executions
            or self.history
            or self.runs
            or self.deleted_runs
            or (self.approvals)
        ):
            persist = Persist(
                jobs=tuple(self.jobs.values()),
                executions=tuple(self.executions.values()),
                history=tuple(self.history),
                runs=tuple(self.runs.values()),
                deleted_runs=tuple(sorted(self.deleted_runs)),
                approvals=tuple(self.approvals),
            )
            self.jobs, self.executions, self.history = {}, {}, []
            self.runs, self.deleted_runs, self.approvals = {}, set(), []
            commands = [persist, *commands]
        return commands
