"""Running one execution on this node: inputs in, engine, results out.

Rules of this module:
- Each execution owns `executions/<id>/` in the data directory: `stdout` and `stderr` (written
  live by the engine), `exitCode` (written when it ends), and one folder per ResultPath
  (`outputs/` for `/outputs`). That folder is the `local` publisher's result, served by the API.
- Inputs and modules are staged in `work/<id>/`, removed when the run ends, whatever happens.
- Operating errors (an input that cannot be fetched, an engine missing, an image missing)
  become a failed outcome whose error is also appended to `stderr`, so `job logs` shows it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import trio

from meshnode.core.records import ExecutionRecord, JobRecord
from meshnode.engines.base import (
    Engine,
    ExecutionError,
    Limits,
    Mount,
    RunOutcome,
    RunRequest,
)
from meshnode.runtime.inputs import NOT_YET, InputPreparer
from meshnode.spec import DockerParams, NetworkSpec, WasmParams

__all__ = ["OUTPUTS_TARGET", "Executor"]

OUTPUTS_TARGET: Final = "/outputs"
SUPPORTED_PUBLISHERS: Final = ("local", "noop")


_EXECUTION_ID: Final = re.compile(r"e-[0-9a-f-]{1,64}")


class Executor:
    def __init__(
        self, *, data_dir: Path, engines: Mapping[str, Engine], inputs: InputPreparer
    ) -> None:
        self._executions_root = data_dir / "executions"
        self._work_root = data_dir / "work"
        self._engines = engines
        self._inputs = inputs

    def execution_dir(self, execution_id: str) -> Path:
        # Ids come from URLs too: only an id's shape may name a folder (no `..`, no `/`).
        if not _EXECUTION_ID.fullmatch(execution_id):
            return self._executions_root / "not-an-execution-id"
        return self._executions_root / execution_id

    async def run(self, execution: ExecutionRecord, job: JobRecord) -> RunOutcome:
        """Prepare, run and collect; cancellable (the engine stops the task)."""
        directory = self.execution_dir(execution.id)
        staging = self._work_root / execution.id
        await trio.to_thread.run_sync(self._make_folders, directory, staging)
        outcome: RunOutcome | None = None
        try:
            request = await self._request(execution, job, directory, staging)
            outcome = await self._engine(job).run(request)
        except ExecutionError as error:
            outcome = RunOutcome(exit_code=None, error=str(error))
            await _append(directory / "stderr", f"meshnode: {error}\n")
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, staging, True)
                if outcome is not None:
                    await _write_exit_code(directory, outcome)
        return outcome

    async def reattach(self, execution: ExecutionRecord, job: JobRecord) -> RunOutcome:
        """Wait for a task that outlived a crash of this node (Docker only) and collect it."""
        engine = self._engine(job)
        reattach = getattr(engine, "reattach", None)
        if reattach is None:
            raise ExecutionError(f"engine {engine.name} cannot re-attach to a running task")
        directory = self.execution_dir(execution.id)
        request = await self._request(execution, job, directory, self._work_root / execution.id)
        outcome: RunOutcome = await reattach(execution.id, request)
        await _write_exit_code(directory, outcome)
        return outcome

    def _engine(self, job: JobRecord) -> Engine:
        task = job.spec.task
        name = task.engine.type if task.engine is not None else ""
        engine = self._engines.get(name)
        if engine is None:
            raise ExecutionError(f"engine {name} is not available on this node")
        return engine

    @staticmethod
    def _make_folders(directory: Path, staging: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        for name in ("stdout", "stderr"):
            (directory / name).touch()

    async def _request(
        self, execution: ExecutionRecord, job: JobRecord, directory: Path, staging: Path
    ) -> RunRequest:
        task = job.spec.task
        if task.engine is None or not isinstance(task.engine.params, DockerParams | WasmParams):
            raise ExecutionError("the task has no engine")
        if task.publisher is not None and task.publisher.type not in SUPPORTED_PUBLISHERS:
            raise ExecutionError(f"publisher {task.publisher.type} {NOT_YET}")
        mounts: list[Mount] = []
        for index, source in enumerate(task.input_sources):
            folder = staging / f"input-{index}"
            await trio.Path(folder).mkdir(exist_ok=True)
            mounts.append(await self._inputs.mount(source, folder))
        outputs_dir = directory / "outputs"
        for result in task.result_paths:
            host = directory / result.name
            if result.path.rstrip("/") == OUTPUTS_TARGET:
                outputs_dir = host
            else:
                mounts.append(Mount(host, result.path, read_only=False))
            await trio.Path(host).mkdir(exist_ok=True)
        await trio.Path(outputs_dir).mkdir(exist_ok=True)
        params = task.engine.params
        module_path = None
        import_paths: list[Path] = []
        if isinstance(params, WasmParams):
            if params.entry_module is None:
                raise ExecutionError("the wasm task has no EntryModule")
            module_path = await self._inputs.module(params.entry_module, staging, "entry")
            for index, module in enumerate(params.import_modules):
                import_paths.append(await self._inputs.module(module, staging, f"import-{index}"))
        timeouts = task.timeouts
        return RunRequest(
            execution_id=execution.id,
            job_id=job.id,
            params=params,
            env=dict(task.env),
            mounts=mounts,
            outputs_dir=outputs_dir,
            stdout_path=directory / "stdout",
            stderr_path=directory / "stderr",
            limits=Limits(
                cpu_millicores=execution.resources.cpu_millicores,
                memory_bytes=execution.resources.memory_bytes,
                disk_bytes=execution.resources.disk_bytes,
                gpu_count=execution.resources.gpu_count,
                timeout_s=float(timeouts.execution_timeout)
                if timeouts and timeouts.execution_timeout
                else None,
            ),
            network=task.network or NetworkSpec(type="None"),
            module_path=module_path,
            import_module_paths=import_paths,
            labels={"meshnode.node-id": execution.node_id},
        )


async def _append(path: Path, text: str) -> None:
    async with await trio.open_file(path, "a") as file:
        await file.write(text)


async def _write_exit_code(directory: Path, outcome: RunOutcome) -> None:
    code = "" if outcome.exit_code is None else str(outcome.exit_code)
    await trio.Path(directory / "exitCode").write_text(code + "\n")
