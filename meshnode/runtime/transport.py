"""The libp2p transport of a meshnode node: one host, direct control streams, one gossip topic.

Rules of this module:

- It moves bytes and decides nothing: frames and gossip payloads are opaque; whom to send to
  and what a frame means belong to the node core.
- Nothing here raises into the caller for a network failure. `send()` and `publish()` only
  enqueue on bounded queues; tasks under `run()` do the I/O, and every failure or drop is a
  counter in `stats`. A peer can never crash the node: malformed input resets its stream.
- Every network wait has a deadline: a dial to a peer with a different swarm key never
  fails on its own, it hangs (see /work/shared/NOTES-libp2p.md).
- Every task is a child of `run()`'s nursery; leaving `run()` closes the host.
- Workarounds of py-libp2p behaviour that need patching live in `libp2p_patches`; those that
  are configuration (Noise only, Yamux only, GossipSub parameters) are here, with the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import base58
import multiaddr  # type: ignore[import-untyped]
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair as create_ed25519_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.broadcaster import PeerBroadcaster
from libp2p.discovery.mdns.listener import PeerListener
from libp2p.discovery.mdns.mdns import SERVICE_TYPE as _MDNS_SERVICE_TYPE
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise import transport as noise
from libp2p.stream_muxer.yamux import yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address
from libp2p.utils.varint import encode_uvarint
from zeroconf import InterfaceChoice, IPVersion, Zeroconf

from meshnode.errors import LocalProtocolError, MeshnodeError, RemoteProtocolError
from meshnode.runtime import libp2p_patches
from meshnode.runtime.identity import peer_id_of

__all__ = [
    "CONTROL_PROTOCOL",
    "GOSSIP_TOPIC",
    "MAX_GOSSIP_PAYLOAD_BYTES",
    "STAT_NAMES",
    "FrameDecoder",
    "FrameTooLargeError",
    "MeshTransport",
    "TransportConfig",
    "encode_frame",
    "generate_swarm_key",
    "parse_swarm_key",
]

LOGGER = logging.getLogger(__name__)

CONTROL_PROTOCOL: Final = TProtocol("/meshnode/control/1.0.0")
GOSSIP_TOPIC: Final = "meshnode/mesh/1"

# Limits (STYLE: a limit on everything).
_SEND_QUEUE_FRAMES: Final = 1024  # per peer; the oldest frame is dropped when full
_MAX_PEER_SENDERS: Final = 4096  # peers with a live sender task at once
_MAX_KNOWN_PEERS: Final = 16384  # peers whose addresses we remember (LRU)
_MAX_ADDRS_PER_PEER: Final = 8
_SEND_BATCH_BYTES: Final = 256 * 1024  # frames coalesced into one stream write
_PUBLISH_QUEUE_MESSAGES: Final = 4096
MAX_GOSSIP_PAYLOAD_BYTES: Final = 512 * 1024  # pubsub refuses RPCs over 1 MiB
_DISCOVERED_QUEUE_PEERS: Final = 256
_MAX_DISCOVERED_DIALS: Final = 64  # peers found by mDNS being dialled at once
_READ_CHUNK_BYTES: Final = 64 * 1024

# Timings.
_WRITE_TIMEOUT_S: Final = 10.0  # a peer that stops reading must not hold a sender forever
_SENDER_IDLE_S: Final = 300.0  # a sender with nothing to send closes its stream and ends
_SENDER_RETRY_INITIAL_S: Final = 0.5
_SENDER_RETRY_MAX_S: Final = 8.0
_SENDER_MAX_DIAL_ATTEMPTS: Final = 6  # then the queued frames are dropped (~15 s of retries)
_BOOTSTRAP_RETRY_INITIAL_S: Final = 1.0
_BOOTSTRAP_RETRY_MAX_S: Final = 30.0
_CLOSE_TIMEOUT_S: Final = 5.0
_DISCOVERED_DIAL_ATTEMPTS: Final = 4  # mDNS reports a peer once: retry 1 s, 2 s, 4 s
_DISCOVERED_RETRY_INITIAL_S: Final = 1.0
_MDNS_ADDR_TTL_S: Final = 120  # how long the addresses a peer announces stay in the peerstore
_PEERSTORE_ADDR_TTL_S: Final = 3600

# GossipSub, configured explicitly: the defaults lose almost every message (heartbeat 120 s,
# a 10 msg/s per-topic "spam" limit that also drops our own publishes). With these values
# and both pubsub queues raised (libp2p_patches) delivery was 100 %. /meshsub/1.2.0 doubles
# CPU (an IDONTWANT to every mesh peer per message), so only 1.1.0 is offered.
_GOSSIP_PROTOCOLS: Final = (TProtocol("/meshsub/1.1.0"),)
_GOSSIP_DEGREE: Final = 6
_GOSSIP_DEGREE_LOW: Final = 4
_GOSSIP_DEGREE_HIGH: Final = 12
_GOSSIP_HEARTBEAT_INTERVAL_S: Final = 1

# What a dial or a stream ordinarily fails with: libp2p's own tree, the OS, our deadlines.
# Calls into libp2p catch every Exception (a peer must not be able to crash the node through
# a libp2p bug), but anything outside this tuple is logged as a WARNING with its traceback
# and counted in stats["libp2p_errors"]. Our own code and callbacks are never wrapped.
_NETWORK_ERRORS: Final = (
    BaseLibp2pError,
    OSError,
    EOFError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

_SWARM_KEY_HEADER: Final = "/key/swarm/psk/1.0.0/"
_SWARM_KEY_BYTES: Final = 32
_MAX_VARINT_BYTES: Final = 10


@dataclass(frozen=True)
class TransportConfig:
    listen_host: str = "0.0.0.0"  # tests use 127.0.0.1
    swarm_port: int = 0  # 0 = pick a free port
    bootstrap: tuple[str, ...] = ()  # /ip4/1.2.3.4/tcp/N/p2p/12D3KooW...
    swarm_key: bytes | None = None  # 32-byte pre-shared key, None = public mesh
    enable_mdns: bool = True
    max_frame_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0


# ---------------------------------------------------------------------------------------------
# Swarm keys (the IPFS/Kubo `swarm.key` format)


def parse_swarm_key(text: str) -> bytes:
    """The 32-byte pre-shared key of a `swarm.key` file.

    The format is three lines: `/key/swarm/psk/1.0.0/`, an encoding (`/base16/`, or
    `/base64/` as go-libp2p also accepts), and the encoded key.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines or not lines[0]:
        raise MeshnodeError("swarm key is empty")
    if lines[0] != _SWARM_KEY_HEADER:
        raise MeshnodeError(
            f"swarm key must start with {_SWARM_KEY_HEADER!r}, not {lines[0][:40]!r}"
        )
    if len(lines) != 3:
        raise MeshnodeError(
            f"swarm key must have 3 lines (header, encoding, key), found {len(lines)}"
        )
    encoding, encoded = lines[1], lines[2]
    if encoding == "/base16/":
        if len(encoded) != 2 * _SWARM_KEY_BYTES:
            raise MeshnodeError(
                f"swarm key must be {2 * _SWARM_KEY_BYTES} hex characters, found {len(encoded)}"
            )
        try:
            key = bytes.fromhex(encoded)
        except ValueError:
            raise MeshnodeError("swarm key is not hexadecimal") from None
    elif encoding == "/base64/":
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise MeshnodeError("swarm key is not valid base64") from None
        if len(key) != _SWARM_KEY_BYTES:
            raise MeshnodeError(
                f"swarm key must decode to {_SWARM_KEY_BYTES} bytes, found {len(key)}"
            )
    else:
        raise MeshnodeError(
            f"swarm key encoding must be '/base16/' or '/base64/', not {encoding[:40]!r}"
        )
    return key


