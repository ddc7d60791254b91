"""The compute side's own judgement: bids, reservations, the operator's probe and fencing
(messages in, messages and commands out; no sleeps)."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.core.commands import RunBidProbe, Send, StartExecution
from meshnode.core.compute import ComputeParams, ComputeSide
from meshnode.core.effects import Effects
from meshnode.core.messages import AskForBid, Bid, JobAck, StartRun, encode_job_record
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.errors import RemoteProtocolError
from meshnode.spec import job_from_document

GiB = 1024**3
NODE = NodeInfo(
    id="c1",
    capacity=ResourceAmounts(cpu_millicores=1000, memory_bytes=2 * GiB),
    engines=("wasm",),
    input_types=("inline",),
    publishers=("local",),
)
SMALL = ResourceAmounts(cpu_millicores=400, memory_bytes=GiB // 4)


def job(**fields: Any) -> JobRecord:
    network = fields.pop("network", None)
    task: dict[str, Any] = {
        "Engine": {"Type": fields.pop("engine", "wasm"), "Params": {"EntryModule": "m.wasm"}},
    }
    if fields.pop("docker", False):
        task["Engine"] = {"Type": "docker", "Params": {"Image": "busybox"}}
    if network:
        task["Network"] = {"Type": network}
    spec = job_from_document({"Type": "batch", "Tasks": [task]})
    return JobRecord(id="j-1", spec=spec, created_at=0.0, modified_at=0.0)


def compute(**params: Any) -> ComputeSide:
    probe = params.pop("probe", False)
    side = ComputeSide(
        "c1",
        node=NODE,
        params=ComputeParams(**params),
        probe_enabled=probe,
        route=lambda job_id: "r1",
        gone=lambda node_id: False,
        addrs=lambda node_id: (),
    )
    side.recovered((), 0.0, Effects("c1"))
    return side


def ask(side: ComputeSide, record: JobRecord, execution_id: str, *, term: int = 1,
        resources: ResourceAmounts = SMALL, now: float = 0.0) -> Effects:  # fmt: skip
    fx = Effects("c1")
    message = AskForBid(
        job_id=record.id, term=term, execution_id=execution_id,
        job=encode_job_record(record), resources=resources,
    )  # fmt: skip
    side.on_ask_for_bid("r1", message, now, fx)
    return fx


def bids(fx: Effects) -> list[Bid]:
    return [c.message for c in fx.commands if isinstance(c, Send) and isinstance(c.message, Bid)]


def test_a_node_that_can_run_it_bids_and_reserves_what_it_asked_for() -> None:
    side = compute(reservation_ttl_s=10.0)
    (bid,) = bids(ask(side, job(), "e-1"))
    assert bid == Bid(job_id="j-1", execution_id="e-1", accepted=True)
    assert side.committed(5.0) == SMALL
    side.tick(10.0, Effects("c1"))
    assert side.committed(10.0) == ResourceAmounts()  # the reservation ran out


def test_a_missing_engine_is_a_refusal_that_says_so() -> None:
    (bid,) = bids(ask(compute(), job(docker=True), "e-1"))
    assert not bid.accepted
    assert "docker" in bid.reason


def test_a_node_that_denies_networked_jobs_refuses_them_by_name() -> None:
    side = compute(accept_networked=False)
    (bid,) = bids(ask(side, job(network="Full"), "e-1"))
    assert not bid.accepted
    assert bid.reason == "this node does not accept networked jobs (Network Full)"
    (plain,) = bids(ask(side, job(), "e-2"))
    assert plain.accepted


def test_work_larger_than_the_node_is_refused_and_reservations_count() -> None:
    side = compute()
    big = ResourceAmounts(cpu_millicores=4000, memory_bytes=GiB)
    (bid,) = bids(ask(side, job(), "e-1", resources=big))
    assert not bid.accepted
    assert bid.reason.startswith("not enough capacity")


def test_the_operators_probe_decides_and_its_words_are_the_reason() -> None:
    side = compute(probe=True)
    fx = ask(side, job(), "e-1")
    assert bids(fx) == []
    (probe,) = [c for c in fx.commands if isinstance(c, RunBidProbe)]
    assert probe.execution_id == "e-1"
    answer = Effects("c1")
    side.on_probe_done("e-1", False, "maintenance window", 1.0, answer)
    (bid,) = bids(answer)
    assert not bid.accepted
    assert bid.reason == "the node's bid probe said no: maintenance window"


def test_a_repeated_ask_gets_the_same_answer_without_a_second_reservation() -> None:
    side = compute()
    ask(side, job(), "e-1")
    (bid,) = bids(ask(side, job(), "e-1"))
    assert bid.accepted
    assert side.committed(1.0) == SMALL


def execution(node_id: str = "c1") -> ExecutionRecord:
    return ExecutionRecord(
        id="e-1", job_id="j-1", node_id=node_id, created_at=0.0, modified_at=0.0,
        resources=SMALL,
    )  # fmt: skip


def test_an_older_term_is_fenced_off() -> None:
    side = compute()
    ask(side, job(), "e-1", term=3)
    fx = Effects("c1")
    side.on_start("r0", StartRun(job_id="j-1", term=2, execution=execution(),
                                 job=encode_job_record(job())), 1.0, fx)  # fmt: skip
    acks = [c.message for c in fx.commands if isinstance(c, Send)]
    assert acks == [JobAck(job_id="j-1", execution_id="e-1", ok=False, seen_term=3)]
    assert not [c for c in fx.commands if isinstance(c, StartExecution)]
    assert side.stats["fenced"] == 1


def test_a_start_of_the_current_term_runs_at_once_and_is_reported_running() -> None:
    side = compute()
    ask(side, job(), "e-1", term=1)
    fx = Effects("c1")
    side.on_start("r1", StartRun(job_id="j-1", term=1, execution=execution(),
                                 job=encode_job_record(job())), 1.0, fx)  # fmt: skip
    assert [type(c).__name__ for c in fx.commands] == ["Send", "StartExecution", "Send"]
    report = fx.commands[2]
    assert isinstance(report, Send)
    assert report.message.phase == "running"  # type: ignore[union-attr]
    assert side.committed(1.0) == SMALL  # the reservation became the run


def test_a_start_for_another_nodes_execution_is_a_peers_error() -> None:
    side = compute()
    with pytest.raises(RemoteProtocolError):
        side.on_start("r1", StartRun(job_id="j-1", term=1, execution=execution("c2"),
                                     job=encode_job_record(job())), 1.0, Effects("c1"))  # fmt: skip
