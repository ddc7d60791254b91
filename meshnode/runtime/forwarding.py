"""Queries from anywhere: a node's HTTP API answers for the whole mesh.

Rules of this module:
- `MeshRouter` (ASGI middleware) sends a request about a job to the job's primary requester,
  a request about an execution's files to the node that ran it, and gathers `job list` from
  every reachable node; everything else is answered here. A request that arrives forwarded
  (header `x-meshnode-routed`) is always answered locally, so routing never loops.
- Forwarded requests travel over the mesh's control streams, not over HTTP between nodes: a
  node's API usually listens on loopback only. The receiving node replays the request against
  its own API (so every endpoint behaves the same, streaming included) and streams the
  response back in chunks. Only reads and job stops are forwarded (`_FORWARDABLE`).
- Frames of this module start with `PROXY_FRAME` (0x00), which no core message starts with
  (those are msgpack maps), so both share one control stream per peer.
- Bounded: concurrent forwarded requests served (`MAX_SERVING`), buffered chunks per response.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import trio

__all__ = [
    "PROXY_FRAME",
    "ApiForwarder",
    "ForwardError",
    "MeshRouter",
    "RouteDecision",
    "Routing",
]

LOGGER = logging.getLogger("meshnode.forwarding")

PROXY_FRAME: Final = b"\x00"
ROUTED_HEADER: Final = b"x-meshnode-routed"
CHUNK_BYTES: Final = 256 * 1024
MAX_SERVING: Final = 64
MAX_BUFFERED_CHUNKS: Final = 256
MAX_FORWARDED_BODY: Final = 10 * 1024 * 1024
FORWARD_TIMEOUT_S: Final = 15.0
_JOB_PATH: Final = re.compile(r"^/api/v1/orchestrator/jobs/(?P<job>[^/]+)(?P<rest>/.*)?$")
_EXECUTION_PATH: Final = re.compile(r"^/api/v1/executions/(?P<execution>[^/]+)(/.*)?$")
_JOBS_LIST: Final = "/api/v1/orchestrator/jobs"
_FORWARDABLE: Final = (_JOB_PATH, _EXECUTION_PATH, re.compile(r"^/api/v1/orchestrator/jobs$"))


class _Proxy(msgspec.Struct, frozen=True, tag=True):
    id: str


class ProxyRequest(_Proxy, frozen=True):
    method: str
    target: str  # path and query
    headers: list[tuple[str, str]]
    body: bytes = b""


class ProxyHead(_Proxy, frozen=True):
    status: int
    headers: list[tuple[str, str]]


class ProxyChunk(_Proxy, frozen=True):
    data: bytes


class ProxyEnd(_Proxy, frozen=True):
    error: str = ""


class ProxyCancel(_Proxy, frozen=True):
    pass


_ProxyMessage = ProxyRequest | ProxyHead | ProxyChunk | ProxyEnd | ProxyCancel
_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_ProxyMessage)


class ForwardError(Exception):
    """The peer could not be asked, or did not answer."""


@dataclass(slots=True)
class _Pending:
    head: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    send: trio.MemorySendChannel[bytes | None] | None = None
    receive: trio.MemoryReceiveChannel[bytes | None] | None = None
    error: str = ""


class ApiForwarder:
    """Both ends of forwarding: asks peers (`request`) and answers them (`on_frame`)."""

    def __init__(self, send_frame: Callable[[str, bytes], None], local_api: Callable[[], str]):
        self._send_frame = send_frame
        self._local_api = local_api
        self._pending: dict[str, _Pending] = {}
        self._serving: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._http: Any = None
        self.stats: dict[str, int] = {"malformed": 0, "refused": 0, "served": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self._http is not None:
                with trio.CancelScope(shield=True):
                    await self._http.aclose()

    def _client(self) -> Any:
        """One HTTP client for every forwarded request (a client per request cost a TLS
        context each: a quarter of a busy node's CPU)."""
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=f"http://{self._local_api()}", timeout=None, trust_env=False
            )
        return self._http

    def _send(self, peer: str, message: _ProxyMessage) -> None:
        self._send_frame(peer, PROXY_FRAME + _ENCODER.encode(message))

    # --- asking a peer ------------------------------------------------------------------------

    async def request(
        self, peer: str, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], AsyncIterator[bytes]]:
        request_id = uuid.uuid4().hex
        send, receive = trio.open_memory_channel[bytes | None](MAX_BUFFERED_CHUNKS)
        pending = _Pending(send=send, receive=receive)
        self._pending[request_id] = pending
        self._send(
            peer,
            ProxyRequest(id=request_id, method=method, target=target, headers=headers, body=body),
        )
        with trio.move_on_after(FORWARD_TIMEOUT_S):
            await pending.head.wait()
        if not pending.head.is_set() or pending.error:
            self._pending.pop(request_id, None)
            self._send(peer, ProxyCancel(id=request_id))
            raise ForwardError(
                pending.error or f"node {peer} did not answer within {FORWARD_TIMEOUT_S:g} s"
            )

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in receive:
                    if chunk is None:
                        if pending.error:
                            raise ForwardError(pending.error)
                        return
                    yield chunk
            finally:
                if self._pending.pop(request_id, None) is not None:
                    self._send(peer, ProxyCancel(id=request_id))

        return pending.status, pending.headers, chunks()

    # --- frames from peers --------------------------------------------------------------------

    def on_frame(self, sender: str, frame: bytes) -> None:
        try:
            message = _DECODER.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats["malformed"] += 1
            return
        match message:
            case ProxyRequest():
                self._serve(sender, message)
            case ProxyCancel():
                scope = self._serving.pop(f"{sender}/{message.id}", None)
                if scope is not None:
                    scope.cancel()
            case ProxyHead():
                pending = self._pending.get(message.id)
                if pending is not None and not pending.head.is_set():
                    pending.status, pending.headers = message.status, message.headers
                    pending.head.set()
            case ProxyChunk() | ProxyEnd():
                pending = self._pending.get(message.id)
                if pending is None or pending.send is None:
                    return
                if isinstance(message, ProxyEnd):
                    pending.error = message.error
                    pending.head.set()
                item = message.data if isinstance(message, ProxyChunk) else None
                try:
                    pending.send.send_nowait(item)
                except trio.WouldBlock:  # the reader is too slow: end it rather than grow
                    pending.error = "the forwarded response overflowed its buffer"
                    self._pending.pop(message.id, None)
                    pending.send.close()

    def _serve(self, sender: str, request: ProxyRequest) -> None:
        path = request.target.split("?", 1)[0]
        allowed = request.method in ("GET", "PUT", "DELETE", "POST") and any(
            pattern.match(path) for pattern in _FORWARDABLE
        )
        if not allowed or self._nursery is None or len(self._serving) >= MAX_SERVING:
            self.stats["refused"] += 1
            self._send(
                sender, ProxyEnd(id=request.id, error=f"{request.method} {path} is not forwarded")
            )
            return
        scope = trio.CancelScope()
        self._serving[f"{sender}/{request.id}"] = scope
        self._nursery.start_soon(self._answer, sender, request, scope)

    async def _answer(self, sender: str, request: ProxyRequest, scope: trio.CancelScope) -> None:
        import httpx

        self.stats["served"] += 1
        headers = [
            (k, v) for k, v in request.headers if k.lower() not in ("host", "content-length")
        ]
        headers.append((ROUTED_HEADER.decode(), "1"))
        try:
            with scope:
                client = self._client()
                async with (
                    client.stream(
                        request.method, request.target, headers=headers, content=request.body
                    ) as response,
                ):
                    head = ProxyHead(
                        id=request.id,
                        status=response.status_code,
                        headers=list(response.headers.multi_items()),
                    )
                    self._send(sender, head)
                    async for chunk in response.aiter_raw(CHUNK_BYTES):
                        self._send(sender, ProxyChunk(id=request.id, data=chunk))
                self._send(sender, ProxyEnd(id=request.id))
        except httpx.HTTPError as error:
            self._send(sender, ProxyEnd(id=request.id, error=f"the node's API failed: {error}"))
        finally:
            self._serving.pop(f"{sender}/{request.id}", None)


