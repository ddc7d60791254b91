"""Staying connected to bootstrap peers: our redial loop, and why it unblocks the peer.

py-libp2p's own `bootstrap=` gives a peer up after 3 failures, and any failed dial puts the
peer in the swarm's 60 s negative cache. A bootstrap peer that restarts must be back within
seconds, not a minute, and never be given up.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import multiaddr  # type: ignore[import-untyped]
import pytest
import trio
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from meshnode.runtime.transport import MeshTransport
from tests.transport.helpers import (
    PeerProcess,
    make_transport,
    raw_host,
    running_raw,
    seed,
)


async def test_backoff_doubles_from_1_to_30_s_and_never_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    transport, _ = make_transport("alice")
    peer = ID.from_base58(make_transport("bob")[0].peer_id)
    attempts: list[float] = []

    async def failing_dial(peer: ID, addrs: object) -> None:
        attempts.append(trio.current_time())
        raise OSError("connection refused")

    transport._dial = failing_dial  # type: ignore[method-assign]
    with trio.move_on_after(400):
        await transport._keep_connected(PeerInfo(peer, []))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 30, 30]
    assert set(gaps[5:]) == {30}, "capped at 30 s"
    assert len(attempts) >= 15, "still redialling after 400 s"
    assert transport.stats["dial_failures"] == len(attempts)


async def test_a_disconnect_triggers_an_immediate_redial_with_a_fresh_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    transport, inbox = make_transport("alice")
    peer = ID.from_base58(make_transport("bob")[0].peer_id)
    attempts: list[float] = []

    async def dial(peer: ID, addrs: object) -> None:
        attempts.append(trio.current_time())
        if len(attempts) in (1, 2, 4):
            raise OSError("connection refused")
        transport._on_connection_opened(peer)

    transport._dial = dial  # type: ignore[method-assign]
    transport._host = _NoConnectionsHost()  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport._keep_connected, PeerInfo(peer, []))
        await trio.sleep(10)
        assert attempts == [0, 1, 3]  # failed, failed, connected
        transport._on_connection_closed(peer)  # the peer went away at t=10
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert attempts == [0, 1, 3, 10, 11], "redial at once, then 1 s again (backoff reset)"
    assert inbox.connected == [peer.to_base58(), peer.to_base58()]
    assert inbox.disconnected == [peer.to_base58()]
    assert transport.stats["redials"] == 1


class _NoConnectionsHost:
    class _Network:
        def get_connections(self, peer: ID) -> list[object]:
            return []

    def get_network(self) -> _Network:
        return self._Network()


@pytest.mark.timeout(20)
async def test_upstream_a_failed_dial_blocks_the_peer_until_unblocked() -> None:
    """The reason `_dial` calls `unblock_peer`: without it a restarted peer stays unreachable."""
    async with running_raw(raw_host("dialer")) as dialer:
        async with running_raw(raw_host("target")) as target:
            target_id = target.get_id()
            address = target.get_addrs()[0].decapsulate(
                multiaddr.Multiaddr(f"/p2p/{target_id.to_base58()}")
            )
        # The target is gone: one failed dial.
        with pytest.raises(SwarmException), trio.fail_after(5):
            await dialer.connect(PeerInfo(target_id, [address]))
        # It is back on the same port, but the swarm refuses to even try for 60 s ...
        port = int(address.value_for_protocol("tcp"))
        restarted = raw_host("target")
        async with restarted.run([multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]):
            with pytest.raises(SwarmException, match="negative cache"), trio.fail_after(5):
                await dialer.connect(PeerInfo(target_id, [address]))
            # ... until the peer is unblocked.
            dialer.get_network().unblock_peer(target_id)  # type: ignore[attr-defined]
            with trio.fail_after(5):
                await dialer.connect(PeerInfo(target_id, [address]))
            assert target_id in dialer.get_connected_peers()
            await restarted.close()


@pytest.mark.slow
@pytest.mark.timeout(45)
async def test_a_killed_and_restarted_bootstrap_peer_is_redialled_within_seconds(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        peer = await PeerProcess("bootstrap", tmp_path).start(nursery)
        try:
            node, inbox = make_transport("node", bootstrap=(peer.addrs[0],))
            assert (
                peer.peer_id
                == MeshTransport(
                    seed("bootstrap"),
                    node._config,
                    on_message=lambda p, f: None,
                    on_gossip=lambda p, d: None,
                ).peer_id
            )
            async with trio.open_nursery() as node_nursery:
                await node_nursery.start(node.run)
                await inbox.wait_until(lambda: inbox.connected == [peer.peer_id], 10)

                await peer.kill()
                await inbox.wait_until(lambda: inbox.disconnected == [peer.peer_id], 10)
                await trio.sleep(2)  # down long enough for failed redials (and the 60 s block)
                assert node.stats["dial_failures"] >= 1

                await peer.start(nursery)  # same seed, same port
                restarted = time.monotonic()
                await inbox.wait_until(lambda: len(inbox.connected) == 2, 15)
                reconnect_s = time.monotonic() - restarted
                print(f"\nreconnected {reconnect_s:.2f} s after the peer was listening again")
                # Backoff steps are 1, 2, 4 s: the next attempt after the restart is at most
                # 4 s away. Without unblock_peer it would be 60 s.
                assert reconnect_s < 6

                node.send(peer.peer_id, b"are you back?")
                await inbox.wait_until(
                    lambda: (peer.peer_id, b"are you back?") in inbox.messages, 10
                )
                node_nursery.cancel_scope.cancel()
        finally:
            await peer.stop()
        nursery.cancel_scope.cancel()
