"""Mesh benchmarks of issue 4, on a devstack of real `meshnode start` processes (loopback).

Usage: .venv/bin/python benchmarks/mesh_jobs.py [--nodes 3] [--runs 50] [--burst 300]
       [--idle 20] [--no-failover]

- hello-world wasm batch job, submit → Completed through a random node's API (p50/p99),
  beside raw wasmtime running the same module in-process in the same run;
- sustained jobs/s: a burst of jobs submitted concurrently, spread over the nodes;
- failover: a wasm service job (Count 1) runs on some node; that node is killed with -9;
  time until a replacement execution runs elsewhere (membership detects the death; the
  service's requester reschedules it);
- membership bytes/s per node while idle (the nodes' own counters), and RSS per node.

Targets: p50 ≤ 100 ms, p99 ≤ 300 ms, ≥ 100 jobs/s on 3 nodes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from node_jobs import (  # noqa: E402
    free_port,
    percentiles,
    raw_wasmtime_ms,
    request,
    rss_mb,
    wasm_job,
)

READY_TIMEOUT_S = 60.0


class Devstack:
    def __init__(self, count: int, root: Path) -> None:
        self.count = count
        self.root = root
        self.processes: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []
        self.ids: list[str] = []

    def start(self) -> None:
        meshnode = shutil.which("meshnode", path=str(Path(sys.executable).parent))
        assert meshnode, "install meshnode first (scripts/quickstart)"
        first_addr = ""
        for index in range(self.count):
            port = free_port()
            command = [
                meshnode, "start", "--api-port", str(port),
                "--data-dir", str(self.root / f"node{index}"), "--no-docker",
                "--swarm-host", "127.0.0.1", "--swarm-port", "0", "--no-mdns",
            ]  # fmt: skip
            if first_addr:
                command += ["--peers", first_addr]
            log = open(self.root / f"node{index}.log", "w")  # noqa: SIM115
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "API on" in line, f"node {index} did not start: {line!r}"
            self.ids.append(line.split()[2])
            swarm = process.stdout.readline()
            if not first_addr:
                first_addr = swarm.split()[-1]
            self.processes.append(process)
            self.ports.append(port)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self.alive_seen(i) >= self.count for i in range(self.count)):
                return
            time.sleep(0.2)
        raise SystemExit("the devstack did not converge: see the node logs in " + str(self.root))

    def base(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def alive_seen(self, index: int) -> int:
        try:
            nodes = request(self.base(index), "GET", "/api/v1/orchestrator/nodes")
        except (urllib.error.URLError, ConnectionError):
            return 0
        items = nodes.get("Nodes") or nodes.get("Items") or []
        return sum(1 for n in items if n.get("Connection", "CONNECTED") == "CONNECTED")

    def stats(self, index: int) -> dict[str, Any]:
        try:
            return dict(request(self.base(index), "GET", "/api/v1/agent/mesh").get("Stats", {}))
        except (urllib.error.URLError, ConnectionError):
            return {}

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def run_job_via(stack: Devstack, job: dict[str, Any], poll_s: float = 0.002) -> float:
    base = stack.base(random.randrange(stack.count))
    started = time.perf_counter()
    job_id = request(base, "PUT", "/api/v1/orchestrator/jobs", {"Job": job})["JobID"]
    while True:
        state = request(base, "GET", f"/api/v1/orchestrator/jobs/{job_id}")["Job"]["State"]
        if state["StateType"] in ("Completed", "Failed", "Stopped"):
            if state["StateType"] != "Completed":
                raise SystemExit(f"job {job_id} ended {state}")
            return (time.perf_counter() - started) * 1000
        time.sleep(poll_s)


def sleeping_service() -> dict[str, Any]:
    import base64

    import wasmtime

    from tests.engines.wasm_modules import sleep_then_print

    module = wasmtime.wat2wasm(sleep_then_print(3600.0))
    url = "data:application/wasm;base64," + base64.b64encode(module).decode()
    return {
        "Type": "service",
        "Count": 1,
        "Tasks": [
            {
                "Name": "main",
                "Engine": {"Type": "wasm", "Params": {"EntryModule": url}},
                "Resources": {"CPU": "100m", "Memory": "64Mb"},
            }
        ],
    }


def running_elsewhere(stack: Devstack, via: int, job_id: str, dead_node: str) -> bool:
    try:
        answer = request(stack.base(via), "GET", f"/api/v1/orchestrator/jobs/{job_id}/executions")
    except (urllib.error.URLError, ConnectionError):
        return False
    for execution in answer.get("Items") or []:
        if execution["NodeID"] != dead_node and execution["ComputeState"]["StateType"] == 5:
            return True
    return False


def failover_s(stack: Devstack) -> float:
    base = stack.base(0)
    job_id = request(base, "PUT", "/api/v1/orchestrator/jobs", {"Job": sleeping_service()})["JobID"]
    node = ""
    deadline = time.monotonic() + 30
    while not node and time.monotonic() < deadline:
        answer = request(base, "GET", f"/api/v1/orchestrator/jobs/{job_id}/executions")
        for execution in answer.get("Items") or []:
            if execution["ComputeState"]["StateType"] == 5:
                node = execution["NodeID"]
        time.sleep(0.1)
    assert node, "the service never ran"
    victim = stack.ids.index(node)
    witness = next(i for i in range(stack.count) if i != victim)
    time.sleep(1.0)
    killed_at = time.perf_counter()
    stack.processes[victim].send_signal(signal.SIGKILL)
    stack.processes[victim].wait()
    while time.perf_counter() - killed_at < 120:
        if running_elsewhere(stack, witness, job_id, node):
            return time.perf_counter() - killed_at
        time.sleep(0.05)
    raise SystemExit("the service was not rescheduled within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument(
        "--burst-poll-ms", type=float, default=50.0,
        help="how often each burst client asks for its job's state (polls cost the nodes CPU)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        stack = Devstack(args.nodes, Path(root))
        started = time.perf_counter()
        try:
            stack.start()
            ready_s = time.perf_counter() - started
            print(f"{args.nodes} nodes; {'measure':44} {'meshnode':>12} {'baseline':>12}")
            print(f"{'devstack start → all see all (s)':44} {ready_s:12.2f}")

            before = [stack.stats(i) for i in range(args.nodes)]
            time.sleep(args.idle)
            after = [stack.stats(i) for i in range(args.nodes)]
            rates = [
                (a.get("bytes_sent_membership", 0) - b.get("bytes_sent_membership", 0)) / args.idle
                for a, b in zip(after, before, strict=True)
            ]
            print(f"{'membership bytes/s per node, idle (mean)':44} {statistics.mean(rates):12.0f}")
            rss = [rss_mb(p.pid) for p in stack.processes]
            print(f"{'RSS per node, idle (MB, mean)':44} {statistics.mean(rss):12.1f}")

            for _ in range(3):
                run_job_via(stack, wasm_job())  # warm every node's module cache
            times = [run_job_via(stack, wasm_job()) for _ in range(args.runs)]
            raw = raw_wasmtime_ms(args.runs)
            (p50, p99), (raw50, raw99) = percentiles(times), percentiles(raw)
            print(f"{'wasm hello job p50 ms (raw wasmtime)':44} {p50:12.1f} {raw50:12.2f}")
            print(f"{'wasm hello job p99 ms (raw wasmtime)':44} {p99:12.1f} {raw99:12.2f}")

            poll_s = args.burst_poll_ms / 1000  # burst clients poll less: polls cost CPU
            burst_started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
                list(pool.map(lambda _: run_job_via(stack, wasm_job(), poll_s), range(args.burst)))
            rate = args.burst / (time.perf_counter() - burst_started)
            print(f"{f'{args.burst} wasm jobs, concurrent (jobs/s)':44} {rate:12.1f}")
            rss = [rss_mb(p.pid) for p in stack.processes]
            print(f"{'RSS per node after the burst (MB, max)':44} {max(rss):12.1f}")

            if not args.no_failover and args.nodes >= 2:
                seconds = failover_s(stack)
                print(f"{'node killed → its service runs elsewhere (s)':44} {seconds:12.2f}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
