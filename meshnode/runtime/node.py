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
- A graceful stop (SIGINT/SIGTERM) tells the mesh the node leaves, then cancels everything
  and reports nothing more to the core: the next start finds those executions lost and
  handles them like a crash.
- The mesh: a libp2p host (`transport.MeshTransport`) carries the core's messages (frames in,
  `Send`/`Publish` out) and the API's forwarded queries (`forwarding`). Requests from the API
  (submit, stop, approve) are events whose answers arrive as commands, possibly steps later
  (after the job's requester on another node answered): each waits on its own `_Waiter`.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
import trio
from msgspec.structs import replace

from meshnode import __version__
from meshnode.core.compute import ComputeParams
from meshnode.core.messages import Ack, Announce, Ping, PingReq, PushPull, encode
from meshnode.core.node import (
    ApproveNode,
    BidProbeDone,
    Command,
    CoreParams,
    Event,
    ExecutionEnded,
    GossipReceived,
    JobAccepted,
    Leave,
    MessageReceived,
    NodeChanged,
    NodeCore,
    PeerDiscovered,
    Persist,
    Publish,
    Recovered,
    Reply,
    RunBidProbe,
    Send,
    StartExecution,
    StopExecution,
    StopJob,
    SubmitJob,
    Tick,
)
from meshnode.core.records import ExecutionRecord, JobRecord, NodeInfo
from meshnode.core.requester import RequesterParams
from meshnode.core.resources import ResourceAmounts
from meshnode.engines.base import Engine, ExecutionError
from meshnode.errors import MeshnodeError
from meshnode.runtime.config import NodeConfig
from meshnode.runtime.executor import SUPPORTED_PUBLISHERS, Executor
from meshnode.runtime.forwarding import (
    PROXY_FRAME,
    ApiForwarder,
    ForwardError,
    MeshRouter,
    RouteDecision,
)
from meshnode.runtime.identity import Identity, load_or_create_identity
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

if TYPE_CHECKING:
    from meshnode.runtime.transport import MeshTransport

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
# How long an API request waits for the mesh's answer (the job's requester may be elsewhere).
REQUEST_TIMEOUT_S: Final = 20.0
BID_PROBE_TIMEOUT_S: Final = 10.0
# After a restart with peers to find, role decisions wait this long for the mesh view.
SETTLE_S: Final = 3.0
LEAVE_GRACE_S: Final = 0.3
MEMBERSHIP_MESSAGES: Final = (Ping, Ack, PingReq, PushPull, Announce)
# A deadline in the past is re-checked no faster than this (guards against a busy loop).
MIN_TIMER_S: Final = 0.005


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    answer: Command | None = None


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
        identity: Identity | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._engines = dict(engines)
        self._started_at = started_at
        self._identity = identity
        self._api_address = ""
        jobs, executions = store.live_state()
        params = CoreParams(
            requester=RequesterParams(
                replicas=config.replicas, require_approval=config.require_approval
            ),
            compute=ComputeParams(accept_networked=config.accept_networked_jobs),
            bid_probe=config.bid_probe_exec is not None,
            settle_s=SETTLE_S if config.peers else 0.0,
        )
        self._core = NodeCore(
            node_info, rng=random.SystemRandom(), policy=config.policy, jobs=jobs,
            executions=executions, runs=store.runs(), approvals=store.approvals(),
            params=params, version=__version__, now=time.time(),
        )  # fmt: skip
        self._transport: MeshTransport | None = None
        self.forwarder = ApiForwarder(self._send_frame, lambda: self._api_address)
        self._waiters: dict[str, _Waiter] = {}
        self._bytes_sent: dict[str, int] = {}
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
        answer = await self._request(lambda request_id: SubmitJob(request_id, spec))
        if isinstance(answer, Reply):
            raise MeshnodeError(f"the job was not accepted: {answer.message}")
        assert isinstance(answer, JobAccepted), answer
        return SubmitResult(answer.job_id, answer.evaluation_id, answer.warnings)

    async def stop(self, job_id: str, reason: str) -> str:
        try:
            job = self._store.job(job_id)
        except NotFoundError:
            if not _is_full_job_id(job_id):
                raise
        else:
            held = self._core.job(job.id)
            if job.state.terminal and held is None:
                return f"job {job.id} had already ended ({job.state.value})"
            job_id = job.id
        answer = await self._request(lambda request_id: StopJob(request_id, job_id, reason))
        assert isinstance(answer, Reply), answer
        if not answer.ok:
            raise NotFoundError(answer.message)
        return answer.message

    async def decide_approval(self, node_id: str, decision: str) -> str:
        matches = [m.id for m in self._core.members() if m.id.startswith(node_id)]
        if self._core.node_id.startswith(node_id):
            matches.append(self._core.node_id)
        if len(matches) == 1:
            node_id = matches[0]
        answer = await self._request(lambda request_id: ApproveNode(request_id, node_id, decision))
        assert isinstance(answer, Reply), answer
        if not answer.ok:
            raise NotFoundError(answer.message)
        return answer.message

    async def _request(self, make: Callable[[str], Event]) -> Command:
        request_id = uuid.uuid4().hex
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            self._step(make(request_id))
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await waiter.event.wait()
        finally:
            self._waiters.pop(request_id, None)
        if waiter.answer is None:
            raise MeshnodeError(
                f"the mesh did not answer within {REQUEST_TIMEOUT_S:g} s; try again"
            )
        return waiter.answer

    # --- the mesh ---------------------------------------------------------------------------

    @property
    def core(self) -> NodeCore:
        return self._core

    def listen_addrs(self) -> list[str]:
        return self._transport.listen_addrs() if self._transport else []

    def connected_peers(self) -> list[str]:
        return self._transport.connected_peers() if self._transport else []

    def mesh_stats(self) -> dict[str, int]:
        stats = dict(self._core.stats)
        stats.update({f"membership_{k}": v for k, v in self._core.membership.stats.items()})
        stats.update({f"requester_{k}": v for k, v in self._core.requester.stats.items()})
        stats.update({f"compute_{k}": v for k, v in self._core.compute.stats.items()})
        stats.update({f"forwarding_{k}": v for k, v in self.forwarder.stats.items()})
        stats.update({f"bytes_sent_{k}": v for k, v in self._bytes_sent.items()})
        if self._transport is not None:
            stats.update({f"transport_{k}": v for k, v in self._transport.stats.items()})
        return stats

    def route_job(self, job_ref: str) -> RouteDecision:
        """Where questions about a job are answered: here when this node holds the job
        (primary or replica: a replica has every change a majority acknowledged, so its
        answer lags the primary's by at most the change in flight) or its final record;
        otherwise its primary requester."""
        try:
            job = self._store.job(job_ref)
        except MeshnodeError:
            primary = self._core.primary_of(job_ref) if _is_full_job_id(job_ref) else None
            if primary and primary != self._core.node_id:
                return RouteDecision(peer=primary)
            return RouteDecision(search=True)
        if job.id in self._core.requester.held:
            return RouteDecision()
        if job.state.terminal and self._core.job(job.id) is None:
            return RouteDecision()  # a final record does not change any more
        primary = self._core.primary_of(job.id)
        if primary and primary != self._core.node_id:
            return RouteDecision(peer=primary)
        return RouteDecision()

    def route_execution(self, node_id: str) -> RouteDecision:
        if node_id == self._core.node_id or not self._core.membership.is_reachable(node_id):
            return RouteDecision()
        return RouteDecision(peer=node_id)

    def reachable_peers(self) -> list[str]:
        own = self._core.node_id
        return [n for n in self._core.membership.reachable_ids() if n != own]

    async def remote_logs(
        self, node_id: str, execution_id: str, *, follow: bool
    ) -> AsyncIterator[bytes]:
        target = f"/api/v1/executions/{execution_id}/logs?follow={'true' if follow else 'false'}"
        try:
            status, _, chunks = await self.forwarder.request(node_id, "GET", target, [], b"")
        except ForwardError as error:
            LOGGER.info("logs of %s from node %s: %s", execution_id, node_id, error)
            return
        if status != 200:
            async for _ in chunks:
                pass
            return
        partial = b""
        try:
            async for chunk in chunks:
                partial += chunk
                lines, _, partial = partial.rpartition(b"\n")
                if lines:
                    yield lines + b"\n"
        except ForwardError as error:
            LOGGER.info("logs of %s from node %s ended: %s", execution_id, node_id, error)

    def _send_frame(self, peer: str, frame: bytes) -> None:
        if self._transport is not None:
            self._transport.send(peer, frame, self._core.membership.addrs_of(peer))

    def _on_frame(self, sender: str, frame: bytes) -> None:
        if frame[:1] == PROXY_FRAME:
            self.forwarder.on_frame(sender, frame[1:])
        else:
            self._step(MessageReceived(sender, frame))

    def _on_gossip(self, sender: str, frame: bytes) -> None:
        self._step(GossipReceived(sender, frame))

    def _on_peer_connected(self, peer_id: str) -> None:
        if not self._core.membership.is_reachable(peer_id):
            self._step(PeerDiscovered(peer_id, ()))

    def execution_dir(self, execution_id: str) -> Path:
        return self._executor.execution_dir(execution_id)

    def is_execution_live(self, execution_id: str) -> bool:
        return self._core.compute.is_live(execution_id)

    # --- running ------------------------------------------------------------------------------

    async def run(
        self,
        *,
        api_host: str,
        api_port: int,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from meshnode.runtime.api import create_app, serve_api
        from meshnode.runtime.transport import MeshTransport

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._identity is not None:
                self._transport = MeshTransport(
                    self._identity.seed,
                    self._config.transport_config(),
                    on_message=self._on_frame,
                    on_gossip=self._on_gossip,
                    on_peer_connected=self._on_peer_connected,
                )
                await nursery.start(self._transport.run)
            await nursery.start(self.forwarder.run)
            await self._recover()
            nursery.start_soon(self._timer)
            if "docker" in self._known_engines():
                nursery.start_soon(self._watch_engines)
            app = create_app(self, max_request_bytes=self._config.max_request_bytes)
            host, port = await nursery.start(serve_api, MeshRouter(app, self), api_host, api_port)
            self._api_address = f"{host}:{port}"
            self._core.set_address(tuple(self.listen_addrs()), self._api_address, time.time())
            for peer in self._config.peers:
                peer_id = peer.rsplit("/p2p/", 1)[-1] if "/p2p/" in peer else ""
                if peer_id:
                    self._step(PeerDiscovered(peer_id, (peer,)))
            self._step(Tick())
            task_status.started(self._api_address)

    def leave(self) -> None:
        """Tell the mesh this node is going (a graceful stop)."""
        self._step(Leave())

    async def _recover(self) -> None:
        running = [run.execution for run in self._core.runs if run.phase == "running"]
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
            run = self._core.run(execution.id)
            job = self._core.compute.job_of(run) if run is not None else None
            if execution.id in containers and job is not None:
                LOGGER.info("re-attaching to execution %s", execution.id)
                self._start_task(execution, job, reattach=True)
            else:
                lost.append(execution.id)
        self._step(Recovered(lost=tuple(lost)))

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
                case Send():
                    if self._transport is not None:
                        frame = encode(command.message)
                        self._count_bytes(command.message, len(frame))
                        self._transport.send(command.to, frame, command.addrs)
                case Publish():
                    if self._transport is not None:
                        frame = encode(command.message)
                        self._count_bytes(command.message, len(frame))
                        self._transport.publish(frame)
                case JobAccepted() | Reply():
                    waiter = self._waiters.get(command.request_id)
                    if waiter is not None:
                        waiter.answer = command
                        waiter.event.set()
                case StartExecution():
                    self._start_task(command.execution, command.job, reattach=False)
                case StopExecution():
                    scope = self._scopes.get(command.execution_id)
                    if scope is not None:
                        scope.cancel()
                case RunBidProbe():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._bid_probe, command)
        self._timer_changed.set()

    def _count_bytes(self, message: object, size: int) -> None:
        """Bytes sent, by kind: what `benchmarks/mesh_jobs.py` reports per node."""
        kind = "membership" if isinstance(message, MEMBERSHIP_MESSAGES) else "jobs"
        self._bytes_sent[kind] = self._bytes_sent.get(kind, 0) + size

    async def _bid_probe(self, command: RunBidProbe) -> None:
        """The operator's bid probe: the job as JSON on stdin, exit 0 = bid."""
        import shlex

        probe = self._config.bid_probe_exec or ""
        payload = msgspec.json.encode(command.job)
        ok, reason = False, ""
        try:
            with trio.fail_after(BID_PROBE_TIMEOUT_S):
                result = await trio.run_process(
                    shlex.split(probe), stdin=payload, capture_stdout=True, capture_stderr=True,
                    check=False,
                )  # fmt: skip
            ok = result.returncode == 0
            text = (result.stderr or result.stdout or b"").decode("utf-8", "replace").strip()
            reason = text[-300:] or f"exit code {result.returncode}"
        except trio.TooSlowError:
            reason = f"the probe took longer than {BID_PROBE_TIMEOUT_S:g} s"
        except OSError as error:
            reason = f"the probe could not run: {error}"
        if not self._stopping:
            self._step(BidProbeDone(command.execution_id, ok, reason))

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


def _is_full_job_id(text: str) -> bool:
    """A whole job id (`j-` + a UUID), not a prefix: only a whole id can be ranked to its
    requester without asking anyone."""
    return text.startswith("j-") and len(text) == len("j-") + 36


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
        node = Node(
            config, store=store, node_info=info, engines=engines, started_at=time.time(),
            identity=identity,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: node.run(
                    api_host=config.api_host, api_port=config.api_port, task_status=task_status
                )
            )
            print(f"meshnode node {identity.peer_id} API on http://{address}", flush=True)
            for multiaddr in node.listen_addrs():
                print(f"meshnode swarm address {multiaddr}", flush=True)
            engines_text = ", ".join(info.engines) or "none"
            LOGGER.info("engines: %s; data dir %s", engines_text, config.data_dir)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for received in signals:
                    LOGGER.info("stopping on %s", signal.Signals(received).name)
                    node.leave()
                    await trio.sleep(LEAVE_GRACE_S)  # let the leave reach a few peers
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
    for noisy in ("hypercorn.error", "hypercorn.access", "httpx", "docker", "urllib3", "libp2p"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    trio.run(_serve, config)
