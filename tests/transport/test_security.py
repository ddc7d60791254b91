"""Who may talk to a node: Noise only (no plaintext), and only peers with the same swarm key."""

from __future__ import annotations

import base64
import time

import pytest
import trio
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import PeerInfo

from meshnode.errors import MeshnodeError
from meshnode.runtime.transport import generate_swarm_key, parse_swarm_key
from tests.transport.helpers import (
    eventually,
    make_transport,
    peer_info_of,
    raw_host,
    running,
    running_raw,
)

pytestmark = pytest.mark.timeout(30)

CONNECT_TIMEOUT_S = 1.0
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


# -- plaintext ---------------------------------------------------------------------------------


async def test_a_plaintext_peer_is_refused() -> None:
    node, inbox = make_transport("node")
    async with running(node), running_raw(raw_host("plain", security="plaintext")) as plain:
        # Security negotiation finds no common protocol: libp2p's dial fails.
        with pytest.raises(SwarmException), trio.fail_after(CONNECT_TIMEOUT_S * 5):
            await plain.connect(peer_info_of(node))
        assert inbox.connected == []
        assert node.connected_peers() == []
        # And we do not speak plaintext when we dial it.
        plain_id = plain.get_id().to_base58()
        node.send(plain_id, b"x", [str(plain.get_addrs()[0])])
        await eventually(lambda: node.stats["dial_failures"] >= 1, 10)
        assert node.stats["streams_opened"] == 0
        assert node.connected_peers() == []


async def test_control_a_plaintext_peer_is_accepted_by_a_default_libp2p_host() -> None:
    """Why the Noise-only sec_opt matters: new_host's default security accepts plaintext."""
    async with (
        running_raw(raw_host("default", security="default")) as default,
        running_raw(raw_host("plain", security="plaintext")) as plain,
    ):
        with trio.fail_after(CONNECT_TIMEOUT_S * 5):
            await plain.connect(PeerInfo(default.get_id(), default.get_addrs()))
        assert default.get_id() in plain.get_connected_peers()


# -- swarm key ---------------------------------------------------------------------------------


async def test_nodes_with_the_same_swarm_key_connect() -> None:
    alice, _ = make_transport("alice", swarm_key=KEY)
    bob, bob_inbox = make_transport("bob", swarm_key=KEY)
    async with running(alice, bob):
        alice.send(bob.peer_id, b"inside", bob.listen_addrs())
        await bob_inbox.wait_until(lambda: bob_inbox.messages == [(alice.peer_id, b"inside")])


@pytest.mark.parametrize(
    ("dialer_key", "listener_key"),
    [(OTHER_KEY, KEY), (None, KEY), (KEY, None)],
    ids=["different-key", "no-key-dials-private", "private-dials-public"],
)
async def test_a_different_or_missing_swarm_key_cannot_connect(
    dialer_key: bytes | None, listener_key: bytes | None
) -> None:
    dialer, _ = make_transport("dialer", swarm_key=dialer_key, connect_timeout_s=CONNECT_TIMEOUT_S)
    listener, listener_inbox = make_transport(
        "listener", swarm_key=listener_key, connect_timeout_s=CONNECT_TIMEOUT_S
    )
    async with running(dialer, listener):
        started = time.monotonic()
        dialer.send(listener.peer_id, b"let me in", listener.listen_addrs())
        # The dial hangs inside libp2p; our deadline turns it into a counted failure.
        await eventually(lambda: dialer.stats["dial_failures"] >= 1, CONNECT_TIMEOUT_S * 4)
        assert time.monotonic() - started < CONNECT_TIMEOUT_S * 3
        assert listener_inbox.messages == []
        assert listener.connected_peers() == []
        assert dialer.stats["streams_opened"] == 0
    # Leaving both run() calls did not hang either (the test timeout would say so).


async def test_a_raw_host_with_a_different_psk_hangs_without_our_deadline() -> None:
    """The reason every connect is wrapped in a deadline: libp2p itself waits far longer."""
    node, _ = make_transport("node", swarm_key=KEY)
    async with running(node), running_raw(raw_host("intruder", psk=OTHER_KEY)) as intruder:
        with trio.move_on_after(CONNECT_TIMEOUT_S * 2) as waited:
            try:
                await intruder.connect(peer_info_of(node))
            except Exception:
                pytest.fail("libp2p reported the mismatch; the deadline may no longer be needed")
        assert waited.cancelled_caught, "connect with a wrong swarm key should hang"


# -- swarm.key files ---------------------------------------------------------------------------


def test_swarm_key_round_trip() -> None:
    text = generate_swarm_key()
    assert text.startswith("/key/swarm/psk/1.0.0/\n/base16/\n")
    key = parse_swarm_key(text)
    assert len(key) == 32
    assert key.hex() == text.split("\n")[2]
    assert parse_swarm_key(text.replace("\n", "\r\n") + "\n\n") == key
    assert generate_swarm_key() != text


def test_swarm_key_in_base64_as_go_libp2p_allows() -> None:
    text = f"/key/swarm/psk/1.0.0/\n/base64/\n{base64.b64encode(KEY).decode()}\n"
    assert parse_swarm_key(text) == KEY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("/key/swarm/psk/2.0.0/\n/base16/\n" + "00" * 32, "must start with"),
        ("/key/swarm/psk/1.0.0/\n/base16/", "3 lines"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n00\nextra", "3 lines"),
        ("/key/swarm/psk/1.0.0/\n/bin/\n" + "00" * 32, "encoding"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "00" * 31, "64 hex characters"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "zz" * 32, "not hexadecimal"),
        ("/key/swarm/psk/1.0.0/\n/base64/\n!!!!", "not valid base64"),
        ("/key/swarm/psk/1.0.0/\n/base64/\nAAAA", "32 bytes"),
    ],
)
def test_malformed_swarm_keys_are_explained(text: str, message: str) -> None:
    with pytest.raises(MeshnodeError, match=message):
        parse_swarm_key(text)
