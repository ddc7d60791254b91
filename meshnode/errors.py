"""The one error tree of meshnode.

Every error raised on purpose derives from `MeshnodeError`, so a caller (the CLI, the API)
can catch the whole family in one place and show its message; anything else is a bug and is
allowed to crash loudly. The split below says who was wrong:

- `SpecError`: a job spec (or its template) is invalid; it carries every problem found.
- `LocalProtocolError`: we, or our caller, asked for something illegal.
- `RemoteProtocolError`: a peer sent something malformed: drop it, count it, go on.

This module is imported by `meshnode.core` and `meshnode.spec`, so it uses nothing but the
standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LocalProtocolError",
    "MeshnodeError",
    "Problem",
    "RemoteProtocolError",
    "SpecError",
]


class MeshnodeError(Exception):
    """Root of every error meshnode raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec: where (a field path such as `Tasks[0].Network`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(MeshnodeError):
    """A job spec is invalid. `problems` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem], *, source: str = "") -> None:
        if not problems:
            raise ValueError("a SpecError needs at least one problem")
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [str(problem) for problem in self.problems]
        prefix = f"{self.source}: " if self.source else ""
        if len(lines) == 1:
            return prefix + lines[0]
        header = f"{prefix}{len(lines)} problems:"
        return "\n".join([header, *(f"  - {line}" for line in lines)])

    @classmethod
    def single(cls, path: str, message: str) -> SpecError:
        """A spec error with one problem."""
        return cls([Problem(path, message)])

    def with_source(self, source: str) -> SpecError:
        """The same problems, attributed to a file (or `-` for standard input)."""
        return SpecError(self.problems, source=source)


class LocalProtocolError(MeshnodeError):
    """We or our caller asked for something the protocol does not allow."""


class RemoteProtocolError(MeshnodeError):
    """A peer sent something malformed or illegal. Never fatal to the node."""
