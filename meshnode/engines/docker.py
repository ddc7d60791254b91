"""The docker engine: runs one task in a container of this node's Docker Engine.

Rules of this module:
- The docker SDK blocks, so every call to it runs in a worker thread. Short calls (create,
  start, kill, remove) run to completion even when the caller is cancelled, so a container
  id is never lost. The calls that last as long as the container (waiting for its exit,
  copying its output) are abandoned on cancellation and use their own thread limiter, so
  long-running containers never starve the short calls; they end by themselves once the
  container is gone, and cleanup guarantees that.
- One container per run, labelled `meshnode.execution-id`, `meshnode.job-id` (and
  `meshnode.node-id` when the engine has a node id, so several nodes can share one Docker
  Engine) plus the request's labels. A restarted node finds its containers by these labels
  (`running_executions`, `reattach`, `remove_orphans`); nothing else is remembered.
- A run removes its container in every path (exit, failure, timeout, cancellation), after
  the results are collected; cleanup is shielded and bounded in time.
- Output: the engine attaches to the created container before starting it, so not a byte
  is lost, and copies stdout and stderr (demultiplexed) to the request's files as they come.
  Each file, and Docker's own copy (json-file log driver), is capped at `log_limit_bytes`.
- Images are never pulled (a node may have no registry): a missing image is an
  `ExecutionError` naming it. Docker not running is an `EngineUnavailableError`.
- Networks. `None`: no interface but lo. `Full`: Docker's default bridge. `HTTP`: the
  container joins one shared internal network (`meshnode-http`: Docker drops whatever it
  sends beyond this host, and containers on it cannot reach each other) and its
  HTTP(S)_PROXY variables point at the node's filtering proxy, listening on that network's
  gateway address. The proxy knows which execution asks by the source address, so the engine
  picks each container's address itself (the network has a fixed subnet for that), registers
  address -> allowed domains with the proxy *before* the container starts and unregisters it
  *after* the container is removed: no window in which a container runs unknown to the
  proxy, or in which an address still carries a finished execution's domains. Addresses
  rotate through the subnet so a freed one is not reused at once. The domains are also a
  label of the container, so a restarted node registers its surviving containers again
  before its proxy listens, on the port their variables name.
  Known gap: the host itself stays reachable from the internal network (the gateway
  address, and any host service listening on all addresses); only the proxy should listen
  there, which is the host's firewall to enforce.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar, Final, TypeVar

import docker
import docker.errors
import docker.types
import trio

from meshnode.engines.base import (
    EngineUnavailableError,
    ExecutionError,
    Limits,
    RunOutcome,
    RunRequest,
)
from meshnode.engines.host_firewall import bridge_interface, only_proxy_reachable
from meshnode.engines.http_proxy import HttpFilterProxy
from meshnode.spec import DockerParams

__all__ = [
    "EXECUTION_ID_LABEL",
    "HTTP_DOMAINS_LABEL",
    "HTTP_NETWORK_NAME",
    "JOB_ID_LABEL",
    "NODE_ID_LABEL",
    "OUTPUTS_TARGET",
    "DockerEngine",
]

LOGGER: Final = logging.getLogger(__name__)

EXECUTION_ID_LABEL: Final = "meshnode.execution-id"
JOB_ID_LABEL: Final = "meshnode.job-id"
NODE_ID_LABEL: Final = "meshnode.node-id"
HTTP_DOMAINS_LABEL: Final = "meshnode.http-domains"
HTTP_NETWORK_NAME: Final = "meshnode-http"
OUTPUTS_TARGET: Final = "/outputs"

_NAME_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,120}")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _HttpNetwork:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


@dataclass(slots=True)
class _NetworkPlan:
    """How one container is networked, and what to undo when it is gone."""

    mode: str
    networking_config: dict[str, Any] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    release: Callable[[], None] = lambda: None


@dataclass(frozen=True, slots=True)
class _Survivor:
    """A container on the HTTP network left running by a previous node process."""

    execution_id: str
    address: str
    domains: tuple[str, ...]
    proxy_port: int


@dataclass(slots=True)
class _Watch:
    """What the two watchers of a running container found (see `_watch`)."""

    status: dict[str, Any] | None = None
    timed_out: bool = False
    error: Exception | None = None
    logs_done: trio.Event = field(default_factory=trio.Event)


class DockerEngine:
    """Runs `RunRequest`s whose params are `DockerParams`; see the module rules."""

    name: ClassVar[str] = "docker"

    def __init__(
        self,
        *,
        proxy: HttpFilterProxy | None = None,
        client_factory: Callable[[], docker.DockerClient] = docker.from_env,
        node_id: str = "",
        pids_limit: int = 1024,
        log_limit_bytes: int = 256 * 1024 * 1024,
        http_network: str = HTTP_NETWORK_NAME,
        http_proxy_port: int = 0,
        max_running_containers: int = 512,
        availability_timeout_s: float = 5.0,
        cleanup_timeout_s: float = 15.0,
        log_drain_timeout_s: float = 10.0,
    ) -> None:
        self._proxy = proxy
        self._client_factory = client_factory
        self._node_id = node_id
        self._pids_limit = pids_limit
        self._log_limit_bytes = log_limit_bytes
        self._http_network_name = http_network
        self._http_proxy_port = http_proxy_port
        self._availability_timeout_s = availability_timeout_s
        self._cleanup_timeout_s = cleanup_timeout_s
        self._log_drain_timeout_s = log_drain_timeout_s
        self._client: docker.DockerClient | None = None
        self._client_lock = trio.Lock()
        # Two long-lived threads per running container (exit, output): their own limiter, so
        # they never take the default limiter's threads from the short calls.
        self._watch_threads = trio.CapacityLimiter(2 * max_running_containers)
        self._http_network: _HttpNetwork | None = None
        self._http_network_lock = trio.Lock()
        self._proxy_url: str | None = None
        self._reserved_addresses: set[str] = set()
        # HTTP containers of a previous process registered at proxy start: execution id ->
        # address, until reattach or remove_orphans takes them over.
        self._recovered_addresses: dict[str, str] = {}
        self._next_host_index = 0

    # --- availability --------------------------------------------------------------------

    async def is_available(self) -> bool:
        with trio.move_on_after(self._availability_timeout_s):
            try:
                client = await self._docker()
                await trio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
            except (EngineUnavailableError, docker.errors.DockerException, OSError) as error:
                LOGGER.debug("docker engine: not available: %s", error)
                return False
            return True
        LOGGER.debug("docker engine: no answer within %s s", self._availability_timeout_s)
        return False

    async def _docker(self) -> docker.DockerClient:
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await trio.to_thread.run_sync(
                        self._client_factory, abandon_on_cancel=True
                    )
                except (docker.errors.DockerException, OSError) as error:
                    raise _unavailable(error) from error
            return self._client

    # --- the HTTP network and its proxy --------------------------------------------------

    async def serve_http_proxy(
        self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Runs the filtering proxy on the HTTP network's gateway until cancelled; reports its
        URL. Jobs with `Network.Type: HTTP` can run only while this runs.

        Containers left running by a previous node process keep their way out: before the
        proxy listens, their addresses get their domains back (from their labels), and the
        proxy listens on the port their variables name (they cannot change), unless
        `http_proxy_port` says otherwise; with neither, any free port.
        """
        proxy = self._proxy
        if proxy is None:
            raise ValueError("this DockerEngine was built without an HttpFilterProxy")
        network = await self._ensure_http_network()
        gateway = str(network.gateway)
        ports = [self._http_proxy_port]
        for survivor in await self._http_survivors(network):
            proxy.register_client(survivor.address, survivor.domains, owner=survivor.execution_id)
            self._reserved_addresses.add(survivor.address)
            self._recovered_addresses[survivor.execution_id] = survivor.address
            if survivor.proxy_port and survivor.proxy_port not in ports:
                ports.append(survivor.proxy_port)
        if not self._http_proxy_port:
            ports = [*ports[1:], 0]
        try:
            async with trio.open_nursery() as nursery:
                for index, wanted_port in enumerate(ports):
                    try:
                        port = await nursery.start(proxy.serve, gateway, wanted_port)
                        break
                    except OSError as error:
                        if index == len(ports) - 1:
                            raise
                        LOGGER.warning(
                            "docker engine: cannot listen on %s:%d, where running HTTP jobs "
                            "expect the proxy (%s); they lose their network",
                            gateway,
                            wanted_port,
                            error,
                        )
                client = await self._docker()
                info = await self._call(
                    "inspect the HTTP network", client.api.inspect_network, network.name
                )
                async with only_proxy_reachable(bridge_interface(info), gateway, port):
                    self._proxy_url = f"http://{gateway}:{port}"
                    task_status.started(self._proxy_url)
                    await trio.sleep_forever()
        finally:
            self._proxy_url = None

    async def _http_survivors(self, network: _HttpNetwork) -> list[_Survivor]:
        """This node's running containers on the HTTP network (left by a previous process)."""
        client = await self._docker()
        containers = await self._call(
            "list containers",
            client.api.containers,
            filters={"label": self._label_filters(), "network": network.name},
        )
        prefix = f"HTTP_PROXY=http://{network.gateway}:"
        survivors = []
        for container in containers:
            info = await self._call(
                "inspect the container", client.api.inspect_container, container["Id"]
            )
            endpoint = info["NetworkSettings"]["Networks"].get(network.name) or {}
            labels = info["Config"].get("Labels") or {}
            ports = [
                int(port)
                for variable in info["Config"].get("Env") or []
                if (port := variable.removeprefix(prefix)) != variable and port.isdigit()
            ]
            if endpoint.get("IPAddress"):
                survivors.append(
                    _Survivor(
                        execution_id=labels[EXECUTION_ID_LABEL],
                        address=endpoint["IPAddress"],
                        domains=tuple(filter(None, labels.get(HTTP_DOMAINS_LABEL, "").split(","))),
                        proxy_port=ports[0] if ports else 0,
                    )
                )
        return survivors

    async def _ensure_http_network(self) -> _HttpNetwork:
        async with self._http_network_lock:
            if self._http_network is None:
                client = await self._docker()
                info = await self._call(
                    "prepare the HTTP network",
                    _find_or_create_http_network,
                    client.api,
                    self._http_network_name,
                )
                self._http_network = _parse_http_network(info)
            return self._http_network

    async def _reserve_address(self, network: _HttpNetwork) -> str:
        client = await self._docker()
        info = await self._call(
            "inspect the HTTP network", client.api.inspect_network, network.name
        )
        in_use = set(self._reserved_addresses)
        for endpoint in (info.get("Containers") or {}).values():
            address = endpoint.get("IPv4Address") or ""
            in_use.add(address.split("/")[0])
        hosts = network.subnet.num_addresses - 2
        for _ in range(hosts):
            self._next_host_index = self._next_host_index % hosts + 1
            candidate = str(network.subnet.network_address + self._next_host_index)
            if candidate != str(network.gateway) and candidate not in in_use:
                self._reserved_addresses.add(candidate)
                return candidate
        raise ExecutionError(f"no free address left on docker network {network.name}")

    async def _plan_network(self, request: RunRequest) -> _NetworkPlan:
        kind = request.network.type or "None"
        if kind == "None":
            return _NetworkPlan(mode="none")
        if kind == "Full":
            return _NetworkPlan(mode="bridge")
        if kind != "HTTP":
            raise ExecutionError(f"network type {kind!r} is not supported by the docker engine")
        proxy, proxy_url = self._proxy, self._proxy_url
        if proxy is None or proxy_url is None:
            raise ExecutionError(
                "network type HTTP needs this node's filtering proxy, which is not running"
            )
        network = await self._ensure_http_network()
        address = await self._reserve_address(network)
        return self._adopt_http_address(proxy, proxy_url, network, address, request)

    def _adopt_http_address(
        self,
        proxy: HttpFilterProxy,
        proxy_url: str,
        network: _HttpNetwork,
        address: str,
        request: RunRequest,
    ) -> _NetworkPlan:
        self._reserved_addresses.add(address)
        proxy.register_client(address, request.network.domains, owner=request.execution_id)

        def release() -> None:
            proxy.unregister_client(address, owner=request.execution_id)
            self._reserved_addresses.discard(address)
            self._recovered_addresses.pop(request.execution_id, None)

        endpoint = {"IPAMConfig": {"IPv4Address": address}}
        return _NetworkPlan(
            mode=network.name,
            networking_config={"EndpointsConfig": {network.name: endpoint}},
            environment={
                **{name: proxy_url for name in _PROXY_VARIABLES},
                "NO_PROXY": "localhost,127.0.0.1",
                "no_proxy": "localhost,127.0.0.1",
            },
            # So that a restarted node can give a running container its domains back.
            labels={HTTP_DOMAINS_LABEL: ",".join(request.network.domains)},
            release=release,
        )

    # --- running -------------------------------------------------------------------------

    async def run(self, request: RunRequest) -> RunOutcome:
        params = request.params
        if not isinstance(params, DockerParams):
            raise TypeError(f"the docker engine cannot run {type(params).__name__}")
        if not params.image:
            raise ExecutionError("the docker engine needs an image (Engine.Params.Image)")
        client = await self._docker()
        network = await self._plan_network(request)
        try:
            container_id = await self._create(client.api, request, params, network)
            try:
                stream = await self._call(
                    "attach to the container",
                    client.api.attach,
                    container_id,
                    stream=True,
                    logs=True,
                    demux=True,
                )
                try:
                    await self._call("start the container", client.api.start, container_id)
                except BaseException:
                    stream.close()
                    raise
                copy = functools.partial(
                    _copy_attached_output,
                    stream,
                    request.stdout_path,
                    request.stderr_path,
                    self._log_limit_bytes,
                )
                return await self._watch(
                    client.api, container_id, [copy], request.limits, request.limits.timeout_s
                )
            finally:
                with trio.CancelScope(shield=True):
                    await self._remove(client.api, container_id)
        finally:
            network.release()

    async def _create(
        self, api: Any, request: RunRequest, params: DockerParams, network: _NetworkPlan
    ) -> str:
        limits = request.limits
        host_config: dict[str, Any] = {
            "network_mode": network.mode,
            "mounts": [
                docker.types.Mount(
                    target=mount.target,
                    source=str(Path(mount.host_path).resolve()),
                    type="bind",
                    read_only=mount.read_only,
                )
                for mount in request.mounts
            ]
            + [
                docker.types.Mount(
                    target=OUTPUTS_TARGET,
                    source=str(Path(request.outputs_dir).resolve()),
                    type="bind",
                    read_only=False,
                )
            ],
            "log_config": docker.types.LogConfig(
                type="json-file",
                config={"max-size": str(self._log_limit_bytes), "max-file": "1"},
            ),
        }
        if limits.cpu_millicores:
            host_config["nano_cpus"] = limits.cpu_millicores * 1_000_000
        if limits.memory_bytes:
            # Equal limits: no swap, so the limit is a real limit and OOM is visible.
            host_config["mem_limit"] = limits.memory_bytes
            host_config["memswap_limit"] = limits.memory_bytes
        if self._pids_limit:
            host_config["pids_limit"] = self._pids_limit
        if limits.gpu_count:
            host_config["device_requests"] = [
                docker.types.DeviceRequest(count=limits.gpu_count, capabilities=[["gpu"]])
            ]
        environment = {
            **request.env,
            **_parse_environment(params.environment_variables),
            **network.environment,
        }
        labels = {
            **request.labels,
            **network.labels,
            EXECUTION_ID_LABEL: request.execution_id,
            JOB_ID_LABEL: request.job_id,
        }
        if self._node_id:
            labels[NODE_ID_LABEL] = self._node_id
        name = f"meshnode-{request.execution_id}"
        create = functools.partial(
            api.create_container,
            params.image,
            command=list(params.parameters) or None,
            entrypoint=list(params.entrypoint) if params.entrypoint else None,
            environment=[f"{key}={value}" for key, value in environment.items()],
            working_dir=params.working_directory or None,
            labels=labels,
            name=name if _NAME_RE.fullmatch(name) else None,
            host_config=api.create_host_config(**host_config),
            networking_config=network.networking_config,
        )
        try:
            # Not abandoned on cancellation: the container id must reach the caller's cleanup.
            created = await trio.to_thread.run_sync(create)
        except docker.errors.ImageNotFound as error:
            # `create` never pulls (`docker run` would, and fail on the registry lookup).
            raise ExecutionError(
                f'image "{params.image}" is not available on this node (no registry is '
                "reachable; load it with docker load or build it)"
            ) from error
        except docker.errors.APIError as error:
            if error.status_code == 409:
                raise ExecutionError(
                    f"a container for execution {request.execution_id} already exists "
                    f"({name}): reattach to it or remove it"
                ) from error
            raise _api_error("create the container", error) from error
        except (docker.errors.DockerException, OSError) as error:
            raise _unavailable(error) from error
        container_id: str = created["Id"]
        return container_id

    async def _watch(
        self,
        api: Any,
        container_id: str,
        copies: Sequence[Callable[[], None]],
        limits: Limits,
        timeout_s: float | None,
    ) -> RunOutcome:
        """Copies the output and waits for the exit (killing on timeout); then the outcome.

        Two child tasks that never raise (they keep their error in `watch`), so the caller
        sees a plain ExecutionError rather than an exception group.
        """
        watch = _Watch()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._copy_output, copies, watch, nursery.cancel_scope)
                nursery.start_soon(
                    self._wait_for_exit, api, container_id, timeout_s, watch, nursery.cancel_scope
                )
        except BaseExceptionGroup as group:
            # The children keep their own errors, so only cancellation gets here: let it out
            # as the plain trio.Cancelled the Engine protocol promises, not in a group.
            leaves = _leaves(group)
            if all(isinstance(leaf, trio.Cancelled) for leaf in leaves):
                raise leaves[0] from None
            raise
        if watch.error is not None:
            raise watch.error
        assert watch.status is not None, "the exit watcher ended without a status or an error"
        if watch.timed_out:
            assert timeout_s is not None
            return RunOutcome(exit_code=None, error=f"execution timed out after {timeout_s:g} s")
        exit_code = int(watch.status.get("StatusCode", -1))
        error = (watch.status.get("Error") or {}).get("Message") or ""
        if exit_code == 137:  # SIGKILL: the OOM killer is the usual suspect
            info = await self._call("inspect the container", api.inspect_container, container_id)
            if info["State"].get("OOMKilled"):
                error = _oom_message(limits)
        return RunOutcome(exit_code=exit_code, error=error)

    async def _copy_output(
        self, copies: Sequence[Callable[[], None]], watch: _Watch, scope: trio.CancelScope
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for copy in copies:
                    nursery.start_soon(self._in_watch_thread, copy)
        except Exception as error:
            # Output that cannot be kept (a full disk, a broken stream) ends the run: a task
            # running blind for hours is worse than one stopped with the reason.
            watch.error = _first_error(error)
            scope.cancel()
        finally:
            watch.logs_done.set()

    async def _wait_for_exit(
        self,
        api: Any,
        container_id: str,
        timeout_s: float | None,
        watch: _Watch,
        scope: trio.CancelScope,
    ) -> None:
        try:
            with trio.move_on_after(timeout_s if timeout_s else math.inf) as timer:
                watch.status = await self._in_watch_thread(
                    functools.partial(api.wait, container_id, timeout=None)
                )
            if timer.cancelled_caught:
                watch.timed_out = True
                await self._kill(api, container_id)
                watch.status = await self._in_watch_thread(
                    functools.partial(api.wait, container_id, timeout=None)
                )
        except docker.errors.APIError as error:
            watch.error = _api_error("wait for the container", error)
            scope.cancel()
            return
        except (docker.errors.DockerException, OSError) as error:
            watch.error = _unavailable(error)
            scope.cancel()
            return
        # The output ends with the container; if it does not (a stream stuck in the daemon),
        # do not hang the run on it.
        with trio.move_on_after(self._log_drain_timeout_s):
            await watch.logs_done.wait()
        if not watch.logs_done.is_set():
            LOGGER.warning(
                "docker engine: output of %s still open %s s after exit; giving up on it",
                container_id[:12],
                self._log_drain_timeout_s,
            )
            scope.cancel()

    async def _in_watch_thread(self, function: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(
            function, abandon_on_cancel=True, limiter=self._watch_threads
        )

    async def _kill(self, api: Any, container_id: str) -> None:
        try:
            await trio.to_thread.run_sync(api.kill, container_id)
        except docker.errors.APIError as error:
            # 409: it exited meanwhile; 404: it is gone. Either way it is not running.
            if error.status_code not in (404, 409):
                raise

    async def _remove(self, api: Any, container_id: str) -> None:
        """Kills and removes the container (and its anonymous volumes); never raises, since it
        runs in cleanup, where an error would hide the one that matters."""
        with trio.move_on_after(self._cleanup_timeout_s) as timer:
            try:
                await trio.to_thread.run_sync(
                    functools.partial(api.remove_container, container_id, force=True, v=True),
                    abandon_on_cancel=True,
                )
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as error:
                if error.status_code != 409:  # 409: a removal is already under way
                    LOGGER.warning("docker engine: could not remove %s: %s", container_id, error)
            except (docker.errors.DockerException, OSError) as error:
                LOGGER.warning("docker engine: could not remove %s: %s", container_id, error)
        if timer.cancelled_caught:
            LOGGER.warning(
                "docker engine: removing %s took over %s s", container_id, self._cleanup_timeout_s
            )

    # --- recovery after a restart --------------------------------------------------------

    async def running_executions(self) -> dict[str, str]:
        """execution id -> container id, for every container this node's engine labelled,
        whatever its state (an exited one still holds its logs and exit code)."""
        client = await self._docker()
        containers = await self._call(
            "list containers",
            client.api.containers,
            all=True,
            filters={"label": self._label_filters()},
        )
        return {c["Labels"][EXECUTION_ID_LABEL]: c["Id"] for c in containers}

    def _label_filters(self) -> list[str]:
        """Docker label filters (all must match) for the containers of this node."""
        if self._node_id:
            return [EXECUTION_ID_LABEL, f"{NODE_ID_LABEL}={self._node_id}"]
        return [EXECUTION_ID_LABEL]

    async def reattach(self, execution_id: str, request: RunRequest) -> RunOutcome:
        """Waits for the container of an execution started by a previous node process,
        copies its whole output to the request's files, removes it and returns the outcome.

        The timeout counts from the container's start, not from now.
        """
        container_id = (await self.running_executions()).get(execution_id)
        if container_id is None:
            raise ExecutionError(f"no container for execution {execution_id} on this node")
        client = await self._docker()
        api = client.api
        network = _NetworkPlan(mode="")
        try:
            info = await self._call("inspect the container", api.inspect_container, container_id)
            network = await self._readopt_network(info, request)
            state = info["State"]
            if state.get("Status") == "created":
                return RunOutcome(
                    exit_code=None,
                    error="the container was created but never started (the node stopped first)",
                )
            timeout_s = request.limits.timeout_s
            if not state.get("Running"):
                timeout_s = None  # it ended by itself: report how, whatever the time now
            elif timeout_s:
                elapsed_s = time.time() - _parse_docker_time(state["StartedAt"])
                timeout_s = max(timeout_s - elapsed_s, 0.001)
            copies = [
                functools.partial(
                    _copy_followed_log, api, container_id, "stdout", request.stdout_path,
                    self._log_limit_bytes,
                ),
                functools.partial(
                    _copy_followed_log, api, container_id, "stderr", request.stderr_path,
                    self._log_limit_bytes,
                ),
            ]  # fmt: skip
            outcome = await self._watch(api, container_id, copies, request.limits, timeout_s)
            if outcome.exit_code is None and request.limits.timeout_s:
                # Report the execution's timeout, not what was left of it.
                outcome = RunOutcome(
                    exit_code=None,
                    error=f"execution timed out after {request.limits.timeout_s:g} s",
                )
            return outcome
        finally:
            with trio.CancelScope(shield=True):
                await self._remove(api, container_id)
            network.release()
            # Registered at proxy start, but exited before `_readopt_network` looked.
            self._forget_recovered(execution_id)

    async def _readopt_network(self, info: Mapping[str, Any], request: RunRequest) -> _NetworkPlan:
        """A reattached HTTP container keeps its address: register it with this process's
        proxy again (when the proxy runs; without it the container has no way out anyway)."""
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        endpoint = networks.get(self._http_network_name)
        proxy, proxy_url = self._proxy, self._proxy_url
        if not endpoint or not endpoint.get("IPAddress") or proxy is None or proxy_url is None:
            return _NetworkPlan(mode="")
        network = await self._ensure_http_network()
        return self._adopt_http_address(proxy, proxy_url, network, endpoint["IPAddress"], request)

    async def remove_orphans(self, keep: set[str]) -> list[str]:
        """Removes this node's labelled containers whose execution id is not in `keep`;
        returns the execution ids removed."""
        client = await self._docker()
        removed = []
        for execution_id, container_id in sorted((await self.running_executions()).items()):
            if execution_id not in keep:
                await self._remove(client.api, container_id)
                removed.append(execution_id)
                self._forget_recovered(execution_id)
        if removed:
            LOGGER.info("docker engine: removed orphan containers of %s", ", ".join(removed))
        return removed

    def _forget_recovered(self, execution_id: str) -> None:
        """Drops what `serve_http_proxy` registered for a survivor, once it is gone."""
        address = self._recovered_addresses.pop(execution_id, None)
        if address is not None and self._proxy is not None:
            self._proxy.unregister_client(address, owner=execution_id)
            self._reserved_addresses.discard(address)

    # --- calls ---------------------------------------------------------------------------

    async def _call(self, what: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """One short SDK call in a worker thread; docker's errors become ours, with the cause."""
        try:
            return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
        except docker.errors.APIError as error:
            raise _api_error(what, error) from error
        except (docker.errors.DockerException, OSError) as error:
            raise _unavailable(error) from error


_PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def _unavailable(error: BaseException) -> EngineUnavailableError:
    return EngineUnavailableError(f"Docker is not available on this node: {error}")


def _api_error(what: str, error: docker.errors.APIError) -> ExecutionError:
    explanation = error.explanation or str(error)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return ExecutionError(f"docker could not {what}: {explanation}")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


def _first_error(error: Exception) -> Exception:
    """The error inside (possibly nested) exception groups, for a message that says why."""
    while isinstance(error, ExceptionGroup):
        error = error.exceptions[0]
    if isinstance(error, ExecutionError):
        return error
    if isinstance(error, docker.errors.APIError):
        return _api_error("read the container's output", error)
    if isinstance(error, OSError):
        return ExecutionError(f"could not keep the task's output: {error}")
    return error


def _oom_message(limits: Limits) -> str:
    if limits.memory_bytes:
        return (
            f"the task hit its memory limit ({_format_bytes(limits.memory_bytes)}) "
            "and was killed (out of memory)"
        )
    return "the task was killed for lack of memory (out of memory, no memory limit set)"


def _format_bytes(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _parse_environment(variables: Iterable[str]) -> dict[str, str]:
    """Bacalhau's "KEY=value" strings; a bare "KEY" is an empty value."""
    parsed = {}
    for variable in variables:
        key, _, value = variable.partition("=")
        parsed[key] = value
    return parsed


def _parse_docker_time(text: str) -> float:
    """Docker's RFC 3339 times carry nanoseconds, which datetime does not take."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(main + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction.isdigit() else 0.0)


# --- the HTTP network (runs in a worker thread) ------------------------------------------


def _find_or_create_http_network(api: Any, name: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = api.inspect_network(name)
        return info
    except docker.errors.NotFound:
        pass
    # Fixed container addresses need a network whose subnet was configured, not chosen by
    # Docker. Docker knows which subnets are free (host routes, other networks): let it
    # choose one for a probe network, then create the real one with that subnet.
    probe = api.create_network(f"{name}-probe-{os.getpid()}", driver="bridge", internal=True)
    try:
        pool = api.inspect_network(probe["Id"])["IPAM"]["Config"][0]
    finally:
        api.remove_network(probe["Id"])
    ipam = docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=pool["Subnet"], gateway=pool.get("Gateway"))]
    )
    try:
        api.create_network(
            name,
            driver="bridge",
            internal=True,  # no route out of the host
            options={"com.docker.network.bridge.enable_icc": "false"},  # jobs cannot meet
            ipam=ipam,
            labels={"meshnode.network": "http"},
            check_duplicate=True,
        )
    except docker.errors.APIError as error:
        if error.status_code != 409:  # 409: another process created it meanwhile
            raise
    created: dict[str, Any] = api.inspect_network(name)
    return created


def _parse_http_network(info: Mapping[str, Any]) -> _HttpNetwork:
    name = info["Name"]
    if not info.get("Internal"):
        raise ExecutionError(
            f"docker network {name} exists but is not internal, so jobs would have a route "
            f"out; remove it (docker network rm {name}) and meshnode will recreate it"
        )
    configs = (info.get("IPAM") or {}).get("Config") or []
    ipv4 = [c for c in configs if ":" not in c.get("Subnet", ":")]
    if not ipv4:
        raise ExecutionError(f"docker network {name} has no configured IPv4 subnet")
    subnet = ipaddress.IPv4Network(ipv4[0]["Subnet"])
    gateway_text = ipv4[0].get("Gateway")
    gateway = ipaddress.IPv4Address(gateway_text) if gateway_text else subnet.network_address + 1
    return _HttpNetwork(name=name, subnet=subnet, gateway=gateway)


# --- copying output (runs in worker threads) ---------------------------------------------


class _CappedFile:
    """Writes up to `limit_bytes`, then counts what it drops and says so at the end."""

    def __init__(self, file: IO[bytes], limit_bytes: int) -> None:
        self._file = file
        self._room = limit_bytes
        self._limit_bytes = limit_bytes
        self._dropped = 0

    def write(self, data: bytes) -> None:
        kept = data[: self._room]
        if kept:
            self._file.write(kept)
            self._room -= len(kept)
        self._dropped += len(data) - len(kept)

    def finish(self) -> None:
        if self._dropped:
            self._file.write(
                f"\n[meshnode: {self._dropped} more bytes dropped: the log limit is "
                f"{self._limit_bytes} bytes]\n".encode()
            )


def _copy_attached_output(
    stream: Any, stdout_path: Path, stderr_path: Path, limit_bytes: int
) -> None:
    """Copies a demultiplexed attach stream to the two files until the container ends.
    Unbuffered files: whoever tails them sees output as it is produced."""
    with (
        open(stdout_path, "wb", buffering=0) as stdout_file,
        open(stderr_path, "wb", buffering=0) as stderr_file,
    ):
        stdout, stderr = (
            _CappedFile(stdout_file, limit_bytes),
            _CappedFile(stderr_file, limit_bytes),
        )
        try:
            for stdout_chunk, stderr_chunk in stream:
                if stdout_chunk:
                    stdout.write(stdout_chunk)
                if stderr_chunk:
                    stderr.write(stderr_chunk)
        finally:
            stream.close()
            stdout.finish()
            stderr.finish()


def _copy_followed_log(
    api: Any, container_id: str, which: str, path: Path, limit_bytes: int
) -> None:
    """Copies one of the container's streams from its start, following it until the end
    (works for a running and an exited container, unlike attach)."""
    chunks = api.logs(
        container_id,
        stdout=which == "stdout",
        stderr=which == "stderr",
        stream=True,
        follow=True,
    )
    with open(path, "wb", buffering=0) as file:
        capped = _CappedFile(file, limit_bytes)
        try:
            for chunk in chunks:
                capped.write(chunk)
        finally:
            chunks.close()
            capped.finish()
