"""Two transports in one process: identity, direct frames both ways and in order, gossip."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshnode.errors import LocalProtocolError, MeshnodeError
from meshnode.runtime import transport as transport_module
from meshnode.runtime.identity import peer_id_of
from meshnode.runtime.transport import MeshTransport, TransportConfig
from tests.transport.helpers import make_transport, running, seed

pytestmark = pytest.mark.timeout(30)


def _has(items: list[tuple[str, bytes]], count: int) -> Callable[[], bool]:
    return lambda: len(items) == count


def test_peer_id_is_the_identity_of_the_seed() -> None:
    transport, _ = make_transport("alice")
    expected = peer_id_of(Ed25519PrivateKey.from_private_bytes(seed("alice")))
    assert transport.peer_id == expected
    assert transport.peer_id.startswith("12D3KooW")


async def test_frames_flow_both_ways_in_order_on_one_stream() -> None:
    alice, alice_inbox = make_transport("alice")
    bob, bob_inbox = make_transport("bob")
    async with running(alice, bob):
        bob_addr = bob.listen_addrs()[0]
        assert bob_addr.endswith(f"/p2p/{bob.peer_id}")
        assert "/tcp/0/" not in bob_addr, "the real port, not the requested 0"

        started = time.monotonic()
        alice.send(bob.peer_id, b"first", [bob_addr])
        await bob_inbox.wait_until(lambda: len(bob_inbox.messages) == 1)
        first_frame_s = time.monotonic() - started

        for index in range(500):
            alice.send(bob.peer_id, f"a{index}".encode())
            bob.send(alice.peer_id, f"b{index}".encode())  # bob learned alice's address
        await bob_inbox.wait_until(lambda: len(bob_inbox.messages) == 501)
        await alice_inbox.wait_until(lambda: len(alice_inbox.messages) == 500)

        assert bob_inbox.messages[1:] == [(alice.peer_id, f"a{i}".encode()) for i in range(500)]
        assert alice_inbox.messages == [(bob.peer_id, f"b{i}".encode()) for i in range(500)]
        # One long-lived stream per direction, however many frames.
        assert alice.stats["streams_opened"] == 1
        assert bob.stats["streams_opened"] == 1
        assert alice.stats["frames_sent"] == 501
        assert bob.stats["frames_received"] == 501
        assert alice.connected_peers() == [bob.peer_id]
        assert alice_inbox.connected == [bob.peer_id]
        assert bob_inbox.connected == [alice.peer_id]
        print(f"\nconnect + first frame: {first_frame_s * 1000:.1f} ms")


async def test_round_trip_latency_on_the_long_lived_stream() -> None:
    alice, alice_inbox = make_transport("alice")
    bob, _ = make_transport("bob", echo=True)
    async with running(alice, bob):
        alice.send(bob.peer_id, b"warm-up", bob.listen_addrs())
        await alice_inbox.wait_until(lambda: len(alice_inbox.messages) == 1)
        round_trips: list[float] = []
        for index in range(200):
            started = time.monotonic()
            alice.send(bob.peer_id, b"ping %d" % index)
            await alice_inbox.wait_until(_has(alice_inbox.messages, index + 2))
            round_trips.append(time.monotonic() - started)
        round_trips.sort()
        median_ms = round_trips[len(round_trips) // 2] * 1000
        print(f"\nround trip p50 {median_ms:.2f} ms, p99 {round_trips[197] * 1000:.2f} ms")
        assert median_ms < 50, "a persistent stream measured 1.4–1.8 ms; 50 means a regression"
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"max RSS of this test process with two transports: {rss_mb:.0f} MB")


async def test_gossip_reaches_the_other_node_and_not_ourselves() -> None:
    alice, alice_inbox = make_transport("alice")
    bob, bob_inbox = make_transport("bob")
    async with running(alice, bob):
        alice.add_peer_addrs(bob.peer_id, bob.listen_addrs())
        alice.send(bob.peer_id, b"hello")  # dials with the remembered address
        await bob_inbox.wait_until(lambda: len(bob_inbox.messages) == 1)
        # Wait for GossipSub to learn that bob subscribes (a heartbeat or two).
        for attempt in range(100):
            alice.publish(b"probe %d" % attempt)
            with trio.move_on_after(0.1):
                await bob_inbox.wait_until(lambda: bool(bob_inbox.gossip))
            if bob_inbox.gossip:
                break
        for index in range(100):
            alice.publish(b"gossip %d" % index)
            bob.publish(b"back %d" % index)
        await bob_inbox.wait_until(
            lambda: sum(d.startswith(b"gossip") for _, d in bob_inbox.gossip) == 100
        )
        await alice_inbox.wait_until(lambda: len(alice_inbox.gossip) == 100)
        assert {peer for peer, _ in bob_inbox.gossip} == {alice.peer_id}
        assert sorted(d for _, d in alice_inbox.gossip) == sorted(
            b"back %d" % i for i in range(100)
        )
        assert alice.stats["gossip_received"] == 100, "our own publishes are not delivered"
        assert alice.stats["gossip_dropped_queue_full"] == 0


async def test_caller_errors_raise_and_network_errors_do_not() -> None:
    alice, _ = make_transport("alice")
    bob, _ = make_transport("bob")
    alice.send(bob.peer_id, b"before run")  # not running yet: counted, not raised
    assert alice.stats["frames_dropped_not_running"] == 1
    async with running(alice):
        with pytest.raises(LocalProtocolError, match="ourselves"):
            alice.send(alice.peer_id, b"x")
        with pytest.raises(LocalProtocolError, match="not a peer id"):
            alice.send("not-a-peer-id", b"x")
        with pytest.raises(LocalProtocolError, match="max_frame_bytes"):
            alice.send(bob.peer_id, bytes(4 * 1024 * 1024 + 1))
        with pytest.raises(LocalProtocolError, match="gossip payload"):
            alice.publish(bytes(transport_module.MAX_GOSSIP_PAYLOAD_BYTES + 1))
        # bob is not running: a dial failure, counted, never raised.
        alice.send(bob.peer_id, b"x", ["/ip4/127.0.0.1/tcp/1"])
        with trio.fail_after(5):
            while alice.stats["dial_failures"] == 0:
                await trio.sleep(0.02)


async def test_send_queue_is_bounded_and_drops_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport_module, "_SEND_QUEUE_FRAMES", 10)
    alice, _ = make_transport("alice")
    bob, bob_inbox = make_transport("bob")
    async with running(alice, bob):
        # All 25 are queued before the sender task runs: 15 oldest are dropped.
        for index in range(25):
            alice.send(bob.peer_id, b"%d" % index, bob.listen_addrs())
        await bob_inbox.wait_until(lambda: len(bob_inbox.messages) == 10)
        assert [frame for _, frame in bob_inbox.messages] == [b"%d" % i for i in range(15, 25)]
        assert alice.stats["frames_dropped_queue_full"] == 15


async def test_peer_disconnect_is_reported_and_the_host_closes() -> None:
    alice, alice_inbox = make_transport("alice")
    bob, _ = make_transport("bob")
    async with running(alice):
        async with running(bob):
            alice.send(bob.peer_id, b"x", bob.listen_addrs())
            await alice_inbox.wait_until(lambda: alice_inbox.connected == [bob.peer_id])
            port = int(bob.listen_addrs()[0].split("/tcp/")[1].split("/")[0])
        # Leaving bob's run() closed its connections (alice notices) and its listener.
        await alice_inbox.wait_until(lambda: alice_inbox.disconnected == [bob.peer_id])
        assert alice.connected_peers() == []
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


def test_a_wildcard_listen_address_is_advertised_as_the_interfaces() -> None:
    peer_id = make_transport("alice")[0].peer_id
    loopback = f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}"
    assert transport_module._dialable_addrs([loopback], peer_id) == [loopback]
    assert transport_module._dialable_addrs(["/ip4/127.0.0.1/tcp/4001"], peer_id) == [loopback]
    wildcard = f"/ip4/0.0.0.0/tcp/4001/p2p/{peer_id}"
    expanded = transport_module._dialable_addrs([wildcard], peer_id)
    if expanded == [wildcard]:
        pytest.skip("this machine has no non-loopback IPv4 interface")
    assert all("0.0.0.0" not in a and a.endswith(f"/tcp/4001/p2p/{peer_id}") for a in expanded)


def test_bad_configuration_is_refused() -> None:
    def build(**fields: object) -> MeshTransport:
        return MeshTransport(
            seed("alice"),
            TransportConfig(**fields),  # type: ignore[arg-type]
            on_message=lambda peer, frame: None,
            on_gossip=lambda peer, data: None,
        )

    with pytest.raises(MeshnodeError, match="swarm key must be 32 bytes"):
        build(swarm_key=b"short")
    with pytest.raises(MeshnodeError, match=r"must end in /p2p/"):
        build(bootstrap=("/ip4/127.0.0.1/tcp/4001",))
    with pytest.raises(MeshnodeError, match="not a multiaddr"):
        build(bootstrap=("nonsense",))
