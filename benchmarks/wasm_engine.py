"""Per-run cost of the wasm engine, beside raw wasmtime in the same process and run.

Usage: .venv/bin/python benchmarks/wasm_engine.py [--runs N]

Runs a WASI hello-world module (it prints one line) N times each way and prints the median
and 90th percentile wall time of one run:
- raw wasmtime (the floor): the module compiled once and one Linker with WASI; each run
  makes a Store and a WasiConfig (argv, stdout/stderr files, /outputs preopened),
  instantiates and calls `_start`, all on the calling thread;
- `WasmEngine.run()`, awaited from trio: the same work plus what the engine adds (a worker
  thread, hashing the module file for the compiled-module cache, a Linker per run with the
  interruptible sleep, the stop callback, file checks, the outcome);
- `WasmEngine.run()` with a cold in-memory cache: each run is a new engine, so the module
  comes from the disk cache (`.cwasm`), as after a node restart.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
import wasmtime

from meshnode.engines.base import RunRequest
from meshnode.engines.wasm import WasmEngine
from meshnode.spec import WasmParams

HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello, world\\0a")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def summary(name: str, times_ms: list[float]) -> str:
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{name:44} {statistics.median(ordered):10.3f} {p90:8.3f}"


def raw_wasmtime_times_ms(module_path: Path, folder: Path, runs: int) -> list[float]:
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, str(module_path))
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    outputs = folder / "outputs"
    outputs.mkdir()

    def run_once() -> None:
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [module_path.name]
        wasi.stdout_file = str(folder / "stdout")
        wasi.stderr_file = str(folder / "stderr")
        wasi.preopen_dir(str(outputs), "/outputs")
        store.set_wasi(wasi)
        start = linker.instantiate(store, module).exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)

    return timed_ms(run_once, runs)


def timed_ms(work: Callable[[], None], runs: int) -> list[float]:
    work()  # warm up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return times


def request_for(module_path: Path, folder: Path) -> RunRequest:
    outputs = folder / "outputs"
    outputs.mkdir(exist_ok=True)
    return RunRequest(
        execution_id="bench",
        job_id="bench",
        params=WasmParams(entry_point="_start"),
        env={},
        mounts=(),
        outputs_dir=outputs,
        stdout_path=folder / "stdout",
        stderr_path=folder / "stderr",
        module_path=module_path,
    )


async def engine_times_ms(module_path: Path, folder: Path, runs: int, *, warm: bool) -> list[float]:
    request = request_for(module_path, folder)
    cache_dir = folder / "cache"
    times = []
    async with WasmEngine.open(cache_dir=cache_dir) as engine:
        await engine.run(request)  # compiles and fills both caches
        for _ in range(runs):
            if warm:
                started = time.perf_counter()
                outcome = await engine.run(request)
            else:
                cold = WasmEngine(cache_dir=cache_dir)  # nothing in memory
                started = time.perf_counter()
                outcome = await cold.run(request)
            times.append((time.perf_counter() - started) * 1000)
            assert outcome.succeeded, outcome
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        module_path = folder / "hello.wasm"
        module_path.write_bytes(wasmtime.wat2wasm(HELLO_WAT))
        raw_folder, warm_folder, cold_folder = (folder / name for name in ("raw", "warm", "cold"))
        for sub in (raw_folder, warm_folder, cold_folder):
            sub.mkdir()
        raw = raw_wasmtime_times_ms(module_path, raw_folder, runs)
        warm = trio.run(
            functools.partial(engine_times_ms, warm=True), module_path, warm_folder, runs
        )
        cold = trio.run(
            functools.partial(engine_times_ms, warm=False), module_path, cold_folder, runs
        )
    print(f"{'hello world, one run':44} {'median ms':>10} {'p90 ms':>8}   ({runs} runs each)")
    print(summary("raw wasmtime (baseline)", raw))
    print(summary("WasmEngine.run()", warm))
    print(summary("WasmEngine.run(), module from the disk cache", cold))
    print(f"engine overhead (median): {statistics.median(warm) - statistics.median(raw):.3f} ms")


if __name__ == "__main__":
    main()
