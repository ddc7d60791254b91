"""Real `meshnode start` processes for integration tests, and a tiny client of their API.

Network rule: every node listens on loopback only and never uses mDNS. `NodeProcess.start`
adds `--swarm-host 127.0.0.1 --swarm-port 0 --no-mdns` unless the test passes its own value
of a flag; nodes find each other only through `--peers` (`NodeProcess.multiaddr`)."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

READY_TIMEOUT_S: Final = 20.0
TERMINAL: Final = ("Completed", "Failed", "Stopped")
LOOPBACK_MESH_FLAGS: Final = (
    ("--swarm-host", "127.0.0.1"),
    ("--swarm-port", "0"),
    ("--no-mdns", None),
)
READY_RE: Final = re.compile(r"^meshnode node (\S+) API on http://")
SWARM_RE: Final = re.compile(r"^meshnode swarm address (\S+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def meshnode_executable() -> str:
    found = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert found, "the meshnode console script is not installed next to this Python"
    return found


class NodeProcess:
    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.node_id = ""
        self.swarm_addrs: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def multiaddr(self) -> str:
        """The node's first mesh address, for another node's `--peers`."""
        assert self.swarm_addrs, "the node printed no swarm address"
        return self.swarm_addrs[0]

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self) -> NodeProcess:
        mesh_flags: list[str] = []
        for flag, value in LOOPBACK_MESH_FLAGS:
            if not any(item == flag or item.startswith(flag + "=") for item in self.extra):
                mesh_flags += [flag] if value is None else [flag, value]
        command = [
            meshnode_executable(), "start", "--api-port", str(self.port),
            "--data-dir", str(self.data_dir), *mesh_flags, *self.extra,
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, env={**os.environ}
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        self._read_ready_lines(deadline)
        while time.monotonic() < deadline:
            try:
                self.get("/api/v1/agent/alive")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise AssertionError("the node's API did not answer")

    def _read_ready_lines(self, deadline: float) -> None:
        """`meshnode node ID API on …`, then its `meshnode swarm address …` lines (printed
        together). Read with a deadline: a node that hangs fails the test, not the run."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        buffer = b""
        try:
            while not self.swarm_addrs:
                while b"\n" not in buffer:
                    left_s = deadline - time.monotonic()
                    if left_s <= 0 or not selector.select(timeout=left_s):
                        raise AssertionError(f"node did not start in time; see {self.log_path}")
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        code = self.process.wait()
                        tail = self.log_path.read_text()[-3000:]
                        raise AssertionError(
                            f"node exited with {code} before it was ready:\n{tail}"
                        )
                    buffer += chunk
                line, _, buffer = buffer.partition(b"\n")
                text = line.decode("utf-8", "replace")
                if match := READY_RE.match(text):
                    self.node_id = match[1]
                elif (match := SWARM_RE.match(text)) and self.node_id:
                    self.swarm_addrs.append(match[1])
            # The other addresses came in the same write, or the next one.
            while selector.select(timeout=0.05) and (chunk := os.read(fd, 4096)):
                buffer += chunk
            for line in buffer.decode("utf-8", "replace").splitlines():
                if match := SWARM_RE.match(line):
                    self.swarm_addrs.append(match[1])
        finally:
            selector.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def submit(self, job: dict[str, Any]) -> str:
        return str(self.call("PUT", "/api/v1/orchestrator/jobs", {"Job": job})["JobID"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/v1/orchestrator/jobs/{job_id}")["Job"])

    def executions(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/orchestrator/jobs/{job_id}/executions")["Items"])

    def wait_for(
        self, job_id: str, states: tuple[str, ...] = TERMINAL, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["State"]["StateType"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is still {job['State']} after {timeout_s} s")
            time.sleep(0.05)
