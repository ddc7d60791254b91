"""The job spec: Bacalhau's job model as frozen msgspec Structs.

Rules of this module:
- Field names are snake_case in Python and Bacalhau's PascalCase on the wire (`_wire_name`);
  readers match keys case-insensitively (see `convert.py`), writers use this spelling.
- Every field has a default that means "absent". Defaults users rely on (namespace `default`,
  one execution, no network, task `main`, entry point `_start`) are filled in by
  `normalize.py`, so an encoded normalized spec states them and re-parses to itself.
- Structs that carry typed `Params` chosen by a `Type` field (engines, input sources,
  publishers) name their choices in `params_by_type`; the converter picks the Params struct
  from the Type. Adding an engine or a source type is one entry there.
- No validation lives here: shape and types in `convert.py`, meaning in `validate.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Final, TypeAlias

import msgspec

from meshnode.spec.quantities import parse_cpu_millicores, parse_gpu_count, parse_size_bytes

__all__ = [
    "JOB_TYPES",
    "NETWORK_TYPES",
    "Constraint",
    "DockerParams",
    "EmptyParams",
    "EngineSpec",
    "HttpSourceParams",
    "InputSource",
    "IpfsSourceParams",
    "Job",
    "LocalDirectoryParams",
    "NetworkSpec",
    "Params",
    "PublisherSpec",
    "Resources",
    "ResultPath",
    "S3PublisherParams",
    "S3SourceParams",
    "SourceSpec",
    "Task",
    "Timeouts",
    "WasmParams",
]

JOB_TYPES: Final = ("batch", "ops", "daemon", "service")
NETWORK_TYPES: Final = ("None", "HTTP", "Full")

# Acronyms that Bacalhau spells in capitals; everything else is plain PascalCase.
_ACRONYMS: Final = {
    "cpu": "CPU",
    "gpu": "GPU",
    "cid": "CID",
    "url": "URL",
    "id": "ID",
    "version_id": "VersionID",
    "checksum_sha256": "ChecksumSHA256",
}

Seconds = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def _wire_name(name: str) -> str:
    return _ACRONYMS.get(name) or "".join(part.capitalize() for part in name.split("_"))


class _Spec(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename=_wire_name,
    omit_defaults=True,
    forbid_unknown_fields=True,
):
    """Base of every spec struct: the shared encoding rules."""


class Params(_Spec, frozen=True):
    """Base of every typed `Params` mapping."""


# An alias, because inside the structs below the field named `type` hides the builtin.
ParamsClass: TypeAlias = type[Params]


class EmptyParams(Params, frozen=True):
    """Params of a type that takes none (the `ipfs`, `local` and `noop` publishers)."""


# --- engines ---------------------------------------------------------------------------------


class DockerParams(Params, frozen=True):
    image: str = ""
    entrypoint: tuple[str, ...] | None = None
    parameters: tuple[str, ...] = ()
    # "KEY=value" strings, as in Bacalhau's docker engine spec.
    environment_variables: tuple[str, ...] = ()
    working_directory: str = ""


class InputSource(_Spec, frozen=True):
    """Data placed in the task's filesystem at `target` before it starts."""

    source: SourceSpec | None = None
    target: str = ""
    alias: str = ""


class WasmParams(Params, frozen=True):
    # A module given as an input source, or as a string: a local path, an http(s) URL or a
    # data: URL (the CLI's `wasm run` shorthand).
    entry_module: InputSource | str | None = None
    entry_point: str = ""
    parameters: tuple[str, ...] = ()
    environment_variables: dict[str, str] = msgspec.field(default_factory=dict)
    import_modules: tuple[InputSource | str, ...] = ()


class EngineSpec(_Spec, frozen=True):
    params_by_type: ClassVar[Mapping[str, ParamsClass]] = {
        "docker": DockerParams,
        "wasm": WasmParams,
    }
    type_kind: ClassVar[str] = "engine"

    type: str = ""
    params: Params | None = None


# --- input sources ---------------------------------------------------------------------------


class IpfsSourceParams(Params, frozen=True):
    cid: str = ""


class HttpSourceParams(Params, frozen=True):
    """`urlDownload` (an http(s) URL) and `inline` (a data: URL) sources."""

    url: str = ""


class LocalDirectoryParams(Params, frozen=True):
    source_path: str = ""
    read_write: bool = False


class S3SourceParams(Params, frozen=True):
    bucket: str = ""
    key: str = ""
    filter: str = ""
    region: str = ""
    endpoint: str = ""
    version_id: str = ""
    checksum_sha256: str = ""


class SourceSpec(_Spec, frozen=True):
    params_by_type: ClassVar[Mapping[str, ParamsClass]] = {
        "ipfs": IpfsSourceParams,
        "urlDownload": HttpSourceParams,
        "localDirectory": LocalDirectoryParams,
        "s3": S3SourceParams,
        "inline": HttpSourceParams,
    }
    type_kind: ClassVar[str] = "input source"

    type: str = ""
    params: Params | None = None


# --- publishers ------------------------------------------------------------------------------


class S3PublisherParams(Params, frozen=True):
    bucket: str = ""
    # May hold {jobID}, {executionID}, {nodeID}, {date}, {time} placeholders.
    key: str = ""
    region: str = ""
    endpoint: str = ""


class PublisherSpec(_Spec, frozen=True):
    params_by_type: ClassVar[Mapping[str, ParamsClass]] = {
        "ipfs": EmptyParams,
        "local": EmptyParams,
        "s3": S3PublisherParams,
        "noop": EmptyParams,
    }
    type_kind: ClassVar[str] = "publisher"

    type: str = ""
    params: Params | None = None


# --- the task --------------------------------------------------------------------------------


class ResultPath(_Spec, frozen=True):
    name: str = ""
    path: str = ""


class Resources(_Spec, frozen=True):
    """Quantities as the user wrote them; the `*_bytes`/`*_millicores` properties parse them.

    The text is kept (not the integers) so a spec round-trips as written; `validate.py` has
    already rejected anything the properties could not parse.
    """

    cpu: str = ""
    memory: str = ""
    disk: str = ""
    gpu: str = ""

    @property
    def cpu_millicores(self) -> int:
        return parse_cpu_millicores(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_size_bytes(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size_bytes(self.disk)

    @property
    def gpu_count(self) -> int:
        return parse_gpu_count(self.gpu)


class NetworkSpec(_Spec, frozen=True):
    type: str = ""
    domains: tuple[str, ...] = ()


class Timeouts(_Spec, frozen=True):
    """Seconds; 0 means "no limit" (or the node's default)."""

    queue_timeout: Seconds = 0
    total_timeout: Seconds = 0
    execution_timeout: Seconds = 0


class Task(_Spec, frozen=True):
    name: str = ""
    engine: EngineSpec | None = None
    publisher: PublisherSpec | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    input_sources: tuple[InputSource, ...] = ()
    result_paths: tuple[ResultPath, ...] = ()
    resources: Resources | None = None
    network: NetworkSpec | None = None
    timeouts: Timeouts | None = None


# --- the job ---------------------------------------------------------------------------------


class Constraint(_Spec, frozen=True):
    key: str = ""
    operator: str = ""
    values: tuple[str, ...] = ()


class Job(_Spec, frozen=True):
    name: str = ""
    type: str = ""
    namespace: str = ""
    priority: Int64 = 0
    # None until normalized: the default depends on the job type.
    count: NonNegative | None = None
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    tasks: tuple[Task, ...] = ()

    @property
    def task(self) -> Task:
        """The job's one task (validation guarantees there is exactly one)."""
        return self.tasks[0]
