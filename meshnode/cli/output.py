"""Where the CLI writes, and how API objects look to a human.

Rules of this module:
- Everything the CLI prints goes through a `Console` built once in the entry point and passed
  down (no global stdout handle), so tests give it `StringIO`s and read what a user would see.
- rich and PyYAML are imported inside the functions that draw tables or dump YAML, never at
  module level: `meshnode --help` must not pay for them (tests/test_import_rules.py).
- Data printed with `--output json|yaml` is the API's object, unchanged; the human views
  below only read it and tolerate missing fields (an older or newer node may omit some).
- Time is an argument (`now_s`), never read here, so "5s ago" is testable.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = [
    "Console",
    "ago",
    "execution_state_name",
    "format_bytes",
    "job_state_name",
    "print_data",
    "short_id",
    "short_node_id",
    "timestamp_s",
]

SHORT_ID_CHARS: Final = 10

# Bacalhau's ExecutionStateType and ExecutionDesiredStateType, by their integer values.
EXECUTION_STATES: Final = (
    "Undefined",
    "New",
    "AskForBid",
    "AskForBidAccepted",
    "AskForBidRejected",
    "BidAccepted",
    "BidRejected",
    "Completed",
    "Failed",
    "Cancelled",
)
DESIRED_STATES: Final = ("Pending", "Running", "Stopped")
# A job state is text on our API; Bacalhau's Go server sends these integers, so read both.
JOB_STATES_BY_NUMBER: Final = (
    "Undefined",
    "Pending",
    "Running",
    "Completed",
    "Failed",
    "Stopped",
    "Queued",
)


class Console:
    """The CLI's two output streams, plus what is needed to draw on them."""

    def __init__(
        self, out: TextIO, err: TextIO, *, terminal: bool | None = None, width: int | None = None
    ) -> None:
        self.out = out
        self.err = err
        # Tests pass terminal=False explicitly; a real run asks the stream.
        self.terminal = out.isatty() if terminal is None else terminal
        self.err_terminal = err.isatty() if terminal is None else terminal
        self.width = width
        self._status_shown = False

    def print(self, text: str = "", *, end: str = "\n") -> None:
        self.clear_status()
        self.out.write(text + end)
        self.out.flush()

    def error(self, text: str) -> None:
        """A line for the user on standard error (warnings, hints, errors)."""
        self.clear_status()
        self.err.write(text + "\n")
        self.err.flush()

    def status(self, text: str) -> None:
        """A progress line that replaces itself on a terminal; a plain line otherwise.

        Callers only call this when the text changed, so a log file gets one line per change
        instead of a line per poll."""
        if self.err_terminal:
            # \r and "erase to end of line": rewrite in place without scrolling.
            self.err.write("\r\x1b[K" + text)
            self._status_shown = True
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def clear_status(self) -> None:
        if self._status_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._status_shown = False

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None
    ) -> None:
        """A borderless table with a header, like Bacalhau's and kubectl's."""
        from rich import box  # rich costs ~60 ms; only tables pay for it
        from rich.console import Console as RichConsole
        from rich.table import Table

        table = Table(
            box=box.SIMPLE_HEAD,
            title=title,
            title_justify="left",
            show_edge=False,  # no blank first and last lines
            pad_edge=False,
        )
        for column in columns:
            # Cells are never wrapped: a row per line keeps `| grep` working.
            table.add_column(column, no_wrap=True, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.clear_status()
        # Off a terminal there is no screen width to respect: a wide line beats a cut one.
        width = self.width or (None if self.terminal else 1000)
        buffer = io.StringIO()
        rich_console = RichConsole(
            file=buffer,
            width=width,
            force_terminal=self.terminal,
            no_color=not self.terminal,
            highlight=False,
            soft_wrap=False,
        )
        rich_console.print(table)
        # Cells are padded to the column width; the padding at line ends is noise.
        self.out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
        self.out.flush()

    def fields(self, pairs: Sequence[tuple[str, str]]) -> None:
        """`Name   value` lines with the values aligned (describe views)."""
        width = max((len(name) for name, _ in pairs), default=0)
        for name, value in pairs:
            self.print(f"{name:<{width}}  {value}".rstrip())


def print_data(console: Console, data: Any, output: str) -> None:
    """An API object as JSON (indented, keys as sent) or YAML."""
    if output == "json":
        console.print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    import yaml  # only --output yaml needs it

    console.print(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False),
        end="",
    )


# --- ids, times, sizes and states -----------------------------------------------------------


def short_id(identifier: str) -> str:
    """`j-1234abcd-…` → `j-1234abcd`: what tables show (a unique prefix works everywhere)."""
    return identifier[:SHORT_ID_CHARS]


def short_node_id(node_id: str) -> str:
    """Node ids are libp2p peer ids that all start `12D3KooW`: keep both ends."""
    if len(node_id) <= 16:
        return node_id
    return f"{node_id[:6]}…{node_id[-6:]}"


def timestamp_s(value: object) -> float | None:
    """Seconds since the epoch from what Bacalhau sends: integer nanoseconds (CreateTime,
    ModifyTime) or RFC 3339 text (history Time). None when absent or unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if value <= 0:
            return None
        # Bacalhau uses nanoseconds; accept seconds and milliseconds too, by magnitude.
        if value > 1e17:
            return value / 1e9
        if value > 1e14:
            return value / 1e6
        if value > 1e11:
            return value / 1e3
        return float(value)
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
        return seconds if seconds > 0 else None
    return None


def ago(value: object, now_s: float) -> str:
    """`"5s ago"`, `"3m ago"`, `"2h ago"`, `"4d ago"`; empty when there is no time."""
    seconds = timestamp_s(value)
    if seconds is None:
        return ""
    delta = now_s - seconds
    if delta < 0:
        # A node whose clock runs ahead: say so rather than print a negative age.
        return "just now" if delta > -5 else "in " + _span(-delta)
    return _span(delta) + " ago"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def local_time(value: object) -> str:
    """An absolute time for describe views (UTC, to the second)."""
    seconds = timestamp_s(value)
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_bytes(size: object) -> str:
    """1073741824 → `1.0 GiB` (binary units, as the spec's quantities)."""
    if not isinstance(size, int | float) or isinstance(size, bool) or size < 0:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _state_type(state: object) -> object:
    """`{"StateType": X, "Message": …}` → X; a bare value is returned as it is."""
    if isinstance(state, Mapping):
        return state.get("StateType")
    return state


def job_state_name(state: object) -> str:
    value = _state_type(state)
    if isinstance(value, int) and not isinstance(value, bool):
        return JOB_STATES_BY_NUMBER[value] if 0 <= value < len(JOB_STATES_BY_NUMBER) else str(value)
    return str(value) if value not in (None, "") else "Unknown"


def execution_state_name(state: object) -> str:
    value = _state_type(state)
    if isinstance(value, int) and not isinstance(value, bool):
        return EXECUTION_STATES[value] if 0 <= value < len(EXECUTION_STATES) else str(value)
    return str(value) if value not in (None, "") else "Unknown"


def desired_state_name(state: object) -> str:
    value = _state_type(state)
    if isinstance(value, int) and not isinstance(value, bool):
        return DESIRED_STATES[value] if 0 <= value < len(DESIRED_STATES) else str(value)
    return str(value) if value not in (None, "") else ""


def state_message(state: object) -> str:
    if isinstance(state, Mapping):
        return str(state.get("Message") or "")
    return ""
