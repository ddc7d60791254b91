"""Inputs through a real node: localDirectory only under allow-listed paths, urlDownload from
a loopback HTTP server with a size limit, and wasm modules from a URL and a local path."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.engines.docker_images import busybox_image, docker_client  # noqa: F401 (fixtures)
from tests.integration.nodeproc import NodeProcess

HELLO_WASM = Path(__file__).resolve().parents[2] / "examples" / "wasm" / "hello.wasm"


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "web"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def data_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    (folder / "in.txt").write_text("from the allow-listed folder\n")
    return folder


@pytest.fixture
def node(tmp_path: Path, data_folder: Path, busybox_image: str) -> Iterator[NodeProcess]:  # noqa: F811
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    process = NodeProcess(data_dir, "--allow-listed-local-paths", str(data_folder)).start()
    yield process
    process.stop()


def docker_cat(target: str, source: dict[str, Any], read: str = "") -> dict[str, Any]:
    return {
        "Type": "batch",
        "Meta": {"meshnode.io/max-retries": "0"},
        "Tasks": [
            {
                "Engine": {
                    "Type": "docker",
                    "Params": {
                        "Image": "meshnode-busybox:latest",
                        "Entrypoint": ["cat", read or target],
                    },
                },
                "InputSources": [{"Target": target, "Source": source}],
                "Resources": {"CPU": "100m", "Memory": "32Mb"},
            }
        ],
    }


def stdout_of(node: NodeProcess, job_id: str) -> str:
    (execution,) = node.executions(job_id)
    return (node.data_dir / "executions" / execution["ID"] / "stdout").read_text()


def test_local_directory_under_an_allow_listed_path(node: NodeProcess, data_folder: Path) -> None:
    source = {"Type": "localDirectory", "Params": {"SourcePath": str(data_folder)}}
    job_id = node.submit(docker_cat("/data", source, read="/data/in.txt"))
    assert node.wait_for(job_id)["State"]["StateType"] == "Completed"
    assert stdout_of(node, job_id) == "from the allow-listed folder\n"


def test_local_directory_elsewhere_is_refused_naming_path_and_list(
    node: NodeProcess, data_folder: Path
) -> None:
    source = {"Type": "localDirectory", "Params": {"SourcePath": "/etc"}}
    job = node.wait_for(node.submit(docker_cat("/data/passwd", source)))
    assert job["State"]["StateType"] == "Failed"
    message = job["State"]["Message"]
    assert "local path /etc (read-only) is not allow-listed" in message
    assert str(data_folder) in message


def test_read_write_needs_a_read_write_listing(node: NodeProcess, data_folder: Path) -> None:
    source = {
        "Type": "localDirectory",
        "Params": {"SourcePath": str(data_folder), "ReadWrite": True},
    }
    job = node.wait_for(node.submit(docker_cat("/data/in.txt", source)))
    assert job["State"]["StateType"] == "Failed"
    assert "(read-write) is not allow-listed" in job["State"]["Message"]


def test_url_download_input(node: NodeProcess, web_root: tuple[Path, str]) -> None:
    root, base = web_root
    (root / "input.csv").write_text("a,b\n1,2\n")
    source = {"Type": "urlDownload", "Params": {"URL": f"{base}/input.csv"}}
    job_id = node.submit(docker_cat("/inputs/input.csv", source))
    assert node.wait_for(job_id)["State"]["StateType"] == "Completed"
    assert stdout_of(node, job_id) == "a,b\n1,2\n"


def test_url_download_that_fails_says_why(node: NodeProcess, web_root: tuple[Path, str]) -> None:
    _, base = web_root
    source = {"Type": "urlDownload", "Params": {"URL": f"{base}/missing.csv"}}
    job = node.wait_for(node.submit(docker_cat("/inputs/missing.csv", source)))
    assert job["State"]["StateType"] == "Failed"
    assert "HTTP 404" in job["State"]["Message"]


def test_url_download_over_the_size_limit(tmp_path: Path, web_root: tuple[Path, str]) -> None:
    # The limit is a node setting (NodeConfig.max_download_bytes); the same code with a small
    # limit shows the refusal without a gigabyte of test data.
    from meshnode.engines.base import ExecutionError
    from meshnode.runtime.inputs import InputPreparer

    root, base = web_root
    (root / "big.bin").write_bytes(b"x" * 2048)
    preparer = InputPreparer(allowed_local_paths=(), max_download_bytes=1024, download_timeout_s=10)

    async def download() -> None:
        await preparer.download(f"{base}/big.bin", tmp_path / "big.bin")

    with pytest.raises(ExecutionError, match="larger than the limit of 1024 bytes"):
        trio.run(download)


def wasm_job(entry_module: str) -> dict[str, Any]:
    return {
        "Type": "batch",
        "Tasks": [
            {
                "Engine": {
                    "Type": "wasm",
                    "Params": {"EntryModule": entry_module, "Parameters": ["module ran"]},
                },
                "Resources": {"CPU": "100m", "Memory": "16Mb"},
            }
        ],
    }


def test_wasm_module_from_a_url(node: NodeProcess, web_root: tuple[Path, str]) -> None:
    root, base = web_root
    shutil.copy(HELLO_WASM, root / "hello.wasm")
    job_id = node.submit(wasm_job(f"{base}/hello.wasm"))
    assert node.wait_for(job_id)["State"]["StateType"] == "Completed"
    assert stdout_of(node, job_id) == "module ran\n"


def test_wasm_module_from_an_allow_listed_local_path(node: NodeProcess, data_folder: Path) -> None:
    shutil.copy(HELLO_WASM, data_folder / "hello.wasm")
    job_id = node.submit(wasm_job(str(data_folder / "hello.wasm")))
    assert node.wait_for(job_id)["State"]["StateType"] == "Completed"
    assert stdout_of(node, job_id) == "module ran\n"
