"""Hostile input on a control stream is dropped and counted; the node keeps serving.

The framing is also tested sans-IO (`FrameDecoder`), where every split of the input can be
tried; the network tests then show a real peer's garbage ends as a counted, reset stream.
"""

from __future__ import annotations

import itertools
import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.utils.varint import encode_uvarint

from meshnode.errors import RemoteProtocolError
from meshnode.runtime.transport import (
    CONTROL_PROTOCOL,
    FrameDecoder,
    FrameTooLargeError,
    encode_frame,
)
from tests.transport.helpers import (
    eventually,
    make_transport,
    peer_info_of,
    raw_host,
    running,
    running_raw,
)

MAX_FRAME = 1024

# -- sans-IO framing ---------------------------------------------------------------------------


@given(
    frames=st.lists(st.binary(max_size=MAX_FRAME), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=10),
)
def test_frames_survive_any_split_of_the_byte_stream(frames: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(frame) for frame in frames)
    points = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    decoder = FrameDecoder(MAX_FRAME)
    decoded: list[bytes] = []
    for start, end in itertools.pairwise(points):
        decoder.feed(wire[start:end])
        while (frame := decoder.next_frame()) is not None:
            decoded.append(frame)
    assert decoded == frames
    assert not decoder.mid_frame


def test_a_frame_at_the_limit_passes_and_one_byte_more_is_refused_before_its_body() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    decoder.feed(encode_frame(bytes(MAX_FRAME)))
    assert decoder.next_frame() == bytes(MAX_FRAME)
    decoder.feed(encode_uvarint(MAX_FRAME + 1))  # no body sent: refused on the prefix alone
    with pytest.raises(FrameTooLargeError, match="1025 bytes exceeds the limit of 1024"):
        decoder.next_frame()


def test_a_length_prefix_longer_than_ten_bytes_is_malformed() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    decoder.feed(b"\xff" * 9)
    assert decoder.next_frame() is None  # could still be a valid 10-byte varint
    decoder.feed(b"\xff")
    with pytest.raises(RemoteProtocolError, match="longer than 10 bytes"):
        decoder.next_frame()


def test_a_huge_varint_is_oversize_not_a_crash() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    decoder.feed(b"\xff" * 9 + b"\x01")  # 2**64 - 1
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()


# -- over the network --------------------------------------------------------------------------


async def _open_control_stream(attacker: object, node_peer_id: str) -> INetStream:
    with trio.fail_after(5):
        return await attacker.new_stream(ID.from_base58(node_peer_id), [CONTROL_PROTOCOL])  # type: ignore[attr-defined,no-any-return]


async def _wait_until_reset(stream: INetStream) -> None:
    """The node drops a stream it got garbage on: our reads end (reset or EOF)."""
    with trio.fail_after(5):
        try:
            while await stream.read(1024):
                pass
        except Exception:  # StreamReset / StreamEOF / StreamError, depending on timing
            return


@pytest.mark.timeout(30)
async def test_garbage_and_oversize_frames_are_dropped_and_counted() -> None:
    node, inbox = make_transport("node", max_frame_bytes=MAX_FRAME)
    friend, _ = make_transport("friend")
    async with running(node, friend), running_raw(raw_host("attacker")) as attacker:
        with trio.fail_after(5):
            await attacker.connect(peer_info_of(node))

        # 1. A length prefix that never ends.
        stream = await _open_control_stream(attacker, node.peer_id)
        await stream.write(b"\xff" * 11)
        await _wait_until_reset(stream)
        await eventually(lambda: node.stats["frames_rejected_malformed"] == 1, 5)

        # 2. A frame announced over the limit (its body never needs to arrive).
        stream = await _open_control_stream(attacker, node.peer_id)
        await stream.write(encode_uvarint(MAX_FRAME + 1) + b"x" * 100)
        await _wait_until_reset(stream)
        await eventually(lambda: node.stats["frames_rejected_oversize"] == 1, 5)

        # 3. Random bytes: whatever they decode to, nothing crashes. Frames that happen to
        #    parse are delivered (telling garbage from messages is the core decoder's job).
        rng = random.Random(20261125)
        for _ in range(5):
            stream = await _open_control_stream(attacker, node.peer_id)
            await stream.write(bytes(rng.getrandbits(8) for _ in range(4096)))
            await stream.close()
        # 4. A frame cut short by the end of the stream.
        stream = await _open_control_stream(attacker, node.peer_id)
        await stream.write(encode_uvarint(500) + b"only part")
        await stream.close()
        await eventually(lambda: node.stats["frames_truncated"] >= 1, 5)

        # The attacker's good frames still work on a fresh stream, and so does a friend.
        stream = await _open_control_stream(attacker, node.peer_id)
        await stream.write(encode_frame(b"well-formed"))
        friend.send(node.peer_id, b"still serving", node.listen_addrs())
        await inbox.wait_until(
            lambda: (
                (friend.peer_id, b"still serving") in inbox.messages
                and any(frame == b"well-formed" for _, frame in inbox.messages)
            )
        )
        assert all(len(frame) <= MAX_FRAME for _, frame in inbox.messages)
        assert node.stats["frames_rejected_oversize"] + node.stats["frames_rejected_malformed"] >= 2
