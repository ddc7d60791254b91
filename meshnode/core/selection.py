"""Which nodes can run a job, and why the others cannot.

Rules of this module: it answers "could this node ever run this job?" (labels, engines,
features, allow-listed paths, total capacity); whether the node is busy right now is the
node's run queue's business. Every "no" is a sentence a user can act on.

Constraint semantics are Kubernetes label selectors, as Bacalhau's: `=`, `==`, `in` need the
label present with one of the values; `!=`, `notin` match when the label is absent or has
another value; `exists` and `!` test presence; `gt`/`lt` compare integers (a label that is
not an integer does not match). Keys starting with `favour_` are soft preferences and never
exclude a node.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import Final

from meshnode.core.records import NodeInfo
from meshnode.core.resources import ResourceAmounts
from meshnode.spec import (
    Constraint,
    InputSource,
    Job,
    LocalDirectoryParams,
    WasmParams,
)

__all__ = [
    "SOFT_CONSTRAINT_PREFIX",
    "constraint_matches",
    "local_path_refusal",
    "unsuitability",
]

SOFT_CONSTRAINT_PREFIX: Final = "favour_"
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,25}")


def constraint_matches(constraint: Constraint, labels: dict[str, str]) -> bool:
    value = labels.get(constraint.key)
    values = constraint.values
    match constraint.operator:
        case "=" | "==" | "in":
            return value is not None and value in values
        case "!=" | "notin":
            return value is None or value not in values
        case "exists":
            return value is not None
        case "!":
            return value is None
        case "gt" | "lt":
            if value is None or not _INTEGER.fullmatch(value.strip()) or not values:
                return False
            label, bound = int(value.strip()), int(values[0].strip())
            return label > bound if constraint.operator == "gt" else label < bound
    return False


def unsuitability(job: Job, node: NodeInfo, request: ResourceAmounts) -> list[str]:
    """Why `node` can never run `job` (empty when it can)."""
    reasons = [_explain(constraint, node.labels) for constraint in _hard(job.constraints)]
    reasons = [reason for reason in reasons if reason]
    task = job.task
    engine = task.engine.type if task.engine is not None else ""
    if engine not in node.engines:
        reasons.append(_missing(node, f"engine {engine}"))
    for kind, feature in _features(job):
        if feature not in (node.input_types if kind == "input source" else node.publishers):
            reasons.append(_missing(node, f"{kind} {feature}"))
    reasons.extend(_path_problems(job, node.allowed_local_paths))
    shortfall = request.shortfall(node.capacity)
    if shortfall:
        reasons.append("not enough capacity in total: " + ", ".join(shortfall))
    return reasons


def _hard(constraints: Iterable[Constraint]) -> list[Constraint]:
    return [c for c in constraints if not c.key.startswith(SOFT_CONSTRAINT_PREFIX)]


def _explain(constraint: Constraint, labels: dict[str, str]) -> str:
    if constraint_matches(constraint, labels):
        return ""
    wanted = f"{constraint.key} {constraint.operator} {', '.join(constraint.values)}".rstrip()
    value = labels.get(constraint.key)
    found = "is absent" if value is None else f"is {value!r}"
    return f"label {constraint.key} {found} (the job needs {wanted})"


def _missing(node: NodeInfo, feature: str) -> str:
    reason = node.unavailable.get(feature)
    return f"{feature} is not available: {reason}" if reason else f"{feature} is not available"


def _features(job: Job) -> list[tuple[str, str]]:
    task = job.task
    features = [
        ("input source", source.source.type)
        for source in task.input_sources
        if source.source is not None
    ]
    if task.publisher is not None:
        features.append(("publisher", task.publisher.type))
    return features


def _path_problems(job: Job, allowed: tuple[tuple[str, bool], ...]) -> list[str]:
    problems = []
    for path, read_write, what in _local_paths(job):
        refusal = local_path_refusal(path, read_write, allowed)
        if refusal:
            problems.append(f"{what}: {refusal}")
    return problems


def _local_paths(job: Job) -> list[tuple[str, bool, str]]:
    task = job.task
    found = []
    for source in task.input_sources:
        params = source.source.params if source.source is not None else None
        if isinstance(params, LocalDirectoryParams):
            found.append((params.source_path, params.read_write, f"input {source.target}"))
    if task.engine is not None and isinstance(task.engine.params, WasmParams):
        modules: list[InputSource | str | None] = [
            task.engine.params.entry_module,
            *task.engine.params.import_modules,
        ]
        for module in modules:
            if isinstance(module, str) and module.startswith("/"):
                found.append((module, False, "wasm module"))
            elif isinstance(module, InputSource) and module.source is not None:
                params = module.source.params
                if isinstance(params, LocalDirectoryParams):
                    found.append((params.source_path, False, "wasm module"))
    return found


def local_path_refusal(
    path: str, read_write: bool, allowed: tuple[tuple[str, bool], ...]
) -> str | None:
    """Why `path` may not be used with this access (None when an allow-listed entry covers
    it). The one place this rule lives: the core checks it when placing a job, the node that
    mounts the path checks it again."""
    normalized = posixpath.normpath(path)
    for listed, listed_rw in allowed:
        prefix = posixpath.normpath(listed)
        inside = normalized == prefix or normalized.startswith(prefix.rstrip("/") + "/")
        if inside and (listed_rw or not read_write):
            return None
    shown = ", ".join(f"{p} ({'rw' if rw else 'ro'})" for p, rw in allowed) or "none"
    access = "read-write" if read_write else "read-only"
    return (
        f"local path {path} ({access}) is not allow-listed on this node "
        f"(--allow-listed-local-paths: {shown})"
    )