# --- the middleware ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes: `peer` ("" = answer here); `search` = unknown here, ask around."""

    peer: str = ""
    search: bool = False


class Routing(Protocol):
    def route_job(self, job_ref: str) -> RouteDecision: ...

    def route_execution(self, node_id: str) -> RouteDecision: ...

    def reachable_peers(self) -> list[str]: ...

    @property
    def forwarder(self) -> ApiForwarder: ...


Scope = dict[str, Any]


class MeshRouter:
    def __init__(self, app: Any, routing: Routing) -> None:
        self._app = app
        self._routing = routing

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or any(k == ROUTED_HEADER for k, _ in scope["headers"]):
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        decision = RouteDecision()
        if (match := _JOB_PATH.match(path)) is not None:
            decision = self._routing.route_job(match["job"])
        elif _EXECUTION_PATH.match(path) is not None:
            node = _query_value(scope, "node")
            decision = self._routing.route_execution(node) if node else RouteDecision()
        elif path == _JOBS_LIST and scope["method"] == "GET":
            await self._gather_jobs(scope, receive, send)
            return
        if decision.peer:
            body = await _read_body(receive)
            try:
                status, headers, chunks = await self._ask(decision.peer, scope, body)
            except ForwardError as error:
                LOGGER.info("forwarding to %s failed (%s); answering here", decision.peer, error)
            else:
                if status != 404:
                    await _respond(send, status, headers, chunks)
                    return
                # The job's new primary may not hold it yet (a handover in flight): what
                # this node knows is the next best answer.
                async for _ in chunks:
                    pass
            receive = _replay(body)
        elif decision.search:
            body = await _read_body(receive)
            for peer in self._routing.reachable_peers():
                try:
                    status, headers, chunks = await self._ask(peer, scope, body)
                except ForwardError:
                    continue
                if status != 404:
                    await _respond(send, status, headers, chunks)
                    return
                async for _ in chunks:
                    pass
            receive = _replay(body)
        await self._app(scope, receive, send)

    async def _ask(
        self, peer: str, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[str, str]], AsyncIterator[bytes]]:
        target = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        return await self._routing.forwarder.request(peer, scope["method"], target, headers, body)

    async def _gather_jobs(self, scope: Scope, receive: Any, send: Any) -> None:
        """`job list` anywhere: every node's jobs, the newest record of each, in order."""
        import json

        local = await _call_local(self._app, scope)
        listings = [local]
        for peer in self._routing.reachable_peers():
            try:
                status, _, chunks = await self._ask(peer, scope, b"")
                data = b"".join([chunk async for chunk in chunks])
            except ForwardError:
                continue
            if status == 200:
                listings.append(data)
        merged: dict[str, dict[str, Any]] = {}
        base: dict[str, Any] = {}
        more = False
        for raw in listings:
            try:
                document = json.loads(raw)
            except ValueError:
                continue
            base = base or document
            more = more or bool(document.get("NextToken"))
            for item in document.get("Items") or []:
                current = merged.get(item.get("ID", ""))
                if current is None or item.get("Revision", 0) > current.get("Revision", 0):
                    merged[item.get("ID", "")] = item
        newest_first = _query_value(scope, "reverse") in ("true", "1")
        items = sorted(
            merged.values(),
            key=lambda i: (i.get("CreateTime", 0), i.get("ID", "")),
            reverse=newest_first,
        )
        limit = _query_value(scope, "limit")
        if limit.isdigit() and 0 < int(limit) < len(items):
            items = items[: int(limit)]
            more = True
        token = _page_token(items[-1], newest_first) if more and items else ""
        out = {**base, "Items": items, "NextToken": token}
        await _respond(
            send, 200, [("content-type", "application/json")], _once(json.dumps(out).encode())
        )


