"""Getting a task's inputs (and a wasm module) onto this node as host paths.

Rules of this module:
- `localDirectory`: only under `--allow-listed-local-paths`, read-only unless the list says
  rw (the core checked it when placing the job; it is checked again here, on the node that
  mounts it, since this is where it matters).
- `urlDownload`: http and https only, streamed to disk with a size and a time limit.
- `inline`: a data: URL, decoded to a file.
- `ipfs` and `s3` are not here yet: they arrive with content-addressed data; asking for them
  is an `ExecutionError` that says so (the core normally refuses such jobs before).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from pathlib import Path
from typing import Final
from urllib.parse import unquote_to_bytes, urlsplit

import trio

from meshnode.core.selection import local_path_refusal
from meshnode.engines.base import ExecutionError, Mount
from meshnode.spec import (
    HttpSourceParams,
    InputSource,
    LocalDirectoryParams,
)

__all__ = ["InputPreparer", "decode_data_url"]

_CHUNK_BYTES: Final = 256 * 1024
NOT_YET: Final = "arrives with content-addressed data (embedded IPFS and S3), not available yet"


def decode_data_url(url: str) -> bytes:
    """The bytes of a `data:[type][;base64],payload` URL (RFC 2397)."""
    if not url.startswith("data:") or "," not in url:
        raise ExecutionError(f"{url[:40]!r}… is not a data: URL")
    header, payload = url[5:].split(",", 1)
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ExecutionError(f"the data: URL is not valid base64: {error}") from None
    return unquote_to_bytes(payload)


class InputPreparer:
    def __init__(
        self,
        *,
        allowed_local_paths: tuple[tuple[str, bool], ...],
        max_download_bytes: int,
        download_timeout_s: float,
    ) -> None:
        self._allowed = allowed_local_paths
        self._max_download_bytes = max_download_bytes
        self._download_timeout_s = download_timeout_s

    async def mount(self, source: InputSource, staging: Path) -> Mount:
        """The host path of one input and where it appears in the task."""
        spec = source.source
        if spec is None:
            raise ExecutionError(f"input {source.target} has no Source")
        params = spec.params
        if isinstance(params, LocalDirectoryParams):
            self.check_local_path(params.source_path, read_write=params.read_write)
            host = Path(params.source_path)
            if not host.exists():
                raise ExecutionError(f"input {source.target}: {host} does not exist on this node")
            return Mount(host, source.target, read_only=not params.read_write)
        if isinstance(params, HttpSourceParams):
            name = posixpath.basename(source.target.rstrip("/")) or "input"
            target_file = staging / name
            if spec.type == "inline":
                await trio.Path(target_file).write_bytes(decode_data_url(params.url))
            else:
                await self.download(params.url, target_file)
            return Mount(target_file, source.target, read_only=True)
        raise ExecutionError(f"input source {spec.type} {NOT_YET}")

    async def module(self, module: InputSource | str, staging: Path, name: str) -> Path:
        """A wasm module (path, http(s) URL, data: URL or input source) as a local file."""
        if isinstance(module, InputSource):
            mount = await self.mount(module, staging)
            return mount.host_path
        if module.startswith("data:"):
            path = staging / f"{name}.wasm"
            await trio.Path(path).write_bytes(decode_data_url(module))
            return path
        if urlsplit(module).scheme in ("http", "https"):
            path = staging / f"{name}.wasm"
            await self.download(module, path)
            return path
        self.check_local_path(module, read_write=False)
        if not Path(module).is_file():
            raise ExecutionError(f"wasm module {module} does not exist on this node")
        return Path(module)

    def check_local_path(self, path: str, *, read_write: bool) -> None:
        refusal = local_path_refusal(path, read_write, self._allowed)
        if refusal:
            raise ExecutionError(refusal)

    async def download(self, url: str, destination: Path) -> None:
        import httpx  # only nodes that download pay for importing it

        if urlsplit(url).scheme not in ("http", "https"):
            raise ExecutionError(f"{url}: only http and https URLs can be downloaded")
        received = 0
        try:
            with trio.fail_after(self._download_timeout_s):
                async with (
                    httpx.AsyncClient(follow_redirects=True, timeout=30.0) as client,
                    client.stream("GET", url) as response,
                ):
                    if response.status_code != 200:
                        raise ExecutionError(
                            f"downloading {url} failed: HTTP {response.status_code}"
                        )
                    async with await trio.open_file(destination, "wb") as file:
                        async for chunk in response.aiter_bytes(_CHUNK_BYTES):
                            received += len(chunk)
                            if received > self._max_download_bytes:
                                raise ExecutionError(
                                    f"downloading {url} failed: larger than the limit of "
                                    f"{self._max_download_bytes} bytes"
                                )
                            await file.write(chunk)
        except trio.TooSlowError:
            raise ExecutionError(
                f"downloading {url} took longer than {self._download_timeout_s:g} s"
            ) from None
        except httpx.HTTPError as error:
            raise ExecutionError(f"downloading {url} failed: {error}") from None
