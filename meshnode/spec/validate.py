"""What a job spec means, checked: every rule a converted, normalized spec must satisfy.

Rules of this module:
- It sees a spec after `convert.py` (so types are right) and `normalize.py` (so enumerated
  values have their canonical spelling); it only reports, it never changes the spec.
- Every problem names the field path in the wire spelling (`Tasks[0].Network.Domains[1]`) and
  the bad value; all problems are reported, not only the first.
- A field that already failed to convert is not blamed again (`ProblemCollector.failed`).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from meshnode.spec.model import (
    JOB_TYPES,
    NETWORK_TYPES,
    Constraint,
    DockerParams,
    EngineSpec,
    HttpSourceParams,
    InputSource,
    IpfsSourceParams,
    Job,
    LocalDirectoryParams,
    NetworkSpec,
    PublisherSpec,
    Resources,
    S3PublisherParams,
    S3SourceParams,
    Task,
    Timeouts,
    WasmParams,
)
from meshnode.spec.normalize import CONSTRAINT_OPERATORS
from meshnode.spec.problems import (
    ProblemCollector,
    at_field,
    at_index,
    at_key,
    did_you_mean,
    show,
)
from meshnode.spec.quantities import (
    QuantityError,
    parse_cpu_millicores,
    parse_gpu_count,
    parse_size_bytes,
)

__all__ = ["validate_job"]

_OPERATOR_ARITY: Final[dict[str, tuple[int, int | None]]] = {
    "=": (1, 1),
    "==": (1, 1),
    "!=": (1, 1),
    "in": (1, None),
    "notin": (1, None),
    "exists": (0, 0),
    "!": (0, 0),
    "gt": (1, 1),
    "lt": (1, 1),
}
assert set(_OPERATOR_ARITY) == set(CONSTRAINT_OPERATORS)

_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_ENV_NAME_RE: Final = re.compile(r"[^=\s]+")
_BASE58: Final = "1-9A-HJ-NP-Za-km-z"
_CID_RE: Final = re.compile(
    rf"Qm[{_BASE58}]{{44}}"  # CIDv0: base58btc sha2-256 multihash
    rf"|b[a-z2-7]{{50,}}|B[A-Z2-7]{{50,}}|z[{_BASE58}]{{40,}}|f[0-9a-f]{{60,}}"  # CIDv1
)
_PUBLISHER_HINT: Final = "add a Publisher (ipfs, local, s3 or noop)"


def validate_job(job: Job, problems: ProblemCollector) -> None:
    _check_type(job.type, problems)
    for index, constraint in enumerate(job.constraints):
        _check_constraint(constraint, at_index("Constraints", index), problems)
    if not job.tasks and not problems.failed_within("Tasks"):
        problems.add("Tasks", "a job needs exactly one task, got none")
    elif len(job.tasks) > 1:
        problems.add(
            "Tasks",
            f"a job has exactly one task, got {len(job.tasks)} (one task per job)",
            blame=False,  # the problems inside each task are still worth reporting
        )
    for index, task in enumerate(job.tasks):
        _check_task(task, at_index("Tasks", index), problems)


def _check_type(job_type: str, problems: ProblemCollector) -> None:
    if problems.failed("Type"):
        return
    if not job_type:
        problems.add("Type", f"required: one of {', '.join(JOB_TYPES)}")
    elif job_type not in JOB_TYPES:
        problems.add(
            "Type",
            f"{show(job_type)} is not a job type (one of {', '.join(JOB_TYPES)})"
            + did_you_mean(job_type, JOB_TYPES),
        )


def _check_constraint(constraint: Constraint, path: str, problems: ProblemCollector) -> None:
    if not constraint.key.strip():
        problems.add(at_field(path, "Key"), "required: the node label to test")
    operator = constraint.operator
    if operator not in _OPERATOR_ARITY:
        if not problems.failed(at_field(path, "Operator")):
            problems.add(
                at_field(path, "Operator"),
                f"{show(operator)} is not an operator (one of {' '.join(CONSTRAINT_OPERATORS)})",
            )
        return
    least, most = _OPERATOR_ARITY[operator]
    count = len(constraint.values)
    if problems.failed_within(at_field(path, "Values")):
        return  # a value that failed to convert is missing from the count
    if count < least or (most is not None and count > most):
        if most == 0:
            wanted = "no values"
        elif most == 1:
            wanted = "exactly one value"
        else:
            wanted = "at least one value"
        problems.add(path, f"operator {show(operator)} takes {wanted}, got {count}")
    if operator in ("gt", "lt"):
        for index, value in enumerate(constraint.values):
            if not re.fullmatch(r"[+-]?[0-9]+", value.strip()):
                problems.add(
                    at_index(at_field(path, "Values"), index),
                    f"{show(value)} is not an integer (operator {operator} compares numbers)",
                )


def _check_task(task: Task, path: str, problems: ProblemCollector) -> None:
    _check_engine(task.engine, at_field(path, "Engine"), problems)
    _check_publisher(task.publisher, at_field(path, "Publisher"), problems)
    _check_names(task.env, at_field(path, "Env"), "a variable name", problems)
    targets: dict[str, int] = {}
    for index, source in enumerate(task.input_sources):
        source_path = at_index(at_field(path, "InputSources"), index)
        _check_input_source(source, source_path, problems, target_required=True)
        if not source.target:
            continue  # already reported as missing
        if source.target in targets:
            problems.add(
                at_field(source_path, "Target"),
                f"{show(source.target)} is also the target of "
                f"InputSources[{targets[source.target]}]",
            )
        targets.setdefault(source.target, index)
    _check_result_paths(task, path, problems)
    if task.resources is not None:
        _check_resources(task.resources, at_field(path, "Resources"), problems)
    if task.network is not None:
        _check_network(task.network, at_field(path, "Network"), problems)
    if task.timeouts is not None:
        _check_timeouts(task.timeouts, at_field(path, "Timeouts"), problems)


def _check_engine(engine: EngineSpec | None, path: str, problems: ProblemCollector) -> None:
    if engine is None:
        if not problems.failed(path):
            problems.add(path, "required: the engine that runs the task (docker or wasm)")
        return
    params = engine.params
    params_path = at_field(path, "Params")
    if isinstance(params, DockerParams):
        if not params.image.strip() and not problems.failed(at_field(params_path, "Image")):
            problems.add(at_field(params_path, "Image"), "required: the image to run")
        for index, item in enumerate(params.environment_variables):
            name, equals, _ = item.partition("=")
            if not equals or not _ENV_NAME_RE.fullmatch(name.strip()):
                problems.add(
                    at_index(at_field(params_path, "EnvironmentVariables"), index),
                    f"{show(item)} is not NAME=value",
                )
    elif isinstance(params, WasmParams):
        module_path = at_field(params_path, "EntryModule")
        if params.entry_module is None or params.entry_module == "":
            if not problems.failed(module_path):
                problems.add(
                    module_path, "required: the WebAssembly module (a path, URL or input source)"
                )
        else:
            _check_module(params.entry_module, module_path, problems)
        for index, module in enumerate(params.import_modules):
            _check_module(module, at_index(at_field(params_path, "ImportModules"), index), problems)
        _check_names(
            params.environment_variables,
            at_field(params_path, "EnvironmentVariables"),
            "a variable name",
            problems,
        )


def _check_module(module: InputSource | str, path: str, problems: ProblemCollector) -> None:
    if isinstance(module, str):
        if not module.strip():
            problems.add(path, "must not be empty")
        elif "://" in module and urlsplit(module).scheme not in ("http", "https"):
            problems.add(path, f"{show(module)}: only http and https URLs can be downloaded")
    else:
        _check_input_source(module, path, problems, target_required=False)


def _check_publisher(
    publisher: PublisherSpec | None, path: str, problems: ProblemCollector
) -> None:
    if publisher is None:
        return
    if isinstance(publisher.params, S3PublisherParams) and not publisher.params.bucket.strip():
        problems.add(at_field(at_field(path, "Params"), "Bucket"), "required for the s3 publisher")


def _check_input_source(
    source: InputSource, path: str, problems: ProblemCollector, *, target_required: bool
) -> None:
    target_path = at_field(path, "Target")
    if source.target:
        _check_absolute(source.target, target_path, problems)
    elif target_required and not problems.failed(target_path):
        problems.add(target_path, "required: where the data appears inside the task, e.g. /inputs")
    spec_path = at_field(path, "Source")
    if source.source is None:
        if not problems.failed(spec_path):
            problems.add(spec_path, "required: the Type and Params of the data to fetch")
        return
    params = source.source.params
    params_path = at_field(spec_path, "Params")
    if isinstance(params, IpfsSourceParams):
        _check_cid(params.cid, at_field(params_path, "CID"), problems)
    elif isinstance(params, HttpSourceParams):
        _check_url(params.url, source.source.type, at_field(params_path, "URL"), problems)
    elif isinstance(params, LocalDirectoryParams):
        _check_absolute(params.source_path, at_field(params_path, "SourcePath"), problems)
    elif isinstance(params, S3SourceParams) and not params.bucket.strip():
        problems.add(at_field(params_path, "Bucket"), "required for an s3 input")


def _check_cid(cid: str, path: str, problems: ProblemCollector) -> None:
    if not cid.strip():
        problems.add(path, "required: the CID of the data")
    elif not _CID_RE.fullmatch(cid.strip()):
        problems.add(path, f"{show(cid)} is not a CID (e.g. Qm… or bafy…)")


def _check_url(url: str, source_type: str, path: str, problems: ProblemCollector) -> None:
    if not url.strip():
        problems.add(path, "required")
        return
    parts = urlsplit(url.strip())
    if source_type == "inline":
        if parts.scheme != "data":
            problems.add(path, f"{show(url)} is not a data: URL (inline sources carry their data)")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.add(path, f"{show(url)} is not an http or https URL")


def _check_result_paths(task: Task, path: str, problems: ProblemCollector) -> None:
    results_path = at_field(path, "ResultPaths")
    names: dict[str, int] = {}
    for index, result in enumerate(task.result_paths):
        item_path = at_index(results_path, index)
        if not result.name.strip():
            problems.add(at_field(item_path, "Name"), "required: the name of this result")
        elif result.name in names:
            problems.add(
                at_field(item_path, "Name"),
                f"{show(result.name)} is also the name of ResultPaths[{names[result.name]}]",
            )
        names.setdefault(result.name, index)
        if not result.path:
            problems.add(at_field(item_path, "Path"), "required: the folder to collect")
        else:
            _check_absolute(result.path, at_field(item_path, "Path"), problems)
    if (
        task.result_paths
        and task.publisher is None
        and not problems.failed(at_field(path, "Publisher"))
    ):
        problems.add(results_path, f"results need somewhere to go: {_PUBLISHER_HINT}")


def _check_resources(resources: Resources, path: str, problems: ProblemCollector) -> None:
    parsers: tuple[tuple[str, str, Callable[[str], int]], ...] = (
        ("CPU", resources.cpu, parse_cpu_millicores),
        ("Memory", resources.memory, parse_size_bytes),
        ("Disk", resources.disk, parse_size_bytes),
        ("GPU", resources.gpu, parse_gpu_count),
    )
    for name, text, parse in parsers:
        try:
            parse(text)
        except QuantityError as error:
            problems.add(at_field(path, name), str(error))


def _check_network(network: NetworkSpec, path: str, problems: ProblemCollector) -> None:
    type_path = at_field(path, "Type")
    if network.type not in NETWORK_TYPES:
        if not problems.failed(type_path):
            problems.add(
                type_path,
                f"{show(network.type)} is not a network type (one of {', '.join(NETWORK_TYPES)})"
                + did_you_mean(network.type, NETWORK_TYPES),
            )
        return
    domains_path = at_field(path, "Domains")
    if network.type == "HTTP" and not network.domains and not problems.failed(domains_path):
        problems.add(domains_path, "network type HTTP needs at least one domain to allow")
    if network.type != "HTTP" and network.domains:
        problems.add(
            domains_path, f"domains are only used with network type HTTP, not {network.type}"
        )
    for index, domain in enumerate(network.domains):
        if not _is_domain(domain):
            problems.add(
                at_index(domains_path, index),
                f"{show(domain)} is not a host name, .wildcard or IP address",
            )


def _is_domain(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    name = text.removeprefix("*.").removeprefix(".").removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL_RE.fullmatch(part) for part in name.split("."))


def _check_timeouts(timeouts: Timeouts, path: str, problems: ProblemCollector) -> None:
    total = timeouts.total_timeout
    spent = timeouts.execution_timeout + timeouts.queue_timeout
    if total > 0 and spent > total:
        problems.add(
            path,
            f"ExecutionTimeout + QueueTimeout ({timeouts.execution_timeout} + "
            f"{timeouts.queue_timeout} = {spent} s) exceeds TotalTimeout ({total} s)",
        )


def _check_absolute(text: str, path: str, problems: ProblemCollector) -> None:
    if not text.startswith("/"):
        problems.add(path, f"{show(text)} is not an absolute path (it must start with /)")
    elif ".." in text.split("/"):
        problems.add(path, f"{show(text)} must not contain ..")
    elif posixpath.normpath(text) != text.rstrip("/") and text != "/":
        problems.add(path, f"{show(text)} is not a plain path (write {posixpath.normpath(text)})")


def _check_names(mapping: dict[str, str], path: str, what: str, problems: ProblemCollector) -> None:
    for name in mapping:
        if not _ENV_NAME_RE.fullmatch(name):
            problems.add(at_key(path, name), f"{show(name)} is not {what}")
