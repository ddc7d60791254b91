"""`meshnode devstack`: a mesh of real nodes on this machine, for trying things and for tests.

Rules of this module:
- It only spawns `meshnode start` processes and talks to them over their HTTP API with the
  CLI's client: no libp2p, trio or runtime import (tests/test_import_rules.py).
- Every node listens on loopback only (API and mesh, `--swarm-host 127.0.0.1`), finds the
  others through node 1 (`--peers`), never through mDNS (`--no-mdns`), and picks a free
  mesh port (`--swarm-port 0`), so a devstack never reaches the network nor collides with
  a node already running here (whose mesh port is 1235).
- Each child runs in its own process group: Ctrl-C at the terminal reaches the devstack
  alone, which then stops every node itself (SIGTERM, then SIGKILL after
  `STOP_TIMEOUT_S`). If the devstack is killed with SIGKILL its nodes stay; the table
  printed at start lists their PIDs.
- Every wait has a deadline: a node's ready lines, its API, the mesh seeing every node.
- A node that exits on its own is an error: the devstack says which, shows the end of its
  log, stops the others and exits with 1. Stopping on a signal exits with 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Final

from meshnode.cli.client import ApiClient, ApiError
from meshnode.cli.output import Console, short_node_id
from meshnode.cli.views import field as field_of
from meshnode.cli.views import items_of
from meshnode.errors import MeshnodeError

__all__ = ["DevstackError", "DevstackOptions", "meshnode_command", "run_devstack"]

LOOPBACK: Final = "127.0.0.1"
API_PORT_STEP: Final = 10  # node N's API: base + 10·(N-1), clear of a node's mesh port 1235
READY_TIMEOUT_S: Final = 30.0  # for the ready lines of all nodes, then again for the mesh
STOP_TIMEOUT_S: Final = 10.0
MESH_POLL_S: Final = 0.2
LOG_TAIL_LINES: Final = 20
LOG_TAIL_BYTES: Final = 16 * 1024
MAX_READY_LINE_BYTES: Final = 64 * 1024
NODES_PATH: Final = "/api/v1/orchestrator/nodes"
READY_RE: Final = re.compile(r"^meshnode node (\S+) API on http://(\S+):(\d+)\s*$")
SWARM_RE: Final = re.compile(r"^meshnode swarm address (\S+)\s*$")
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DevstackError(MeshnodeError):
    """A node did not start, did not join, or died."""


class _StopRequested(KeyboardInterrupt):
    """A stop signal arrived while the devstack was starting its nodes (a KeyboardInterrupt,
    so that no `except Exception` on the way swallows it)."""


class _StopSignals:
    """While nodes start, a stop signal raises `_StopRequested` where the devstack is, except
    inside `deferred()` (between creating a process and recording it, so no node is ever
    left unrecorded): there it is raised at the block's end. Not by blocking the signals:
    a child inherits the signal mask, and a node must get its SIGTERM."""

    def __init__(self) -> None:
        self._deferring = False
        self._pending: str | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._deferring:
            self._pending = self._pending or name
        else:
            raise _StopRequested(name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            raise _StopRequested(self._pending)


@dataclass(frozen=True)
class DevstackOptions:
    node_count: int = 3
    data_dir_root: Path | None = None  # None: a new temporary folder, kept after exit
    base_api_port: int = 1234  # 0: every node picks a free port
    no_docker: bool = False
    require_approval: bool = False
    swarm_key_file: str | None = None  # an absolute path
    labels: tuple[str, ...] = ()
    ready_timeout_s: float = READY_TIMEOUT_S


@dataclass
class _Child:
    index: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    reader: _LineReader
    node_id: str = ""
    api_port: int = 0
    swarm_addrs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"node {self.index}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"


class _LineReader:
    """Lines from a child's stdout, each read with a deadline (never a blocking read that a
    hung child could stall forever)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self.closed = False

    def readline(self, deadline: float) -> str | None:
        """The next line without its newline; None at the deadline; "" once the child
        closed its stdout (it exited)."""
        while b"\n" not in self._buffer:
            if self.closed:
                rest, self._buffer = self._buffer, b""
                return rest.decode("utf-8", "replace")
            left_s = max(0.0, deadline - time.monotonic())
            if not self._selector.select(timeout=left_s):
                return None
            chunk = os.read(self._fd, 4096)
            if not chunk:
                self.closed = True
            self._buffer += chunk
            if len(self._buffer) > MAX_READY_LINE_BYTES:
                raise DevstackError("a node printed a line longer than expected on stdout")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self) -> None:
        self._selector.close()
        self._stream.close()


def meshnode_command() -> list[str]:
    """How to run `meshnode`: the console script beside this Python, else the module."""
    script = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "meshnode.cli.main"]


