"""kill -9 a node while jobs run and wait: after a restart the state is consistent, nothing
acknowledged is lost, and executions that died with the node are retried."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import wasmtime

from tests.integration.nodeproc import NodeProcess

BUSY_LOOP = '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'
HELLO = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def wasm_job(
    wat: str, *, cpu: str, timeout_s: int = 0, meta: dict[str, str] | None = None
) -> dict[str, Any]:
    module = base64.b64encode(wasmtime.wat2wasm(wat)).decode()
    task: dict[str, Any] = {
        "Engine": {
            "Type": "wasm",
            "Params": {
                "EntryModule": {
                    "Source": {
                        "Type": "inline",
                        "Params": {"URL": f"data:application/wasm;base64,{module}"},
                    }
                }
            },
        },
        "Resources": {"CPU": cpu, "Memory": "16Mb"},
    }
    if timeout_s:
        task["Timeouts"] = {"ExecutionTimeout": timeout_s}
    return {"Type": "batch", "Meta": meta or {}, "Tasks": [task]}


def test_kill_9_while_running_then_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    # Room for one execution at a time: the second job is acknowledged but waits.
    node = NodeProcess(data_dir, "--no-docker", "--limit-cpu", "1").start()
    port = node.port
    busy = node.submit(
        wasm_job(BUSY_LOOP, cpu="1", timeout_s=2, meta={"meshnode.io/max-retries": "1"})
    )
    node.wait_for(busy, ("Running",))
    waiting = node.submit(wasm_job(HELLO, cpu="1"))
    assert node.executions(waiting)[0]["ComputeState"]["StateType"] == 5  # placed, waiting

    node.kill()
    node = NodeProcess(data_dir, "--no-docker", "--limit-cpu", "1", port=port).start()

    finished = node.wait_for(waiting, timeout_s=30)
    assert finished["State"]["StateType"] == "Completed"
    failed = node.wait_for(busy, timeout_s=30)
    assert failed["State"]["StateType"] == "Failed"
    executions = sorted(node.executions(busy), key=lambda e: e["CreateTime"])
    assert len(executions) == 2  # the one lost in the crash, and its retry
    lost, retry = executions
    assert lost["ComputeState"]["StateType"] == 8
    assert "restarted" in lost["ComputeState"]["Message"]
    assert retry["ComputeState"]["StateType"] == 8
    assert "timed out" in retry["ComputeState"]["Message"]
    assert node.stop() == 0
