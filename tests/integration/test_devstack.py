"""`meshnode devstack` as a user runs it: three real nodes on loopback, the CLI against node 1,
then Ctrl-C (SIGINT), which must stop every node and exit 0.

Network rule: devstack itself starts every node with `--swarm-host 127.0.0.1 --no-mdns`
and `--api-host 127.0.0.1`; `--base-api-port 0` lets each node pick a free API port.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

import pytest

from tests.integration.nodeproc import meshnode_executable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

READY_TIMEOUT_S: Final = 75.0  # devstack's own deadlines: 30 s to start, 30 s for the mesh
STOP_TIMEOUT_S: Final = 30.0  # devstack's: 10 s, then SIGKILL
ROW_RE: Final = re.compile(r"^(\d+)\s+\S+\s+http://127\.0\.0\.1:(\d+)\s+(\d+)\s", re.MULTILINE)


def read_until_ready(process: subprocess.Popen[bytes], log: Path) -> str:
    """devstack's stdout up to its `devstack ready` line."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    text = b""
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while b"devstack ready" not in text:
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not selector.select(timeout=left_s):
                pytest.fail(f"devstack was not ready in time; stdout:\n{text.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                code = process.wait()
                pytest.fail(
                    f"devstack exited with {code} before it was ready; stdout:\n"
                    f"{text.decode()}\nstderr:\n{log.read_text()}"
                )
            text += chunk
    finally:
        selector.close()
    return text.decode()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_devstack_runs_a_mesh_of_three_and_stops_it_on_ctrl_c(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    stderr_log = tmp_path / "devstack.stderr"
    with stderr_log.open("wb") as stderr:
        process = subprocess.Popen(
            [meshnode_executable(), "devstack", "--nodes", "3", "--no-docker",
             "--base-api-port", "0", "--data-dir-root", str(root), "--labels", "test=devstack"],
            stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    pids: list[int] = []
    try:
        table = read_until_ready(process, stderr_log)
        rows = ROW_RE.findall(table)
        assert [row[0] for row in rows] == ["1", "2", "3"], table
        api_ports = [row[1] for row in rows]
        pids = [int(row[2]) for row in rows]
        assert all(is_running(pid) for pid in pids)
        assert f"export MESHNODE_API_PORT={api_ports[0]}" in table

        listed = subprocess.run(
            [meshnode_executable(), "node", "list", "--output", "json"],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "MESHNODE_API_HOST": "127.0.0.1",
                 "MESHNODE_API_PORT": api_ports[0]},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        nodes = json.loads(listed.stdout)["nodes"]
        assert len(nodes) == 3
        assert {node["State"] for node in nodes} == {"alive"}
        assert {node["Connection"] for node in nodes} == {"CONNECTED"}
        assert {node["Info"]["Labels"]["test"] for node in nodes} == {"devstack"}
        assert sorted(node["Info"]["Labels"]["devstack-node"] for node in nodes) == ["1", "2", "3"]
        for node in nodes:
            (address,) = node["Info"]["Addresses"]
            assert address.startswith("/ip4/127.0.0.1/tcp/")
            assert address.endswith("/p2p/" + node["Info"]["NodeID"])

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, stderr_log.read_text()
        # devstack waited for (and reaped) every node: none is left.
        assert [pid for pid in pids if is_running(pid)] == []
        said = stderr_log.read_text()
        assert "Stopped 3 nodes." in said
        assert "killing it" not in said  # each stopped on its SIGTERM, none needed SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in pids:  # never leave a node behind, whatever failed
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        assert process.stdout is not None
        process.stdout.close()
