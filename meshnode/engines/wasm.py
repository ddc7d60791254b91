"""The `wasm` engine: runs a WASI (preview 1) module in this process, with wasmtime.

Rules of this module:
- One wasmtime `Engine` per `WasmEngine`. Each run gets its own `Store`, `Linker` and WASI
  context, created, used and dropped in one worker thread: the trio loop only waits, and the
  worker is always joined before `run()` returns or raises. At most `max_concurrent` runs
  execute at once (a `trio.CapacityLimiter`); the others wait for a slot, and the timeout
  starts when the slot is taken. Compiling a module cannot be interrupted: a stop during a
  compile (seconds for a 20 MB module, once: then it is cached) waits for it to end.
- Stopping a guest is `_GuestStop.request()`: set the run's flag, increment the engine's
  epoch, wake the run's host-side sleep. Every store's epoch deadline is always "the next
  epoch", and its deadline callback decides: trap if the store's own flag is set, otherwise
  carry on to the next epoch. So a stop reaches exactly one guest, within microseconds while
  it runs wasm code, and while nobody asks for a stop nothing ticks: no ticker, no timer, no
  thread. (A periodic ticker with per-store deadlines in ticks could not stop one guest
  early, on cancellation, without stopping every guest of the engine.) With no background
  task, `async with WasmEngine.open(...)` (what the node uses) and
  `WasmEngine(...)` + `aclose()` are the same thing.
- Timeouts and cancellation are trio cancel scopes: the run's own `move_on_after` for
  `Limits.timeout_s`, and whatever scope the caller cancels. Both reach the guest the same
  way: trio asks the waiting task to abort, the abort asks the guest to stop, and the task
  goes on waiting for the thread (`_wait_in_worker_thread`). trio.to_thread.run_sync has no
  such hook; a watcher task in a nursery would, but would hand `trio.Cancelled` to the caller
  wrapped in an ExceptionGroup.
- WASI sleeps block inside wasmtime, where epochs are not checked, so `poll_oneoff` calls
  that only wait on clocks (relative, or absolute on the realtime or monotonic clock: C's
  sleep and nanosleep, Rust's thread::sleep, CPython's time.sleep) are served here, on an
  event that a stop wakes; the woken guest traps at its next call or loop. Every other
  `poll_oneoff` goes to wasmtime's own, which a stop cannot cut short.
- How a run ends: the guest returned (exit 0), called `proc_exit(n)` (exit n), trapped (no
  exit code; the error names the trap), was stopped (a timeout, or `trio.Cancelled` for the
  caller). A failure while the guest's memory is near `Limits.memory_bytes` says that memory
  was (within a page) or probably was (within an eighth) the limit: wasmtime does not say
  when memory.grow failed for the limit. Errors that prevent the run (no module, a module
  that does not compile or link, no such entry point) raise `ExecutionError`; anything else
  is a bug.
- The guest sees: argv = [the entry module's file name, *Parameters]; the task's env with
  the spec's EnvironmentVariables on top; each `Mount` preopened at its target (read-only
  ones with `fs_mutable=False`: wasmtime then refuses every write, create and delete below
  it); `outputs_dir` read-write at `/outputs`; stdout and stderr written straight to
  `stdout_path` and `stderr_path` (truncated when the run starts). A mount of a single file
  is made visible by hard-linking it (or, read-only across file systems, copying it) into a
  private folder under `cache_dir/file-mounts`, preopened at the target's parent folder.
  No network, no stdin. CPU and disk limits are not enforced by this engine.
- Modules: a folder holding one file stands for that file (IPFS wraps files so). Import
  modules are instantiated in order, in the same store, and linked under a module name: the
  input source's Alias if it has one (Bacalhau's rule), otherwise the stem of the module's
  file name ("lib" for lib.wasm). A later module can import an earlier one. A module that
  exports `_initialize` (a WASI reactor) has it called first.
- Compiled modules are cached by the sha256 of the module file: in memory (the last
  `_MEMORY_CACHE_MODULES`) and on disk in `cache_dir/<wasmtime version, machine, engine
  config>/<sha256>.cwasm`, so an upgrade never loads an artifact built for another wasmtime
  or config (older folders are deleted). The disk cache is capped at `cache_limit_bytes`
  (least recently used first). Each artifact carries a sha256 of itself, checked before it
  is loaded, since loading an artifact runs its machine code unchecked; a file that fails the
  check or does not load is deleted and the module compiled again.
- wasmtime is imported by this module only (the CLI never imports engines). One part of its
  C API is not wrapped by wasmtime-py 50: `wasmtime_store_epoch_deadline_callback`, called
  here through `wasmtime._bindings`; wasmtime is pinned, and the timeout and cancellation
  tests exercise it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import logging
import math
import os
import platform
import posixpath
import shutil
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import urlsplit

import outcome
import trio
import wasmtime
from wasmtime import _bindings as wasmtime_c

from meshnode.engines.base import ExecutionError, Mount, RunOutcome, RunRequest
from meshnode.spec import InputSource, WasmParams

__all__ = ["WasmEngine"]

LOGGER: Final = logging.getLogger(__name__)

_T = TypeVar("_T")

_WASI_MODULE: Final = "wasi_snapshot_preview1"
_OUTPUTS_TARGET: Final = "/outputs"
_PAGE_BYTES: Final = 64 * 1024
_MEMORY_CACHE_MODULES: Final = 32
_DEFAULT_CACHE_LIMIT_BYTES: Final = 1024**3
# Bump when the engine's wasmtime.Config changes: artifacts are only valid for one config.
_ENGINE_CONFIG_TAG: Final = "epoch-v1"
_ARTIFACT_DIGEST_BYTES: Final = 32
_FILE_MOUNTS_FOLDER: Final = "file-mounts"
# A WASI reactor exports this; the host calls it once before any other export.
_REACTOR_INITIALIZER: Final = "_initialize"

# The epoch deadline callback of wasmtime's C API (see the module rules). It returns a
# `wasmtime_error_t *` as an integer: 0 to go on, an error to trap the guest.
_DeadlineCallback: Final = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(wasmtime_c.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(wasmtime_c.wasmtime_update_deadline_kind_t),
)
_DeadlineFinalizer: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_UPDATE_DEADLINE_CONTINUE: Final = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
_STOP_MESSAGE: Final = b"meshnode: the host stopped this guest"

# WASI preview 1 `subscription` (48 bytes) and `event` (32 bytes) records, little-endian:
# userdata, tag, clock id, timeout (ns), precision, flags / userdata, errno, type, fd payload.
_SUBSCRIPTION: Final = struct.Struct("<QB7xI4xQQH6x")
_EVENT: Final = struct.Struct("<QHB5x16x")
_EVENTTYPE_CLOCK: Final = 0
_SUBCLOCKFLAGS_ABSTIME: Final = 1
_CLOCK_REALTIME: Final = 0
_CLOCK_MONOTONIC: Final = 1
_ERRNO_FAULT: Final = 21
# Makes wasmtime's own WASI functions callable from a host function (see _InterruptibleSleep).
_WASI_PASSTHROUGH: Final = """(module
  (import "wasi" "memory" (memory 0))
  (import "wasi" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32)
    (call $poll_oneoff (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "clock_time_get") (param i32 i64 i32) (result i32)
    (call $clock_time_get (local.get 0) (local.get 1) (local.get 2))))"""


class WasmEngine:
    """Runs `wasm` tasks; see the module rules. Use `async with WasmEngine.open(...)`."""

    name: ClassVar[str] = "wasm"

    def __init__(
        self,
        *,
        cache_dir: Path,
        max_concurrent: int = 8,
        cache_limit_bytes: int = _DEFAULT_CACHE_LIMIT_BYTES,
    ) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self._engine = wasmtime.Engine(config)
        self._wasi_passthrough = wasmtime.Module(self._engine, _WASI_PASSTHROUGH)
        self._cache_dir = cache_dir
        self._modules = _ModuleCache(self._engine, cache_dir, limit_bytes=cache_limit_bytes)
        self._run_slots = trio.CapacityLimiter(max_concurrent)
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        cache_dir: Path,
        max_concurrent: int = 8,
        cache_limit_bytes: int = _DEFAULT_CACHE_LIMIT_BYTES,
    ) -> AsyncIterator[WasmEngine]:
        """The engine, ready; closed on exit. One engine per `cache_dir` at a time: opening
        removes what a crashed predecessor left in `cache_dir/file-mounts`."""
        engine = cls(
            cache_dir=cache_dir, max_concurrent=max_concurrent, cache_limit_bytes=cache_limit_bytes
        )
        await trio.to_thread.run_sync(shutil.rmtree, cache_dir / _FILE_MOUNTS_FOLDER, True)
        try:
            yield engine
        finally:
            await engine.aclose()

    async def is_available(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        """Refuse new runs and let go of the compiled modules kept in memory. There is no
        background work to stop; runs still going end in their callers' scopes."""
        self._closed = True
        self._modules.forget_in_memory()

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run the task to its end, its timeout, or the caller's cancellation."""
        if self._closed:
            raise ExecutionError("the wasm engine is closed")
        timeout_s = request.limits.timeout_s or None
        async with self._run_slots:
            stop = _GuestStop(self._engine)
            with trio.move_on_after(timeout_s or math.inf) as timeout_scope:
                end = await _wait_in_worker_thread(
                    lambda: self._run_guest(request, stop),
                    on_cancel=stop.request,
                    thread_name=f"wasm guest {request.execution_id}",
                )
        # If the caller cancelled, the guest is stopped and its thread joined: now say so.
        await trio.lowlevel.checkpoint_if_cancelled()
        if end.stopped:
            # Only a cancellation stops a guest: the caller's (raised above) or the timeout's.
            assert timeout_s is not None and timeout_scope.cancel_called, (timeout_s, end)
            return RunOutcome(exit_code=None, error=f"execution timed out after {timeout_s:g} s")
        return RunOutcome(exit_code=end.exit_code, error=end.error)

    def _run_guest(self, request: RunRequest, stop: _GuestStop) -> _GuestEnd:
        """The whole run, in the worker thread: every file system access happens here."""
        plan = _LaunchPlan.of(request)
        staging: Path | None = None
        try:
            preopens = [*plan.directory_preopens]
            if plan.file_mounts:
                mounts_root = self._cache_dir / _FILE_MOUNTS_FOLDER
                mounts_root.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=mounts_root))
                preopens += _stage_file_mounts(plan.file_mounts, staging)
            entry_module = self._modules.load(plan.module_path)
            _check_entry_point(entry_module, plan)
            import_modules = [(name, self._modules.load(path)) for name, path in plan.imports]
            session = _GuestSession(self._engine, self._wasi_passthrough, plan, stop, preopens)
            return session.run(entry_module, import_modules)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


