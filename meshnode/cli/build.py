"""Job specs built from `docker run` and `wasm run` flags (Bacalhau's imperative commands).

Rules of this module:
- The built spec goes through the same normalization and validation as a spec file
  (`job_from_document`), so `docker run` can never submit what `job run` would refuse.
- Flags are parsed (and blamed by name) in `flags.py`; this module only assembles.
- A local wasm module travels inside the spec as a `data:` URL (an `inline` source), so the
  node needs no access to this machine; a module too large for a spec must be served over
  http(s) instead. WAT text is shipped as it is: wasmtime compiles the text format too.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from meshnode.cli.flags import FlagError, InputFlag
from meshnode.spec import (
    MAX_SPEC_BYTES,
    DockerParams,
    EngineSpec,
    HttpSourceParams,
    InputSource,
    Job,
    LocalDirectoryParams,
    NetworkSpec,
    PublisherSpec,
    Resources,
    ResultPath,
    SourceSpec,
    Task,
    Timeouts,
    WasmParams,
    job_from_document,
)

__all__ = [
    "DEFAULT_RESULT_PATHS",
    "MAX_INLINE_MODULE_BYTES",
    "TaskFlags",
    "build_docker_job",
    "build_wasm_job",
    "wasm_entry_module",
]

DEFAULT_RESULT_PATHS: Final = (("outputs", "/outputs"),)
NETWORK_SPELLING: Final = {"none": "None", "http": "HTTP", "full": "Full"}
WASM_MAGIC: Final = b"\0asm"
# base64 grows a module by 4/3, and the rest of the spec needs room too.
MAX_INLINE_MODULE_BYTES: Final = (MAX_SPEC_BYTES - 64 * 1024) * 3 // 4


@dataclass(frozen=True, slots=True)
class TaskFlags:
    """What `docker run` and `wasm run` share, already parsed."""

    count: int = 1
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    inputs: tuple[InputFlag, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cpu: str = ""
    memory: str = ""
    disk: str = ""
    gpu: str = ""
    network: str | None = None  # none | http | full
    domains: tuple[str, ...] = ()
    publisher: str = "local"
    result_paths: tuple[tuple[str, str], ...] = DEFAULT_RESULT_PATHS
    timeout_s: int | None = None


def build_docker_job(
    image: str,
    command: Sequence[str],
    flags: TaskFlags,
    *,
    entrypoint: Sequence[str] | None = None,
    working_directory: str = "",
) -> Job:
    params = DockerParams(
        image=image,
        entrypoint=tuple(entrypoint) if entrypoint else None,
        parameters=tuple(command),
        environment_variables=tuple(f"{k}={v}" for k, v in flags.env.items()),
        working_directory=working_directory,
    )
    return _job(EngineSpec(type="docker", params=params), flags)


def build_wasm_job(
    entry_module: InputSource | str,
    arguments: Sequence[str],
    flags: TaskFlags,
    *,
    entry_point: str = "",
) -> Job:
    params = WasmParams(
        entry_module=entry_module,
        entry_point=entry_point,
        parameters=tuple(arguments),
        environment_variables=dict(flags.env),
    )
    return _job(EngineSpec(type="wasm", params=params), flags)


def wasm_entry_module(module: str, *, cwd: Path) -> InputSource | str:
    """`wasm run MODULE`: an http(s) URL is passed on; a local .wasm/.wat file is inlined."""
    if module.startswith(("http://", "https://")):
        return module
    path = cwd / module
    try:
        size = path.stat().st_size
        if size > MAX_INLINE_MODULE_BYTES:
            raise FlagError(
                "MODULE",
                f"{module} is {size} bytes; a module shipped inside the spec may have at most "
                f"{MAX_INLINE_MODULE_BYTES} (serve it over http(s) and pass the URL instead)",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise FlagError(
            "MODULE", f"{module}: no such file (give a local .wasm/.wat file or an http(s) URL)"
        ) from None
    except IsADirectoryError:
        raise FlagError("MODULE", f"{module} is a folder, not a .wasm or .wat file") from None
    except OSError as error:
        raise FlagError("MODULE", f"{module}: {error.strerror or error}") from None
    if not data.startswith(WASM_MAGIC) and path.suffix.lower() != ".wat":
        raise FlagError(
            "MODULE", f"{module} is not a WebAssembly module (no \\0asm header, not a .wat file)"
        )
    url = "data:application/wasm;base64," + base64.b64encode(data).decode("ascii")
    return InputSource(source=SourceSpec(type="inline", params=HttpSourceParams(url=url)))


def _job(engine: EngineSpec, flags: TaskFlags) -> Job:
    network = None
    if flags.network is not None or flags.domains:
        # --domain alone means "HTTP to these domains", the only type that takes domains.
        kind = NETWORK_SPELLING.get((flags.network or "http").lower(), flags.network or "")
        network = NetworkSpec(type=kind, domains=flags.domains)
    resources = Resources(cpu=flags.cpu, memory=flags.memory, disk=flags.disk, gpu=flags.gpu)
    task = Task(
        name="main",
        engine=engine,
        publisher=PublisherSpec(type=flags.publisher),
        input_sources=tuple(_input_source(item) for item in flags.inputs),
        result_paths=tuple(ResultPath(name=n, path=p) for n, p in flags.result_paths),
        resources=resources if resources != Resources() else None,
        network=network,
        timeouts=Timeouts(execution_timeout=flags.timeout_s) if flags.timeout_s else None,
    )
    job = Job(
        name=flags.name, type="batch", count=flags.count, labels=dict(flags.labels), tasks=(task,)
    )
    # Through the spec reader: defaults, canonical spellings and every validation rule.
    return job_from_document(msgspec.to_builtins(job))


def _input_source(item: InputFlag) -> InputSource:
    if item.kind == "urlDownload":
        source = SourceSpec(type="urlDownload", params=HttpSourceParams(url=item.source))
    else:
        source = SourceSpec(
            type="localDirectory",
            params=LocalDirectoryParams(source_path=item.source, read_write=item.read_write),
        )
    return InputSource(source=source, target=item.target)
