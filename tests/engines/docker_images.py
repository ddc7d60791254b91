"""Test images for the docker engine, and the session fixtures that provide them.

No registry is reachable from the machines meshnode is tested on, so images are built here
from what the host has: `meshnode-busybox:latest` is `FROM scratch` plus Debian's static
busybox (installed by scripts/ensure-docker) with every applet linked into /bin: 2 MB,
built in about a second, and only when it is missing.

The Docker tests fail (they do not skip) when Docker is not running: CI installs it. Set
MESHNODE_SKIP_DOCKER=1 to skip them on a machine without Docker.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import docker
import docker.errors
import pytest

BUSYBOX_IMAGE: Final = "meshnode-busybox:latest"
BUSYBOX_BINARY: Final = Path("/bin/busybox")
BUSYBOX_DOCKERFILE: Final = b"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


def build_context(files: dict[str, bytes], executables: frozenset[str] = frozenset()) -> bytes:
    """A docker build context (an uncompressed tar), built in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name in executables else 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ensure_busybox_image(client: docker.DockerClient) -> str:
    """Builds `meshnode-busybox:latest` unless the engine already has it; returns the tag."""
    try:
        client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if not BUSYBOX_BINARY.is_file():
        pytest.fail(
            f"{BUSYBOX_BINARY} is missing (Debian's busybox-static): run scripts/ensure-docker",
            pytrace=False,
        )
    context = build_context(
        {"Dockerfile": BUSYBOX_DOCKERFILE, "busybox": BUSYBOX_BINARY.read_bytes()},
        executables=frozenset({"busybox"}),
    )
    client.images.build(
        fileobj=io.BytesIO(context), custom_context=True, tag=BUSYBOX_IMAGE, rm=True, forcerm=True
    )
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local Docker Engine; fails the test when there is none."""
    if os.environ.get("MESHNODE_SKIP_DOCKER") == "1":
        pytest.skip("MESHNODE_SKIP_DOCKER=1: the tests that need a Docker engine are skipped")
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        pytest.fail(
            f"Docker is not available ({error}). Run scripts/ensure-docker as root (CI does), "
            "or set MESHNODE_SKIP_DOCKER=1 to skip the Docker tests.",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    return ensure_busybox_image(docker_client)