# --- what to run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Preopen:
    host_path: Path
    guest_path: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class _LaunchPlan:
    """What to run and how, from the request (looks at the file system: worker thread)."""

    module_path: Path
    imports: tuple[tuple[str, Path], ...]
    entry_point: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    directory_preopens: tuple[_Preopen, ...]
    file_mounts: tuple[Mount, ...]
    stdout_path: Path
    stderr_path: Path
    memory_bytes: int

    @classmethod
    def of(cls, request: RunRequest) -> _LaunchPlan:
        params = request.params
        if not isinstance(params, WasmParams):
            raise TypeError(f"the wasm engine cannot run {type(params).__name__}")
        if request.module_path is None:
            raise ExecutionError("the wasm task has no entry module")
        module_path = _module_file(request.module_path)
        specs = params.import_modules
        imports = []
        for index, path in enumerate(request.import_module_paths):
            spec = specs[index] if index < len(specs) else None
            imports.append((_import_module_name(spec, path), _module_file(path)))
        directories: list[_Preopen] = []
        files: list[Mount] = []
        for mount in request.mounts:
            if not mount.target.startswith("/"):
                raise ExecutionError(f"mount target {mount.target!r} is not an absolute path")
            if mount.host_path.is_dir():
                directories.append(_Preopen(mount.host_path, mount.target, mount.read_only))
            elif mount.host_path.is_file():
                files.append(mount)
            else:
                raise ExecutionError(
                    f"mount {mount.target}: {mount.host_path} does not exist on this node"
                )
        directories.append(_Preopen(request.outputs_dir, _OUTPUTS_TARGET, read_only=False))
        return cls(
            module_path=module_path,
            imports=tuple(imports),
            entry_point=params.entry_point or "_start",
            argv=(module_path.name, *params.parameters),
            env={**request.env, **params.environment_variables},
            directory_preopens=tuple(directories),
            file_mounts=tuple(files),
            stdout_path=request.stdout_path,
            stderr_path=request.stderr_path,
            memory_bytes=request.limits.memory_bytes,
        )