def run_devstack(options: DevstackOptions, console: Console) -> int:
    """Start the nodes, wait for the mesh, print where everything is, run until a signal.
    Returns the exit code: 0 after a stop signal, 1 when a node failed."""
    root = options.data_dir_root or Path(tempfile.mkdtemp(prefix="meshnode-devstack-"))
    root.mkdir(parents=True, exist_ok=True)
    console.error(f"Starting {options.node_count} nodes in {root} (kept after exit)")
    children: list[_Child] = []
    stop_signals = _StopSignals()
    previous = {signum: signal.signal(signum, stop_signals.handle) for signum in _STOP_SIGNALS}
    try:
        try:
            _start_all(options, root, children, console, stop_signals)
            _print_ready(options, root, children, console)
            blocked: set[int] = {*_STOP_SIGNALS, signal.SIGCHLD}
            # From here signals are taken one at a time (sigtimedwait), never as handlers
            # interrupting whatever runs; the mask stays up while the nodes are stopped, so a
            # second Ctrl-C cannot cut the clean stop short (SIGKILL after 10 s bounds it).
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
            _wait_for_stop(children, blocked, console)
            return 0
        except KeyboardInterrupt:  # _StopRequested, or Ctrl-C before our handler
            signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
            console.error("Stopping: interrupted while starting.")
            return 0
        except DevstackError as error:
            signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
            console.error(f"Error: {error}")
            return 1
        finally:
            _stop_all(children, console)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*_STOP_SIGNALS, signal.SIGCHLD})
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- starting ----------------------------------------------------------------------------------


def _start_all(
    options: DevstackOptions,
    root: Path,
    children: list[_Child],
    console: Console,
    stop_signals: _StopSignals,
) -> None:
    deadline = time.monotonic() + options.ready_timeout_s
    with stop_signals.deferred():
        children.append(_spawn(options, root, 1, peers=()))
    first = children[0]
    _read_ready_lines(first, deadline)
    if not first.swarm_addrs:
        raise DevstackError(f"node 1 printed no mesh address; see {first.log_path}")
    console.error(f"node 1 is {first.node_id} at {first.api_url}")
    for index in range(2, options.node_count + 1):
        with stop_signals.deferred():
            children.append(_spawn(options, root, index, peers=(first.swarm_addrs[0],)))
    for child in children[1:]:
        _read_ready_lines(child, deadline)
    for child in children:
        _wait_for_api(child, deadline)
    _wait_for_mesh(children, time.monotonic() + options.ready_timeout_s)


def _spawn(options: DevstackOptions, root: Path, index: int, *, peers: Sequence[str]) -> _Child:
    data_dir = root / f"node{index}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = root / f"node{index}.log"
    api_port = options.base_api_port + API_PORT_STEP * (index - 1) if options.base_api_port else 0
    arguments = [
        *meshnode_command(), "start",
        "--data-dir", str(data_dir),
        "--api-host", LOOPBACK, "--api-port", str(api_port),
        "--swarm-host", LOOPBACK, "--swarm-port", "0", "--no-mdns",
        "--labels", f"devstack-node={index}",
    ]  # fmt: skip
    for labels in options.labels:
        arguments += ["--labels", labels]
    for peer in peers:
        arguments += ["--peers", peer]
    if options.no_docker:
        arguments.append("--no-docker")
    if options.require_approval:
        arguments.append("--require-approval")
    if options.swarm_key_file is not None:
        arguments += ["--swarm-key", options.swarm_key_file]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,  # the child has its own descriptor; ours closes here
            process_group=0,  # Ctrl-C at the terminal is the devstack's to handle
        )
    assert process.stdout is not None
    return _Child(index, data_dir, log_path, process, _LineReader(process.stdout))


def _read_ready_lines(child: _Child, deadline: float) -> None:
    """`meshnode node ID API on http://HOST:PORT`, then its `meshnode swarm address` lines
    (printed together, right after the API listens)."""
    while not child.swarm_addrs:
        line = child.reader.readline(deadline)
        if line is None:
            said = "its mesh address" if child.node_id else "that it was ready"
            raise DevstackError(f"{child.name} did not print {said} in time{_tail(child)}")
        if line == "" and child.reader.closed:
            raise DevstackError(_exit_message(child))
        if match := READY_RE.match(line):
            child.node_id, child.api_port = match[1], int(match[3])
        elif (match := SWARM_RE.match(line)) and child.node_id:
            child.swarm_addrs.append(match[1])
    # Further addresses were printed in the same breath: take those already here.
    while (line := child.reader.readline(time.monotonic())) and (match := SWARM_RE.match(line)):
        child.swarm_addrs.append(match[1])