def generate_swarm_key() -> str:
    """A new random `swarm.key` file's text (base16), readable by `parse_swarm_key`."""
    return f"{_SWARM_KEY_HEADER}\n/base16/\n{secrets.token_bytes(_SWARM_KEY_BYTES).hex()}\n"


# ---------------------------------------------------------------------------------------------
# Framing: unsigned varint length + bytes


def encode_frame(frame: bytes) -> bytes:
    return encode_uvarint(len(frame)) + frame


class FrameTooLargeError(RemoteProtocolError):
    """A peer announced a frame over our limit."""


class FrameDecoder:
    """Splits a byte stream into varint-length-prefixed frames (sans-IO).

    The length is checked against the limit before any of the body is buffered, so a peer
    cannot make us hold more than one frame's limit plus one read chunk.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._length: int | None = None  # of the frame being read, once its prefix is in

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def mid_frame(self) -> bool:
        """Whether bytes of an incomplete frame are buffered (EOF now means truncation)."""
        return bool(self._buffer) or self._length is not None

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes are fed.

        Raises `RemoteProtocolError` for a malformed prefix or a frame over the limit.
        """
        if self._length is None:
            self._length = self._read_length()
            if self._length is None:
                return None
        if len(self._buffer) < self._length:
            return None
        frame = bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._length = None
        return frame

    def _read_length(self) -> int | None:
        value = 0
        for index, byte in enumerate(self._buffer[:_MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * index)
            if byte & 0x80 == 0:
                if value > self._max_frame_bytes:
                    raise FrameTooLargeError(
                        f"frame of {value} bytes exceeds the limit of {self._max_frame_bytes}"
                    )
                del self._buffer[: index + 1]
                return value
        if len(self._buffer) >= _MAX_VARINT_BYTES:
            raise RemoteProtocolError(f"frame length prefix longer than {_MAX_VARINT_BYTES} bytes")
        return None


# ---------------------------------------------------------------------------------------------
# Identity and addresses


def _key_pair_from_seed(seed: bytes) -> tuple[KeyPair, str]:
    """The libp2p key pair of our Ed25519 seed, and its peer id as identity.py computes it."""
    key_pair = create_ed25519_key_pair(seed=seed)
    expected = peer_id_of(Ed25519PrivateKey.from_private_bytes(seed))
    actual = ID.from_pubkey(key_pair.public_key).to_base58()
    # The node id is computed without libp2p (identity.py); both must agree or peers would
    # reach a different node than the one the mesh knows.
    if actual != expected:
        raise MeshnodeError(f"libp2p peer id {actual} differs from the node id {expected}")
    return key_pair, actual


@functools.lru_cache(maxsize=4096)
def _parse_peer_id(text: str) -> ID:
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise LocalProtocolError(f"{text!r} is not a peer id (not base58)") from None
    # A peer id is a multihash: identity (0x00) for small keys, sha2-256 (0x12) otherwise.
    if len(raw) < 2 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise LocalProtocolError(f"{text!r} is not a peer id (not a multihash)")
    return ID(raw)


def _listen_multiaddr(host: str, port: int) -> multiaddr.Multiaddr:
    family = "ip6" if ":" in host else "ip4"
    return multiaddr.Multiaddr(f"/{family}/{host}/tcp/{port}")


def _transport_addrs(peer: ID, addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """Dialable addresses of `peer` from strings; ones naming another peer, or bad, are skipped."""
    result: list[multiaddr.Multiaddr] = []
    for text in addrs[:_MAX_ADDRS_PER_PEER]:
        try:
            address = multiaddr.Multiaddr(text)
            named = address.get_peer_id()
        except Exception:  # multiaddr raises several unrelated types on bad input
            LOGGER.debug("ignoring unparsable address %r of %s", text, peer)
            continue
        if named is not None:
            if named != peer.to_base58():
                LOGGER.debug("ignoring address %s: it names another peer than %s", text, peer)
                continue
            address = address.decapsulate(multiaddr.Multiaddr(f"/p2p/{named}"))
        result.append(address)
    return result


def _bootstrap_peer(text: str) -> PeerInfo:
    try:
        address = multiaddr.Multiaddr(text)
        named = address.get_peer_id()
    except Exception:
        raise MeshnodeError(f"bootstrap address {text!r} is not a multiaddr") from None
    if named is None:
        raise MeshnodeError(f"bootstrap address {text!r} must end in /p2p/<peer id>")
    peer = _parse_peer_id(named)
    return PeerInfo(peer, [address.decapsulate(multiaddr.Multiaddr(f"/p2p/{named}"))])


def _dialable_addrs(addrs: Sequence[str], peer_id: str) -> list[str]:
    """Our addresses as peers can dial them: a wildcard listen address (0.0.0.0, ::) is
    replaced by the interfaces' addresses (libp2p reports the wildcard itself), and each
    ends in /p2p/<peer_id>."""
    suffix = f"/p2p/{peer_id}"
    result: list[str] = []
    for text in addrs:
        base = text.removesuffix(suffix)
        if base.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
            result += [f"{a}{suffix}" for a in expand_wildcard_address(multiaddr.Multiaddr(base))]
        else:
            result.append(base + suffix)
    return list(dict.fromkeys(result))


def _advertised_addrs(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    result: list[multiaddr.Multiaddr] = []
    for addr in candidates:
        if str(addr).startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
            result.extend(expand_wildcard_address(addr))
        else:
            result.append(addr)
    return list(dict.fromkeys(result)) or candidates


def _stream_peer(stream: INetStream) -> str:
    """The authenticated peer id at the other end of a stream."""
    return str(stream.muxed_conn.peer_id.to_base58())


def _ignore(*_: object) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# mDNS: finding peers on the local network


def _announced_addrs(addrs: Sequence[str]) -> list[str]:
    """The addresses we announce over mDNS: `_dialable_addrs`, and never a wildcard.

    libp2p's own mDNS (`new_host(enable_mDNS=True)`) announced `/ip4/0.0.0.0/tcp/N`: a peer
    that dials it reaches its own port N (itself, and the handshake fails on the peer id) or
    nothing, so two nodes never met. `_dialable_addrs` expands a wildcard to the interfaces'
    addresses, except on a host with no interface but loopback, where libp2p leaves the
    wildcard as it is: there we announce loopback, the only place that multicast goes.
    """
    loopback = {"/ip4/0.0.0.0/": "/ip4/127.0.0.1/", "/ip6/::/": "/ip6/::1/"}
    result: list[str] = []
    for text in addrs:
        wildcard = next((w for w in loopback if text.startswith(w)), None)
        result.append(text if wildcard is None else loopback[wildcard] + text[len(wildcard) :])
    return list(dict.fromkeys(result))


class _Broadcaster(PeerBroadcaster):
    """libp2p's mDNS announcer, whose A/AAAA records hold the addresses we listen on.

    Upstream puts there the source address of a route to 8.8.8.8 (127.0.0.1 where there is
    no default route, as in an isolated network namespace). Peers dial the TXT records,
    which upstream builds from `listen_addrs`; the A records only have to be true.
    """

    def _get_local_ips(self) -> list[str]:
        ips = []
        for text in self.listen_addrs or ():
            parts = text.split("/")
            if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
                ips.append(parts[2])
        return list(dict.fromkeys(ips)) or ["127.0.0.1"]


class _LocalDiscovery:
    """mDNS: announce our addresses, and report peers that announce theirs to libp2p's
    `peerDiscovery` (a process-wide singleton), from zeroconf's browser thread.

    Built from libp2p's mDNS parts instead of `new_host(enable_mDNS=True)`, which announced
    a wildcard (see `_announced_addrs`) with the default port 4001 in its SRV record, and
    ran zeroconf's blocking calls (probing takes about a second) on trio's thread. Every
    method here blocks: call them from a worker thread.
    """

    def __init__(self, peerstore: Any, peer_id: str, listen_host: str, addrs: list[str]) -> None:
        # Answer only where we listen: a node bound to one address cannot be reached through
        # the other interfaces, and one bound to 127.0.0.1 keeps mDNS on this machine.
        wildcard = listen_host in ("0.0.0.0", "::")
        self._zeroconf = Zeroconf(
            interfaces=InterfaceChoice.All if wildcard else [listen_host],
            ip_version=IPVersion.V6Only if ":" in listen_host else IPVersion.V4Only,
        )
        try:
            name = f"{secrets.token_hex(16)}.{_MDNS_SERVICE_TYPE}"
            self._broadcaster = _Broadcaster(
                zeroconf=self._zeroconf,
                service_type=_MDNS_SERVICE_TYPE,
                service_name=name,
                peer_id=peer_id,
                port=int(multiaddr.Multiaddr(addrs[0]).value_for_protocol("tcp")),
                listen_addrs=addrs,
            )
            # Browses from here on: peers announced before we registered are found too.
            self._listener = PeerListener(
                peerstore, self._zeroconf, _MDNS_SERVICE_TYPE, name, ttl=_MDNS_ADDR_TTL_S
            )
            self._broadcaster.register()
        except BaseException:
            self._zeroconf.close()
            raise

    def close(self) -> None:
        """Say goodbye (peers drop our record at once) and stop browsing."""
        try:
            self._broadcaster.unregister()
            self._listener.stop()
        finally:
            self._zeroconf.close()


# ---------------------------------------------------------------------------------------------
# Shutdown


def _is_shutdown_race(error: BaseException) -> bool:
    """py-libp2p 0.8.1 starts tasks in nurseries that are closing when the host shuts down
    under load, and reports it as this RuntimeError inside an ExceptionGroup."""
    return isinstance(error, RuntimeError) and "Nursery is closed" in str(error)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@contextlib.contextmanager
def _clean_exit(stopping: Callable[[], bool]) -> Iterator[None]:
    """What leaves `run()`: shutdown races dropped, a lone operating error unwrapped.

    - "Nursery is closed" errors are dropped if `stopping()` says we were shutting down;
      otherwise libp2p failed under us and the error is re-raised.
    - A single `MeshnodeError` (cannot listen, ...) comes out bare, not nested in the groups
      of the nurseries it crossed, so the caller can report it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        races, rest = group.split(_is_shutdown_race)
        if races is not None and not stopping():
            raise
        if races is not None:
            LOGGER.debug("libp2p shutdown race ignored: %r", races)
        if rest is None:
            return
        leaves = _leaves(rest)
        if len(leaves) == 1 and isinstance(leaves[0], MeshnodeError):
            raise leaves[0] from None
        raise rest from None
    except RuntimeError as error:
        if not (_is_shutdown_race(error) and stopping()):
            raise
        LOGGER.debug("libp2p shutdown race ignored: %r", error)


# ---------------------------------------------------------------------------------------------
# The transport


class _PeerSender:
    """One peer's bounded outbound queue; one task drains it onto a long-lived stream."""

    def __init__(self, peer: ID) -> None:
        self.peer = peer
        self.frames: deque[bytes] = deque()
        self.wakeup = trio.Event()

    def take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while self.frames and (not batch or size + len(self.frames[0]) <= _SEND_BATCH_BYTES):
            frame = self.frames.popleft()
            batch.append(frame)
            size += len(frame)
        return batch


class _ConnectionNotifee(INotifee):
    """Forwards libp2p connection events to the transport (libp2p calls these as tasks)."""

    def __init__(self, transport: MeshTransport) -> None:
        self._transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connection_opened(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connection_closed(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


STAT_NAMES: Final = (
    "frames_sent",
    "frames_received",
    "frames_dropped_queue_full",
    "frames_dropped_not_running",
    "frames_dropped_too_many_peers",
    "frames_dropped_unreachable",
    "libp2p_errors",
    "frames_send_failed",
    "frames_rejected_oversize",
    "frames_rejected_malformed",
    "frames_truncated",
    "streams_opened",
    "dial_failures",
    "redials",
    "peers_discovered",
    "gossip_sent",
    "gossip_received",
    "gossip_dropped_queue_full",
    "gossip_publish_failed",
)


class MeshTransport:
    """One libp2p host per node: direct frames to peers, and gossip on one topic."""

    def __init__(
        self,
        seed: bytes,
        config: TransportConfig,
        *,
        on_message: Callable[[str, bytes], None],
        on_gossip: Callable[[str, bytes], None],
        on_peer_connected: Callable[[str], None] = _ignore,
        on_peer_disconnected: Callable[[str], None] = _ignore,
    ) -> None:
        if config.swarm_key is not None and len(config.swarm_key) != _SWARM_KEY_BYTES:
            raise MeshnodeError(
                f"swarm key must be {_SWARM_KEY_BYTES} bytes, not {len(config.swarm_key)}"
            )
        if config.max_frame_bytes <= 0:
            raise MeshnodeError(f"max_frame_bytes must be positive, not {config.max_frame_bytes}")
        # Patches must be in place before the host and pubsub exist (they read the patched
        # values when they build their queues). Idempotent.
        libp2p_patches.apply_all()
        self._config = config
        self._key_pair, self.peer_id = _key_pair_from_seed(seed)
        self._id = ID.from_base58(self.peer_id)
        self._bootstrap = [_bootstrap_peer(text) for text in config.bootstrap]
        self._on_message = on_message
        self._on_gossip = on_gossip
        self._on_peer_connected = on_peer_connected
        self._on_peer_disconnected = on_peer_disconnected
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._senders: dict[ID, _PeerSender] = {}
        self._known_addrs: OrderedDict[ID, list[multiaddr.Multiaddr]] = OrderedDict()
        self._addr_hints: dict[str, tuple[str, ...]] = {}
        self._connected: set[ID] = set()
        self._disconnect_events: dict[ID, trio.Event] = {}
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._nursery: trio.Nursery | None = None
        self._publish_send, self._publish_receive = trio.open_memory_channel[bytes](
            _PUBLISH_QUEUE_MESSAGES
        )
        self._discovered_send, self._discovered_receive = trio.open_memory_channel[PeerInfo](
            _DISCOVERED_QUEUE_PEERS
        )
        self._discovered_dials: set[ID] = set()  # peers found by mDNS being dialled
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._stopping = False  # set when run() starts to shut down (see _clean_exit)

    # -- building the host ------------------------------------------------------------------

    def _build_host(self) -> IHost:
        config = self._config
        return new_host(
            key_pair=self._key_pair,
            # Security: Noise only. new_host's default also offers TLS, SECIO and
            # /plaintext/2.0.0, so an unauthenticated, unencrypted peer would be accepted.
            sec_opt={
                noise.PROTOCOL_ID: noise.Transport(
                    self._key_pair, noise_privkey=create_x25519_key_pair().private_key
                )
            },
            # Muxer: Yamux only. Mplex has no flow control (14 vs 82 MB/s per stream) and
            # reset a stream whose reader paused for 5 s.
            muxer_opt={TProtocol(yamux.PROTOCOL_ID): yamux.Yamux},
            listen_addrs=[_listen_multiaddr(config.listen_host, config.swarm_port)],
            # What identify tells peers: a wildcard listen address expanded, or peers store
            # /ip4/0.0.0.0/tcp/N and, redialling us later, dial themselves first.
            addrs_factory=_advertised_addrs,
            # No `enable_mDNS=`: libp2p's announces 0.0.0.0, which no peer can dial;
            # `_run_mdns` runs its parts with our real addresses (see `_LocalDiscovery`).
            # Private network: libp2p wants the key as 64 hex characters.
            psk=config.swarm_key.hex() if config.swarm_key is not None else None,
            # No `bootstrap=`: libp2p's own retry drops a peer for good after 3 failures
            # (#1417); `_keep_connected` redials forever with backoff instead.
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join the gossip topic, then serve until cancelled; closes the host on exit."""
        host = self._build_host()
        self._host = host
        self._stopping = False
        self._connected.clear()
        self._trio_token = trio.lowlevel.current_trio_token()
        notifee = _ConnectionNotifee(self)
        host.get_network().register_notifee(notifee)
        host.set_stream_handler(CONTROL_PROTOCOL, self._serve_control_stream)
        if self._config.enable_mdns:
            peerDiscovery.register_peer_discovered_handler(self._on_peer_discovered)
        # libp2p's services run in a shielded scope, so that our cancellation does not reach
        # them before host.close(): cancelled connection tasks mark their connections closed
        # without closing the sockets, close() then skips them, and peers keep seeing us
        # connected until their keep-alive notices (measured: still connected after 2 s).
        libp2p_scope = trio.CancelScope(shield=True)
        try:
            with _clean_exit(lambda: self._stopping):
                async with trio.open_nursery() as root:
                    pubsub, subscription = await root.start(self._run_libp2p, host, libp2p_scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            self._pubsub = pubsub
                            self._nursery = nursery
                            nursery.start_soon(self._receive_gossip, subscription)
                            nursery.start_soon(self._publish_queued)
                            nursery.start_soon(self._dial_discovered)
                            if self._config.enable_mdns:
                                nursery.start_soon(self._run_mdns)
                            for peer_info in self._bootstrap:
                                if peer_info.peer_id != self._id:
                                    nursery.start_soon(self._keep_connected, peer_info)
                            LOGGER.info(
                                "node %s listening on %s", self.peer_id, self.listen_addrs()
                            )
                            task_status.started(self)
                            await trio.sleep_forever()
                    finally:
                        self._stopping = True
                        self._nursery = None
                        self._pubsub = None
                        await self._close_host(host)
                        libp2p_scope.cancel()
        finally:
            if self._config.enable_mdns:
                peerDiscovery.unregister_peer_discovered_handler(self._on_peer_discovered)
            host.get_network().remove_notifee(notifee)
            # Leaving host.run() does not close the listener; close() is idempotent, and this
            # one covers a failure while starting.
            await self._close_host(host)

    async def _run_libp2p(self, host: IHost, scope: trio.CancelScope, *, task_status: Any) -> None:
        """Run the host, pubsub and GossipSub until `scope` is cancelled."""
        gossipsub = GossipSub(
            protocols=list(_GOSSIP_PROTOCOLS),
            degree=_GOSSIP_DEGREE,
            degree_low=_GOSSIP_DEGREE_LOW,
            degree_high=_GOSSIP_DEGREE_HIGH,
            heartbeat_interval=_GOSSIP_HEARTBEAT_INTERVAL_S,
            spam_protection_enabled=False,
        )
        # Default message id (from + seqno): GossipSub's message cache keys by it.
        pubsub = Pubsub(host, gossipsub)
        listen_addr = _listen_multiaddr(self._config.listen_host, self._config.swarm_port)
        with scope:
            async with (
                host.run(listen_addrs=[listen_addr]),
                background_trio_service(pubsub),
                background_trio_service(gossipsub),
            ):
                # libp2p only logs a failed listen (port in use) and runs on, unreachable.
                if not host.get_network().listeners:
                    raise MeshnodeError(f"cannot listen on {listen_addr} (is the port in use?)")
                with trio.fail_after(self._config.connect_timeout_s):
                    await pubsub.wait_until_ready()
                subscription = await pubsub.subscribe(GOSSIP_TOPIC)
                task_status.started((pubsub, subscription))
                await trio.sleep_forever()

    async def _close_host(self, host: IHost) -> None:
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(_CLOSE_TIMEOUT_S),
            _clean_exit(lambda: True),
        ):
            await host.close()

    # -- public, non-blocking ---------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Our full multiaddrs, /p2p/<id> included, with the real port (after `run` started)."""
        if self._host is None:
            return []
        return _dialable_addrs([str(a) for a in self._host.get_addrs()], self.peer_id)

    def connected_peers(self) -> list[str]:
        if self._host is None:
            return []
        return [peer.to_base58() for peer in self._host.get_connected_peers()]

    def add_peer_addrs(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Remember addresses of a peer (learned from membership) for later dials."""
        peer = _parse_peer_id(peer_id)
        parsed = _transport_addrs(peer, addrs)
        if not parsed or peer == self._id:
            return
        known = self._known_addrs.pop(peer, [])
        merged = parsed + [a for a in known if a not in parsed]
        self._known_addrs[peer] = merged[:_MAX_ADDRS_PER_PEER]
        while len(self._known_addrs) > _MAX_KNOWN_PEERS:
            self._known_addrs.popitem(last=False)
        if self._host is not None:
            self._host.get_peerstore().add_addrs(peer, parsed, _PEERSTORE_ADDR_TTL_S)

    def send(self, peer_id: str, frame: bytes, addrs: Sequence[str] = ()) -> None:
        """Queue one frame for `peer_id`; a sender task delivers it, best effort.

        Raises only for caller errors (`LocalProtocolError`): a bad peer id, ourselves, or a
        frame over `max_frame_bytes`. Network trouble only shows in `stats`.
        """
        peer = _parse_peer_id(peer_id)
        if peer == self._id:
            raise LocalProtocolError("cannot send a frame to ourselves")
        if len(frame) > self._config.max_frame_bytes:
            raise LocalProtocolError(
                f"frame of {len(frame)} bytes exceeds max_frame_bytes "
                f"({self._config.max_frame_bytes})"
            )
        if addrs and self._addr_hints.get(peer_id) != tuple(addrs):
            # Parsing multiaddrs is costly: only when a peer's hints change.
            self._addr_hints[peer_id] = tuple(addrs)
            while len(self._addr_hints) > _MAX_KNOWN_PEERS:
                del self._addr_hints[next(iter(self._addr_hints))]
            self.add_peer_addrs(peer_id, addrs)
        if self._nursery is None:
            self.stats["frames_dropped_not_running"] += 1
            return
        sender = self._senders.get(peer)
        if sender is None:
            if len(self._senders) >= _MAX_PEER_SENDERS:
                self.stats["frames_dropped_too_many_peers"] += 1
                return
            sender = _PeerSender(peer)
            self._senders[peer] = sender
            self._nursery.start_soon(self._run_sender, sender)
        if len(sender.frames) >= _SEND_QUEUE_FRAMES:
            sender.frames.popleft()
            self.stats["frames_dropped_queue_full"] += 1
        sender.frames.append(frame)
        sender.wakeup.set()

    def publish(self, payload: bytes) -> None:
        """Queue `payload` for the gossip topic; dropped (and counted) if the queue is full."""
        if len(payload) > MAX_GOSSIP_PAYLOAD_BYTES:
            raise LocalProtocolError(
                f"gossip payload of {len(payload)} bytes exceeds {MAX_GOSSIP_PAYLOAD_BYTES}"
            )
        try:
            self._publish_send.send_nowait(payload)
        except trio.WouldBlock:
            self.stats["gossip_dropped_queue_full"] += 1

    # -- direct frames: outbound --------------------------------------------------------------

    async def _run_sender(self, sender: _PeerSender) -> None:
        stream: INetStream | None = None
        retry_s = _SENDER_RETRY_INITIAL_S
        failed_dials = 0
        try:
            while True:
                if not sender.frames:
                    sender.wakeup = trio.Event()
                    with trio.move_on_after(_SENDER_IDLE_S):
                        await sender.wakeup.wait()
                    if not sender.frames:
                        # Idle: free the stream and the task. Forget the sender first (no
                        # await in between), so a send() from now on starts a new one.
                        self._forget_sender(sender)
                        if stream is not None:
                            await self._discard_stream(stream, reset=False)
                        return
                if stream is None:
                    stream = await self._open_control_stream(sender.peer)
                    if stream is None:
                        failed_dials += 1
                        if failed_dials >= _SENDER_MAX_DIAL_ATTEMPTS:
                            # The peer is gone: its frames are stale by now. The next
                            # send() starts a new sender (membership decides who is alive).
                            self.stats["frames_dropped_unreachable"] += len(sender.frames)
                            sender.frames.clear()
                            return
                        await trio.sleep(retry_s)
                        retry_s = min(retry_s * 2, _SENDER_RETRY_MAX_S)
                        continue
                    retry_s = _SENDER_RETRY_INITIAL_S
                    failed_dials = 0
                batch = sender.take_batch()
                try:
                    with trio.fail_after(_WRITE_TIMEOUT_S):
                        await stream.write(b"".join(encode_frame(frame) for frame in batch))
                except Exception as error:
                    # The stream died (peer restarted, connection dropped): these frames are
                    # lost, the next ones go on a new stream.
                    self._note_failure(error, "control stream to %s", sender.peer)
                    self.stats["frames_send_failed"] += len(batch)
                    await self._discard_stream(stream)
                    stream = None
                    continue
                self.stats["frames_sent"] += len(batch)
        finally:
            # When cancelled (shutdown) the stream is left to host.close(), which closes the
            # whole connection; a graceful close here would wait on a peer for nothing.
            self._forget_sender(sender)

    def _forget_sender(self, sender: _PeerSender) -> None:
        if self._senders.get(sender.peer) is sender:
            del self._senders[sender.peer]

    async def _open_control_stream(self, peer: ID) -> INetStream | None:
        try:
            # A mismatched swarm key makes both the dial and the stream open hang.
            with trio.fail_after(self._config.connect_timeout_s):
                await self._dial(peer, self._known_addrs.get(peer, []))
                stream = await self._require_host().new_stream(peer, [CONTROL_PROTOCOL])
        except Exception as error:
            self._note_failure(error, "opening a control stream to %s", peer)
            self.stats["dial_failures"] += 1
            return None
        self.stats["streams_opened"] += 1
        return stream

    async def _discard_stream(self, stream: INetStream, *, reset: bool = True) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT_S):
            try:
                if reset:
                    await stream.reset()
                else:
                    await stream.close()
            except Exception as error:
                self._note_failure(error, "closing a control stream to %s", _stream_peer(stream))

    def _note_failure(self, error: Exception, what: str, *args: object) -> None:
        """Log a failed libp2p call: DEBUG when ordinary, WARNING with traceback when not."""
        if isinstance(error, _NETWORK_ERRORS):
            LOGGER.debug(f"{what}: %r", *args, error)
        else:
            self.stats["libp2p_errors"] += 1
            LOGGER.warning(f"{what}: unexpected error in libp2p", *args, exc_info=error)

    async def _dial(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """Connect to `peer` unless connected. Callers put a deadline around it."""
        host = self._require_host()
        # One failed dial puts the peer in the swarm's negative cache for 60 s, and every
        # dial in that time fails at once: our own retry loops decide when to retry.
        host.get_network().unblock_peer(peer)  # type: ignore[attr-defined]
        await host.connect(PeerInfo(peer, addrs))

    # -- direct frames: inbound ---------------------------------------------------------------

    async def _serve_control_stream(self, stream: INetStream) -> None:
        remote = _stream_peer(stream)
        decoder = FrameDecoder(self._config.max_frame_bytes)
        while True:
            try:
                data = await stream.read(_READ_CHUNK_BYTES)
            except EOFError:
                data = b""
            except Exception as error:
                self._note_failure(error, "control stream from %s", remote)
                return
            if not data:
                if decoder.mid_frame:
                    self.stats["frames_truncated"] += 1
                return
            decoder.feed(data)
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameTooLargeError as error:
                    self.stats["frames_rejected_oversize"] += 1
                    await self._reject_stream(stream, remote, error)
                    return
                except RemoteProtocolError as error:
                    self.stats["frames_rejected_malformed"] += 1
                    await self._reject_stream(stream, remote, error)
                    return
                if frame is None:
                    break
                self.stats["frames_received"] += 1
                self._on_message(remote, frame)  # outside any except: its bugs are ours

    async def _reject_stream(self, stream: INetStream, remote: str, error: Exception) -> None:
        """Malformed input: drop this stream, keep the connection and the node."""
        LOGGER.info("peer %s: %s; resetting its control stream", remote, error)
        await self._discard_stream(stream)

    # -- gossip -------------------------------------------------------------------------------

    async def _receive_gossip(self, subscription: Any) -> None:
        while True:
            message = await subscription.get()
            if message.from_id == self._id.to_bytes():
                continue  # pubsub hands our own publishes to our subscription too
            self.stats["gossip_received"] += 1
            self._on_gossip(ID(message.from_id).to_base58(), message.data)

    async def _publish_queued(self) -> None:
        async for payload in self._publish_receive:
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                await pubsub.publish(GOSSIP_TOPIC, payload)
            except Exception as error:
                self._note_failure(error, "publishing on %s", GOSSIP_TOPIC)
                self.stats["gossip_publish_failed"] += 1
                continue
            self.stats["gossip_sent"] += 1

    # -- staying connected ----------------------------------------------------------------------

    async def _keep_connected(self, peer_info: PeerInfo) -> None:
        """Redial a bootstrap peer forever: 1 s, doubling to 30 s; at once after a disconnect.

        libp2p's `bootstrap=` gives a peer up after 3 failures (#1417); a 45 s outage then
        never recovers.
        """
        peer = peer_info.peer_id
        retry_s = _BOOTSTRAP_RETRY_INITIAL_S
        while True:
            if peer in self._connected:
                await self._disconnect_event(peer).wait()
                self.stats["redials"] += 1
                continue
            try:
                with trio.fail_after(self._config.connect_timeout_s):
                    await self._dial(peer, peer_info.addrs)
            except Exception as error:
                self._note_failure(error, "dialling bootstrap peer %s", peer)
                self.stats["dial_failures"] += 1
                await trio.sleep(retry_s)
                retry_s = min(retry_s * 2, _BOOTSTRAP_RETRY_MAX_S)
                continue
            retry_s = _BOOTSTRAP_RETRY_INITIAL_S
            # connect() returns once the connection is up; the notifee may run a moment later.
            if peer not in self._connected:
                self._on_connection_opened(peer)

    def _disconnect_event(self, peer: ID) -> trio.Event:
        event = self._disconnect_events.get(peer)
        if event is None:
            event = self._disconnect_events[peer] = trio.Event()
        return event

    def _on_connection_opened(self, peer: ID) -> None:
        if peer in self._connected or peer == self._id:
            return
        self._connected.add(peer)
        self._on_peer_connected(peer.to_base58())

    def _on_connection_closed(self, peer: ID) -> None:
        if peer not in self._connected or self._host is None:
            return
        live = [c for c in self._host.get_network().get_connections(peer) if not c.is_closed]
        if live:
            return
        self._connected.discard(peer)
        event = self._disconnect_events.pop(peer, None)
        if event is not None:
            event.set()
        self._on_peer_disconnected(peer.to_base58())

    async def _run_mdns(self) -> None:
        """Announce us on the local network and look for peers there (mDNS) until cancelled.

        mDNS is a convenience: if zeroconf cannot start, the node runs on without it.
        """
        addrs = _announced_addrs(self.listen_addrs())
        peerstore = self._require_host().get_peerstore()
        try:
            discovery = await trio.to_thread.run_sync(
                _LocalDiscovery, peerstore, self.peer_id, self._config.listen_host, addrs
            )
        except Exception as error:
            LOGGER.warning("mDNS discovery is off, it did not start: %r", error)
            return
        LOGGER.debug("mDNS: announcing %s", addrs)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                try:
                    await trio.to_thread.run_sync(discovery.close, abandon_on_cancel=True)
                except Exception as error:
                    LOGGER.debug("stopping mDNS: %r", error)

    def _on_peer_discovered(self, peer_info: PeerInfo) -> None:
        """Called by libp2p's mDNS listener, from zeroconf's thread: hand over to trio."""
        token = self._trio_token
        if token is None or peer_info.peer_id == self._id:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._queue_discovered, peer_info)

    def _queue_discovered(self, peer_info: PeerInfo) -> None:
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._discovered_send.send_nowait(peer_info)

    async def _dial_discovered(self) -> None:
        """Dial every peer mDNS finds, each in its own task: a dial may take its whole
        deadline (a peer with another swarm key), and must not hold up the others."""
        async with trio.open_nursery() as nursery:
            async for peer_info in self._discovered_receive:
                self.stats["peers_discovered"] += 1
                peer = peer_info.peer_id
                self.add_peer_addrs(peer.to_base58(), [str(a) for a in peer_info.addrs])
                if peer in self._connected or peer in self._discovered_dials:
                    continue
                if len(self._discovered_dials) >= _MAX_DISCOVERED_DIALS:
                    LOGGER.debug("not dialling discovered peer %s: too many dials", peer)
                    continue
                self._discovered_dials.add(peer)
                nursery.start_soon(self._dial_discovered_peer, peer, list(peer_info.addrs))

    async def _dial_discovered_peer(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """mDNS reports a peer once (until it announces itself again): retry a few times, so
        that one failed dial (the peer still starting, a lost packet) is not the end."""
        retry_s = _DISCOVERED_RETRY_INITIAL_S
        try:
            for attempt in range(_DISCOVERED_DIAL_ATTEMPTS):
                if attempt:
                    await trio.sleep(retry_s)
                    retry_s *= 2
                if peer in self._connected:
                    return
                try:
                    with trio.fail_after(self._config.connect_timeout_s):
                        await self._dial(peer, addrs)
                except Exception as error:
                    self._note_failure(error, "dialling discovered peer %s", peer)
                    self.stats["dial_failures"] += 1
                    continue
                # connect() returns once the connection is up; the notifee may run later.
                self._on_connection_opened(peer)
                return
        finally:
            self._discovered_dials.discard(peer)

    def _require_host(self) -> IHost:
        if self._host is None:
            raise LocalProtocolError("the transport is not running")
        return self._host