def _module_file(path: Path) -> Path:
    """The module file; a folder holding exactly one file stands for that file, since IPFS
    wraps a single file in a folder (Bacalhau's rule)."""
    if not path.is_dir():
        return path
    entries = list(path.iterdir())
    if len(entries) != 1 or not entries[0].is_file():
        raise ExecutionError(
            f"wasm module folder {path.name} must hold exactly one file, not {len(entries)}"
        )
    return entries[0]


def _import_module_name(spec: InputSource | str | None, path: Path) -> str:
    """The name other modules import this one by: see the module rules."""
    if isinstance(spec, InputSource) and spec.alias:
        return spec.alias
    if isinstance(spec, str) and not spec.startswith("data:"):
        name = posixpath.basename(urlsplit(spec).path.rstrip("/"))
        if name:
            return posixpath.splitext(name)[0]
    return _module_file(path).stem


def _stage_file_mounts(mounts: Sequence[Mount], staging: Path) -> list[_Preopen]:
    """One private folder per target folder, holding the mounted files (WASI preopens folders
    only). A hard link keeps writes going to the host file; a read-only file on another file
    system is copied."""
    by_folder: dict[str, list[Mount]] = {}
    for mount in mounts:
        by_folder.setdefault(posixpath.dirname(mount.target.rstrip("/")), []).append(mount)
    preopens = []
    for index, (guest_folder, group) in enumerate(sorted(by_folder.items())):
        read_only = {mount.read_only for mount in group}
        if len(read_only) > 1:
            raise ExecutionError(
                f"read-only and read-write files cannot share the folder {guest_folder} "
                "in a wasm task"
            )
        host_folder = staging / str(index)
        host_folder.mkdir()
        for mount in group:
            link = host_folder / posixpath.basename(mount.target.rstrip("/"))
            try:
                os.link(mount.host_path, link)
            except OSError as error:
                if not mount.read_only:
                    raise ExecutionError(
                        f"mount {mount.target}: cannot link {mount.host_path} for writing "
                        f"({error.strerror}); mount its folder instead"
                    ) from None
                shutil.copyfile(mount.host_path, link)
        preopens.append(_Preopen(host_folder, guest_folder or "/", read_only.pop()))
    return preopens


