"""Each job type end to end through the CLI against a real `meshnode start` process with a
real Docker engine, plus re-attaching to a container after kill -9, and a node without Docker.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.engines.docker_images import busybox_image, docker_client  # noqa: F401 (fixtures)
from tests.integration.nodeproc import NodeProcess, meshnode_executable


@pytest.fixture
def node(tmp_path: Path, busybox_image: str) -> Iterator[NodeProcess]:  # noqa: F811
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    process = NodeProcess(data_dir, "--labels", "role=gateway").start()
    yield process
    process.stop()


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [meshnode_executable(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "MESHNODE_API_PORT": str(node.port)},
    )


def write_spec(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def spec(job_type: str, script: str, extra: str = "") -> str:
    return f"""\
Type: {job_type}
{extra}
Tasks:
  - Engine:
      Type: docker
      Params:
        Image: meshnode-busybox:latest
        Entrypoint: [/bin/sh, -c]
        Parameters: ['{script}']
    Publisher: {{Type: local}}
    ResultPaths: [{{Name: outputs, Path: /outputs}}]
    Resources: {{CPU: 100m, Memory: 32Mb}}
"""


def test_batch_job_runs_and_its_results_come_back(node: NodeProcess, tmp_path: Path) -> None:
    path = write_spec(tmp_path, "batch.yaml", spec("batch", "echo 42 > /outputs/answer; echo done"))
    run = cli(node, "job", "run", "--id-only", "--wait", path)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert node.job(job_id)["State"]["StateType"] == "Completed"
    logs = cli(node, "job", "logs", job_id)
    assert logs.stdout.strip() == "done"
    get = cli(node, "job", "get", job_id, "--output-dir", str(tmp_path / "results"))
    assert get.returncode == 0, get.stderr
    answers = list((tmp_path / "results").rglob("answer"))
    assert [a.read_text() for a in answers] == ["42\n"]


def test_ops_job_runs_once_on_the_matching_node(node: NodeProcess, tmp_path: Path) -> None:
    extra = "Constraints: [{Key: role, Operator: '=', Values: [gateway]}]"
    path = write_spec(tmp_path, "ops.yaml", spec("ops", "hostname", extra))
    run = cli(node, "job", "run", "--id-only", "--wait", path)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    assert node.job(job_id)["State"]["StateType"] == "Completed"
    assert len(node.executions(job_id)) == 1


def test_daemon_job_keeps_running_is_restarted_and_stops(node: NodeProcess, tmp_path: Path) -> None:
    path = write_spec(tmp_path, "daemon.yaml", spec("daemon", "echo tick; exit 1"))
    run = cli(node, "job", "run", "--id-only", path)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    deadline = time.monotonic() + 30
    while len(node.executions(job_id)) < 3:  # restarted after 1 s, then 2 s
        assert time.monotonic() < deadline, node.executions(job_id)
        time.sleep(0.1)
    assert node.job(job_id)["State"]["StateType"] == "Running"
    stop = cli(node, "job", "stop", job_id)
    assert stop.returncode == 0, stop.stderr
    stopped = node.wait_for(job_id)
    assert stopped["State"]["StateType"] == "Stopped"


def test_service_job_runs_count_executions_until_stopped(node: NodeProcess, tmp_path: Path) -> None:
    path = write_spec(tmp_path, "service.yaml", spec("service", "echo up; sleep 300"))
    run = cli(node, "job", "run", "--id-only", "--wait", path)
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    node.wait_for(job_id, ("Running",))
    (execution,) = node.executions(job_id)
    assert execution["ComputeState"]["StateType"] == 5
    assert cli(node, "job", "stop", job_id).returncode == 0
    node.wait_for(job_id, ("Stopped",))
    deadline = time.monotonic() + 15
    while node.executions(job_id)[0]["ComputeState"]["StateType"] != 9:  # Cancelled
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _containers_of(job_id: str) -> list[Any]:
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"meshnode.job-id={job_id}"})
        )
    finally:
        client.close()


def test_kill_9_leaves_the_container_running_and_the_restarted_node_reattaches(
    tmp_path: Path,
    busybox_image: str,  # noqa: F811
) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    node = NodeProcess(data_dir).start()
    job_id = node.submit(
        {
            "Type": "batch",
            "Tasks": [
                {
                    "Engine": {
                        "Type": "docker",
                        "Params": {
                            "Image": "meshnode-busybox:latest",
                            "Entrypoint": ["/bin/sh", "-c"],
                            "Parameters": ["echo before; sleep 3; echo after"],
                        },
                    },
                    "Resources": {"CPU": "100m", "Memory": "32Mb"},
                }
            ],
        }
    )
    node.wait_for(job_id, ("Running",))
    (execution,) = node.executions(job_id)
    stdout_file = data_dir / "executions" / execution["ID"] / "stdout"
    deadline = time.monotonic() + 15
    # Running for real: its first line is out (a container killed between create and start
    # is, rightly, failed and retried instead).
    while not (stdout_file.exists() and stdout_file.read_text() == "before\n"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    node.kill()
    assert len(_containers_of(job_id)) == 1  # it outlived the node

    node = NodeProcess(data_dir, port=node.port).start()
    finished = node.wait_for(job_id, timeout_s=30)
    assert finished["State"]["StateType"] == "Completed"
    assert [e["ID"] for e in node.executions(job_id)] == [execution["ID"]]
    assert stdout_file.read_text() == "before\nafter\n"
    assert _containers_of(job_id) == []  # no orphan left
    assert node.stop() == 0


def test_a_node_without_docker_rejects_docker_jobs_saying_why(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    node = NodeProcess(data_dir, "--no-docker").start()
    try:
        path = write_spec(tmp_path, "batch.yaml", spec("batch", "true"))
        run = cli(node, "job", "run", "--id-only", "--wait", path)
        job_id = run.stdout.strip().splitlines()[0]
        job = node.wait_for(job_id)
        assert job["State"]["StateType"] == "Failed"
        assert "engine docker is not available" in job["State"]["Message"]
        alive = node.get("/api/v1/agent/alive")
        assert alive == {"Status": "OK"}
    finally:
        node.stop()


def test_a_restarting_node_leaves_other_nodes_containers_alone(
    tmp_path: Path,
    busybox_image: str,  # noqa: F811
) -> None:
    from meshnode.engines.docker import EXECUTION_ID_LABEL, JOB_ID_LABEL, NODE_ID_LABEL

    client = docker.from_env()
    other = client.containers.run(
        busybox_image,
        ["sleep", "60"],
        detach=True,
        network_mode="none",
        labels={
            EXECUTION_ID_LABEL: "e-of-another-node",
            JOB_ID_LABEL: "j-of-another-node",
            NODE_ID_LABEL: "12D3KooWanotherNode",
        },
    )
    try:
        data_dir = tmp_path / "node"
        data_dir.mkdir()
        node = NodeProcess(data_dir).start()  # recovery removes only its own orphans
        node.stop()
        other.reload()
        assert other.status == "running"
    finally:
        other.remove(force=True)
        client.close()
