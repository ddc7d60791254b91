"""The mesh with real processes: 2–4 `meshnode start` nodes on loopback, wasm jobs of every
type across them, failover after kill -9, a new node joining, swarm keys, approval and hostile
peers. Every node runs with `--swarm-host 127.0.0.1 --no-mdns` (network rule)."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from meshnode.core.election import rank
from tests.engines import wasm_modules
from tests.integration.nodeproc import NodeProcess, meshnode_executable

pytestmark = pytest.mark.timeout(180)

MESH_FLAGS = ("--swarm-host", "127.0.0.1", "--swarm-port", "0", "--no-mdns", "--no-docker")
BID_ACCEPTED = 5
COMPLETED = 7


def module_url(wat: str) -> str:
    return "data:application/wasm;base64," + base64.b64encode(wasmtime.wat2wasm(wat)).decode()


def wasm_job(job_type: str, wat: str, **fields: Any) -> dict[str, Any]:
    return {
        "Type": job_type,
        **fields,
        "Tasks": [
            {
                "Name": "main",
                "Engine": {"Type": "wasm", "Params": {"EntryModule": module_url(wat)}},
                "Publisher": {"Type": "local"},
                "Resources": {"CPU": "100m", "Memory": "64Mb"},
            }
        ],
    }


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def alive_ids(node: NodeProcess) -> set[str]:
    answer = node.get("/api/v1/orchestrator/nodes")
    items = answer.get("Nodes") or answer.get("Items") or []
    return {n["Info"]["NodeID"] for n in items if n.get("Connection") == "CONNECTED"}


def running_on(node: NodeProcess, job_id: str) -> list[str]:
    return [
        e["NodeID"]
        for e in node.executions(job_id)
        if e["ComputeState"]["StateType"] == BID_ACCEPTED
    ]


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []

    def add(self, *extra: str, peers: bool = True) -> NodeProcess:
        data_dir = self.root / f"node{len(self.nodes)}"
        data_dir.mkdir()
        flags = list(MESH_FLAGS) + list(extra)
        if peers and self.nodes:
            flags += ["--peers", self.nodes[0].multiaddr]
        node = NodeProcess(data_dir, *flags).start()
        self.nodes.append(node)
        return node

    def wait_converged(self, members: list[NodeProcess] | None = None) -> None:
        members = members or [n for n in self.nodes if n.process and n.process.poll() is None]
        wanted = {n.node_id for n in members}
        for node in members:
            wait_until(lambda node=node: alive_ids(node) >= wanted, 30, "membership")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.stop()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    stack = Mesh(tmp_path)
    yield stack
    stack.stop()


def three(mesh: Mesh, *extra: str) -> list[NodeProcess]:
    for _ in range(3):
        mesh.add(*extra)
    mesh.wait_converged()
    return mesh.nodes


def test_batch_runs_count_executions_on_distinct_nodes_and_every_node_answers_the_same(
    mesh: Mesh,
) -> None:
    nodes = three(mesh)
    job_id = nodes[2].submit(wasm_job("batch", wasm_modules.hello("hi from a node"), Count=2))
    job = nodes[0].wait_for(job_id)
    assert job["State"]["StateType"] == "Completed"
    executions = nodes[1].executions(job_id)
    completed = [e for e in executions if e["ComputeState"]["StateType"] == COMPLETED]
    assert len(completed) == 2
    assert len({e["NodeID"] for e in completed}) == 2
    views = [
        (n.job(job_id)["State"]["StateType"], sorted(e["ID"] for e in n.executions(job_id)))
        for n in nodes
    ]
    assert views[0] == views[1] == views[2]
    listed = [{j["ID"] for j in n.get("/api/v1/orchestrator/jobs")["Items"]} for n in nodes]
    assert all(job_id in ids for ids in listed)
    logs = subprocess.run(
        [meshnode_executable(), "job", "logs", job_id, "--api-port", str(nodes[1].port)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert logs.stdout.count("hi from a node") == 2


def test_ops_runs_once_on_every_node(mesh: Mesh) -> None:
    nodes = three(mesh)
    job_id = nodes[0].submit(wasm_job("ops", wasm_modules.hello("ops")))
    assert nodes[1].wait_for(job_id)["State"]["StateType"] == "Completed"
    ran_on = sorted(e["NodeID"] for e in nodes[0].executions(job_id))
    assert ran_on == sorted(n.node_id for n in nodes)


def test_a_daemon_runs_on_every_node_and_is_placed_on_a_node_that_joins(mesh: Mesh) -> None:
    first, second = mesh.add(), mesh.add()
    mesh.wait_converged()
    job_id = first.submit(wasm_job("daemon", wasm_modules.sleep_then_print(600.0)))
    wait_until(lambda: len(running_on(first, job_id)) == 2, 30, "two daemon executions")
    newcomer = mesh.add()
    joined_at = time.monotonic()
    wait_until(
        lambda: newcomer.node_id in running_on(second, job_id), 30, "the newcomer's execution"
    )
    assert time.monotonic() - joined_at < 20
    assert sorted(running_on(first, job_id)) == sorted(n.node_id for n in mesh.nodes)


def test_a_service_is_rescheduled_when_its_node_is_killed(mesh: Mesh) -> None:
    nodes = three(mesh)
    job_id = nodes[0].submit(wasm_job("service", wasm_modules.sleep_then_print(600.0), Count=1))
    (victim_id,) = wait_until(lambda: running_on(nodes[0], job_id), 30, "the service to run")
    victim = next(n for n in nodes if n.node_id == victim_id)
    witness = next(n for n in nodes if n is not victim)
    victim.kill()
    replaced = wait_until(
        lambda: [n for n in running_on(witness, job_id) if n != victim_id], 60, "a replacement"
    )
    assert len(replaced) == 1
    time.sleep(2.0)
    assert len([n for n in running_on(witness, job_id) if n != victim_id]) == 1


def test_killing_the_primary_requester_of_a_running_batch_job_fails_over(mesh: Mesh) -> None:
    nodes = three(mesh)
    entry = nodes[0]
    job_id = entry.submit(wasm_job("batch", wasm_modules.sleep_then_print(4.0), Count=2))
    wait_until(lambda: len(running_on(entry, job_id)) == 2, 30, "two running executions")
    primary_id = rank(job_id, [n.node_id for n in nodes])[0]
    primary = next(n for n in nodes if n.node_id == primary_id)
    survivors = [n for n in nodes if n is not primary]
    primary.kill()
    most_running = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            state = survivors[0].job(job_id)["State"]["StateType"]
            running = running_on(survivors[1], job_id)
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
            continue
        most_running = max(most_running, len([n for n in running if n != primary_id]))
        if state in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.2)
    assert state == "Completed", state
    assert most_running <= 2
    completed = [
        e for e in survivors[1].executions(job_id) if e["ComputeState"]["StateType"] == COMPLETED
    ]
    assert len(completed) >= 2


def test_a_node_without_the_swarm_key_cannot_join(mesh: Mesh, tmp_path: Path) -> None:
    key = subprocess.run(
        [meshnode_executable(), "swarm-key", "generate"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    other = subprocess.run(
        [meshnode_executable(), "swarm-key", "generate"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    (tmp_path / "swarm.key").write_text(key)
    (tmp_path / "other.key").write_text(other)
    first = mesh.add("--swarm-key", str(tmp_path / "swarm.key"))
    member = mesh.add("--swarm-key", str(tmp_path / "swarm.key"))
    no_key = mesh.add()
    wrong_key = mesh.add("--swarm-key", str(tmp_path / "other.key"))
    mesh.wait_converged([first, member])
    time.sleep(6.0)
    assert alive_ids(first) == {first.node_id, member.node_id}
    assert alive_ids(no_key) == {no_key.node_id}
    assert alive_ids(wrong_key) == {wrong_key.node_id}


def test_an_unapproved_node_gets_no_work_until_approved(mesh: Mesh) -> None:
    first = mesh.add("--require-approval")
    second = mesh.add("--require-approval")
    mesh.wait_converged()

    def decide(node: NodeProcess, target: str, action: str) -> None:
        subprocess.run(
            [meshnode_executable(), "node", action, target, "--api-port", str(node.port)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip

    decide(second, first.node_id, "approve")
    time.sleep(1.0)
    job_id = first.submit(wasm_job("ops", wasm_modules.hello("approved only")))
    second.wait_for(job_id)
    assert [e["NodeID"] for e in first.executions(job_id)] == [first.node_id]
    decide(first, second.node_id, "approve")
    time.sleep(1.0)
    job_id = second.submit(wasm_job("ops", wasm_modules.hello("both")))
    first.wait_for(job_id)
    assert sorted(e["NodeID"] for e in first.executions(job_id)) == sorted(
        [first.node_id, second.node_id]
    )
    # The decisions survive a restart.
    second.stop()
    second.start()
    mesh.wait_converged([first, second])
    job_id = second.submit(wasm_job("ops", wasm_modules.hello("after restart")))
    first.wait_for(job_id)
    assert len(first.executions(job_id)) == 2


def test_hostile_peer_frames_are_dropped_and_counted_and_the_node_keeps_serving(
    mesh: Mesh,
) -> None:
    node = mesh.add()
    script = Path(__file__).with_name("hostile_peer.py")
    python = os.fspath(Path(meshnode_executable()).parent / "python")
    result = subprocess.run(
        [python, str(script), node.multiaddr, str(node.port)],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stats = node.get("/api/v1/agent/mesh")["Stats"]
    # random bytes, a wrong shape, gossip on a direct stream, a report for another's execution
    assert stats["messages_dropped"] >= 4, stats
    assert stats["requester_forged"] >= 1, stats
    assert stats["requester_stale_term"] >= 1, stats  # a Replicate of a lower term
    job_id = node.submit(wasm_job("batch", wasm_modules.hello("still serving")))
    assert node.wait_for(job_id)["State"]["StateType"] == "Completed"
    assert node.process is not None and node.process.poll() is None


def test_logs_follow_and_job_get_reach_the_node_that_ran_it(mesh: Mesh, tmp_path: Path) -> None:
    asking = mesh.add("--labels", "name=asking")
    mesh.add("--labels", "name=running")
    mesh.wait_converged()
    job = wasm_job("batch", wasm_modules.sleep_then_print(2.0))
    job["Constraints"] = [{"Key": "name", "Operator": "=", "Values": ["running"]}]
    job_id = asking.submit(job)
    follow = subprocess.run(
        [meshnode_executable(), "job", "logs", "--follow", job_id, "--api-port", str(asking.port)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert follow.stdout.splitlines() == ["sleeping", "awake"]
    assert asking.wait_for(job_id)["State"]["StateType"] == "Completed"
    (execution,) = asking.executions(job_id)
    assert execution["NodeID"] == mesh.nodes[1].node_id
    got = subprocess.run(
        [meshnode_executable(), "job", "get", job_id, "--api-port", str(asking.port)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("job-")]
    assert (folder / execution["ID"] / "stdout").read_text() == "sleeping\nawake\n"


def test_a_bid_probe_that_says_no_keeps_work_off_its_node_and_says_why(mesh: Mesh) -> None:
    willing = mesh.add()
    refusing = mesh.add("--bid-probe-exec", "sh -c 'echo maintenance window >&2; exit 1'")
    mesh.wait_converged()
    job_id = willing.submit(wasm_job("ops", wasm_modules.hello("probed")))
    assert refusing.wait_for(job_id)["State"]["StateType"] in ("Completed", "Failed")
    executions = {e["NodeID"]: e for e in willing.executions(job_id)}
    assert executions[willing.node_id]["ComputeState"]["StateType"] == COMPLETED
    refused = executions[refusing.node_id]
    assert refused["ComputeState"]["StateType"] == 4  # AskForBidRejected
    assert "maintenance window" in refused["ComputeState"]["Message"]
