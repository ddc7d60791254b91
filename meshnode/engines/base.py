"""The seam between the runtime and an engine: what to run, and how it ended.

Rules of this module:
- The runtime does everything around a run: it fetches inputs into host folders, resolves a
  wasm module to a local file, creates the outputs folder and the log files. An engine gets
  all of that as plain paths in a `RunRequest` and only runs the task.
- Logs are files: an engine writes the task's stdout and stderr to `stdout_path` and
  `stderr_path` as they are produced, so the API can follow them live by tailing the files.
- `Engine.run` is cancellable: when the caller's trio cancel scope is cancelled the engine
  stops the task promptly (≤ 1 s), releases what it holds and lets `trio.Cancelled`
  propagate. A run that ends on its own returns a `RunOutcome`, whatever the exit code.
- Operating errors that prevent a run (an image missing on this node, a module that does not
  compile) raise `ExecutionError` with a message for the user; bugs raise anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from meshnode.errors import MeshnodeError
from meshnode.spec import DockerParams, NetworkSpec, WasmParams

__all__ = [
    "Engine",
    "EngineUnavailableError",
    "ExecutionError",
    "Limits",
    "Mount",
    "RunOutcome",
    "RunRequest",
]


class ExecutionError(MeshnodeError):
    """The task could not be run; the message says why, for the user."""


class EngineUnavailableError(ExecutionError):
    """The engine is not usable on this node (e.g. Docker is not installed or not running)."""


@dataclass(frozen=True, slots=True)
class Mount:
    """A host folder (or file) made visible to the task at `target`."""

    host_path: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one run; 0 or None means "no limit"."""

    cpu_millicores: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    gpu_count: int = 0
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class RunRequest:
    execution_id: str
    job_id: str
    params: DockerParams | WasmParams
    # Task Env merged with the engine's own variables (engine-specific ones win).
    env: Mapping[str, str]
    mounts: Sequence[Mount]
    # Mounted read-write at /outputs inside the task.
    outputs_dir: Path
    stdout_path: Path
    stderr_path: Path
    limits: Limits = field(default_factory=Limits)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    # wasm only: the entry module, already resolved to a local file by the runtime.
    module_path: Path | None = None
    # wasm only: import modules, resolved likewise.
    import_module_paths: Sequence[Path] = ()
    # Labels the engine attaches where it can (docker labels), for recovery after a crash.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended. `exit_code` is None when the task did not exit by itself (a timeout,
    a trap, a kill); `error` then says why, and may also explain a non-zero exit (OOM)."""

    exit_code: int | None
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.error


class Engine(Protocol):
    name: ClassVar[str]

    async def is_available(self) -> bool:
        """Whether this engine can run tasks on this node right now."""
        ...

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run the task to its end (or until cancelled); see the module rules."""
        ...
