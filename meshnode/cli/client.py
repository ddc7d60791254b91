"""The HTTP client of the node's /api/v1 (Bacalhau's shapes), on the standard library.

Rules of this module:
- `http.client` and `json`/`msgspec` are imported inside the methods: a command that never
  talks to a node (`--help`, `job validate`) does not pay for them.
- Every request has a timeout; only a `follow` stream may wait for data forever (a daemon's
  logs can be silent for hours), and even then connecting has a timeout.
- Bodies are bounded: JSON answers and error bodies are read up to a limit, log lines up to
  a limit, downloads are streamed to a file in chunks (never whole in memory).
- Every failure becomes an `ApiError` (a `MeshnodeError`, so the CLI prints it without a
  traceback): `ApiUnreachableError` when nothing answers, otherwise the node's message and
  its `problems` list, or what was wrong with the answer.
- One connection per request: the CLI makes a handful of requests, and a fresh connection
  cannot be a half-closed keep-alive one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from meshnode.errors import MeshnodeError

if TYPE_CHECKING:
    from http.client import HTTPConnection, HTTPResponse

__all__ = [
    "DEFAULT_API_HOST",
    "DEFAULT_API_PORT",
    "ApiClient",
    "ApiError",
    "ApiUnreachableError",
    "path_of",
]

# The same defaults as meshnode.runtime.config (not imported: the runtime is heavy).
DEFAULT_API_HOST: Final = "127.0.0.1"
DEFAULT_API_PORT: Final = 1234

MAX_JSON_BYTES: Final = 64 * 1024 * 1024
MAX_ERROR_BYTES: Final = 1024 * 1024
MAX_LINE_BYTES: Final = 16 * 1024 * 1024
CHUNK_BYTES: Final = 256 * 1024


class ApiError(MeshnodeError):
    """The node answered with an error, or with something that is not its API."""

    def __init__(
        self, message: str, *, status: int = 0, problems: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.status = status
        self.message = message
        self.problems = tuple(problems)
        lines = [message]
        lines += [f"{path}: {text}" if path else text for path, text in self.problems]
        # The CLI prefixes the first line with "Error: "; every further line gets it too.
        super().__init__("\nError: ".join(lines))


class ApiUnreachableError(ApiError):
    """Nothing answers at the API's address."""

    def __init__(self, base_url: str) -> None:
        super().__init__(
            f"cannot reach the meshnode API at {base_url} "
            "(is a node running? start one with: meshnode start)"
        )


