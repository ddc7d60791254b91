"""Building the node's engines from its config, and running what they need in the background.

`wasm` is always there (embedded). `docker` is built unless `--no-docker`; whether it can run
anything is asked of it (`is_available`) when node info is computed, so a node whose Docker
is absent or down still runs, advertises no docker engine, and picks Docker up when it comes.
The Docker engine's filtering proxy (for `Network: HTTP`) runs in the engines' nursery.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshnode.engines.base import Engine
from meshnode.runtime.config import NodeConfig

__all__ = ["open_engines"]

LOGGER = logging.getLogger("meshnode.engines")


@asynccontextmanager
async def open_engines(config: NodeConfig, node_id: str) -> AsyncIterator[dict[str, Engine]]:
    from meshnode.engines.wasm import WasmEngine

    engines: dict[str, Engine] = {}
    async with (
        trio.open_nursery() as nursery,
        WasmEngine.open(cache_dir=config.data_dir / "wasm-cache") as wasm,
    ):
        engines["wasm"] = wasm
        if config.enable_docker:
            docker = _docker_engine(config, node_id)
            engines["docker"] = docker
            if await docker.is_available():
                nursery.start_soon(_serve_proxy, docker)
        try:
            yield engines
        finally:
            nursery.cancel_scope.cancel()


def _docker_engine(config: NodeConfig, node_id: str) -> Engine:
    import docker

    from meshnode.engines.docker import DockerEngine
    from meshnode.engines.http_proxy import HttpFilterProxy

    def client() -> docker.DockerClient:
        if config.docker_host:
            return docker.DockerClient(base_url=config.docker_host)
        return docker.from_env()

    # The node id labels its containers: after a crash it re-attaches to and cleans up only
    # its own, even when several nodes share one Docker engine.
    return DockerEngine(proxy=HttpFilterProxy(), client_factory=client, node_id=node_id)


async def _serve_proxy(engine: Engine) -> None:
    try:
        await engine.serve_http_proxy()  # type: ignore[attr-defined]
    except Exception as error:  # the node runs on without HTTP-networked docker jobs
        LOGGER.warning("the HTTP filtering proxy for docker jobs is not running: %s", error)
