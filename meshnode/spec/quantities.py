"""Resource quantities as users write them, parsed to exact integers.

Rules of this module:
- Arithmetic is exact (`decimal.Decimal`), never float: `1.5GB` is 1610612736 bytes on every
  machine.
- Sizes use binary units whatever the spelling, as Bacalhau's own parser does: `1Gb`, `1GB`,
  `1G`, `1Gi` and `1GiB` are all 2**30 bytes. A size that is not a whole number of bytes is
  rounded up (as Kubernetes does), so a limit is never smaller than asked.
- CPU is cores (`2`, `0.25`) or millicores (`250m`), parsed to millicores; less than one
  millicore is an error rather than a silent zero.
- An empty string means "not set" and parses to 0.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation
from typing import Final

from meshnode.spec.problems import show

__all__ = ["QuantityError", "parse_cpu_millicores", "parse_gpu_count", "parse_size_bytes"]

# Upper bounds keep values in a range every consumer (Docker, cgroups, SQLite) can store.
_MAX_CPU_MILLICORES: Final = 10**9
_MAX_SIZE_BYTES: Final = 2**62
_MAX_GPUS: Final = 10**6

# At most 41 digits and dot, computed with 100 digits of precision: every product is exact.
_NUMBER: Final = r"(?P<number>(?=[0-9.]{1,42}(?![0-9.]))(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
_EXACT: Final = Context(prec=100)
_SIZE_RE: Final = re.compile(_NUMBER + r"\s*(?P<unit>[a-zA-Z]*)")
_CPU_RE: Final = re.compile(_NUMBER + r"(?P<milli>m?)")

_SIZE_UNITS: Final[dict[str, int]] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    for _suffix in ("", "b", "i", "ib"):
        _SIZE_UNITS[_letter + _suffix] = 1024**_power

SIZE_EXAMPLES: Final = "examples: 512Mi, 1Gb, 1.5GB, 100mb"
CPU_EXAMPLES: Final = "examples: 250m, 0.25, 2"


class QuantityError(ValueError):
    """A quantity could not be parsed; the message says why, without the field path."""


def parse_size_bytes(text: str) -> int:
    """`"512Mi"` → 536870912. Raises `QuantityError` naming the bad text."""
    stripped = text.strip()
    if not stripped:
        return 0
    match = _SIZE_RE.fullmatch(stripped)
    if match is None or match["unit"].lower() not in _SIZE_UNITS:
        raise QuantityError(f"{show(text)} is not a size ({SIZE_EXAMPLES})")
    value = _EXACT.multiply(_decimal(match["number"], text), _SIZE_UNITS[match["unit"].lower()])
    size = int(value.to_integral_value(rounding=ROUND_CEILING))
    if size > _MAX_SIZE_BYTES:
        raise QuantityError(f"{show(text)} is larger than the largest size meshnode accepts")
    return size


def parse_cpu_millicores(text: str) -> int:
    """`"250m"` → 250, `"0.25"` → 250, `"2"` → 2000."""
    stripped = text.strip()
    if not stripped:
        return 0
    match = _CPU_RE.fullmatch(stripped)
    if match is None:
        raise QuantityError(f"{show(text)} is not a CPU quantity ({CPU_EXAMPLES})")
    value = _decimal(match["number"], text)
    millicores = value if match["milli"] else _EXACT.multiply(value, 1000)
    if millicores != millicores.to_integral_value():
        raise QuantityError(f"{show(text)} is finer than one millicore (1m = 0.001 cores)")
    if millicores > _MAX_CPU_MILLICORES:
        raise QuantityError(f"{show(text)} is more CPU than meshnode accepts")
    return int(millicores)


def parse_gpu_count(text: str) -> int:
    """`"1"` → 1. GPUs are whole devices."""
    stripped = text.strip()
    if not stripped:
        return 0
    if not stripped.isascii() or not stripped.isdigit():
        raise QuantityError(f"{show(text)} is not a whole number of GPUs (examples: 0, 1, 2)")
    count = int(stripped)
    if count > _MAX_GPUS:
        raise QuantityError(f"{show(text)} is more GPUs than meshnode accepts")
    return count


def _decimal(number: str, text: str) -> Decimal:
    try:
        return Decimal(number)
    except InvalidOperation:  # pragma: no cover - the regular expressions admit only digits
        raise QuantityError(f"{show(text)} is not a number") from None
