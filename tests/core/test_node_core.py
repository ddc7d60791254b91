"""The node core, events in and commands out, with the clock as an argument (no sleeps)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshnode.core.node import (
    Command,
    Event,
    ExecutionEnded,
    JobAccepted,
    NodeCore,
    Persist,
    Recovered,
    Reply,
    StartExecution,
    StopExecution,
    StopJob,
    SubmitJob,
    Tick,
)
from meshnode.core.records import JobRecord, LocalRun, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.core.states import DesiredState, ExecutionState, JobState
from meshnode.spec import job_from_document

GiB = 1024**3


def node_info(**changes: Any) -> NodeInfo:
    fields: dict[str, Any] = {
        "id": "n1",
        "labels": {"Operating-System": "linux", "region": "eu"},
        "capacity": ResourceAmounts(cpu_millicores=2000, memory_bytes=8 * GiB, disk_bytes=GiB),
        "engines": ("wasm", "docker"),
        "input_types": ("localDirectory", "urlDownload", "inline"),
        "publishers": ("local", "noop"),
        "unavailable": {"publisher ipfs": "arrives with content-addressed data"},
    }
    fields.update(changes)
    return NodeInfo(**fields)


def spec(job_type: str = "batch", **fields: Any) -> Any:
    task = fields.pop("task", {})
    document = {
        "Type": job_type,
        "Tasks": [
            {"Engine": {"Type": "docker", "Params": {"Image": "busybox"}}, **task},
        ],
        **fields,
    }
    return job_from_document(document)


class Driver:
    """Feeds events at chosen instants and keeps what the core persisted."""

    def __init__(self, node: NodeInfo | None = None, seed: int = 7) -> None:
        self.core = NodeCore(node or node_info(), rng=random.Random(seed))
        self.now = 0.0
        self.jobs: dict[str, JobRecord] = {}
        self.runs: dict[str, LocalRun] = {}
        self.history: list[tuple[str, str, str]] = []
        self.step(Recovered())

    def step(self, event: Event, at: float | None = None) -> list[Command]:
        if at is not None:
            self.now = at
        commands = self.core.handle(event, self.now)
        for command in commands:
            if isinstance(command, Persist):
                self.jobs.update({job.id: job for job in command.jobs})
                self.history.extend((h.kind, h.previous, h.new) for h in command.history)
                self.runs.update({run.id: run for run in command.runs})
                for execution_id in command.deleted_runs:
                    self.runs.pop(execution_id, None)
        return commands

    def submit(self, job_spec: Any, at: float | None = None) -> tuple[str, list[Command]]:
        commands = self.step(SubmitJob("request", job_spec), at)
        accepted = [c for c in commands if isinstance(c, JobAccepted)]
        assert len(accepted) == 1
        return accepted[0].job_id, commands

    def state(self, job_id: str) -> JobState:
        return self.jobs[job_id].state


def starts(commands: list[Command]) -> list[StartExecution]:
    return [c for c in commands if isinstance(c, StartExecution)]


def test_persist_comes_first_and_holds_every_change() -> None:
    driver = Driver()
    _job_id, commands = driver.submit(spec())
    assert isinstance(commands[0], Persist)
    assert [type(c) for c in commands[1:]] == [JobAccepted, StartExecution]
    persisted = commands[0]
    assert isinstance(persisted, Persist)
    assert persisted.jobs[-1].state is JobState.RUNNING
    assert persisted.executions[-1].state is ExecutionState.BID_ACCEPTED
    assert persisted.executions[-1].started_at == 0.0


def test_a_batch_job_runs_completes_and_records_every_transition() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(), at=1.0)
    (start,) = starts(commands)
    assert start.job.id == job_id
    driver.step(ExecutionEnded(start.execution.id, 0), at=2.0)
    assert driver.state(job_id) is JobState.COMPLETED
    assert driver.history == [
        ("job", "", "Pending"),
        ("execution", "", "New"),
        ("execution", "New", "AskForBid"),
        ("job", "Pending", "Running"),
        ("execution", "AskForBid", "AskForBidAccepted"),
        ("execution", "AskForBidAccepted", "BidAccepted"),
        ("execution", "BidAccepted", "Completed"),
        ("job", "Running", "Completed"),
    ]
    assert driver.core.live_job_ids == []  # finished jobs leave the core's memory


def test_an_ended_execution_is_no_longer_wanted_running() -> None:
    driver = Driver()
    _, commands = driver.submit(spec())
    (start,) = starts(commands)
    assert start.execution.desired is DesiredState.RUNNING
    commands = driver.step(ExecutionEnded(start.execution.id, 0), at=1.0)
    persist = commands[0]
    assert isinstance(persist, Persist)
    (ended,) = persist.executions
    assert ended.state is ExecutionState.COMPLETED
    assert ended.desired is DesiredState.STOPPED


def test_a_failed_batch_execution_is_retried_with_doubling_backoff_then_the_job_fails() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(), at=0.0)
    delays = []
    for attempt in range(4):
        (start,) = starts(commands)
        ended_at = driver.now + 1.0
        commands = driver.step(ExecutionEnded(start.execution.id, 2), at=ended_at)
        if attempt == 3:
            break
        assert starts(commands) == []
        deadline = driver.core.job_deadline(job_id)
        assert deadline is not None
        delays.append(deadline - ended_at)
        assert starts(driver.step(Tick(), at=deadline - 0.01)) == []
        commands = driver.step(Tick(), at=deadline)
    assert delays == [1.0, 2.0, 4.0]
    assert driver.state(job_id) is JobState.FAILED
    assert "exited with code 2 (after 3 retries)" in driver.jobs[job_id].message


def test_meta_overrides_the_retry_limit() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(Meta={"meshnode.io/max-retries": "0"}))
    (start,) = starts(commands)
    driver.step(ExecutionEnded(start.execution.id, 1, ""), at=1.0)
    assert driver.state(job_id) is JobState.FAILED


def test_count_above_the_number_of_nodes_waits_for_queue_timeout_then_says_why() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(Count=2, task={"Timeouts": {"QueueTimeout": 30}}), at=0.0)
    (start,) = starts(commands)
    assert driver.state(job_id) is JobState.RUNNING
    assert "needs 2 nodes, 1 can run it" in driver.jobs[job_id].message
    driver.step(ExecutionEnded(start.execution.id, 0), at=5.0)
    assert driver.state(job_id) is JobState.QUEUED
    assert driver.core.job_deadline(job_id) == 30.0
    driver.step(Tick(), at=30.0)
    assert driver.state(job_id) is JobState.FAILED
    message = driver.jobs[job_id].message
    assert "needs 2 nodes" in message
    assert "node n1: already has an execution of this job" in message
    assert "waited 30 s" in message


def test_without_queue_timeout_an_unplaceable_job_fails_at_once_with_per_node_reasons() -> None:
    driver = Driver()
    constraints = [{"Key": "region", "Operator": "=", "Values": ["us"]}]
    job_id, commands = driver.submit(spec(Constraints=constraints))
    assert starts(commands) == []
    assert driver.state(job_id) is JobState.FAILED
    message = driver.jobs[job_id].message
    assert "node n1: label region is 'eu' (the job needs region = us)" in message


@pytest.mark.parametrize(
    ("task", "fragment"),
    [
        ({"Publisher": {"Type": "ipfs"}}, "publisher ipfs is not available: arrives with"),
        (
            {"Engine": {"Type": "wasm", "Params": {"EntryModule": "/opt/m.wasm"}}},
            "not allow-listed",
        ),
        ({"Resources": {"CPU": "4"}}, "not enough capacity in total: CPU 4000m > 2000m"),
    ],
)
def test_reasons_a_node_cannot_run_a_job(task: dict[str, Any], fragment: str) -> None:
    driver = Driver()
    job_id, _ = driver.submit(spec(task=task))
    assert driver.state(job_id) is JobState.FAILED
    assert fragment in driver.jobs[job_id].message


def test_missing_engine_names_the_reason() -> None:
    node = node_info(engines=("wasm",), unavailable={"engine docker": "Docker is not running"})
    driver = Driver(node)
    job_id, _ = driver.submit(spec())
    assert "engine docker is not available: Docker is not running" in driver.jobs[job_id].message


def test_the_run_queue_waits_for_capacity_and_starts_higher_priority_first() -> None:
    driver = Driver(node_info(capacity=ResourceAmounts(cpu_millicores=1000, memory_bytes=GiB)))
    small = {"Resources": {"CPU": "1", "Memory": "64Mb"}}
    first, commands = driver.submit(spec(task=small), at=0.0)
    (running,) = starts(commands)
    low, commands = driver.submit(spec(task=small, Priority=1), at=1.0)
    assert starts(commands) == []
    high, commands = driver.submit(spec(task=small, Priority=9), at=2.0)
    assert starts(commands) == []
    commands = driver.step(ExecutionEnded(running.execution.id, 0), at=3.0)
    (high_start,) = starts(commands)
    assert high_start.job.id == high
    commands = driver.step(ExecutionEnded(high_start.execution.id, 0), at=4.0)
    assert [s.job.id for s in starts(commands)] == [low]
    assert driver.state(first) is JobState.COMPLETED


def test_ops_runs_once_on_the_node_and_completes() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec("ops"))
    (start,) = starts(commands)
    assert driver.core.job(job_id) is not None
    driver.step(ExecutionEnded(start.execution.id, 0), at=1.0)
    assert driver.state(job_id) is JobState.COMPLETED


def test_ops_failure_is_not_retried() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec("ops"))
    (start,) = starts(commands)
    commands = driver.step(ExecutionEnded(start.execution.id, 3), at=1.0)
    assert starts(commands) == []
    assert driver.state(job_id) is JobState.FAILED
    assert "node n1: exited with code 3" in driver.jobs[job_id].message


@pytest.mark.parametrize("job_type", ["daemon", "service"])
def test_long_running_jobs_restart_with_exponential_backoff(job_type: str) -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(job_type), at=0.0)
    delays = []
    for _ in range(4):
        (start,) = starts(commands)
        end = driver.now + 0.5
        assert starts(driver.step(ExecutionEnded(start.execution.id, 1), at=end)) == []
        deadline = driver.core.job_deadline(job_id)
        assert deadline is not None
        delays.append(deadline - end)
        commands = driver.step(Tick(), at=deadline)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert driver.state(job_id) is JobState.RUNNING


def test_a_long_run_resets_the_restart_backoff() -> None:
    driver = Driver()
    _, commands = driver.submit(spec("daemon"), at=0.0)
    (start,) = starts(commands)
    commands = driver.step(ExecutionEnded(start.execution.id, 1), at=600.0)
    assert len(starts(commands)) == 1  # ran 10 minutes: restarted at once


@pytest.mark.parametrize("job_type", ["batch", "ops", "daemon", "service"])
def test_stop_a_running_job(job_type: str) -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec(job_type))
    (start,) = starts(commands)
    commands = driver.step(StopJob("stop", job_id, "enough"), at=1.0)
    assert StopExecution(start.execution.id, "enough") in commands
    assert Reply("stop", True, f"job {job_id} stopped") in commands
    assert driver.state(job_id) is JobState.STOPPED
    commands = driver.step(ExecutionEnded(start.execution.id, None, "stopped"), at=2.0)
    assert starts(commands) == []
    assert ("execution", "BidAccepted", "Cancelled") in driver.history
    assert driver.core.live_job_ids == []


def test_stop_a_queued_job_cancels_its_waiting_execution() -> None:
    driver = Driver(node_info(capacity=ResourceAmounts(cpu_millicores=500, memory_bytes=GiB)))
    _, commands = driver.submit(spec(task={"Resources": {"CPU": "500m", "Memory": "1Mb"}}))
    waiting, commands = driver.submit(spec(task={"Resources": {"CPU": "500m", "Memory": "1Mb"}}))
    assert starts(commands) == []
    commands = driver.step(StopJob("stop", waiting, ""), at=1.0)
    assert not [c for c in commands if isinstance(c, StopExecution)]
    assert driver.state(waiting) is JobState.STOPPED
    assert ("execution", "BidAccepted", "Cancelled") in driver.history


def test_stop_an_unknown_job_is_refused() -> None:
    driver = Driver()
    commands = driver.step(StopJob("stop", "j-nope", ""))
    assert Reply("stop", False, "job j-nope is not running") in commands


def test_total_timeout_stops_the_job() -> None:
    driver = Driver()
    job_id, commands = driver.submit(spec("service", task={"Timeouts": {"TotalTimeout": 60}}))
    (start,) = starts(commands)
    assert driver.core.job_deadline(job_id) == 60.0
    commands = driver.step(Tick(), at=60.0)
    assert StopExecution(start.execution.id, "the job exceeded its TotalTimeout of 60 s") in (
        commands
    )
    assert driver.state(job_id) is JobState.FAILED


def test_executions_lost_in_a_restart_fail_and_batch_retries_them() -> None:
    first = Driver()
    job_id, commands = first.submit(spec())
    (start,) = starts(commands)
    job = first.jobs[job_id]
    restarted = NodeCore(
        node_info(),
        rng=random.Random(1),
        jobs=[job],
        executions=[start.execution],
        runs=first.runs.values(),
    )
    commands = restarted.handle(Recovered(lost=(start.execution.id,)), 1.0)
    persist = commands[0]
    assert isinstance(persist, Persist)
    lost = next(e for e in persist.executions if e.id == start.execution.id)
    assert lost.state is ExecutionState.FAILED
    assert lost.error == "the node restarted while it ran"
    assert restarted.job_deadline(job_id) == 2.0  # the first retry, one second later


def test_nothing_starts_before_recovery_is_done() -> None:
    core = NodeCore(node_info(), rng=random.Random(1))
    commands = core.handle(SubmitJob("r", spec()), 0.0)
    assert starts(commands) == []
    assert len(starts(core.handle(Recovered(), 0.0))) == 1


def test_the_same_events_give_the_same_commands() -> None:
    def run() -> list[Command]:
        driver = Driver(seed=42)
        _, commands = driver.submit(spec(Count=1))
        return commands

    assert run() == run()
