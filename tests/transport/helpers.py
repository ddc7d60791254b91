"""Shared pieces of the transport tests: loopback configs, recorders, peer processes.

Network rule of these tests: 127.0.0.1 only, mDNS always off, never a non-loopback dial.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import multiaddr  # type: ignore[import-untyped]
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.identity_utils import create_identity_from_seed
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from meshnode.runtime.transport import MeshTransport, TransportConfig

PEER_PROCESS: Final = Path(__file__).with_name("peer_process.py")
PROCESS_START_TIMEOUT_S: Final = 20.0


def seed(name: str) -> bytes:
    """A fixed 32-byte seed per name, so peer ids are stable across runs."""
    return hashlib.sha256(f"meshnode-transport-test:{name}".encode()).digest()


def loopback_config(**overrides: Any) -> TransportConfig:
    return TransportConfig(
        **{"listen_host": "127.0.0.1", "enable_mdns": False, "connect_timeout_s": 2.0, **overrides}
    )


class Changes:
    """Something tests wait on: every `changed()` wakes the waiters, which re-check."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._event.wait()


@dataclass
class Recorder:
    """Collects what a transport delivers."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    gossip: list[tuple[str, bytes]] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)
    echo_through: MeshTransport | None = None

    def on_message(self, peer: str, frame: bytes) -> None:
        self.messages.append((peer, frame))
        if self.echo_through is not None:
            self.echo_through.send(peer, frame)
        self.changes.changed()

    def on_gossip(self, peer: str, data: bytes) -> None:
        self.gossip.append((peer, data))
        self.changes.changed()

    def on_connected(self, peer: str) -> None:
        self.connected.append(peer)
        self.changes.changed()

    def on_disconnected(self, peer: str) -> None:
        self.disconnected.append(peer)
        self.changes.changed()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        await self.changes.wait_until(predicate, timeout_s)


def make_transport(
    name: str, recorder: Recorder | None = None, *, echo: bool = False, **overrides: Any
) -> tuple[MeshTransport, Recorder]:
    recorder = recorder or Recorder()
    transport = MeshTransport(
        seed(name),
        loopback_config(**overrides),
        on_message=recorder.on_message,
        on_gossip=recorder.on_gossip,
        on_peer_connected=recorder.on_connected,
        on_peer_disconnected=recorder.on_disconnected,
    )
    if echo:
        recorder.echo_through = transport
    return transport, recorder


@asynccontextmanager
async def running(*transports: MeshTransport) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.run)
        yield
        nursery.cancel_scope.cancel()


async def eventually(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> None:
    """For conditions nobody signals (stats of another component): poll until true."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(poll_s)


def raw_host(name: str, *, security: str = "noise", psk: bytes | None = None) -> IHost:
    """A bare py-libp2p host (not a MeshTransport), to play a foreign or hostile peer.

    `security`: "noise" (what we speak), "plaintext" (only /plaintext/2.0.0) or "default"
    (whatever new_host offers when not told: Noise, TLS, SECIO and plaintext).
    """
    key_pair = create_identity_from_seed(seed(name))
    sec_opt: Any
    match security:
        case "noise":
            sec_opt = {
                NOISE_PROTOCOL_ID: NoiseTransport(
                    key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            }
        case "plaintext":
            sec_opt = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
        case "default":
            sec_opt = None
        case _:
            raise ValueError(security)
    return new_host(key_pair=key_pair, sec_opt=sec_opt, psk=psk.hex() if psk is not None else None)


def peer_info_of(transport: MeshTransport) -> PeerInfo:
    """How a bare libp2p host would dial `transport`."""
    return info_from_p2p_addr(multiaddr.Multiaddr(transport.listen_addrs()[0]))


@asynccontextmanager
async def running_raw(host: IHost) -> AsyncIterator[IHost]:
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await host.close()


class PeerProcess:
    """`peer_process.py` in a child process; its JSON events are collected in `events`."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        *,
        port: int = 0,
        bootstrap: tuple[str, ...] = (),
        swarm_key_file: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.bootstrap = bootstrap
        self.swarm_key_file = swarm_key_file
        self.log_path = log_dir / f"{name}.stderr"
        self.events: list[dict[str, Any]] = []
        self.changes = Changes()
        self.peer_id = ""
        self.addrs: list[str] = []
        self._process: trio.Process | None = None

    def command_line(self) -> list[str]:
        command = [sys.executable, str(PEER_PROCESS), "--seed", seed(self.name).hex()]
        command += ["--port", str(self.port)]
        for address in self.bootstrap:
            command += ["--bootstrap", address]
        if self.swarm_key_file is not None:
            command += ["--swarm-key-file", str(self.swarm_key_file)]
        return command

    async def start(self, nursery: trio.Nursery) -> PeerProcess:
        self.events.clear()
        with self.log_path.open("ab") as log:
            self._process = await trio.lowlevel.open_process(
                self.command_line(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        nursery.start_soon(self._read_events, self._process)
        listening = await self.wait_for(
            lambda e: e["event"] == "listening", PROCESS_START_TIMEOUT_S
        )
        self.peer_id = listening["peer_id"]
        self.addrs = listening["addrs"]
        # A fixed port makes restarts reachable at the same address.
        self.port = int(self.addrs[0].split("/tcp/")[1].split("/")[0])
        return self

    async def _read_events(self, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.events.append(json.loads(line))
                self.changes.changed()

    def matching(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [event for event in self.events if predicate(event)]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        await self.changes.wait_until(lambda: bool(self.matching(predicate)), timeout_s)
        return self.matching(predicate)[-1]

    async def command(self, **command: Any) -> None:
        assert self._process is not None and self._process.stdin is not None
        await self._process.stdin.send_all(json.dumps(command).encode() + b"\n")

    async def stats(self) -> dict[str, Any]:
        seen = len(self.matching(lambda e: e["event"] == "stats"))
        await self.command(cmd="stats")
        await self.changes.wait_until(
            lambda: len(self.matching(lambda e: e["event"] == "stats")) > seen, 5.0
        )
        return self.matching(lambda e: e["event"] == "stats")[-1]

    async def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        with trio.fail_after(10):
            await self._process.wait()

    async def stop(self) -> None:
        """Close stdin (the process exits cleanly), or kill it if it does not."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        await process.stdin.aclose()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            await self.kill()

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
