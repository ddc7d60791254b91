"""Real `meshnode start` processes for integration tests, and a tiny client of their API."""

from __future__ import annotations

import json
import os
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
        self.process: subprocess.Popen[str] | None = None
        self.node_id = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NodeProcess:
        command = [
            meshnode_executable(), "start", "--api-port", str(self.port),
            "--data-dir", str(self.data_dir), *self.extra,
        ]  # fmt: skip
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ}
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = self.process.stdout.readline()
        assert "API on" in line, f"node did not start: {line!r}"
        self.node_id = line.split()[2]
        while time.monotonic() < deadline:
            try:
                self.get("/api/v1/agent/alive")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise AssertionError("the node's API did not answer")

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
