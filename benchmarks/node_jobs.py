"""Node benchmarks of issue 3, each beside its baseline in the same run.

Usage: .venv/bin/python benchmarks/node_jobs.py [--runs N] [--burst N] [--docker]

- hello-world wasm job, submit → Completed (p50/p99), against raw wasmtime running the same
  module in-process (compile once, instantiate + run per iteration);
- with --docker: a busybox `true` docker job against raw `docker run --rm` of the same image;
- jobs/s for a burst of back-to-back wasm jobs (submitted concurrently, timed until all
  Completed);
- node RSS when idle, and start → API ready time.

Targets: wasm p50 ≤ 50 ms over raw, docker ≤ 100 ms median over raw, ≥ 100 jobs/s,
idle RSS ≤ 60 MB, ready ≤ 2 s.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "wasm" / "hello.wasm"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_CONNECTIONS = threading.local()


def request(base: str, method: str, path: str, body: Any = None) -> Any:
    """One JSON request on a kept-alive connection per thread and node (as a real client
    would hold one: a new TCP connection per poll would cost the node more than the job)."""
    connections = _CONNECTIONS.__dict__.setdefault("by_base", {})
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    for attempt in range(2):
        connection = connections.get(base)
        if connection is None:
            host, port = base.removeprefix("http://").rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connections[base] = connection
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (http.client.HTTPException, OSError):
            connection.close()
            del connections[base]
            if attempt:
                raise
            continue
        if response.status >= 400:
            raise urllib.error.HTTPError(base + path, response.status, payload.decode(), {}, None)  # type: ignore[arg-type]
        return json.loads(payload)
    raise AssertionError("unreachable")


def wasm_job() -> dict[str, Any]:
    url = "data:application/wasm;base64," + base64.b64encode(HELLO.read_bytes()).decode()
    return {
        "Type": "batch",
        "Tasks": [
            {
                "Engine": {
                    "Type": "wasm",
                    "Params": {
                        "EntryModule": {"Source": {"Type": "inline", "Params": {"URL": url}}}
                    },
                },
                "Resources": {"CPU": "50m", "Memory": "16Mb"},
            }
        ],
    }


def docker_job() -> dict[str, Any]:
    return {
        "Type": "batch",
        "Tasks": [
            {
                "Engine": {
                    "Type": "docker",
                    "Params": {"Image": "meshnode-busybox:latest", "Entrypoint": ["true"]},
                },
                "Resources": {"CPU": "100m", "Memory": "32Mb"},
            }
        ],
    }


def run_job(base: str, job: dict[str, Any]) -> float:
    started = time.perf_counter()
    job_id = request(base, "PUT", "/api/v1/orchestrator/jobs", {"Job": job})["JobID"]
    while True:
        state = request(base, "GET", f"/api/v1/orchestrator/jobs/{job_id}")["Job"]["State"]
        if state["StateType"] in ("Completed", "Failed", "Stopped"):
            if state["StateType"] != "Completed":
                sys.exit(f"job {job_id} ended {state}")
            return (time.perf_counter() - started) * 1000
        time.sleep(0.002)


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def raw_wasmtime_ms(runs: int) -> list[float]:
    import wasmtime

    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, HELLO.read_bytes())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(runs):
            started = time.perf_counter()
            store = wasmtime.Store(engine)
            config = wasmtime.WasiConfig()
            config.stdout_file = str(Path(folder) / "stdout")
            store.set_wasi(config)
            linker.instantiate(store, module).exports(store)["_start"](store)
            times.append((time.perf_counter() - started) * 1000)
    return times


def raw_docker_ms(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "meshnode-busybox:latest", "true"],
            check=True,
            capture_output=True,
        )
        times.append((time.perf_counter() - started) * 1000)
    return times


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--docker", action="store_true")
    args = parser.parse_args()
    meshnode = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert meshnode, "install meshnode first (scripts/quickstart)"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        command = [
            meshnode, "start", "--api-port", str(port), "--data-dir", data_dir,
            "--swarm-host", "127.0.0.1", "--swarm-port", "0", "--no-mdns",  # loopback only
        ]  # fmt: skip
        if not args.docker:
            command.append("--no-docker")
        started = time.perf_counter()
        node = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert node.stdout is not None
            ready_line = node.stdout.readline()
            ready_s = time.perf_counter() - started
            assert "API on" in ready_line, ready_line
            time.sleep(1.0)
            idle_rss = rss_mb(node.pid)
            print(f"{'measure':44} {'meshnode':>12} {'baseline':>12}")
            print(f"{'start → API ready (s)':44} {ready_s:12.2f} {'':>12}")
            print(f"{'idle RSS (MB)':44} {idle_rss:12.1f} {'':>12}")

            run_job(base, wasm_job())  # warm: module compiled and cached
            node_times = [run_job(base, wasm_job()) for _ in range(args.runs)]
            raw_times = raw_wasmtime_ms(args.runs)
            (node_p50, node_p99), (raw_p50, raw_p99) = (
                percentiles(node_times),
                percentiles(raw_times),
            )
            print(f"{'wasm hello job p50 ms (raw wasmtime)':44} {node_p50:12.1f} {raw_p50:12.2f}")
            print(f"{'wasm hello job p99 ms (raw wasmtime)':44} {node_p99:12.1f} {raw_p99:12.2f}")

            if args.docker:
                run_job(base, docker_job())
                docker_times = [run_job(base, docker_job()) for _ in range(max(5, args.runs // 5))]
                raw = raw_docker_ms(max(5, args.runs // 5))
                print(
                    f"{'docker true job median ms (docker run --rm)':44} "
                    f"{statistics.median(docker_times):12.1f} {statistics.median(raw):12.1f}"
                )

            burst_started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda _: run_job(base, wasm_job()), range(args.burst)))
            burst_s = time.perf_counter() - burst_started
            print(
                f"{f'{args.burst} wasm jobs back to back (jobs/s)':44} {args.burst / burst_s:12.1f}"
            )
            print(f"{'RSS after the burst (MB)':44} {rss_mb(node.pid):12.1f}")
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
