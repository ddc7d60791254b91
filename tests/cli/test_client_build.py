"""Specs built by `docker run` and `wasm run` (`meshnode.cli.build`): what they submit is a
normalized, validated spec, and a local module travels inline."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from meshnode.cli.build import (
    MAX_INLINE_MODULE_BYTES,
    TaskFlags,
    build_docker_job,
    build_wasm_job,
    wasm_entry_module,
)
from meshnode.cli.flags import FlagError, parse_input
from meshnode.errors import SpecError
from meshnode.spec import (
    DockerParams,
    HttpSourceParams,
    InputSource,
    LocalDirectoryParams,
    WasmParams,
    encode_job,
    load_job,
)

HELLO_WAT = '(module (func (export "_start")))'
WASM_HEADER = b"\0asm\x01\0\0\0"


def test_docker_job_is_a_normalized_batch_job() -> None:
    job = build_docker_job("busybox:1.36", ["echo", "hi"], TaskFlags())
    assert (job.type, job.count, job.namespace) == ("batch", 1, "default")
    task = job.task
    assert task.name == "main"
    assert task.engine is not None
    assert task.engine.params == DockerParams(image="busybox:1.36", parameters=("echo", "hi"))
    assert task.publisher is not None and task.publisher.type == "local"
    assert [(r.name, r.path) for r in task.result_paths] == [("outputs", "/outputs")]
    assert task.network is not None and task.network.type == "None"
    assert task.resources is None and task.timeouts is None


def test_docker_job_carries_every_flag() -> None:
    cwd = PurePosixPath("/work")
    flags = TaskFlags(
        count=3,
        name="etl",
        labels={"team": "data"},
        inputs=(
            parse_input("./in:/inputs:rw", cwd=cwd),
            parse_input("https://example.com/a.csv:/data/a.csv", cwd=cwd),
        ),
        env={"MODE": "fast", "LIST": "a,b"},
        cpu="500m",
        memory="256Mb",
        network="http",
        domains=("example.com", ".internal.example.com"),
        publisher="noop",
        result_paths=(("out", "/out"),),
        timeout_s=90,
    )
    job = build_docker_job(
        "python:3.11",
        ["-c", "print(1)"],
        flags,
        entrypoint=["python3"],
        working_directory="/app",
    )
    task = job.task
    assert (job.count, job.name, job.labels) == (3, "etl", {"team": "data"})
    assert task.engine is not None
    assert task.engine.params == DockerParams(
        image="python:3.11",
        entrypoint=("python3",),
        parameters=("-c", "print(1)"),
        environment_variables=("MODE=fast", "LIST=a,b"),
        working_directory="/app",
    )
    local, url = task.input_sources
    assert local.target == "/inputs"
    assert local.source is not None and local.source.type == "localDirectory"
    assert local.source.params == LocalDirectoryParams(source_path="/work/in", read_write=True)
    assert url.source is not None and url.source.type == "urlDownload"
    assert url.source.params == HttpSourceParams(url="https://example.com/a.csv")
    assert task.resources is not None
    assert (task.resources.cpu_millicores, task.resources.memory_bytes) == (500, 256 * 1024**2)
    assert task.network is not None
    assert (task.network.type, task.network.domains) == (
        "HTTP",
        ("example.com", ".internal.example.com"),
    )
    assert task.publisher is not None and task.publisher.type == "noop"
    assert task.timeouts is not None and task.timeouts.execution_timeout == 90


def test_a_domain_alone_means_http_network() -> None:
    job = build_docker_job("busybox", [], TaskFlags(domains=("example.com",)))
    assert job.task.network is not None
    assert job.task.network.type == "HTTP"


def test_the_built_spec_is_validated_like_a_file() -> None:
    with pytest.raises(SpecError) as caught:
        build_docker_job("busybox", [], TaskFlags(network="full", domains=("example.com",)))
    assert "Tasks[0].Network.Domains: domains are only used with network type HTTP" in str(
        caught.value
    )


def test_the_built_spec_reads_back_as_itself() -> None:
    """What `docker run` submits is a spec `job run` accepts unchanged."""
    job = build_docker_job("busybox", ["true"], TaskFlags(cpu="1", env={"A": "1"}))
    assert load_job(encode_job(job, spec_format="json")) == job


# --- wasm ----------------------------------------------------------------------------------------


def test_a_local_wasm_module_is_shipped_inline(tmp_path: Path) -> None:
    module = tmp_path / "hello.wasm"
    module.write_bytes(WASM_HEADER)
    entry = wasm_entry_module("hello.wasm", cwd=tmp_path)
    assert isinstance(entry, InputSource)
    assert entry.source is not None and entry.source.type == "inline"
    assert isinstance(entry.source.params, HttpSourceParams)
    prefix = "data:application/wasm;base64,"
    assert entry.source.params.url.startswith(prefix)
    assert base64.b64decode(entry.source.params.url.removeprefix(prefix)) == WASM_HEADER


def test_a_wat_file_is_shipped_as_its_text(tmp_path: Path) -> None:
    (tmp_path / "hello.wat").write_text(HELLO_WAT)
    entry = wasm_entry_module(str(tmp_path / "hello.wat"), cwd=Path("/"))
    assert isinstance(entry, InputSource) and entry.source is not None
    assert isinstance(entry.source.params, HttpSourceParams)
    encoded = entry.source.params.url.partition(",")[2]
    assert base64.b64decode(encoded).decode() == HELLO_WAT


def test_an_http_module_is_passed_as_its_url(tmp_path: Path) -> None:
    url = "https://modules.example.com/hello.wasm"
    assert wasm_entry_module(url, cwd=tmp_path) == url


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("missing.wasm", None, "no such file"),
        ("notes.txt", b"hello", "not a WebAssembly module"),
    ],
)
def test_module_errors(tmp_path: Path, name: str, content: bytes | None, complaint: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(FlagError, match=complaint):
        wasm_entry_module(name, cwd=tmp_path)


def test_a_module_too_large_for_a_spec_is_refused_before_reading(tmp_path: Path) -> None:
    module = tmp_path / "big.wasm"
    with module.open("wb") as sink:
        sink.truncate(MAX_INLINE_MODULE_BYTES + 1)  # sparse: no real disk used
    with pytest.raises(FlagError, match="serve it over http"):
        wasm_entry_module("big.wasm", cwd=tmp_path)


def test_wasm_job_carries_arguments_env_and_entry_point(tmp_path: Path) -> None:
    (tmp_path / "m.wasm").write_bytes(WASM_HEADER)
    entry = wasm_entry_module("m.wasm", cwd=tmp_path)
    job = build_wasm_job(entry, ["a", "b c"], TaskFlags(env={"LOG": "debug"}), entry_point="main")
    assert job.task.engine is not None
    params = job.task.engine.params
    assert isinstance(params, WasmParams)
    assert params.entry_module == entry
    assert (params.parameters, params.entry_point) == (("a", "b c"), "main")
    assert params.environment_variables == {"LOG": "debug"}
    assert load_job(encode_job(job, spec_format="json")) == job


def test_wasm_entry_point_defaults_to_start() -> None:
    job = build_wasm_job("https://example.com/m.wasm", [], TaskFlags())
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, WasmParams)
    assert job.task.engine.params.entry_point == "_start"


# --- through the command -------------------------------------------------------------------------


def _meshnode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert executable
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=30, cwd=cwd,
        check=False, env={**os.environ, "MESHNODE_API_PORT": "1"},
    )  # fmt: skip


def test_docker_run_dry_run_prints_the_spec_it_would_submit(tmp_path: Path) -> None:
    result = _meshnode(
        "docker", "run", "--dry-run", "-o", "json", "-i", "data:/inputs", "-e", "K=V",
        "--entrypoint", "/bin/sh -c", "busybox", "--", "echo", "--flag-like", "hi",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["Tasks"][0]
    assert task["Engine"]["Params"] == {
        "Image": "busybox",
        "Entrypoint": ["/bin/sh", "-c"],
        "Parameters": ["echo", "--flag-like", "hi"],
        "EnvironmentVariables": ["K=V"],
    }
    assert task["InputSources"][0]["Source"]["Params"]["SourcePath"] == str(tmp_path / "data")


def test_docker_run_names_a_bad_flag_value(tmp_path: Path) -> None:
    result = _meshnode("docker", "run", "--memory", "1 Gigs", "busybox", cwd=tmp_path)
    assert result.returncode == 2
    assert "Invalid value for '--memory'" in result.stderr
    assert "Traceback" not in result.stderr


def test_wasm_run_dry_run_inlines_the_module(tmp_path: Path) -> None:
    (tmp_path / "hello.wat").write_text(HELLO_WAT)
    result = _meshnode(
        "wasm", "run", "--dry-run", "-o", "json", "hello.wat", "--", "x", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    params = json.loads(result.stdout)["Tasks"][0]["Engine"]["Params"]
    assert params["EntryModule"]["Source"]["Type"] == "inline"
    assert params["EntryModule"]["Source"]["Params"]["URL"].startswith("data:application/wasm;")
    assert params["Parameters"] == ["x"]
