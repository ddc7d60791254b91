"""A `MeshTransport` in a process of its own, driven with JSON lines (for the transport tests).

Run as `python -m tests.transport.peer_process` or `python tests/transport/peer_process.py`:

    --seed HEX (32 bytes)  --port N  --bootstrap MULTIADDR (repeatable)  --swarm-key-file PATH

Stdout, one JSON object a line: first `{"event": "listening", "peer_id", "addrs"}`, then
`connected`/`disconnected` (`peer`), `gossip` (`peer`, `data`, `latency_ms`) and `message`
(`peer`, `data`) as they happen, and `stats` when asked. Every frame received is echoed
back to its sender. Stdin, one JSON command a line:

    {"cmd": "publish", "count": N, "interval_s": S, "tag": T}   payloads "T:i:<time_ns>"
    {"cmd": "send", "peer": ID, "addrs": [...], "data": TEXT}
    {"cmd": "stats"}

The process exits when stdin closes. Only loopback is used: mDNS is always off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from meshnode.runtime.transport import MeshTransport, TransportConfig, parse_swarm_key


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def gossip_latency_ms(data: bytes) -> float | None:
    """Publish-to-delivery time of a payload made by the `publish` command (same host clock)."""
    parts = data.split(b":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return (time.time_ns() - int(parts[2])) / 1e6


async def publish(transport: MeshTransport, count: int, interval_s: float, tag: str) -> None:
    for index in range(count):
        transport.publish(f"{tag}:{index}:{time.time_ns()}".encode())
        await trio.sleep(interval_s)
    emit("published", tag=tag, count=count)


async def serve_commands(transport: MeshTransport, nursery: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while chunk := await stdin.receive_some():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            match command["cmd"]:
                case "publish":
                    nursery.start_soon(
                        publish,
                        transport,
                        command["count"],
                        command.get("interval_s", 0.0),
                        command.get("tag", "g"),
                    )
                case "send":
                    transport.send(
                        command["peer"], command["data"].encode(), command.get("addrs", ())
                    )
                case "stats":
                    emit("stats", stats=transport.stats, connected=transport.connected_peers())
                case other:
                    raise SystemExit(f"unknown command {other!r}")


async def main(arguments: argparse.Namespace) -> None:
    swarm_key = (
        parse_swarm_key(Path(arguments.swarm_key_file).read_text())
        if arguments.swarm_key_file
        else None
    )
    config = TransportConfig(
        listen_host="127.0.0.1",
        swarm_port=arguments.port,
        bootstrap=tuple(arguments.bootstrap),
        swarm_key=swarm_key,
        enable_mdns=False,
        connect_timeout_s=arguments.connect_timeout_s,
    )
    transport: MeshTransport

    def on_message(peer: str, frame: bytes) -> None:
        emit("message", peer=peer, data=frame.decode(errors="replace"))
        transport.send(peer, frame)  # echo

    def on_gossip(peer: str, data: bytes) -> None:
        emit(
            "gossip",
            peer=peer,
            data=data.decode(errors="replace"),
            latency_ms=gossip_latency_ms(data),
        )

    transport = MeshTransport(
        bytes.fromhex(arguments.seed),
        config,
        on_message=on_message,
        on_gossip=on_gossip,
        on_peer_connected=lambda peer: emit("connected", peer=peer),
        on_peer_disconnected=lambda peer: emit("disconnected", peer=peer),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        emit("listening", peer_id=transport.peer_id, addrs=transport.listen_addrs())
        await serve_commands(transport, nursery)
        nursery.cancel_scope.cancel()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", required=True, help="32-byte Ed25519 seed, hex")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--swarm-key-file")
    parser.add_argument("--connect-timeout-s", type=float, default=2.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_arguments(sys.argv[1:]))