def _check_entry_point(module: wasmtime.Module, plan: _LaunchPlan) -> None:
    functions = {
        export.name: export.type
        for export in module.exports
        if isinstance(export.type, wasmtime.FuncType)
    }
    entry = functions.get(plan.entry_point)
    if entry is None:
        listed = ", ".join(sorted(functions)) or "none"
        raise ExecutionError(
            f"module {plan.module_path.name} has no function export named {plan.entry_point!r}; "
            f"its function exports: {listed}"
        )
    if entry.params:
        raise ExecutionError(
            f"entry point {plan.entry_point!r} of module {plan.module_path.name} takes "
            f"{len(entry.params)} parameters; only a function without parameters can be run"
        )


# --- stopping a guest -------------------------------------------------------------------------


class _GuestStop:
    """Asks one guest to stop: see the module rules. Shared by the trio side (`request`)
    and the worker thread (the deadline callback and the sleeps)."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        # Written by the trio thread, read by the worker's deadline callback (under the GIL).
        self.requested = False
        self._wake_sleeper = threading.Event()

    def request(self) -> None:
        # In this order: the flag before the epoch moves (the callback reads it then), and the
        # epoch before a sleeping guest wakes, so that the guest traps at its next call or
        # loop instead of running on.
        self.requested = True
        self._engine.increment_epoch()
        self._wake_sleeper.set()

    def sleep(self, duration_s: float) -> None:
        """Sleep, unless (or until) a stop is requested."""
        self._wake_sleeper.wait(duration_s)

    def deadline_callback(self) -> Any:
        """The store's epoch deadline callback (a ctypes function: keep it referenced for as
        long as the store lives)."""

        def on_deadline(_context: object, _data: object, next_delta: Any, update_kind: Any) -> int:
            if self.requested:
                error = wasmtime_c.wasmtime_error_new(_STOP_MESSAGE)
                return ctypes.cast(error, ctypes.c_void_p).value or 0
            next_delta[0] = 1
            update_kind[0] = _UPDATE_DEADLINE_CONTINUE
            return 0

        return _DeadlineCallback(on_deadline)


async def _wait_in_worker_thread(
    work: Callable[[], _T], *, on_cancel: Callable[[], None], thread_name: str
) -> _T:
    """`work()` in a worker thread; if this task is cancelled meanwhile, call `on_cancel`
    (which must make `work` end soon) and go on waiting. Returns (or raises) what `work` did,
    and never checkpoints after the thread ended, so the caller sees its result; a pending
    cancellation is raised at the caller's next checkpoint."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    trio_token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[_T]) -> None:
        trio_token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        on_cancel()
        return trio.lowlevel.Abort.FAILED

    trio.lowlevel.start_thread_soon(work, deliver, name=thread_name)
    result: _T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


