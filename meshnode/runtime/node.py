"""The running node: drives the sans-IO core with the real clock, SQLite, engines and HTTP.

Rules of this module:
- The core is touched only by `_step`, which is synchronous: it hands one event to the core,
  writes the `Persist` command to SQLite first, then acts on the other commands (start an
  execution task, cancel one, answer a request). No await inside a step, so steps never
  interleave.
- Every execution runs in its own task under its own cancel scope, a child of the node's
  nursery; stopping an execution is cancelling its scope (the engine stops the task).
- Crash recovery on start: executions the store says were running are re-attached when their
  container still runs (Docker) and reported lost otherwise (the core retries or restarts
  them as their job type says); meshnode containers nobody knows are removed.
- A graceful stop (SIGINT/SIGTERM) cancels everything and reports nothing more to the core:
  the next start finds those executions lost and handles them like a crash.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import trio
from msgspec.structs import replace

from meshnode import __version__
from meshnode.core.node import (
    Command,
    Event,
    ExecutionEnded,
    JobAccepted,
    NodeChanged,
    NodeCore,
    Persist,
    Recovered,
    Reply,
    StartExecution,
    StopExecution,
    StopJob,
    SubmitJob,
    Tick,
)
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.engines.base import Engine, ExecutionError
from meshnode.errors import MeshnodeError
from meshnode.runtime.config import NodeConfig
from meshnode.runtime.executor import SUPPORTED_PUBLISHERS, Executor
from meshnode.runtime.identity import load_or_create_identity
from meshnode.runtime.inputs import NOT_YET, InputPreparer
from meshnode.runtime.service import AgentInfo, SubmitResult
from meshnode.runtime.store import NotFoundError, Store
from meshnode.runtime.sysinfo import (
    ENGINE_LABEL_PREFIX,
    automatic_labels,
    detect_capacity,
    detect_gpus,
    engine_labels,
)
from meshnode.spec import Job

__all__ = ["Node", "run_node"]

LOGGER = logging.getLogger("meshnode.node")

SUPPORTED_INPUT_TYPES: Final = ("localDirectory", "urlDownload", "inline")
NOT_YET_FEATURES: Final = {
    "input source ipfs": NOT_YET,
    "input source s3": NOT_YET,
    "publisher ipfs": NOT_YET,
    "publisher s3": NOT_YET,
}
ENGINE_RECHECK_S: Final = 30.0
# A deadline in the past is re-checked no faster than this (guards against a busy loop).
MIN_TIMER_S: Final = 0.005


class Node:
    """One node; implements `runtime.service.NodeService` for the API."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        store: Store,
        node_info: NodeInfo,
        engines: Mapping[str, Engine],
        started_at: float,
    ) -> None:
        self._config = config
        self._store = store
        self._engines = dict(engines)
        self._started_at = started_at
        self._api_address = ""
        jobs, executions = store.live_state()
        self._core = NodeCore(
            node_info, rng=random.SystemRandom(), policy=config.policy, jobs=jobs,
            executions=executions,
        )  # fmt: skip
        self._executor = Executor(
            data_dir=config.data_dir,
            engines=self._engines,
            inputs=InputPreparer(
                allowed_local_paths=config.allowed_local_paths,
                max_download_bytes=config.max_download_bytes,
                download_timeout_s=config.download_timeout_s,
            ),
        )
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._replies: dict[str, Command] = {}
        self._timer_changed = trio.Event()
        self._stopping = False

    # --- NodeService ------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def node_info(self) -> NodeInfo:
        return self._core.node

    @property
    def agent(self) -> AgentInfo:
        return AgentInfo(
            version=__version__,
            started_at=self._started_at,
            api_address=self._api_address,
            data_dir=self._config.data_dir,
        )

    def used_resources(self) -> ResourceAmounts:
        return self._core.used_resources()

    async def submit(self, spec: Job) -> SubmitResult:
        request_id = uuid.uuid4().hex
        self._step(SubmitJob(request_id, spec))
        answer = self._replies.pop(request_id)
        assert isinstance(answer, JobAccepted), answer
        return SubmitResult(answer.job_id, answer.evaluation_id, answer.warnings)

    async def stop(self, job_id: str, reason: str) -> str:
        job = self._store.job(job_id)  # NotFoundError for an unknown id
        if job.state.terminal:
            return f"job {job.id} had already ended ({job.state.value})"
        request_id = uuid.uuid4().hex
        self._step(StopJob(request_id, job.id, reason))
        answer = self._replies.pop(request_id)
        assert isinstance(answer, Reply), answer
        if not answer.ok:
            raise NotFoundError(answer.message)
        return answer.message

    def execution_dir(self, execution_id: str) -> Path:
        return self._executor.execution_dir(execution_id)

    def is_execution_live(self, execution_id: str) -> bool:
        execution = self._core.execution(execution_id)
        return execution is not None and execution.active

    # --- running ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        api_host: str,
        api_port: int,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from meshnode.runtime.api import create_app, serve_api

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._recover()
            nursery.start_soon(self._timer)
            if "docker" in self._known_engines():
                nursery.start_soon(self._watch_engines)
            app = create_app(self, max_request_bytes=self._config.max_request_bytes)
            host, port = await nursery.start(serve_api, app, api_host, api_port)
            self._api_address = f"{host}:{port}"
            task_status.started(self._api_address)

    async def _recover(self) -> None:
        running = [e for e in self._live_executions() if e.started_at is not None and e.active]
        containers: dict[str, str] = {}
        docker = self._engines.get("docker")
        if docker is not None:
            try:
                containers = await docker.running_executions()  # type: ignore[attr-defined]
                await docker.remove_orphans({e.id for e in running})  # type: ignore[attr-defined]
            except MeshnodeError as error:
                LOGGER.warning("could not list containers after restart: %s", error)
        lost = []
        for execution in running:
            job = self._core.job(execution.job_id)
            if execution.id in containers and job is not None:
                LOGGER.info("re-attaching to execution %s", execution.id)
                self._start_task(execution, job, reattach=True)
            else:
                lost.append(execution.id)
        self._step(Recovered(lost=tuple(lost)))

    def _live_executions(self) -> list[ExecutionRecord]:
        return [
            execution
            for job_id in self._core.live_job_ids
            for execution in self._core.executions_of(job_id)
        ]

    def _known_engines(self) -> list[str]:
        return sorted(self._engines)

    async def _timer(self) -> None:
        while True:
            deadline = self._core.next_deadline()
            wait_s = math.inf if deadline is None else max(MIN_TIMER_S, deadline - time.time())
            self._timer_changed = trio.Event()
            with trio.move_on_after(wait_s):
                await self._timer_changed.wait()
            if deadline is not None and time.time() >= deadline:
                self._step(Tick())

    async def _watch_engines(self) -> None:
        """Docker may start or stop while the node runs: advertise what works now."""
        while True:
            await trio.sleep(ENGINE_RECHECK_S)
            # Only the engines change at run time: labels and capacity stay as detected.
            available, unavailable = await usable_engines(self._engines)
            current = self._core.node
            if tuple(available) != current.engines:
                LOGGER.info("engines now: %s", ", ".join(available) or "none")
                labels = {
                    k: v for k, v in current.labels.items() if not k.startswith(ENGINE_LABEL_PREFIX)
                }
                labels.update(engine_labels(available))
                labels.update(self._config.labels)
                changed = replace(
                    current, engines=tuple(available), labels=labels, unavailable=unavailable
                )
                self._step(NodeChanged(changed))

    # --- the step -------------------------------------------------------------------------

    def _step(self, event: Event) -> None:
        commands = self._core.handle(event, time.time())
        for command in commands:
            match command:
                case Persist():
                    self._store.apply(command)
                case JobAccepted() | Reply():
                    self._replies[command.request_id] = command
                case StartExecution():
                    self._start_task(command.execution, command.job, reattach=False)
                case StopExecution():
                    scope = self._scopes.get(command.execution_id)
                    if scope is not None:
                        scope.cancel()
        self._timer_changed.set()

    def _start_task(self, execution: ExecutionRecord, job: JobRecord, *, reattach: bool) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._scopes[execution.id] = scope
        self._nursery.start_soon(self._execute, execution, job, scope, reattach)

    async def _execute(
        self, execution: ExecutionRecord, job: JobRecord, scope: trio.CancelScope, reattach: bool
    ) -> None:
        exit_code: int | None = None
        error = ""
        try:
            with scope:
                if reattach:
                    outcome = await self._executor.reattach(execution, job)
                else:
                    outcome = await self._executor.run(execution, job)
                exit_code, error = outcome.exit_code, outcome.error
            if scope.cancelled_caught:
                error = "stopped"
        except ExecutionError as failure:
            error = str(failure)
        except Exception:
            LOGGER.exception("execution %s failed unexpectedly", execution.id)
            error = "meshnode failed while running it (see the node's log)"
        finally:
            self._scopes.pop(execution.id, None)
        if not self._stopping:
            self._step(ExecutionEnded(execution.id, exit_code, error))

    def shutting_down(self) -> None:
        self._stopping = True