def _wait_for_api(child: _Child, deadline: float) -> None:
    client = ApiClient(LOOPBACK, child.api_port, timeout_s=5.0, connect_timeout_s=2.0)
    while True:
        try:
            client.get("/api/v1/agent/alive")
            return
        except ApiError as error:
            if child.process.poll() is not None:
                raise DevstackError(_exit_message(child)) from None
            if time.monotonic() > deadline:
                raise DevstackError(f"{child.name}'s API does not answer: {error}") from None
        time.sleep(MESH_POLL_S)


def _wait_for_mesh(children: list[_Child], deadline: float) -> None:
    """Until node 1 sees every node alive."""
    client = ApiClient(LOOPBACK, children[0].api_port, timeout_s=5.0, connect_timeout_s=2.0)
    wanted = {child.node_id: child for child in children}
    alive: set[str] = set()
    while True:
        for child in children:
            if child.process.poll() is not None:
                raise DevstackError(_exit_message(child))
        try:
            nodes = items_of(client.get(NODES_PATH), "nodes", "Nodes", "Items")
        except ApiError as error:
            nodes, problem = [], str(error)
        else:
            problem = ""
        alive = {
            str(field_of(field_of(node, "Info"), "NodeID", default=""))
            for node in nodes
            if field_of(node, "Connection") == "CONNECTED"
        }
        if set(wanted) <= alive:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(
                f"{child.name} ({short_node_id(node_id)}, log {child.log_path})"
                for node_id, child in wanted.items()
                if node_id not in alive
            )
            seen = f"node 1 sees {len(set(wanted) & alive)} of {len(wanted)} nodes alive"
            raise DevstackError(
                f"the mesh did not form in time: {seen}; missing {missing}"
                + (f"; last answer: {problem}" if problem else "")
            )
        time.sleep(MESH_POLL_S)


def _print_ready(
    options: DevstackOptions, root: Path, children: list[_Child], console: Console
) -> None:
    console.table(
        ("NODE", "ID", "API", "PID", "DATA DIR", "LOG"),
        [
            (
                str(child.index),
                short_node_id(child.node_id),
                child.api_url,
                str(child.process.pid),
                str(child.data_dir),
                str(child.log_path),
            )
            for child in children
        ],
    )
    first = children[0]
    console.print("")
    console.print("Point the CLI at a node (node 1 here):")
    console.print(f"  export MESHNODE_API_PORT={first.api_port}")
    console.print("  meshnode node list")
    console.print(f"or add --api-port PORT to a command, e.g. --api-port {children[-1].api_port}")
    console.print("Another node joins this mesh with:")
    console.print(
        f"  meshnode start --peers {first.swarm_addrs[0]} --swarm-host {LOOPBACK} --no-mdns "
        "--api-port PORT --data-dir DIR"
        + (f" --swarm-key {options.swarm_key_file}" if options.swarm_key_file else "")
    )
    if options.require_approval:
        console.print("Nodes get work once approved: meshnode node approve ID")
    console.print(f"devstack ready: {len(children)} nodes, data in {root}; Ctrl-C stops them")


# --- running and stopping ----------------------------------------------------------------------


def _wait_for_stop(children: list[_Child], signals: set[int], console: Console) -> None:
    """Until a stop signal (then returns) or a node's exit (then raises)."""
    while True:
        for child in children:
            if child.process.poll() is not None:
                raise DevstackError(_exit_message(child))
        # SIGCHLD wakes this when a node exits; the timeout is only a safety net.
        received = signal.sigtimedwait(signals, 1.0)
        if received is not None and received.si_signo != signal.SIGCHLD:
            name = signal.Signals(received.si_signo).name
            console.error(f"\nStopping on {name}.")
            return


def _stop_all(children: list[_Child], console: Console) -> None:
    """SIGTERM to every node still running, then SIGKILL to those that outlast the timeout."""
    running = [child for child in children if child.process.poll() is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in running:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.error(f"{child.name} did not stop in {STOP_TIMEOUT_S:g} s: killing it")
            child.process.kill()
            child.process.wait()
    for child in children:
        child.process.poll()  # reaped either way
        child.reader.close()
    if running:
        console.error(f"Stopped {len(running)} node{'s' if len(running) != 1 else ''}.")


def _exit_message(child: _Child) -> str:
    try:
        code = child.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{child.name} (pid {child.process.pid}) closed its output{_tail(child)}"
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    return f"{child.name} (pid {child.process.pid}) {how}{_tail(child)}"


def _tail(child: _Child) -> str:
    """The last lines of the child's log (read from its end: a log can be large)."""
    try:
        with child.log_path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - LOG_TAIL_BYTES))
            data = log.read(LOG_TAIL_BYTES)
    except OSError:
        return ""
    text = b"\n".join(data.splitlines()[-LOG_TAIL_LINES:]).decode("utf-8", "replace").rstrip()
    if not text:
        return f"; its log {child.log_path} is empty"
    return f"; the end of its log {child.log_path}:\n{text}"