class _InterruptibleSleep:
    """WASI `poll_oneoff` for calls that only wait on clocks (relative, or absolute on the
    realtime or monotonic clock): waits on the run's stop event, so a stop wakes it. Other
    calls go to wasmtime's own poll_oneoff (uninterruptible, like any WASI call; with no
    stdin and no sockets, only clocks can make a guest wait long).

    wasmtime's own WASI functions find the guest's memory through their caller's exports, so
    they cannot be called from here directly: they are called through `_WASI_PASSTHROUGH`, a
    module that imports them and the guest's memory, and exports that memory back.

    Never raises: wasmtime-py passes a host function's exception on through one process-wide
    variable, unsafe with several guests in threads. It keeps what went wrong instead, stops
    the guest (which traps at its next call or loop) and returns an errno; the session then
    reports it."""

    def __init__(
        self,
        stop: _GuestStop,
        passthrough_module: wasmtime.Module,
        wasi_functions: Sequence[wasmtime.Func],
    ) -> None:
        self._stop = stop
        self._passthrough_module = passthrough_module
        self._wasi_functions = wasi_functions  # poll_oneoff, clock_time_get
        self._passthrough: wasmtime.Instance | None = None
        # A bug in this class, re-raised by the session.
        self.failure: BaseException | None = None
        # What wasmtime refused (bad pointers from the guest), reported as the guest's fault.
        self.guest_fault: str | None = None

    def __call__(
        self,
        caller: wasmtime.Caller,
        subscriptions_at: int,
        events_at: int,
        subscription_count: int,
        event_count_at: int,
    ) -> int:
        try:
            return self._poll(
                caller, subscriptions_at, events_at, subscription_count, event_count_at
            )
        except wasmtime.WasmtimeError as fault:
            self.guest_fault = str(fault)
        except BaseException as error:
            self.failure = error
        self._stop.request()
        return _ERRNO_FAULT

    def _poll(
        self,
        caller: wasmtime.Caller,
        subscriptions_at: int,
        events_at: int,
        subscription_count: int,
        event_count_at: int,
    ) -> int:
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory):
            self.guest_fault = "poll_oneoff: the module exports no memory"
            self._stop.request()
            return _ERRNO_FAULT
        timers = self._clock_timers(
            caller, memory, subscriptions_at, events_at, subscription_count, event_count_at
        )
        if timers is None:
            errno: int = self._wasi(caller, memory, "poll_oneoff")(
                caller, subscriptions_at, events_at, subscription_count, event_count_at
            )
            return errno
        first_ns = min(wait_ns for _, wait_ns in timers)
        if first_ns > 0:
            # On a stop this returns early; the guest traps at its next epoch check.
            self._stop.sleep(first_ns / 1e9)
        fired = [userdata for userdata, wait_ns in timers if wait_ns <= first_ns]
        events = b"".join(_EVENT.pack(userdata, 0, _EVENTTYPE_CLOCK) for userdata in fired)
        memory.write(caller, events, events_at)
        memory.write(caller, len(fired).to_bytes(4, "little"), event_count_at)
        return 0

    def _clock_timers(
        self,
        caller: wasmtime.Caller,
        memory: wasmtime.Memory,
        subscriptions_at: int,
        events_at: int,
        subscription_count: int,
        event_count_at: int,
    ) -> list[tuple[int, int]] | None:
        """(userdata, nanoseconds to wait) of each subscription, if all are clocks this class
        serves and every pointer is valid; None otherwise (wasmtime's own then answers, and
        reports any error exactly)."""
        subscriptions_end = subscriptions_at + subscription_count * _SUBSCRIPTION.size
        events_end = events_at + subscription_count * _EVENT.size
        if (
            subscription_count == 0
            or subscriptions_at % 8
            or events_at % 8
            or event_count_at % 4
            or max(subscriptions_end, events_end, event_count_at + 4) > memory.data_len(caller)
        ):
            return None
        raw = memory.read(caller, subscriptions_at, subscriptions_end)
        timers = []
        guest_monotonic_ns: int | None = None
        for index in range(subscription_count):
            userdata, tag, clock, timeout_ns, _precision, flags = _SUBSCRIPTION.unpack_from(
                raw, index * _SUBSCRIPTION.size
            )
            if tag != _EVENTTYPE_CLOCK or clock not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
                return None
            if not flags & _SUBCLOCKFLAGS_ABSTIME:
                wait_ns = timeout_ns
            elif clock == _CLOCK_REALTIME:
                wait_ns = timeout_ns - time.time_ns()
            else:
                if guest_monotonic_ns is None:
                    # The guest's monotonic clock counts from its own start: ask wasmtime,
                    # using the events area (ours to write) as the result's place.
                    errno = self._wasi(caller, memory, "clock_time_get")(
                        caller, _CLOCK_MONOTONIC, 1, events_at
                    )
                    if errno:
                        return None
                    guest_monotonic_ns = int.from_bytes(
                        memory.read(caller, events_at, events_at + 8), "little"
                    )
                wait_ns = timeout_ns - guest_monotonic_ns
            timers.append((userdata, max(wait_ns, 0)))
        return timers

    def _wasi(self, caller: wasmtime.Caller, memory: wasmtime.Memory, name: str) -> wasmtime.Func:
        """wasmtime's own WASI function `name`, callable from here (see the class doc)."""
        if self._passthrough is None:
            self._passthrough = wasmtime.Instance(
                caller, self._passthrough_module, [memory, *self._wasi_functions]
            )
        function = self._passthrough.exports(caller)[name]
        assert isinstance(function, wasmtime.Func), function
        return function


