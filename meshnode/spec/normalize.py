"""Filling in the defaults users rely on, and canonical spellings of enumerated values.

Rules of this module: it never rejects anything (that is `validate.py`'s job) and it is
idempotent, so normalizing an already normalized spec changes nothing. Values it does not
recognise are left as written for the validator to name.
"""

from __future__ import annotations

from typing import Final

from msgspec.structs import replace

from meshnode.spec.model import (
    JOB_TYPES,
    NETWORK_TYPES,
    DockerParams,
    EngineSpec,
    Job,
    NetworkSpec,
    Task,
    WasmParams,
)

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_TASK_NAME", "DEFAULT_WASM_ENTRY_POINT", "normalize_job"]

DEFAULT_NAMESPACE: Final = "default"
DEFAULT_TASK_NAME: Final = "main"
DEFAULT_WASM_ENTRY_POINT: Final = "_start"
# Job types that run `Count` executions; the others run one per matching node.
COUNTED_JOB_TYPES: Final = ("batch", "service")
CONSTRAINT_OPERATORS: Final = ("=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt")


def _canonical(value: str, choices: tuple[str, ...]) -> str:
    folded = value.strip().lower()
    for choice in choices:
        if choice.lower() == folded:
            return choice
    return value


def normalize_job(job: Job) -> Job:
    job_type = _canonical(job.type, JOB_TYPES)
    count = job.count
    if count is None:
        count = 1 if job_type in COUNTED_JOB_TYPES else 0
    constraints = tuple(
        replace(constraint, operator=_canonical(constraint.operator, CONSTRAINT_OPERATORS))
        for constraint in job.constraints
    )
    return replace(
        job,
        type=job_type,
        namespace=job.namespace.strip() or DEFAULT_NAMESPACE,
        count=count,
        constraints=constraints,
        tasks=tuple(_normalize_task(task) for task in job.tasks),
    )


def _normalize_task(task: Task) -> Task:
    network = task.network or NetworkSpec()
    network = replace(network, type=_canonical(network.type or "None", NETWORK_TYPES))
    engine = task.engine
    if engine is not None:
        engine = _normalize_engine(engine)
    return replace(
        task, name=task.name.strip() or DEFAULT_TASK_NAME, network=network, engine=engine
    )


def _normalize_engine(engine: EngineSpec) -> EngineSpec:
    params = engine.params
    if isinstance(params, WasmParams) and not params.entry_point:
        params = replace(params, entry_point=DEFAULT_WASM_ENTRY_POINT)
    elif isinstance(params, DockerParams):
        # Bacalhau's own examples write "KEY = value"; a variable name never has spaces.
        params = replace(
            params,
            environment_variables=tuple(
                _tidy_assignment(item) for item in params.environment_variables
            ),
        )
    return replace(engine, params=params)


def _tidy_assignment(item: str) -> str:
    name, equals, value = item.partition("=")
    if not equals:
        return item
    return f"{name.strip()}={value.strip()}"
