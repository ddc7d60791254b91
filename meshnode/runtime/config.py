"""Everything `meshnode start` can be told, with the embedded defaults.

One place for each default: the CLI maps its flags onto `NodeConfig`, tests build one
directly. Nothing here reads the environment or the disk; `runtime.node` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from meshnode.core.policy import Policy

__all__ = ["DEFAULT_API_HOST", "DEFAULT_API_PORT", "NodeConfig", "default_data_dir"]

DEFAULT_API_HOST: Final = "127.0.0.1"
DEFAULT_API_PORT: Final = 1234


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
