"""The wasm engine with real wasmtime and real WASI modules (written in WAT, in
`wasm_modules.py`): outputs, exit codes, limits, timeouts, cancellation, the module cache.

Only the timeout and cancellation tests look at the clock, and each takes well under 3 s.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import pytest
import trio

from meshnode.engines.base import ExecutionError, Limits, Mount, RunOutcome, RunRequest
from meshnode.engines.wasm import WasmEngine
from meshnode.spec import InputSource, WasmParams
from tests.engines import wasm_modules as modules

MIB: Final = 1024 * 1024
PAGE_BYTES: Final = 64 * 1024
# How late a stop may come, beyond the time it was asked for (the module docs promise less).
STOP_SLACK_S: Final = 0.5


class Task:
    """One task's folder: where its request's files are, and how to read what it wrote."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.outputs = folder / "outputs"
        self.outputs.mkdir(parents=True)
        self.stdout = folder / "stdout"
        self.stderr = folder / "stderr"

    def request(
        self,
        module: Path,
        *,
        parameters: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        spec_env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        limits: Limits | None = None,
        entry_point: str = "_start",
        imports: Sequence[Path] = (),
        import_specs: Sequence[InputSource | str] = (),
    ) -> RunRequest:
        return RunRequest(
            execution_id=f"e-{self.folder.name}",
            job_id="j-1",
            params=WasmParams(
                entry_module=str(module),
                entry_point=entry_point,
                parameters=tuple(parameters),
                environment_variables=dict(spec_env or {}),
                import_modules=tuple(import_specs),
            ),
            env=dict(env or {}),
            mounts=tuple(mounts),
            outputs_dir=self.outputs,
            stdout_path=self.stdout,
            stderr_path=self.stderr,
            limits=limits or Limits(),
            module_path=module,
            import_module_paths=tuple(imports),
        )

    def read_stdout(self) -> str:
        return self.stdout.read_text()

    def read_stderr(self) -> str:
        return self.stderr.read_text()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[WasmEngine]:
    async with WasmEngine.open(cache_dir=tmp_path / "cache") as opened:
        yield opened


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return Task(tmp_path / "task")


@pytest.fixture
def wasm(tmp_path: Path) -> Callable[[str, str], Path]:
    """compile(name, wat) -> the .wasm file."""
    folder = tmp_path / "modules"
    folder.mkdir()
    return lambda name, wat: modules.compile_wat(folder, name, wat)


def guest_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("wasm ")]


# --- what the guest sees ----------------------------------------------------------------------