# --- one run in its store ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _GuestEnd:
    """How the guest ended, as seen from the worker thread."""

    exit_code: int | None
    error: str = ""
    stopped: bool = False  # the host asked it to stop (timeout or cancellation)


class _GuestSession:
    """One store, its WASI context and linker; used by one worker thread, then dropped."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        wasi_passthrough: wasmtime.Module,
        plan: _LaunchPlan,
        stop: _GuestStop,
        preopens: Sequence[_Preopen],
    ) -> None:
        self._engine = engine
        self._wasi_passthrough = wasi_passthrough
        self._plan = plan
        self._stop = stop
        self._preopens = preopens

    def run(
        self,
        entry_module: wasmtime.Module,
        import_modules: Sequence[tuple[str, wasmtime.Module]],
    ) -> _GuestEnd:
        plan, stop = self._plan, self._stop
        store = wasmtime.Store(self._engine)
        deadline_callback = stop.deadline_callback()
        try:
            store.set_epoch_deadline(1)
            wasmtime_c.wasmtime_store_epoch_deadline_callback(
                store.ptr(), deadline_callback, None, _DeadlineFinalizer()
            )
            # Looked at after the deadline is set: a stop requested from now on moves the
            # epoch past this deadline; one requested before is seen here.
            if stop.requested:
                return _GuestEnd(exit_code=None, stopped=True)
            if plan.memory_bytes:
                store.set_limits(memory_size=plan.memory_bytes)
            store.set_wasi(self._wasi_config())
            linker = wasmtime.Linker(self._engine)
            linker.define_wasi()
            sleep = _InterruptibleSleep(
                stop,
                self._wasi_passthrough,
                [
                    self._wasi_function(linker, store, name)
                    for name in ("poll_oneoff", "clock_time_get")
                ],
            )
            linker.allow_shadowing = True
            linker.define_func(
                _WASI_MODULE,
                "poll_oneoff",
                # (subscriptions, events, subscription count, event count) -> errno
                wasmtime.FuncType([wasmtime.ValType.i32()] * 4, [wasmtime.ValType.i32()]),
                sleep,
                access_caller=True,
            )
            linker.allow_shadowing = False
            instances: list[wasmtime.Instance] = []
            end = self._instantiate_and_call(store, linker, entry_module, import_modules, instances)
            if sleep.failure is not None:
                raise sleep.failure
            if sleep.guest_fault is not None:
                self._report_to_stderr(sleep.guest_fault)
                end = _GuestEnd(
                    exit_code=None, error=f"the module failed: {_causes(sleep.guest_fault)}"
                )
            if (end.exit_code != 0 or end.error) and not end.stopped:
                end = self._blame_memory_if_full(store, instances, end)
            return end
        finally:
            store.close()
            del deadline_callback  # only now: the store may call it until it is closed

    def _instantiate_and_call(
        self,
        store: wasmtime.Store,
        linker: wasmtime.Linker,
        entry_module: wasmtime.Module,
        import_modules: Sequence[tuple[str, wasmtime.Module]],
        instances: list[wasmtime.Instance],
    ) -> _GuestEnd:
        plan = self._plan
        linking = True
        try:
            for name, module in import_modules:
                instance = linker.instantiate(store, module)
                instances.append(instance)
                _initialize_reactor(store, instance)
                linker.define_instance(store, name, instance)
            entry_instance = linker.instantiate(store, entry_module)
            instances.append(entry_instance)
            linking = False
            if plan.entry_point != _REACTOR_INITIALIZER:
                _initialize_reactor(store, entry_instance)
            entry = entry_instance.exports(store)[plan.entry_point]
            assert isinstance(entry, wasmtime.Func), entry
            entry(store)
            return _GuestEnd(exit_code=0)
        except wasmtime.ExitTrap as exit_trap:
            # An exit wins over a stop requested at the same moment: the guest ended itself.
            return _GuestEnd(exit_code=exit_trap.code)
        except wasmtime.Trap as trap:
            if self._stop.requested:
                return _GuestEnd(exit_code=None, stopped=True)
            self._report_to_stderr(trap.message)
            kind = trap.trap_code.name.lower().replace("_", " ") if trap.trap_code else "trap"
            return _GuestEnd(
                exit_code=None, error=f"the module trapped ({kind}): {_causes(trap.message)}"
            )
        except wasmtime.WasmtimeError as error:
            if self._stop.requested:
                return _GuestEnd(exit_code=None, stopped=True)
            message = str(error)
            if linking and "exceeds memory limits" in message:
                return _GuestEnd(
                    exit_code=None,
                    error=f"memory limit reached: the module needs more than the "
                    f"{plan.memory_bytes} bytes allowed when it starts ({_causes(message)})",
                )
            if linking:
                raise ExecutionError(
                    f"module {plan.module_path.name} cannot be instantiated: {_causes(message)}"
                ) from None
            self._report_to_stderr(message)
            return _GuestEnd(exit_code=None, error=f"the module failed: {_causes(message)}")

    def _blame_memory_if_full(
        self, store: wasmtime.Store, instances: Sequence[wasmtime.Instance], end: _GuestEnd
    ) -> _GuestEnd:
        """Say that memory was the limit when a failed guest's memory is near it. wasmtime
        does not tell when `memory.grow` failed for the limit (it returns -1, and a C malloc
        returns NULL), so this looks at how close the memory is: within a page, any growth
        fails ("reached"); within an eighth of the limit, an allocation of that size did
        ("probably reached": a C program that failed to malloc 1 MiB under an 8 MiB limit
        ended with 7.1 MiB)."""
        limit = self._plan.memory_bytes
        if not limit:
            return end
        memory_bytes = max(
            (
                export.data_len(store)
                for instance in instances
                for export in instance.exports(store).values()
                if isinstance(export, wasmtime.Memory)
            ),
            default=0,
        )
        headroom_bytes = limit - memory_bytes
        if headroom_bytes < _PAGE_BYTES:
            verdict = "memory limit reached"
        elif headroom_bytes <= limit // 8:
            verdict = "memory limit probably reached"
        else:
            return end
        memory_note = (
            f"{verdict}: the module's memory is {memory_bytes} bytes of the {limit} allowed, "
            "and memory.grow fails beyond"
        )
        return _GuestEnd(
            exit_code=end.exit_code,
            error=f"{memory_note}; {end.error}" if end.error else memory_note,
        )

    def _wasi_config(self) -> wasmtime.WasiConfig:
        plan = self._plan
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(plan.argv)
        wasi.env = list(plan.env.items())
        try:
            wasi.stdout_file = str(plan.stdout_path)
            wasi.stderr_file = str(plan.stderr_path)
            for preopen in self._preopens:
                wasi.preopen_dir(
                    str(preopen.host_path), preopen.guest_path, fs_mutable=not preopen.read_only
                )
        except wasmtime.WasmtimeError as error:
            raise ExecutionError(f"cannot set up the task's files: {_causes(str(error))}") from None
        return wasi

    @staticmethod
    def _wasi_function(linker: wasmtime.Linker, store: wasmtime.Store, name: str) -> wasmtime.Func:
        function = linker.get(store, _WASI_MODULE, name)
        assert isinstance(function, wasmtime.Func), function
        return function

    def _report_to_stderr(self, message: str) -> None:
        """The guest's stderr gets wasmtime's full account (with the wasm backtrace), as the
        wasmtime CLI prints it; appended through a handle of our own, the guest having
        stopped writing."""
        with open(self._plan.stderr_path, "a", encoding="utf-8") as stderr:
            stderr.write(message if message.endswith("\n") else message + "\n")


def _initialize_reactor(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    initializer = instance.exports(store).get(_REACTOR_INITIALIZER)
    if isinstance(initializer, wasmtime.Func):
        initializer(store)


def _causes(message: str) -> str:
    """wasmtime's error chain on one line, without the backtrace: "a: b: c"."""
    head, _, causes = message.partition("\nCaused by:\n")
    lines = [] if head.startswith("error while executing at wasm backtrace") else [head]
    for line in causes.splitlines():
        number, separator, text = line.strip().partition(": ")
        lines.append(text if separator and number.isdigit() else line.strip())
    return ": ".join(line.strip() for line in lines if line.strip())


