"""Starting, stopping and discovery: the edges of `MeshTransport.run()`."""

from __future__ import annotations

import logging
import socket
import time
import types
from collections.abc import Iterator

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from meshnode.errors import MeshnodeError
from meshnode.runtime import libp2p_patches, transport
from meshnode.runtime.transport import _clean_exit
from tests.transport.helpers import make_transport, peer_info_of, running

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("module", [transport, libp2p_patches], ids=lambda m: m.__name__)
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    """tests/test_public_surface.py's rule, for names defined (not imported) here."""
    exported = set(module.__all__)
    assert sorted(name for name in exported if not hasattr(module, name)) == []
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module.__name__) == module.__name__
        and name != "annotations"
    }
    assert sorted(public - exported) == []


async def test_a_port_in_use_is_an_error_not_a_silent_deaf_node() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node, _ = make_transport("node", swarm_port=taken.getsockname()[1])
        with pytest.raises(MeshnodeError, match=r"cannot listen on .* port in use"):
            await node.run()


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def libp2p_warnings() -> Iterator[list[str]]:
    """WARNING and worse from any libp2p logger (they all end at the `libp2p` logger)."""
    handler = _Warnings()
    logging.getLogger("libp2p").addHandler(handler)
    yield handler.messages
    logging.getLogger("libp2p").removeHandler(handler)


async def test_stopping_under_load_is_quick_quiet_and_raises_nothing(
    libp2p_warnings: list[str],
) -> None:
    for round_number in range(3):
        alice, _ = make_transport("alice", echo=True)
        bob, _ = make_transport("bob", echo=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(alice.run)
            await nursery.start(bob.run)
            for _ in range(300):
                alice.send(bob.peer_id, bytes(2000), bob.listen_addrs())
                alice.publish(bytes(200))
                bob.publish(bytes(200))
            await trio.sleep(0.1 * round_number)
            stopping = time.monotonic()
            nursery.cancel_scope.cancel()
        assert time.monotonic() - stopping < 2.0
    assert libp2p_warnings == []


def test_shutdown_races_are_dropped_only_while_stopping() -> None:
    race = RuntimeError("Nursery is closed to new arrivals")

    def raise_group(*errors: Exception) -> None:
        raise ExceptionGroup("nursery", list(errors))

    with _clean_exit(lambda: True):
        raise_group(race)
    with pytest.raises(ExceptionGroup), _clean_exit(lambda: False):
        raise_group(race)
    with pytest.raises(ExceptionGroup) as kept, _clean_exit(lambda: True):
        raise_group(race, ValueError("a bug"))
    assert [type(e) for e in kept.value.exceptions] == [ValueError]
    with pytest.raises(MeshnodeError, match="operating"), _clean_exit(lambda: True):
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [MeshnodeError("operating")])])


async def test_a_peer_found_by_mdns_is_dialled() -> None:
    """libp2p's mDNS listener calls our handler from zeroconf's thread; no multicast here:
    the test calls the handler from a worker thread the same way."""
    node, inbox = make_transport("node")
    other, _ = make_transport("other")
    async with running(node, other):
        found = peer_info_of(other)
        await trio.to_thread.run_sync(node._on_peer_discovered, found)
        await trio.to_thread.run_sync(
            node._on_peer_discovered, PeerInfo(ID.from_base58(node.peer_id), found.addrs)
        )
        await inbox.wait_until(lambda: inbox.connected == [other.peer_id])
        assert node.stats["peers_discovered"] == 1, "our own announcement is ignored"