def _page_token(item: dict[str, Any], newest_first: bool) -> str:
    """The NextToken every node understands (`api_models.PageCursor`): after this item. Its
    CreateTime is in nanoseconds; the bound is nudged so the item itself is not shown again."""
    import base64

    from meshnode.runtime.api_models import PageCursor

    nanoseconds = int(item.get("CreateTime", 0))
    created_at = nanoseconds / 1e9 if newest_first else (nanoseconds + 1) / 1e9
    cursor = PageCursor(created_at, str(item.get("ID", "")), newest_first)
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode().rstrip("=")


def _query_value(scope: Scope, key: str) -> str:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode()).get(key)
    return values[0] if values else ""


async def _read_body(receive: Any) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_FORWARDED_BODY:
            raise ForwardError("request body too large to forward")
        if not message.get("more_body"):
            return bytes(body)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _respond(
    send: Any, status: int, headers: list[tuple[str, str]], chunks: AsyncIterator[bytes]
) -> None:
    skip = {"content-length", "transfer-encoding", "connection"}
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() not in skip]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _call_local(app: Any, scope: Scope) -> bytes:
    """Run a GET through the local app and collect its body (job list gathering)."""
    headers = [*scope["headers"], (ROUTED_HEADER, b"1")]
    local_scope = {**scope, "headers": headers}
    body = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(local_scope, _replay(b""), send)
    return bytes(body)
