"""Collecting spec problems with their field paths, and showing bad values in messages.

Every check in `convert.py`, `validate.py` and `load.py` reports through one
`ProblemCollector`, so all problems of a spec are reported together and a field that failed
to convert is not blamed a second time by a later check.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Final

from meshnode.errors import Problem, SpecError

__all__ = ["ProblemCollector", "at_field", "at_index", "at_key", "did_you_mean", "show"]

_SHOWN_CHARS: Final = 80


def show(value: object) -> str:
    """A value as it appears in an error message: strings quoted, long ones cut."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > _SHOWN_CHARS:
            text = text[: _SHOWN_CHARS - 4] + '…"'
        return text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def at_field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def at_index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def at_key(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


class ProblemCollector:
    """Problems found so far, and the paths whose values are known to be bad."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._failed: set[str] = set()
        # Every proper ancestor of a failed path, so both questions below are set lookups
        # (a spec with thousands of problems must not take quadratic time).
        self._above_failures: set[str] = set()

    def add(self, path: str, message: str, *, blame: bool = True) -> None:
        """Record a problem; `blame=False` when the value at `path` may still be checked."""
        self.problems.append(Problem(path, message))
        if blame:
            self._failed.add(path)
            self._above_failures.update(_ancestors(path))

    def failed(self, path: str) -> bool:
        """True when `path` or one of its ancestors already has a problem."""
        return path in self._failed or any(up in self._failed for up in _ancestors(path))

    def failed_within(self, path: str) -> bool:
        """True when `path`, an ancestor or anything below it already has a problem."""
        return self.failed(path) or path in self._above_failures

    def raise_if_any(self) -> None:
        if self.problems:
            raise SpecError(self.problems)


def _ancestors(path: str) -> list[str]:
    """`Tasks[0].Engine.Type` → `Tasks`, `Tasks[0]`, `Tasks[0].Engine`."""
    return [path[:cut] for cut, char in enumerate(path) if char in ".[" and cut > 0]


def did_you_mean(given: str, known: Iterable[str]) -> str:
    """`; did you mean "Resources"?` for a near miss (case-insensitive), else an empty string."""
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(given.lower(), list(by_lower), n=1, cutoff=0.6)
    return f'; did you mean "{by_lower[close[0]]}"?' if close else ""
