"""Runs inside a network namespace for `test_mdns.py`: what does the node on PORT see?

    python netns_probe.py PORT COUNT TIMEOUT_S

Waits (up to 30 s) for the node's API on 127.0.0.1:PORT, then up to TIMEOUT_S for it to list
COUNT connected nodes (itself included), and prints one JSON line: its `node_id`, the ids it
lists as connected (`alive`), its libp2p `connected_peers`, and `waited_s` from the API's
first answer to the end of the wait. Standard library only: it starts in ~50 ms.
Exit status 0 whatever the node sees (the test judges), 2 if the API never answered.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

API_TIMEOUT_S = 30.0
POLL_S = 0.1


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


def view(port: int) -> dict[str, Any]:
    mesh = get(port, "/api/v1/agent/mesh")
    answer = get(port, "/api/v1/orchestrator/nodes")
    items = answer.get("Nodes") or answer.get("Items") or []
    alive = sorted(n["Info"]["NodeID"] for n in items if n.get("Connection") == "CONNECTED")
    return {
        "node_id": mesh.get("NodeID") or mesh.get("node_id"),
        "alive": alive,
        "connected_peers": mesh.get("ConnectedPeers") or mesh.get("connected_peers") or [],
    }


def main() -> int:
    port, count, timeout_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    deadline = time.monotonic() + API_TIMEOUT_S
    while True:
        try:
            seen = view(port)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"no API on port {port} in {API_TIMEOUT_S} s"}))
                return 2
            time.sleep(POLL_S)
    started = time.monotonic()
    while len(seen["alive"]) < count and time.monotonic() - started < timeout_s:
        time.sleep(POLL_S)
        seen = view(port)
    seen["waited_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
