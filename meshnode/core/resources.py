"""Amounts of CPU, memory, disk and GPU, as exact integers, and what a job asks for."""

from __future__ import annotations

from typing import Final

import msgspec

from meshnode.spec import Job

__all__ = ["DEFAULT_REQUEST", "ResourceAmounts", "requested_resources"]


class ResourceAmounts(msgspec.Struct, frozen=True, kw_only=True):
    cpu_millicores: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    gpu_count: int = 0

    def __add__(self, other: ResourceAmounts) -> ResourceAmounts:
        return ResourceAmounts(
            cpu_millicores=self.cpu_millicores + other.cpu_millicores,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            disk_bytes=self.disk_bytes + other.disk_bytes,
            gpu_count=self.gpu_count + other.gpu_count,
        )

    def __sub__(self, other: ResourceAmounts) -> ResourceAmounts:
        return ResourceAmounts(
            cpu_millicores=self.cpu_millicores - other.cpu_millicores,
            memory_bytes=self.memory_bytes - other.memory_bytes,
            disk_bytes=self.disk_bytes - other.disk_bytes,
            gpu_count=self.gpu_count - other.gpu_count,
        )

    def shortfall(self, available: ResourceAmounts) -> list[str]:
        """What of `self` does not fit in `available`, in words (empty when it fits)."""
        missing = []
        if self.cpu_millicores > available.cpu_millicores:
            missing.append(f"CPU {self.cpu_millicores}m > {available.cpu_millicores}m")
        if self.memory_bytes > available.memory_bytes:
            missing.append(f"memory {_size(self.memory_bytes)} > {_size(available.memory_bytes)}")
        if self.disk_bytes > available.disk_bytes:
            missing.append(f"disk {_size(self.disk_bytes)} > {_size(available.disk_bytes)}")
        if self.gpu_count > available.gpu_count:
            missing.append(f"GPU {self.gpu_count} > {available.gpu_count}")
        return missing


# What an execution is charged when its spec asks for nothing (Bacalhau's defaults).
DEFAULT_REQUEST: Final = ResourceAmounts(cpu_millicores=500, memory_bytes=512 * 1024**2)


def requested_resources(job: Job, default: ResourceAmounts = DEFAULT_REQUEST) -> ResourceAmounts:
    resources = job.task.resources
    if resources is None:
        return default
    return ResourceAmounts(
        cpu_millicores=resources.cpu_millicores or default.cpu_millicores,
        memory_bytes=resources.memory_bytes or default.memory_bytes,
        disk_bytes=resources.disk_bytes or default.disk_bytes,
        gpu_count=resources.gpu_count,
    )


def _size(amount: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if amount >= scale:
            return f"{amount / scale:.1f} {unit}"
    return f"{amount} B"
