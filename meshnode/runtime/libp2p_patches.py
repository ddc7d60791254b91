"""Every workaround of py-libp2p 0.8.1 behaviour, in one place.

Rules of this module: each workaround is one small function whose docstring names the upstream
problem and how it was measured; `tests/transport/test_patches.py` reproduces each problem
against the unpatched value, so after an upgrade the tests show which patches can go. Nothing
else in meshnode may change libp2p module state. `apply_all()` is idempotent; the transport
calls it before it builds a host.

Behaviour the transport works around by configuration rather than by patching (Noise-only
security, Yamux-only muxing, explicit GossipSub parameters, timeouts around every dial, the
redial loop that unblocks peers) lives in `meshnode/runtime/transport.py`, beside the code
that needs it.
"""

from __future__ import annotations

import logging
from typing import Final

import libp2p.network.swarm
import libp2p.pubsub.pubsub
from libp2p.pubsub import rpc_queue
from libp2p.pubsub.rpc_queue import RpcQueue

__all__ = [
    "BENIGN_ERRORS",
    "PUBSUB_QUEUE_SIZE",
    "UPSTREAM_HAPPY_EYEBALLS_DELAY_S",
    "UPSTREAM_RPC_QUEUE",
    "UPSTREAM_SUBSCRIPTION_CHANNEL_SIZE",
    "apply_all",
    "disable_happy_eyeballs_delay",
    "quiet_disconnect_logging",
    "raise_pubsub_rpc_queue_size",
    "raise_pubsub_subscription_channel_size",
]

# What py-libp2p does unpatched, read when this module is imported (before `apply_all()`), so
# the tests can reproduce each problem against upstream's own values.
UPSTREAM_HAPPY_EYEBALLS_DELAY_S: Final = libp2p.network.swarm._HAPPY_EYEBALLS_DELAY
UPSTREAM_SUBSCRIPTION_CHANNEL_SIZE: Final = libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE
UPSTREAM_RPC_QUEUE: Final = libp2p.pubsub.pubsub.RpcQueue  # type: ignore[attr-defined]

# Both pubsub queues default to 32 slots and drop silently when full (go-libp2p's value, but
# go drains them far faster). 4096 gave 100 % delivery with zero drops in the measurements.
PUBSUB_QUEUE_SIZE: Final = 4096

# ERRORs that libp2p logs for ordinary events of a mesh: a peer went away while we opened a
# stream to it (the multi-line one), a departed peer's port refuses the redial, a connection
# is torn down while a stream negotiates or a frame is read (shutdown). Keyed by logger,
# matched by the start of the unformatted message; each was seen in tests/transport runs.
BENIGN_ERRORS: Final[dict[str, tuple[str, ...]]] = {
    "libp2p.host.basic_host": ("Failed to open stream to peer",),
    "libp2p.transport.tcp.tcp": ("Failed to open TCP stream",),
    "libp2p.protocol_muxer.multiselect_client": (
        "MultiselectClient handshake: write failed",
        "MultiselectClient handshake: read failed",
    ),
    "libp2p.stream_muxer.yamux.yamux": ("Error in handle_incoming for peer",),
}


def disable_happy_eyeballs_delay() -> None:
    """Stop `Swarm.dial_peer` from sleeping 250 ms after every successful dial.

    Upstream: `libp2p.network.swarm._HAPPY_EYEBALLS_DELAY = 0.250`. `dial_peer` starts one
    dial per address and then waits that long for a failure before trying the next address;
    the wait is only cut short when the peer's connection limit (3 by default) is reached, so
    with one address every `connect()` takes 250 ms more than the handshake. We dial TCP
    only, so there is no second transport to race. Reproduced by the test: a loopback connect
    takes 251 ms upstream, 5 ms patched.
    """
    libp2p.network.swarm._HAPPY_EYEBALLS_DELAY = 0


def raise_pubsub_subscription_channel_size(size: int = PUBSUB_QUEUE_SIZE) -> None:
    """Raise the per-subscription channel from 32 to `size` messages.

    Upstream: `libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE = 32`, read by
    `Pubsub.subscribe()`. Every inbound gossip message is validated in its own task and then
    `send_nowait`-ed into that channel; when more than 32 arrive before the subscriber runs,
    the rest are dropped with one WARNING each. Must be applied before `subscribe()`.

    Reproduction: end to end with two loopback nodes it is impractical (flaky: once 129 of
    200 with a 20 ms consumer, usually 200 of 200; the notes saw it with 20 processes). The
    test hands a 200-message burst to upstream's `notify_subscriptions` in one scheduler
    turn instead: 32 (or 33) arrive upstream, 200 patched.
    """
    libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE = size


class _LargeRpcQueue(RpcQueue):
    """`RpcQueue` whose default size is `PUBSUB_QUEUE_SIZE`, not 32."""

    def __init__(
        self,
        max_size: int = PUBSUB_QUEUE_SIZE,
        max_message_size: int = rpc_queue.DefaultMaxMessageSize,
    ) -> None:
        super().__init__(max_size=max_size, max_message_size=max_message_size)


def raise_pubsub_rpc_queue_size() -> None:
    """Give each peer's outbound pubsub queue `PUBSUB_QUEUE_SIZE` slots instead of 32.

    Upstream: `Pubsub._handle_new_peer` builds `RpcQueue()` with its default
    `max_size=OutBoundQueueSize` (32), bound when `rpc_queue.py` is imported, so changing
    the constant has no effect; the queue rejects RPCs when full and pubsub drops them. A
    burst of publishes (each one RPC per mesh peer) overflows it. The fix swaps the class
    that `libp2p.pubsub.pubsub` looks up for a subclass with a larger default. Reproduced by
    the test: a 200-message burst between two loopback nodes delivers 61 upstream, 200
    patched.
    """
    libp2p.pubsub.pubsub.RpcQueue = _LargeRpcQueue  # type: ignore[attr-defined]


class _DemoteToDebug(logging.Filter):
    """Turns the matching ERROR records of one logger into DEBUG records."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno > logging.DEBUG
            and isinstance(record.msg, str)
            and record.msg.startswith(self.prefixes)
        ):
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
        return True


def quiet_disconnect_logging() -> None:
    """Log ordinary disconnects at DEBUG instead of as (multi-line) ERRORs on stderr.

    Upstream: when a peer goes away, `BasicHost.new_stream` logs a 7-line ERROR ("Failed to
    open stream to peer …") and the TCP transport an ERROR per refused redial, and
    `libp2p.utils.logging.setup_logging()` gives the `libp2p` logger no handler and
    `propagate=False`, so Python's last-resort handler prints them on stderr whatever the
    node's logging says. The records in `BENIGN_ERRORS` are demoted to DEBUG (still visible
    with `LIBP2P_DEBUG=DEBUG`); everything else libp2p logs is untouched. The transport
    counts the failures that matter in its `stats`. Reproduced by the test (a peer without
    our protocol, a closed port): ERROR records upstream, DEBUG patched. The multiselect and
    yamux entries show up, not every time, when nodes stop under load; test_lifecycle's stop
    test asserts no libp2p WARNING or worse is left.
    """
    for name, prefixes in BENIGN_ERRORS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DemoteToDebug) for existing in logger.filters):
            logger.addFilter(_DemoteToDebug(prefixes))


def apply_all() -> None:
    """Apply every workaround above. Idempotent: each one sets a value, none wraps twice."""
    disable_happy_eyeballs_delay()
    raise_pubsub_subscription_channel_size()
    raise_pubsub_rpc_queue_size()
    quiet_disconnect_logging()
