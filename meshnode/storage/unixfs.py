"""The CIDs Kubo's `ipfs add` gives a file, computed while streaming it.

Kubo's defaults: fixed 256 KiB chunks, balanced layout with at most 174 links per node.

* CIDv0 (`ipfs add`): each chunk becomes a dag-pb leaf wrapping UnixFS `File` data; the
  root is `Qm…` (base58btc of the sha2-256 multihash).
* CIDv1 (`ipfs add --cid-version 1`, which implies `--raw-leaves`): each chunk is a raw block
  (codec 0x55); parents are dag-pb; CIDs are multibase base32 (`bafy…`, or `bafk…` when a
  single raw leaf is the root).

A file of one chunk is its own root (no parent node). The empty file is one empty leaf.

The dag-pb and UnixFS protobufs are written by hand (a handful of varint and length-delimited
fields) instead of going through py-libp2p's `MerkleDag`: that cannot make CIDv0 (its leaves
are always raw) and writes Tsize 0 into links to raw leaves, so its CIDv1 roots differ from
Kubo's for files above 256 KiB. Field order follows the canonical dag-pb encoding (Links
before Data) and the proto2 UnixFS schema (`blocksizes` repeated, not packed).

Memory: one chunk plus, per tree level, a list of at most 174 pending links. Blocks are
handed to the caller as soon as they exist (children before their parents, the root last).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

import base58

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_LINKS",
    "AddResult",
    "Block",
    "add_file",
    "cid_to_string",
    "iter_blocks",
]

DEFAULT_CHUNK_SIZE: Final = 262_144
MAX_LINKS: Final = 174  # Kubo's balanced layout: links per dag-pb node

_CODEC_RAW: Final = 0x55
_CODEC_DAG_PB: Final = 0x70
_SHA2_256: Final = 0x12
_UNIXFS_FILE: Final = 2


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the DAG: its binary CID and its bytes."""

    cid: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class AddResult:
    """What `ipfs add` reports for a file."""

    cid: str  # root CID in its usual text form (`Qm…` or `baf…`)
    cid_bytes: bytes  # root CID in binary form (a bare multihash for CIDv0)
    size: int  # file size in bytes
    dag_size: int  # cumulative size of all blocks (the Tsize a link to the root would carry)
    blocks: int  # number of blocks produced (repeated identical chunks counted each time)


@dataclass(frozen=True, slots=True)
class _Link:
    cid: bytes
    tsize: int  # serialized size of the child's whole subtree
    filesize: int  # file bytes under the child


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _unixfs_file(data: bytes, filesize: int, blocksizes: list[int]) -> bytes:
    """UnixFS `Data` message: Type=File, Data (omitted when empty), filesize, blocksizes."""
    out = [_field_varint(1, _UNIXFS_FILE)]
    if data:
        out.append(_field_bytes(2, data))
    out.append(_field_varint(3, filesize))
    out.extend(_field_varint(4, size) for size in blocksizes)
    return b"".join(out)


def _dag_pb(links: list[_Link], data: bytes) -> bytes:
    """PBNode: Links (Hash, Name "", Tsize) first, then Data."""
    out = [
        _field_bytes(
            2, _field_bytes(1, link.cid) + _field_bytes(2, b"") + _field_varint(3, link.tsize)
        )
        for link in links
    ]
    out.append(_field_bytes(1, data))
    return b"".join(out)


def _cid(block: bytes, *, cid_version: int, codec: int) -> bytes:
    multihash = bytes((_SHA2_256, 32)) + hashlib.sha256(block).digest()
    if cid_version == 0:
        return multihash
    return _varint(1) + _varint(codec) + multihash


def cid_to_string(cid: bytes) -> str:
    """CIDv0 as base58btc (`Qm…`); CIDv1 as multibase base32 lower, unpadded (`b…`)."""
    if len(cid) == 34 and cid[0] == _SHA2_256 and cid[1] == 32:
        return base58.b58encode(cid).decode("ascii")
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()


def _read_chunk(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, short only at end of stream (Kubo's chunker uses io.ReadFull)."""
    first = stream.read(size)
    if not first or len(first) == size:
        return first or b""
    parts = [first]
    missing = size - len(first)
    while missing:
        more = stream.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _leaf(chunk: bytes, cid_version: int) -> tuple[Block, _Link]:
    if cid_version == 0:
        data = _dag_pb([], _unixfs_file(chunk, len(chunk), []))
        cid = _cid(data, cid_version=0, codec=_CODEC_DAG_PB)
    else:
        data = chunk
        cid = _cid(data, cid_version=1, codec=_CODEC_RAW)
    return Block(cid, data), _Link(cid, len(data), len(chunk))


def _parent(links: list[_Link], cid_version: int) -> tuple[Block, _Link]:
    filesize = sum(link.filesize for link in links)
    data = _dag_pb(links, _unixfs_file(b"", filesize, [link.filesize for link in links]))
    cid = _cid(data, cid_version=cid_version, codec=_CODEC_DAG_PB)
    return Block(cid, data), _Link(cid, len(data) + sum(link.tsize for link in links), filesize)


def _check(cid_version: int, chunk_size: int) -> None:
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, not {cid_version!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size!r}")


def _build(stream: BinaryIO, cid_version: int, chunk_size: int) -> Generator[Block, None, _Link]:
    """Chunk `stream`, yield every block (root last) and return the root's link.

    `levels[i]` holds the pending links at height i (0 = leaves). A full level (MAX_LINKS)
    becomes a parent at once; at the end the partial levels are closed bottom-up. This gives
    the same tree as Kubo's balanced builder: full subtrees of MAX_LINKS**h leaves, packed
    to the left, with a lone link wrapped in a parent unless it is the root.
    """
    levels: list[list[_Link]] = [[]]
    chunks = 0
    while True:
        chunk = _read_chunk(stream, chunk_size)
        if not chunk and chunks:
            break
        chunks += 1
        block, link = _leaf(chunk, cid_version)
        yield block
        levels[0].append(link)
        height = 0
        while len(levels[height]) == MAX_LINKS:
            block, link = _parent(levels[height], cid_version)
            yield block
            levels[height] = []
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].append(link)
            height += 1
        if not chunk:  # the empty file: a single empty leaf
            break
    height = 0
    while True:
        pending = levels[height]
        if height == len(levels) - 1 and len(pending) == 1:
            return pending[0]
        if pending:
            block, link = _parent(pending, cid_version)
            yield block
            if height + 1 == len(levels):
                levels.append([])
            levels[height + 1].append(link)
        height += 1


def add_file(
    stream: BinaryIO,
    *,
    cid_version: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_block: Callable[[bytes, bytes], None] | None = None,
) -> AddResult:
    """The root CID Kubo gives `stream`'s content; `on_block(cid, data)` gets every block."""
    _check(cid_version, chunk_size)
    builder = _build(stream, cid_version, chunk_size)
    count = 0
    while True:
        try:
            block = next(builder)
        except StopIteration as done:
            root: _Link = done.value
            break
        count += 1
        if on_block is not None:
            on_block(block.cid, block.data)
    return AddResult(
        cid=cid_to_string(root.cid),
        cid_bytes=root.cid,
        size=root.filesize,
        dag_size=root.tsize,
        blocks=count,
    )


def iter_blocks(
    stream: BinaryIO, *, cid_version: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Block]:
    """Every block of the DAG as it is made, children first; the last one is the root.

    Options are checked at once; the stream is read only as the iterator is consumed.
    """
    _check(cid_version, chunk_size)
    return _build(stream, cid_version, chunk_size)
