"""Schedulers are pure: (job, executions, nodes, now) → plan."""

from __future__ import annotations

from meshnode.core.policy import Policy
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.core.scheduler import plan
from meshnode.core.states import DesiredState, ExecutionState, JobState
from meshnode.spec import job_from_document

GiB = 1024**3


def node(node_id: str) -> NodeInfo:
    capacity = ResourceAmounts(cpu_millicores=4000, memory_bytes=8 * GiB, disk_bytes=8 * GiB)
    return NodeInfo(id=node_id, capacity=capacity, engines=("docker",))


def running(execution_id: str, node_id: str, created_at: float) -> ExecutionRecord:
    return ExecutionRecord(
        id=execution_id,
        job_id="j-1",
        node_id=node_id,
        state=ExecutionState.BID_ACCEPTED,
        desired=DesiredState.RUNNING,
        created_at=created_at,
        modified_at=created_at,
        started_at=created_at,
    )


def test_a_service_with_two_executions_on_one_node_stops_the_newer_and_places_elsewhere() -> None:
    # Both sides of a healed partition placed one on n1: Count 2 means two distinct nodes.
    spec = job_from_document(
        {
            "Type": "service",
            "Count": 2,
            "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "x"}}}],
        }
    )
    job = JobRecord(id="j-1", spec=spec, state=JobState.RUNNING, created_at=0.0, modified_at=0.0)
    executions = [running("e-old", "n1", 1.0), running("e-new", "n1", 2.0)]
    result = plan(job, executions, [node("n1"), node("n2")], 10.0, Policy(), ResourceAmounts())
    assert [execution_id for execution_id, _ in result.stop] == ["e-new"]
    assert [p.node_id for p in result.create] == ["n2"]