async def usable_engines(engines: Mapping[str, Engine]) -> tuple[list[str], dict[str, str]]:
    """Engines that can run tasks now, and why each other feature is unavailable."""
    available = []
    unavailable = dict(NOT_YET_FEATURES)
    for name, engine in sorted(engines.items()):
        if await engine.is_available():
            available.append(name)
        else:
            unavailable[f"engine {name}"] = f"{name} is not running on this node"
    if "docker" not in engines:
        unavailable["engine docker"] = "Docker is turned off on this node (--no-docker)"
    return available, unavailable


async def node_info_for(
    node_id: str, config: NodeConfig, engines: Mapping[str, Engine]
) -> NodeInfo:
    available, unavailable = await usable_engines(engines)
    gpus = detect_gpus()
    labels = automatic_labels(available, gpus)
    labels.update(config.labels)
    capacity = detect_capacity(config.data_dir, gpus)
    capacity = ResourceAmounts(
        cpu_millicores=_limit(capacity.cpu_millicores, config.limit_cpu_millicores),
        memory_bytes=_limit(capacity.memory_bytes, config.limit_memory_bytes),
        disk_bytes=_limit(capacity.disk_bytes, config.limit_disk_bytes),
        gpu_count=_limit(capacity.gpu_count, config.limit_gpu_count),
    )
    return NodeInfo(
        id=node_id,
        labels=labels,
        capacity=capacity,
        engines=tuple(available),
        input_types=SUPPORTED_INPUT_TYPES,
        publishers=SUPPORTED_PUBLISHERS,
        allowed_local_paths=config.allowed_local_paths,
        unavailable=unavailable,
    )


