"""Everything `meshnode start` can be told, with the embedded defaults.

One place for each default: the CLI maps its flags onto `NodeConfig`, tests build one
directly. Nothing here reads the environment or the disk; `runtime.node` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshnode.core.policy import Policy

if TYPE_CHECKING:
    from meshnode.runtime.transport import TransportConfig

__all__ = [
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "DEFAULT_SWARM_PORT",
    "NodeConfig",
    "default_data_dir",
]

DEFAULT_API_HOST: Final = "127.0.0.1"
DEFAULT_API_PORT: Final = 1234
DEFAULT_SWARM_PORT: Final = 1235  # Bacalhau's libp2p port


def default_data_dir() -> Path:
    return Path.home() / ".meshnode"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    api_host: str = DEFAULT_API_HOST
    api_port: int = DEFAULT_API_PORT  # 0 picks a free port (tests); the node prints it
    labels: dict[str, str] = field(default_factory=dict)  # --labels k=v,...
    # --limit-*: None means "what the machine has".
    limit_cpu_millicores: int | None = None
    limit_memory_bytes: int | None = None
    limit_disk_bytes: int | None = None
    limit_gpu_count: int | None = None
    # --allow-listed-local-paths: (path, read-write) pairs; "PATH:rw" on the command line.
    allowed_local_paths: tuple[tuple[str, bool], ...] = ()
    policy: Policy = field(default_factory=Policy)
    # Largest request body the API accepts.
    max_request_bytes: int = 10 * 1024 * 1024
    # urlDownload inputs: size and time limits.
    max_download_bytes: int = 1024**3
    download_timeout_s: float = 300.0
    # Where the wasm engine looks for Docker; None: the environment's DOCKER_HOST or default.
    docker_host: str | None = None
    enable_docker: bool = True
    # --- the mesh ---
    swarm_host: str = "0.0.0.0"
    swarm_port: int = DEFAULT_SWARM_PORT  # 0 picks a free port (tests)
    peers: tuple[str, ...] = ()  # --peers: bootstrap multiaddrs ending in /p2p/<id>
    swarm_key: bytes | None = None  # --swarm-key FILE, parsed: a private mesh
    enable_mdns: bool = True
    require_approval: bool = False
    bid_probe_exec: str | None = None  # --bid-probe-exec CMD
    accept_networked_jobs: bool = True
    replicas: int = 3  # requester replica set size (R)

    def transport_config(self) -> TransportConfig:
        from meshnode.runtime.transport import TransportConfig  # imports libp2p: node only

        return TransportConfig(
            listen_host=self.swarm_host,
            swarm_port=self.swarm_port,
            bootstrap=self.peers,
            swarm_key=self.swarm_key,
            enable_mdns=self.enable_mdns,
        )