# --- compiled modules -------------------------------------------------------------------------


class _ModuleCache:
    """Compiled modules by content hash, in memory and on disk: see the module rules.
    Called from worker threads, concurrently."""

    def __init__(self, engine: wasmtime.Engine, cache_dir: Path, *, limit_bytes: int) -> None:
        self._engine = engine
        self._root = cache_dir
        self.folder = cache_dir / (
            f"wasmtime-{importlib.metadata.version('wasmtime')}-{platform.machine()}"
            f"-{_ENGINE_CONFIG_TAG}"
        )
        self._limit_bytes = limit_bytes
        self._in_memory: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self._lock = threading.Lock()

    def forget_in_memory(self) -> None:
        with self._lock:
            self._in_memory.clear()

    def artifact_path(self, module_sha256: str) -> Path:
        return self.folder / f"{module_sha256}.cwasm"

    def load(self, path: Path) -> wasmtime.Module:
        try:
            module_bytes = path.read_bytes()
        except OSError as error:
            raise ExecutionError(f"cannot read wasm module {path.name}: {error.strerror}") from None
        digest = hashlib.sha256(module_bytes).hexdigest()
        with self._lock:
            module = self._in_memory.get(digest)
            if module is not None:
                self._in_memory.move_to_end(digest)
                return module
        module = self._load_artifact(digest)
        if module is None:
            module = self._compile(path.name, module_bytes)
            self._store_artifact(digest, module)
        with self._lock:
            self._in_memory[digest] = module
            while len(self._in_memory) > _MEMORY_CACHE_MODULES:
                self._in_memory.popitem(last=False)
        return module

    def _compile(self, label: str, module_bytes: bytes) -> wasmtime.Module:
        try:
            return wasmtime.Module(self._engine, module_bytes)
        except wasmtime.WasmtimeError as error:
            raise ExecutionError(
                f"module {label} does not compile: {_causes(str(error))}"
            ) from None

    def _load_artifact(self, digest: str) -> wasmtime.Module | None:
        path = self.artifact_path(digest)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        artifact = content[_ARTIFACT_DIGEST_BYTES:]
        try:
            if hashlib.sha256(artifact).digest() != content[:_ARTIFACT_DIGEST_BYTES]:
                raise ValueError("its checksum does not match")
            module = wasmtime.Module.deserialize(self._engine, artifact)
        except (ValueError, wasmtime.WasmtimeError) as error:
            LOGGER.warning("wasm cache: deleting %s, which does not load: %s", path, error)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # the eviction order is by modification time
        return module

    def _store_artifact(self, digest: str, module: wasmtime.Module) -> None:
        """Best effort: a cache that cannot be written (disk full) costs a compile."""
        artifact = module.serialize()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=self.folder, suffix=".partial")
            with os.fdopen(descriptor, "wb") as file:
                file.write(hashlib.sha256(artifact).digest())
                file.write(artifact)
            os.replace(temporary, self.artifact_path(digest))
            self._evict(keep=self.artifact_path(digest))
        except OSError as error:
            LOGGER.warning("wasm cache: cannot store a compiled module: %s", error)

    def _evict(self, *, keep: Path) -> None:
        for sibling in self._root.glob("wasmtime-*"):
            if sibling != self.folder:  # built for another wasmtime or config: never loadable
                shutil.rmtree(sibling, ignore_errors=True)
        artifacts = []
        for path in self.folder.glob("*.cwasm"):
            with contextlib.suppress(FileNotFoundError):
                status = path.stat()
                artifacts.append((status.st_mtime, status.st_size, path))
        total_bytes = sum(size for _, size, _ in artifacts)
        for _, size, path in sorted(artifacts):
            if total_bytes <= self._limit_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total_bytes -= size
