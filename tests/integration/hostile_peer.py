"""A hostile mesh peer, run as its own process by test_mesh.py: it connects to a node and
sends garbage, shapes the protocol does not allow, a report for an execution that is not its
own (a forged sender) and a replication of a lower term.

Usage: python hostile_peer.py NODE_MULTIADDR NODE_API_PORT
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[2]))  # the repo: tests.*

from meshnode.core.messages import Announce, ExecutionReport, Replicate, encode
from meshnode.runtime.transport import MeshTransport, TransportConfig


def api(port: int, method: str, path: str, body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def running_execution(port: int) -> tuple[str, str]:
    import base64

    import wasmtime

    from tests.engines.wasm_modules import sleep_then_print

    sleeping = sleep_then_print(60.0)
    url = "data:application/wasm;base64," + base64.b64encode(wasmtime.wat2wasm(sleeping)).decode()
    job = {
        "Type": "batch",
        "Tasks": [
            {
                "Name": "main",
                "Engine": {"Type": "wasm", "Params": {"EntryModule": url}},
                "Timeouts": {"ExecutionTimeout": 60},
            }
        ],
    }
    job_id = api(port, "PUT", "/api/v1/orchestrator/jobs", {"Job": job})["JobID"]
    for _ in range(200):
        items = api(port, "GET", f"/api/v1/orchestrator/jobs/{job_id}/executions")["Items"]
        if items:
            return job_id, items[0]["ID"]
        time.sleep(0.05)
    raise SystemExit("no execution appeared")


async def main(target: str, port: int) -> None:
    peer_id = target.rsplit("/p2p/", 1)[1]
    job_id, execution_id = running_execution(port)
    transport = MeshTransport(
        os.urandom(32),
        TransportConfig(listen_host="127.0.0.1", swarm_port=0, enable_mdns=False),
        on_message=lambda sender, frame: None,
        on_gossip=lambda sender, frame: None,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        frames = [
            os.urandom(64),  # not msgpack of anything
            msgspec.msgpack.encode({"type": "Bid", "nonsense": 1}),  # a wrong shape
            encode(Announce(updates=())),  # gossip-only, on a direct stream
            encode(
                ExecutionReport(  # the execution is the node's own, not ours
                    job_id=job_id,
                    execution_id=execution_id,
                    seq=1,
                    term=1,
                    phase="ended",
                    exit_code=0,
                )
            ),
            encode(Replicate(job_id=job_id, term=0, seq=1, job=b"")),  # a lower term
        ]
        for frame in frames:
            transport.send(peer_id, frame, [target])
        await trio.sleep(3.0)
        sent = transport.stats.get("frames_sent", 0)
        if sent < len(frames):
            raise SystemExit(f"only {sent} of {len(frames)} frames went out: {transport.stats}")
        api(port, "DELETE", f"/api/v1/orchestrator/jobs/{job_id}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
