"""What this machine is and has: automatic labels and detected capacity.

Labels use Bacalhau's keys and Go's spellings (`Operating-System: linux`,
`Architecture: amd64|arm64|arm`), so constraints written for Bacalhau match here. Capacity is
what the machine (or its cgroup CPU quota) offers; `--limit-*` flags lower it.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Final

from meshnode.core.resources import ResourceAmounts

__all__ = [
    "ENGINE_LABEL_PREFIX",
    "GpuInfo",
    "automatic_labels",
    "detect_capacity",
    "detect_gpus",
    "engine_labels",
]

LOGGER = logging.getLogger(__name__)

_GO_ARCH: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "riscv64": "riscv64",
}
_NVIDIA_SMI_TIMEOUT_S: Final = 5.0


class GpuInfo:
    def __init__(self, index: int, name: str, memory_mib: int) -> None:
        self.index, self.name, self.memory_mib = index, name, memory_mib


def detect_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs as `nvidia-smi` reports them (none when it is absent or fails)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        LOGGER.info("nvidia-smi is present but failed (%s): no GPUs advertised", error)
        return []
    gpus = []
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit() and parts[2].isdigit():
            gpus.append(GpuInfo(int(parts[0]), parts[1], int(parts[2])))
    return gpus


ENGINE_LABEL_PREFIX: Final = "engine-"


def engine_labels(engines: list[str]) -> dict[str, str]:
    """`engine-docker: "true"` for each usable engine (constraint: `engine-docker exists`)."""
    return {f"{ENGINE_LABEL_PREFIX}{engine}": "true" for engine in engines}


def automatic_labels(engines: list[str], gpus: list[GpuInfo]) -> dict[str, str]:
    machine = platform.machine().lower()
    labels = {
        "Operating-System": platform.system().lower(),
        "Architecture": _GO_ARCH.get(machine, machine),
        "hostname": socket.gethostname(),
    }
    labels.update(engine_labels(engines))
    if gpus:
        labels["GPU-count"] = str(len(gpus))
        for gpu in gpus:
            labels[f"GPU-{gpu.index}"] = gpu.name
            labels[f"GPU-{gpu.index}-Memory"] = f"{gpu.memory_mib}MiB"
    return labels


def detect_capacity(data_dir: Path, gpus: list[GpuInfo]) -> ResourceAmounts:
    return ResourceAmounts(
        cpu_millicores=_cpu_millicores(),
        memory_bytes=_memory_bytes(),
        disk_bytes=shutil.disk_usage(data_dir).free,
        gpu_count=len(gpus),
    )


def _cpu_millicores() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    millicores = (cpus or 1) * 1000
    try:  # a cgroup v2 quota ("max 100000" or "150000 100000") lowers it
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            millicores = min(millicores, int(int(quota) * 1000 / int(period)))
    except (OSError, ValueError):
        pass
    return millicores


def _memory_bytes() -> int:
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total
