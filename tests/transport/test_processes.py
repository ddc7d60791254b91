"""Real separate processes: gossip across three nodes, and direct frames to each of them.

Each node is `peer_process.py` in its own interpreter, so nothing is shared but loopback TCP.
Two nodes bootstrap to the first and are not connected to each other, so gossip between them
is relayed by GossipSub, not delivered on a direct connection.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.transport.helpers import PeerProcess, make_transport, running

GOSSIP_MESSAGES = 200
GOSSIP_INTERVAL_S = 0.01


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_three_processes_gossip_and_direct_frames(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        hub = await PeerProcess("hub", tmp_path).start(nursery)
        left, right = (
            PeerProcess("left", tmp_path, bootstrap=(hub.addrs[0],)),
            PeerProcess("right", tmp_path, bootstrap=(hub.addrs[0],)),
        )
        async with trio.open_nursery() as starting:
            starting.start_soon(left.start, nursery)
            starting.start_soon(right.start, nursery)
        processes = (hub, left, right)
        try:
            for spoke in (left, right):
                await hub.wait_for(_connected_to(spoke.peer_id), 10)
            # GossipSub needs a heartbeat or two to learn subscriptions and build its mesh:
            # probe until both other nodes hear from `left`.
            for attempt in range(50):
                await left.command(cmd="publish", count=1, tag=f"probe{attempt}")
                with trio.move_on_after(0.2):
                    for other in (hub, right):
                        await other.wait_for(
                            lambda e: e["event"] == "gossip" and e["data"].startswith("probe"), 0.2
                        )
                if all(o.matching(lambda e: e["event"] == "gossip") for o in (hub, right)):
                    break
            await left.command(
                cmd="publish", count=GOSSIP_MESSAGES, interval_s=GOSSIP_INTERVAL_S, tag="burst"
            )
            latencies: list[float] = []
            for other in (hub, right):
                await other.changes.wait_until(_received_burst(other), 20)
                received = [e["data"].split(":")[1] for e in other.matching(_burst)]
                assert sorted(received, key=int) == [str(i) for i in range(GOSSIP_MESSAGES)]
                assert {e["peer"] for e in other.matching(_burst)} == {left.peer_id}
                latencies += [e["latency_ms"] for e in other.matching(_burst)]
            # The publisher never hears its own messages.
            assert left.matching(_burst) == []
            print(
                f"\ngossip over 3 processes: {len(latencies)} deliveries, "
                f"p50 {statistics.median(latencies):.1f} ms, "
                f"p99 {statistics.quantiles(latencies, n=100)[98]:.1f} ms"
            )

            # Direct frames: a transport in this process sends to each node; each echoes back.
            probe, inbox = make_transport("prober")
            async with running(probe):
                for index, node in enumerate(processes):
                    for sequence in range(20):
                        probe.send(node.peer_id, f"{index}:{sequence}".encode(), node.addrs)
                await inbox.wait_until(lambda: len(inbox.messages) >= 60, 10)
                for index, node in enumerate(processes):
                    echoed = [frame for peer, frame in inbox.messages if peer == node.peer_id]
                    assert echoed == [f"{index}:{s}".encode() for s in range(20)]
                # Round trips to another process on the long-lived stream, one at a time.
                round_trips = []
                for sequence in range(50):
                    started = time.monotonic()
                    probe.send(hub.peer_id, b"ping %d" % sequence)
                    await inbox.wait_until(_count_is(inbox.messages, 61 + sequence))
                    round_trips.append((time.monotonic() - started) * 1000)
                print(f"cross-process round trip p50 {statistics.median(round_trips):.2f} ms")
        finally:
            for process in processes:
                await process.stop()
        nursery.cancel_scope.cancel()


def _connected_to(peer_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["event"] == "connected" and event["peer"] == peer_id


def _received_burst(node: PeerProcess) -> Callable[[], bool]:
    return lambda: len(node.matching(_burst)) >= GOSSIP_MESSAGES


def _count_is(items: list[tuple[str, bytes]], count: int) -> Callable[[], bool]:
    return lambda: len(items) == count


def _burst(event: dict[str, Any]) -> bool:
    return event["event"] == "gossip" and str(event["data"]).startswith("burst:")
