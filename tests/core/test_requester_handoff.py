"""Submissions, handovers and ends between requesters: bugs the simulator found at 50 nodes,
pinned here as events in, messages out (a real `NodeCore`, its peers played by hand)."""

from __future__ import annotations

import random
from typing import Any

from meshnode.core.election import rank
from meshnode.core.messages import (
    Alive,
    FetchJobReply,
    Handover,
    HandoverAck,
    MemberInfo,
    Message,
    PushPull,
    Replicate,
    ReplicateAck,
    StopRun,
    SubmitAck,
    SubmitJob,
    decode,
    encode,
    encode_job_record,
)
from meshnode.core.node import Command, MessageReceived, NodeCore, Recovered, Send, Tick
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.states import DesiredState, ExecutionState, JobState
from meshnode.spec import job_from_document


def core(node_id: str, *peers: str) -> NodeCore:
    """A settled core that knows `peers` as alive requesters."""
    node = NodeCore(NodeInfo(id=node_id), rng=random.Random(1))
    node.handle(Recovered(), 0.0)
    updates = tuple(
        Alive(node_id=p, incarnation=1, info=MemberInfo(node=NodeInfo(id=p))) for p in peers
    )
    if peers:
        node.handle(MessageReceived(peers[0], encode(PushPull(updates=updates))), 0.0)
    return node


def job_where(top: str, among: list[str], state: JobState = JobState.RUNNING) -> JobRecord:
    """A job record whose rendezvous ranking over `among` puts `top` first."""
    spec = job_from_document(
        {"Type": "batch", "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "x"}}}]}
    )
    for n in range(1000):
        if rank(f"j-{n}", among)[0] == top:
            return JobRecord(
                id=f"j-{n}", spec=spec, state=state, created_at=0.0, modified_at=0.0, term=1
            )
    raise AssertionError("no such job id")


def deliver(node: NodeCore, sender: str, message: Message, now: float) -> list[Command]:
    return node.handle(MessageReceived(sender, encode(message)), now)


def sent(commands: list[Command], kind: type[Any], to: str | None = None) -> list[Any]:
    return [
        c.message
        for c in commands
        if isinstance(c, Send) and isinstance(c.message, kind) and to in (None, c.to)
    ]


def test_a_replica_answers_a_repeated_submission_at_once_instead_of_leading_a_second_copy() -> None:
    replica = core("n1", "n2")
    job = job_where("n2", ["n1", "n2"])
    replicate = Replicate(job_id=job.id, term=3, seq=1, job=encode_job_record(job))
    deliver(replica, "n2", replicate, 1.0)
    commands = deliver(replica, "n3", SubmitJob(request_id="r1", job=encode_job_record(job)), 2.0)
    assert sent(commands, SubmitAck, to="n3") == [SubmitAck(request_id="r1", job_id=job.id)]
    assert not replica.requester.is_primary(job.id)
    assert sent(commands, Replicate) == []  # no rogue term-1 primary


def test_a_handover_carries_the_old_primarys_unanswered_submissions_and_is_acknowledged() -> None:
    new_primary = core("n1")  # alone in its view: it takes over at once
    job = job_where("n1", ["n1"])
    answer = SubmitAck(request_id="r7", job_id=job.id)
    handover = Handover(
        job_id=job.id, term=2, job=encode_job_record(job), answers=(("n5", answer),)
    )
    commands = deliver(new_primary, "n2", handover, 1.0)
    assert sent(commands, HandoverAck, to="n2") == [HandoverAck(job_id=job.id, term=2)]
    # n1 took the job over and replicated it (it has no replicas): the answer is released.
    assert sent(commands, SubmitAck, to="n5") == [answer]


def test_a_handover_is_repeated_until_the_new_top_acknowledges_it() -> None:
    replica = core("n1", "n2")
    job = job_where("n2", ["n1", "n2"])
    handover = Handover(job_id=job.id, term=2, job=encode_job_record(job))
    commands = deliver(replica, "n9", handover, 1.0)  # from a primary that is gone
    assert len(sent(commands, Handover, to="n2")) == 1  # n2 is the top: hand it on
    commands = replica.handle(Tick(), 4.5)
    assert len(sent(commands, Handover, to="n2")) == 1  # lost? again
    deliver(replica, "n2", HandoverAck(job_id=job.id, term=2), 4.6)
    assert sent(replica.handle(Tick(), 9.0), Handover) == []


def test_an_ended_refusal_from_a_replica_counts_as_its_ack_so_the_stops_go_out() -> None:
    primary = core("n1", "n2")
    job = job_where("n1", ["n1", "n2"])
    running = ExecutionRecord(
        id="e-1",
        job_id=job.id,
        node_id="n2",
        state=ExecutionState.BID_ACCEPTED,
        desired=DesiredState.RUNNING,
        created_at=0.0,
        modified_at=0.0,
        started_at=0.5,
        term=1,
    )
    handover = Handover(job_id=job.id, term=1, job=encode_job_record(job), executions=(running,))
    deliver(primary, "n3", handover, 1.0)  # n1 is top: it takes over, asking n2 first
    commands = deliver(primary, "n2", FetchJobReply(job_id=job.id), 1.1)
    assert primary.requester.is_primary(job.id)
    (replicate,) = sent(commands, Replicate, to="n2")
    # n2 ended the job (the user stopped it) and forgot it while n1 was cut off from it.
    refusal = ReplicateAck(
        job_id=job.id, term=replicate.term, seq=replicate.seq, ok=False, ended="Stopped"
    )
    commands = deliver(primary, "n2", refusal, 1.2)
    assert primary.job(job.id) is not None
    assert primary.job(job.id).state is JobState.STOPPED  # type: ignore[union-attr]
    (replicate,) = sent(commands, Replicate, to="n2")
    refusal = ReplicateAck(
        job_id=job.id, term=replicate.term, seq=replicate.seq, ok=False, ended="Stopped"
    )
    commands = deliver(primary, "n2", refusal, 1.3)
    stops = sent(commands, StopRun, to="n2")
    assert [s.execution_id for s in stops] == ["e-1"]
    assert decode(encode(stops[0])) == stops[0]