class ApiClient:
    def __init__(
        self,
        host: str = DEFAULT_API_HOST,
        port: int = DEFAULT_API_PORT,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # --- JSON requests -------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        return self._json("GET", path, params)

    def put(self, path: str, body: bytes) -> Any:
        return self._json("PUT", path, None, body=body)

    def delete(self, path: str, params: Mapping[str, object] | None = None) -> Any:
        return self._json("DELETE", path, params)

    def _json(
        self,
        method: str,
        path: str,
        params: Mapping[str, object] | None,
        *,
        body: bytes | None = None,
    ) -> Any:
        with self._request(method, path, params, body=body, read_timeout_s=self.timeout_s) as (
            response
        ):
            data = self._read_bounded(response, MAX_JSON_BYTES)
        if not data.strip():
            return None
        return self._decode(data, what=f"{method} {path}")

    # --- streams -------------------------------------------------------------------------

    def json_lines(
        self,
        path: str,
        params: Mapping[str, object] | None = None,
        *,
        read_timeout_s: float | None,
    ) -> Iterator[Any]:
        """Newline-delimited JSON records as they arrive (log streams)."""
        with self._request("GET", path, params, read_timeout_s=read_timeout_s) as response:
            while True:
                line = self._guard(lambda: response.readline(MAX_LINE_BYTES + 1))
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES:
                    raise ApiError(f"the node sent a record longer than {MAX_LINE_BYTES} bytes")
                if line.strip():
                    yield self._decode(line, what=f"a record of GET {path}")

    def download(self, path: str, target: IO[bytes]) -> int:
        """Stream a binary answer into `target`; returns the bytes written."""
        written = 0
        with self._request("GET", path, None, read_timeout_s=self.timeout_s) as response:
            while True:
                chunk = self._guard(lambda: response.read(CHUNK_BYTES))
                if not chunk:
                    return written
                target.write(chunk)
                written += len(chunk)

    # --- the plumbing ----------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, object] | None = None) -> str:
        query = _query(params)
        return path + ("?" + query if query else "")

    @contextmanager
    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, object] | None,
        *,
        body: bytes | None = None,
        read_timeout_s: float | None,
    ) -> Iterator[HTTPResponse]:
        import http.client  # ~20 ms of imports, paid only by node commands

        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=self.connect_timeout_s
        )
        try:
            try:
                connection.connect()
            except OSError:
                # Refused, unknown host, no route, connect timeout: all "nothing answers".
                raise ApiUnreachableError(self.base_url) from None
            assert connection.sock is not None
            connection.sock.settimeout(read_timeout_s)
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            response = self._guard(
                lambda: _send(connection, method, self.url(path, params), body, headers)
            )
            if response.status >= 400:
                raise self._error_of(response)
            yield response
        finally:
            connection.close()

    def _guard(self, action: Any) -> Any:
        """Run one socket operation; turn its failures into `ApiError`s with a cause."""
        import http.client

        try:
            return action()
        except TimeoutError:
            raise ApiError(
                f"the meshnode API at {self.base_url} did not answer within {self.timeout_s:g} s"
            ) from None
        except (http.client.HTTPException, OSError) as error:
            reason = str(error) or type(error).__name__
            raise ApiError(
                f"the connection to the meshnode API at {self.base_url} failed: {reason}"
            ) from None

    def _read_bounded(self, response: HTTPResponse, limit: int) -> bytes:
        data: bytes = self._guard(lambda: response.read(limit + 1))
        if len(data) > limit:
            raise ApiError(f"the node's answer is larger than {limit} bytes")
        return data

    def _decode(self, data: bytes, *, what: str) -> Any:
        import msgspec  # already loaded by the spec reader in most commands

        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise ApiError(
                f"the answer to {what} from {self.base_url} is not JSON "
                f"(is this a meshnode API?): {_preview(data)}"
            ) from None

    def _error_of(self, response: HTTPResponse) -> ApiError:
        """The node's error body → an `ApiError` with its message and problems."""
        data = self._read_bounded(response, MAX_ERROR_BYTES)
        status = response.status
        try:
            import msgspec

            body = msgspec.json.decode(data)
        except Exception:  # any non-JSON body: show its beginning instead
            body = None
        if not isinstance(body, dict):
            text = _preview(data) or response.reason or "no details"
            return ApiError(f"the node answered {status}: {text}", status=status)
        message = body.get("message") or body.get("Message") or body.get("error") or ""
        if not isinstance(message, str) or not message:
            message = f"the node answered {status} {response.reason}".rstrip()
        problems = []
        for problem in body.get("problems") or body.get("Problems") or ():
            if isinstance(problem, dict):
                problems.append(
                    (
                        str(problem.get("path") or problem.get("Path") or ""),
                        str(problem.get("message") or problem.get("Message") or ""),
                    )
                )
        return ApiError(message, status=status, problems=problems)


def _send(
    connection: HTTPConnection,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
) -> HTTPResponse:
    connection.request(method, url, body=body, headers=headers)
    return connection.getresponse()


def _query(params: Mapping[str, object] | None) -> str:
    """Query text; None values are left out, booleans are `true`/`false` (Go's spelling),
    and a list or tuple repeats the key."""
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            pairs.append((key, text))
    return urlencode(pairs)


def path_of(*parts: str) -> str:
    """`/api/v1/…` with each dynamic part quoted (an id can never add a path segment)."""
    return "/".join(quote(part, safe="") if index else part for index, part in enumerate(parts))


def _preview(data: bytes) -> str:
    text = data[:200].decode("utf-8", "replace").strip()
    return text + ("…" if len(data) > 200 else "")
