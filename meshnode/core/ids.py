"""Identifiers minted from a random source the driver passes in (never the global RNG)."""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence
from typing import Any, Protocol

__all__ = ["Rng", "mint_uuid"]


class Rng(Protocol):
    """What the core needs of a random source (`random.Random` satisfies it)."""

    def getrandbits(self, k: int, /) -> int: ...

    def choice(self, seq: Sequence[Any], /) -> Any: ...

    def shuffle(self, x: MutableSequence[Any], /) -> None: ...

    def sample(self, population: Sequence[Any], /, k: int) -> list[Any]: ...


def mint_uuid(rng: Rng) -> str:
    """A version-4 UUID string drawn from `rng` (deterministic for a seeded `rng`)."""
    bits = rng.getrandbits(128)
    bits &= ~(0xF << 76)
    bits |= 0x4 << 76  # version 4
    bits &= ~(0x3 << 62)
    bits |= 0x2 << 62  # RFC 4122 variant
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