def _limit(detected: int, limit: int | None) -> int:
    return detected if limit is None else limit


async def _serve(config: NodeConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create_identity(config.data_dir)
    store = Store(config.data_dir / "state.db")
    async with AsyncExitStack() as stack:
        stack.callback(store.close)
        engines = await stack.enter_async_context(_open_engines(config, identity.peer_id))
        info = await node_info_for(identity.peer_id, config, engines)
        node = Node(config, store=store, node_info=info, engines=engines, started_at=time.time())
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: node.run(
                    api_host=config.api_host, api_port=config.api_port, task_status=task_status
                )
            )
            print(f"meshnode node {identity.peer_id} API on http://{address}", flush=True)
            engines_text = ", ".join(info.engines) or "none"
            LOGGER.info("engines: %s; data dir %s", engines_text, config.data_dir)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for received in signals:
                    LOGGER.info("stopping on %s", signal.Signals(received).name)
                    node.shutting_down()
                    nursery.cancel_scope.cancel()
                    break


def _open_engines(config: NodeConfig, node_id: str):  # type: ignore[no-untyped-def]
    from meshnode.runtime.engines import open_engines  # imports wasmtime: only when starting

    return open_engines(config, node_id)


def run_node(config: NodeConfig) -> None:
    """`meshnode start`: run until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hypercorn.error", "hypercorn.access", "httpx", "docker", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    trio.run(_serve, config)