async def test_hello_world_prints_to_the_stdout_file_and_exits_0(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    outcome = await engine.run(task.request(wasm("hello", modules.hello())))
    assert outcome == RunOutcome(exit_code=0)
    assert outcome.succeeded
    assert task.read_stdout() == "hello, world\n"
    assert task.read_stderr() == ""


async def test_the_engine_is_embedded_so_always_available(engine: WasmEngine) -> None:
    assert await engine.is_available()


async def test_parameters_are_argv_after_the_program_name(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("echo", modules.echo_args(first=1))
    outcome = await engine.run(task.request(module, parameters=["one", "two words", "3"]))
    assert outcome == RunOutcome(exit_code=0)
    assert task.read_stdout() == "one two words 3\n"


async def test_argv0_is_the_module_file_name(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("echo-all", modules.echo_args(first=0))
    await engine.run(task.request(module, parameters=["x"]))
    assert task.read_stdout() == "echo-all.wasm x\n"


async def test_spec_environment_variables_win_over_the_task_env(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("env", modules.print_env("GREETING"))
    request = task.request(
        module,
        env={"GREETING": "from the task", "OTHER": "x"},
        spec_env={"GREETING": "from the spec"},
    )
    assert await engine.run(request) == RunOutcome(exit_code=0)
    assert task.read_stdout() == "from the spec\n"


async def test_task_env_reaches_the_guest(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("env", modules.print_env("GREETING"))
    assert await engine.run(task.request(module, env={"GREETING": "hi"})) == RunOutcome(0)
    assert task.read_stdout() == "hi\n"


async def test_reads_a_mounted_input_and_writes_to_outputs(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "in.txt").write_text("Hello, WASI 1!\nsecond line\n")
    module = wasm("upper", modules.upper_case_input_to_output())
    outcome = await engine.run(task.request(module, mounts=[Mount(inputs, "/inputs")]))
    assert outcome == RunOutcome(exit_code=0)
    assert (task.outputs / "out.txt").read_text() == "HELLO, WASI 1!\nSECOND LINE\n"


async def test_a_single_file_mount_appears_at_its_target(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """URL inputs are staged as single files: the guest finds them at the target path."""
    download = tmp_path / "download-0" / "data.bin"
    download.parent.mkdir()
    download.write_text("abc\n")
    module = wasm("upper", modules.upper_case_input_to_output())
    outcome = await engine.run(task.request(module, mounts=[Mount(download, "/inputs/in.txt")]))
    assert outcome == RunOutcome(exit_code=0)
    assert (task.outputs / "out.txt").read_text() == "ABC\n"
    assert download.read_text() == "abc\n"
    assert list((tmp_path / "cache" / "file-mounts").iterdir()) == []


async def test_a_read_only_mount_refuses_writes_and_the_host_file_is_unchanged(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "in.txt").write_text("original\n")
    module = wasm("write", modules.write_file(folder="/inputs"))
    mounts = [Mount(inputs, "/inputs", read_only=True)]

    truncate = await engine.run(task.request(module, parameters=["in.txt"], mounts=mounts))
    create = await engine.run(task.request(module, parameters=["new.txt"], mounts=mounts))

    assert truncate == RunOutcome(exit_code=modules.ERRNO_PERM)
    assert create == RunOutcome(exit_code=modules.ERRNO_PERM)
    assert (inputs / "in.txt").read_text() == "original\n"
    assert sorted(path.name for path in inputs.iterdir()) == ["in.txt"]


async def test_a_read_write_mount_takes_writes(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "in.txt").write_text("original\n")
    module = wasm("write", modules.write_file(folder="/results"))
    request = task.request(
        module, parameters=["in.txt"], mounts=[Mount(results, "/results", read_only=False)]
    )
    assert await engine.run(request) == RunOutcome(exit_code=0)
    assert (results / "in.txt").read_text() == "overwritten\n"


async def test_outputs_is_writable(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("write", modules.write_file(folder="/outputs", text="result"))
    assert await engine.run(task.request(module, parameters=["r.txt"])) == RunOutcome(0)
    assert (task.outputs / "r.txt").read_text() == "result\n"


async def test_a_mount_that_does_not_exist_is_an_execution_error(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    module = wasm("hello", modules.hello())
    request = task.request(module, mounts=[Mount(tmp_path / "nowhere", "/inputs")])
    with pytest.raises(ExecutionError, match=r"mount /inputs: .*nowhere does not exist"):
        await engine.run(request)


# --- how it ends ------------------------------------------------------------------------------


async def test_proc_exit_gives_the_exit_code(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    outcome = await engine.run(task.request(wasm("exit", modules.exit_code(42))))
    assert outcome == RunOutcome(exit_code=42)
    assert not outcome.succeeded
    assert task.read_stdout() == "exiting\n"


async def test_a_trap_has_no_exit_code_and_names_the_trap(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    outcome = await engine.run(task.request(wasm("trap", modules.trap_unreachable())))
    assert outcome.exit_code is None
    assert outcome.error == (
        "the module trapped (unreachable): wasm trap: wasm `unreachable` instruction executed"
    )
    assert task.read_stdout() == "before the trap\n"
    assert "wasm backtrace" in task.read_stderr()


async def test_a_missing_entry_point_lists_the_function_exports(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("hello", modules.hello())
    with pytest.raises(ExecutionError) as raised:
        await engine.run(task.request(module, entry_point="main"))
    assert str(raised.value).startswith(
        "module hello.wasm has no function export named 'main'; its function exports: _start"
    )


async def test_another_entry_point_can_be_called(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("lib", modules.library_answer())
    assert await engine.run(task.request(module, entry_point="_initialize")) == RunOutcome(0)


async def test_a_module_that_does_not_compile_is_an_execution_error(
    engine: WasmEngine, task: Task, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0\x01\xff")
    with pytest.raises(ExecutionError, match=r"^module broken.wasm does not compile: "):
        await engine.run(task.request(broken))


async def test_invalid_code_is_an_execution_error_with_the_reason(
    engine: WasmEngine, task: Task, tmp_path: Path
) -> None:
    invalid = tmp_path / "invalid.wat"
    invalid.write_text('(module (func (export "_start") (i32.add)))')
    with pytest.raises(ExecutionError, match=r"does not compile: .*type mismatch"):
        await engine.run(task.request(invalid))


async def test_an_unresolved_import_is_an_execution_error(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("main", modules.import_answer("lib"))
    with pytest.raises(ExecutionError, match=r"cannot be instantiated: unknown import: `lib::"):
        await engine.run(task.request(module))


# --- import modules ---------------------------------------------------------------------------


async def test_an_import_module_is_linked_under_its_file_stem(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    library = wasm("lib", modules.library_answer())
    module = wasm("main", modules.import_answer("lib"))
    request = task.request(module, imports=[library], import_specs=[str(library)])
    assert await engine.run(request) == RunOutcome(exit_code=42)


async def test_an_import_module_with_an_alias_is_linked_under_the_alias(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    library = wasm("import-0", modules.library_answer())  # as the runtime names downloads
    module = wasm("main", modules.import_answer("answers"))
    request = task.request(
        module, imports=[library], import_specs=[InputSource(target="/lib", alias="answers")]
    )
    assert await engine.run(request) == RunOutcome(exit_code=42)


# --- limits -----------------------------------------------------------------------------------


async def test_memory_stops_growing_at_the_limit_and_the_outcome_says_so(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("hog", modules.grow_memory_until_refused(then="exit"))
    outcome = await engine.run(task.request(module, limits=Limits(memory_bytes=MIB)))
    assert task.read_stdout() == f"{MIB // PAGE_BYTES}\n"
    assert outcome.exit_code == 3
    assert outcome.error == (
        f"memory limit reached: the module's memory is {MIB} bytes of the {MIB} allowed, "
        "and memory.grow fails beyond"
    )


async def test_a_trap_at_the_memory_limit_says_memory_was_the_limit(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("hog", modules.grow_memory_until_refused(then="trap"))
    outcome = await engine.run(task.request(module, limits=Limits(memory_bytes=2 * MIB)))
    assert outcome == RunOutcome(
        exit_code=None,
        error=f"memory limit reached: the module's memory is {2 * MIB} bytes of the {2 * MIB} "
        "allowed, and memory.grow fails beyond; "
        "the module trapped (unreachable): wasm trap: wasm `unreachable` instruction executed",
    )


async def test_a_big_allocation_refused_near_the_limit_probably_hit_the_limit(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    """As a C program's malloc of 1 MiB failing under 8 MiB: memory stops 15 pages short."""
    module = wasm("hog", modules.grow_memory_until_refused(then="exit", pages_per_grow=16))
    outcome = await engine.run(task.request(module, limits=Limits(memory_bytes=8 * MIB)))
    assert task.read_stdout() == "113\n"
    assert outcome == RunOutcome(
        exit_code=3,
        error=f"memory limit probably reached: the module's memory is {113 * PAGE_BYTES} bytes "
        f"of the {8 * MIB} allowed, and memory.grow fails beyond",
    )


async def test_a_failure_far_from_the_memory_limit_does_not_blame_memory(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("exit", modules.exit_code(42))
    outcome = await engine.run(task.request(module, limits=Limits(memory_bytes=8 * MIB)))
    assert outcome == RunOutcome(exit_code=42)


async def test_a_module_that_needs_more_memory_than_allowed_to_start(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("big", modules.large_initial_memory(pages=32))
    outcome = await engine.run(task.request(module, limits=Limits(memory_bytes=MIB)))
    assert outcome.exit_code is None
    assert outcome.error.startswith(
        f"memory limit reached: the module needs more than the {MIB} bytes allowed when it starts"
    )


async def test_without_a_memory_limit_memory_grows_to_the_wasm32_maximum(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    """Only when asked: 0 means no limit (memory is reserved, not touched: this is cheap)."""
    module = wasm("hog", modules.grow_memory_until_refused(then="exit"))
    outcome = await engine.run(task.request(module))
    assert task.read_stdout() == "65536\n"
    assert outcome == RunOutcome(exit_code=3)


async def test_a_busy_loop_is_stopped_at_the_timeout(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("spin", modules.busy_loop())
    started = time.monotonic()
    outcome = await engine.run(task.request(module, limits=Limits(timeout_s=0.3)))
    elapsed_s = time.monotonic() - started
    assert outcome == RunOutcome(exit_code=None, error="execution timed out after 0.3 s")
    assert 0.3 <= elapsed_s < 0.3 + STOP_SLACK_S, elapsed_s


@pytest.mark.parametrize("clock", modules.SLEEP_CLOCKS)
async def test_a_sleeping_guest_is_stopped_at_the_timeout(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], clock: modules.SleepClock
) -> None:
    module = wasm("sleeper", modules.sleep_then_print(sleep_s=60, clock=clock))
    started = time.monotonic()
    outcome = await engine.run(task.request(module, limits=Limits(timeout_s=0.3)))
    elapsed_s = time.monotonic() - started
    assert outcome == RunOutcome(exit_code=None, error="execution timed out after 0.3 s")
    assert elapsed_s < 0.3 + STOP_SLACK_S, elapsed_s
    assert task.read_stdout() == "sleeping\n"


@pytest.mark.parametrize("clock", modules.SLEEP_CLOCKS)
async def test_a_short_sleep_sleeps_and_reports_its_clock_event(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], clock: modules.SleepClock
) -> None:
    module = wasm("sleeper", modules.sleep_then_print(sleep_s=0.1, clock=clock))
    started = time.monotonic()
    outcome = await engine.run(task.request(module, limits=Limits(timeout_s=10)))
    assert time.monotonic() - started >= 0.09  # the realtime clock is coarser
    assert outcome == RunOutcome(exit_code=0)
    assert task.read_stdout() == "sleeping\nawake\n"


async def test_other_polls_are_served_by_wasmtime(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("poll", modules.poll_stdout_writable())
    assert await engine.run(task.request(module)) == RunOutcome(exit_code=0)


async def test_a_poll_that_wasmtime_refuses_fails_the_module(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("poll", modules.poll_stdout_writable(events_at=580))
    outcome = await engine.run(task.request(module))
    assert outcome.exit_code is None
    assert outcome.error.startswith("the module failed: "), outcome.error
    assert "not aligned" in outcome.error


# --- cancellation and concurrency -------------------------------------------------------------


async def test_cancelling_stops_a_busy_guest_raises_cancelled_and_leaves_no_thread(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    module = wasm("spin", modules.busy_loop())
    # Warm trio's thread cache: its idle workers outlive a run by design (10 s).
    await engine.run(Task(tmp_path / "warm-up").request(wasm("hello", modules.hello())))
    threads_before = threading.active_count()
    cancelled_after_s = math.inf
    with trio.move_on_after(0.2) as scope:
        started = time.monotonic()
        try:
            await engine.run(task.request(module))  # no timeout of its own
        except trio.Cancelled:
            cancelled_after_s = time.monotonic() - started
            raise
    assert scope.cancelled_caught
    assert 0.2 <= cancelled_after_s < 0.2 + 1, cancelled_after_s
    assert guest_threads() == []
    assert threading.active_count() <= threads_before


async def test_stdout_is_written_live_and_a_sleeping_guest_is_cancelled(
    engine: WasmEngine, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("sleeper", modules.sleep_then_print(sleep_s=60))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run, task.request(module))
        with trio.fail_after(2):
            while not (task.stdout.exists() and task.read_stdout() == "sleeping\n"):
                await trio.sleep(0.01)
        stopping_at = time.monotonic()
        nursery.cancel_scope.cancel()
    assert time.monotonic() - stopping_at < 1
    assert guest_threads() == []


async def test_four_runs_in_parallel_all_succeed(
    engine: WasmEngine, wasm: Callable[[str, str], Path], tmp_path: Path
) -> None:
    tasks = [Task(tmp_path / f"task-{index}") for index in range(4)]
    modules_by_task = [wasm(f"hello-{index}", modules.hello(f"hi {index}")) for index in range(4)]
    outcomes: dict[int, RunOutcome] = {}

    async def run(index: int) -> None:
        outcomes[index] = await engine.run(tasks[index].request(modules_by_task[index]))

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(run, index)
    assert outcomes == {index: RunOutcome(exit_code=0) for index in range(4)}
    assert [task.read_stdout() for task in tasks] == [f"hi {index}\n" for index in range(4)]


async def test_max_concurrent_bounds_the_runs_at_once(
    tmp_path: Path, wasm: Callable[[str, str], Path]
) -> None:
    module = wasm("sleeper", modules.sleep_then_print(sleep_s=0.15))
    started = time.monotonic()
    async with (
        WasmEngine.open(cache_dir=tmp_path / "cache", max_concurrent=1) as engine,
        trio.open_nursery() as nursery,
    ):
        for index in range(2):
            nursery.start_soon(engine.run, Task(tmp_path / f"task-{index}").request(module))
    assert time.monotonic() - started >= 0.3


async def test_a_closed_engine_refuses_runs(
    tmp_path: Path, task: Task, wasm: Callable[[str, str], Path]
) -> None:
    async with WasmEngine.open(cache_dir=tmp_path / "cache") as engine:
        pass
    assert not await engine.is_available()
    with pytest.raises(ExecutionError, match="closed"):
        await engine.run(task.request(wasm("hello", modules.hello())))


# --- the compiled module cache ----------------------------------------------------------------


def cached_artifact(cache_dir: Path, module: Path) -> Path:
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    found = list(cache_dir.glob(f"wasmtime-*/{digest}.cwasm"))
    assert len(found) == 1, found
    return found[0]


async def test_a_compiled_module_is_cached_under_its_content_hash_and_reused(
    tmp_path: Path, wasm: Callable[[str, str], Path]
) -> None:
    """The cache is keyed by content: put hello-A's artifact under hello-B's hash, and a
    new engine (nothing in memory) runs A's code for B. That is the cache being used."""
    cache_dir = tmp_path / "cache"
    module_a = wasm("a", modules.hello("from A"))
    module_b = wasm("b", modules.hello("from B"))
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        await engine.run(Task(tmp_path / "a").request(module_a))
        await engine.run(Task(tmp_path / "b").request(module_b))
    artifact_a = cached_artifact(cache_dir, module_a)
    artifact_b = cached_artifact(cache_dir, module_b)
    assert artifact_a.parent.name.startswith("wasmtime-50.0.1-")
    artifact_b.write_bytes(artifact_a.read_bytes())

    task = Task(tmp_path / "b-again")
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        assert await engine.run(task.request(module_b)) == RunOutcome(exit_code=0)
    assert task.read_stdout() == "from A\n"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "one bit flipped"])
async def test_a_damaged_cache_file_is_replaced_by_a_fresh_compile(
    tmp_path: Path, wasm: Callable[[str, str], Path], damage: str
) -> None:
    cache_dir = tmp_path / "cache"
    module = wasm("hello", modules.hello())
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        await engine.run(Task(tmp_path / "first").request(module))
    artifact = cached_artifact(cache_dir, module)
    good = artifact.read_bytes()
    if damage == "garbage":
        artifact.write_bytes(b"not a compiled module")
    elif damage == "truncated":
        artifact.write_bytes(good[: len(good) // 2])
    else:
        middle = len(good) // 2
        artifact.write_bytes(good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1 :])

    task = Task(tmp_path / "second")
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        assert await engine.run(task.request(module)) == RunOutcome(exit_code=0)
    assert task.read_stdout() == "hello, world\n"
    assert cached_artifact(cache_dir, module).read_bytes() == good


async def test_artifacts_of_another_wasmtime_version_are_deleted(
    tmp_path: Path, wasm: Callable[[str, str], Path]
) -> None:
    cache_dir = tmp_path / "cache"
    stale = cache_dir / "wasmtime-49.0.0-x86_64-epoch-v1"
    stale.mkdir(parents=True)
    (stale / "0000.cwasm").write_bytes(b"old")
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        await engine.run(Task(tmp_path / "t").request(wasm("hello", modules.hello())))
    assert not stale.exists()


async def test_the_disk_cache_keeps_to_its_byte_limit(
    tmp_path: Path, wasm: Callable[[str, str], Path]
) -> None:
    cache_dir = tmp_path / "cache"
    hellos = [wasm(f"h{index}", modules.hello(f"hello {index}")) for index in range(3)]
    async with WasmEngine.open(cache_dir=cache_dir, cache_limit_bytes=1) as engine:
        for index, module in enumerate(hellos):
            await engine.run(Task(tmp_path / f"t{index}").request(module))
    assert [path.name for path in cache_dir.glob("wasmtime-*/*.cwasm")] == [
        cached_artifact(cache_dir, hellos[-1]).name
    ]
