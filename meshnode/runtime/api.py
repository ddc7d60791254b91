"""The node's HTTP API: Bacalhau's `/api/v1` on Starlette, served by Hypercorn's trio worker.

Rules of this module:
- Shapes are Bacalhau's (see `api_models.py`), so Bacalhau clients work unchanged. What a
  client sends is read case-insensitively; a submitted job goes through the spec reader
  (`job_from_document`), after the server-owned fields a Bacalhau client may fill in (ID,
  State, Version, Revision, CreateTime, ModifyTime) are dropped.
- Nothing a client sends can crash the node: `MeshnodeError` becomes a 4xx, anything else a
  500 with a generic message and a log line; every error body is `api_models.ApiError`. The
  request body is counted as it arrives and refused past `max_request_bytes` (413), never
  buffered beyond it.
- Reads go to the store and to the files of executions; writes (submit, stop) go through the
  `NodeService`. Blocking file work (reading logs, building archives) runs in worker threads,
  each owned by the request's task; a client that goes away cancels its request's work.
- Everything is bounded: pages (`MAX_PAGE_LIMIT`), the jobs a filtered listing scans per
  request, log reads per poll and log line length, the memory an archive takes (it streams
  through a pipe).
- The app is trio-only (it uses trio for threads, pipes and sleeps), as the node is.

Nodes (`/api/v1/orchestrator/nodes`) are every member of the mesh this node knows, itself
included, in Bacalhau's `NodeState` shape. The mesh's view maps onto Bacalhau's fields so:
- `Connection` (and Bacalhau 1.6's `ConnectionState.Status`) is "CONNECTED" for an alive
  member, "DISCONNECTED" for a suspect, dead or departed one; meshnode's own `State` field
  says which ("alive" | "suspect" | "dead" | "left"), `ConnectionState.LastHeartbeat` when
  this node last heard from it.
- `Membership` is the operators' decision: "APPROVED", "REJECTED" (rejected, or deleted and
  back again). With no decision it is what the schedulers of this node act on: "PENDING"
  when this node requires approval (`--require-approval`), else "APPROVED", as Bacalhau
  auto-approves nodes when manual approval is off.
- Approve/reject/delete is Bacalhau's `PUT /api/v1/orchestrator/nodes/{id}` with
  `{"NodeID", "Action": "approve"|"reject"|"delete", "Message"}` → `{"Success", "Error"}`;
  `POST`/`PUT` on `/api/v1/orchestrator/nodes` with the NodeID in the body is the same.
  An unknown node is a 404, an ambiguous id prefix a 400, as everywhere else.

The log stream (`GET /api/v1/orchestrator/jobs/{id}/logs`) is newline-delimited JSON
(`application/x-ndjson`), one `api_models.LogRecord` per line:
`{"Type": "stdout"|"stderr", "Line": "<text without its newline>", "ExecutionID": "e-…"}`.
Without `follow` it sends what the files hold and ends; with `follow=true` it tails them
until every execution it covers has ended (and its files are read to the end). A line longer
than `MAX_LOG_LINE_BYTES` arrives as several records; bytes that are not UTF-8 are replaced.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import os
import platform
import re
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Final, Protocol, cast, runtime_checkable

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import Framework
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshnode.core.membership import Member, MemberState
from meshnode.core.records import ExecutionRecord, HistoryEvent, JobRecord
from meshnode.core.resources import ResourceAmounts
from meshnode.core.selection import constraint_matches
from meshnode.core.states import ExecutionState
from meshnode.errors import MeshnodeError, SpecError
from meshnode.runtime import api_models as wire
from meshnode.runtime.service import MeshService, NodeService
from meshnode.runtime.store import AmbiguousIdError, NotFoundError
from meshnode.spec import Constraint, job_from_document

__all__ = [
    "DEFAULT_PAGE_LIMIT",
    "MAX_LOG_LINE_BYTES",
    "MAX_PAGE_LIMIT",
    "LabelSelectorError",
    "create_app",
    "parse_label_selector",
    "serve_api",
]

LOGGER = logging.getLogger("meshnode.api")

DEFAULT_PAGE_LIMIT: Final = 100
MAX_PAGE_LIMIT: Final = 1000
# A filtered job listing reads at most this many jobs per request; past it the page may be
# short (even empty) with a NextToken to go on from where the scan stopped.
SCAN_BUDGET_JOBS: Final = 10_000
MAX_LOG_LINE_BYTES: Final = 64 * 1024
LOG_READ_BYTES: Final = 64 * 1024  # per file and poll
LOG_FILES_PER_READ: Final = 16  # files read in one worker-thread trip
LOG_POLL_S: Final = 0.05
ARCHIVE_CHUNK_BYTES: Final = 64 * 1024

# Fields of Bacalhau's Job that the server owns; clients (the Python SDK, Go's client)
# send them, empty or null, and they are not part of a spec.
_SERVER_OWNED_FIELDS: Final = frozenset(
    {"id", "state", "version", "revision", "createtime", "modifytime"}
)
_TRUE: Final = frozenset({"1", "t", "true"})  # Go's strconv.ParseBool, case-insensitive
_FALSE: Final = frozenset({"0", "f", "false"})
_EXECUTION_STATE_BY_NAME: Final = {state.display_name: int(state) for state in ExecutionState}
_ERROR_CODES: Final = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestTooLarge",
    500: "InternalError",
}
_GOARCH: Final = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# Go's zero time: Bacalhau's BuildDate is a time, and we do not know our build's.
_UNKNOWN_BUILD_DATE: Final = "0001-01-01T00:00:00Z"
_GO_ZERO_TIME: Final = _UNKNOWN_BUILD_DATE
# Bacalhau's node actions → the decisions the core records.
_NODE_DECISIONS: Final = {"approve": "approved", "reject": "rejected", "delete": "deleted"}
_MEMBERSHIP_OF_DECISION: Final = {
    "approved": "APPROVED",
    "rejected": "REJECTED",
    "deleted": "REJECTED",  # deleted, and heard from again: it still gets no work
}
MAX_LOGGED_MESSAGE_CHARS: Final = 200


class LabelSelectorError(MeshnodeError):
    """A `labels` query parameter is not a label selector."""


# --- the app ---------------------------------------------------------------------------------


def create_app(service: NodeService, *, max_request_bytes: int) -> Starlette:
    encoder = msgspec.json.Encoder()
    api = _Api(service, encoder)
    return Starlette(
        routes=api.routes(),
        middleware=[
            Middleware(_Guard, encoder=encoder),
            Middleware(_BodyLimit, max_request_bytes=max_request_bytes, encoder=encoder),
        ],
        exception_handlers={
            HTTPException: partial(_http_exception_response, encoder),
            MeshnodeError: partial(_meshnode_error_response, encoder),
            _HttpError: partial(_http_error_response, encoder),
        },
    )


async def serve_api(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    access_log: bool = False,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; `task_status.started((host, port))` once listening, with
    the port actually bound (so port 0 reports the one the system picked)."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = logging.getLogger("meshnode.api.access") if access_log else None
    # Hypercorn's own messages go through the node's logging setup, not a handler of its own.
    config.errorlog = logging.getLogger("meshnode.api.server")
    # Starlette's and Hypercorn's ASGI type hints differ; the protocol is the same.
    framework = cast(Framework, app)
    async with trio.open_nursery() as nursery:
        # Hypercorn reports the addresses it bound (e.g. "http://127.0.0.1:41234") once its
        # sockets listen: that is where a port 0 becomes a real one.
        binds: list[str] = await nursery.start(partial(serve, framework, config, mode="asgi"))
        bound_port = int(binds[0].rpartition(":")[2])
        task_status.started((host, bound_port))


# --- errors ----------------------------------------------------------------------------------


class _HttpError(Exception):
    """A request the API refuses for a reason of its own (a bad query parameter…)."""

    def __init__(self, status: int, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _ERROR_CODES.get(status, "BadRequest")
        self.message = message


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


def _error_response(
    encoder: msgspec.json.Encoder,
    status: int,
    message: str,
    *,
    code: str = "",
    problems: Iterable[wire.ApiProblem] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    body = wire.ApiError(
        error=code or _ERROR_CODES.get(status, "BadRequest"),
        message=message,
        problems=tuple(problems),
    )
    return Response(
        encoder.encode(body), status_code=status, media_type="application/json", headers=headers
    )


def _http_exception_response(
    encoder: msgspec.json.Encoder, request: Request, error: Exception
) -> Response:
    assert isinstance(error, HTTPException), error
    message = error.detail
    if error.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif error.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return _error_response(
        encoder, error.status_code, message, headers=dict(error.headers or {}) or None
    )


def _meshnode_error_response(
    encoder: msgspec.json.Encoder, request: Request, error: Exception
) -> Response:
    if isinstance(error, SpecError):
        problems = [wire.ApiProblem(path=p.path, message=p.message) for p in error.problems]
        return _error_response(encoder, 400, str(error), code="ValidationError", problems=problems)
    if isinstance(error, NotFoundError):
        return _error_response(encoder, 404, str(error))
    # AmbiguousIdError, LabelSelectorError, and any other refusal of what the client asked.
    return _error_response(encoder, 400, str(error))


def _http_error_response(
    encoder: msgspec.json.Encoder, request: Request, error: Exception
) -> Response:
    assert isinstance(error, _HttpError), error
    return _error_response(encoder, error.status, error.message, code=error.code)


# --- middleware ------------------------------------------------------------------------------


class _Guard:
    """Outermost of ours: an exception that escapes a handler is logged and answered with a
    generic 500, and the server goes on. If the response had already started, the exception
    goes on to Hypercorn, which aborts the connection: a truncated stream must not look
    complete to the client."""

    def __init__(self, app: ASGIApp, *, encoder: msgspec.json.Encoder) -> None:
        self._app = app
        self._encoder = encoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away while sending its body: nobody to answer
        except Exception:
            if started:
                raise
            LOGGER.exception("API: %s %s failed", scope.get("method"), scope.get("path"))
            response = _error_response(
                self._encoder, 500, "internal error; the node's log has the details"
            )
            await response(scope, receive, send)


class _BodyLimit:
    """Refuses a request body larger than the limit: at once when Content-Length says so,
    else as soon as the bytes received pass it (the handler reading the body gets a 413)."""

    def __init__(
        self, app: ASGIApp, *, max_request_bytes: int, encoder: msgspec.json.Encoder
    ) -> None:
        self._app = app
        self._limit = max_request_bytes
        self._encoder = encoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._limit:
            too_large = _BodyTooLarge(self._limit)
            response = _error_response(self._encoder, 413, too_large.detail)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    raise _BodyTooLarge(self._limit)
            return message

        await self._app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --- endpoints -------------------------------------------------------------------------------


_Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: dict[str, _Endpoint]) -> _Endpoint:
    """One route per path, so a wrong method gets a 405 that lists every allowed one."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


@runtime_checkable
class _ReportsUsage(Protocol):
    """Optional on a NodeService: what running executions hold right now (`runtime.node.Node`
    has it). Without it, the API adds up the running executions the store knows."""

    def used_resources(self) -> ResourceAmounts: ...


class _Api:
    def __init__(self, service: NodeService, encoder: msgspec.json.Encoder) -> None:
        self._service = service
        self._encoder = encoder

    def routes(self) -> list[Route]:
        def route(path: str, handlers: dict[str, _Endpoint]) -> Route:
            return Route(path, _by_method(handlers), methods=list(handlers))

        jobs = "/api/v1/orchestrator/jobs"
        nodes = "/api/v1/orchestrator/nodes"
        return [
            route("/api/v1/agent/alive", {"GET": self.alive}),
            route("/api/v1/agent/version", {"GET": self.version}),
            route("/api/v1/agent/node", {"GET": self.agent_node}),
            route("/api/v1/agent/mesh", {"GET": self.agent_mesh}),
            route(jobs, {"GET": self.list_jobs, "PUT": self.put_job, "POST": self.put_job}),
            route(jobs + "/{job_id}", {"GET": self.get_job, "DELETE": self.stop_job}),
            route(jobs + "/{job_id}/executions", {"GET": self.job_executions}),
            route(jobs + "/{job_id}/history", {"GET": self.job_history}),
            route(jobs + "/{job_id}/results", {"GET": self.job_results}),
            route(jobs + "/{job_id}/logs", {"GET": self.job_logs}),
            route(
                nodes,
                {"GET": self.list_nodes, "PUT": self.update_node, "POST": self.update_node},
            ),
            route(
                nodes + "/{node_id}",
                {"GET": self.get_node, "PUT": self.update_node, "POST": self.update_node},
            ),
            route("/api/v1/executions/{execution_id}/results", {"GET": self.results_archive}),
            route("/api/v1/executions/{execution_id}/logs", {"GET": self.execution_logs}),
            route(
                "/api/v1/executions/{execution_id}/results/{path:path}",
                {"GET": self.result_file},
            ),
        ]

    def _json(self, value: object, status: int = 200) -> Response:
        return Response(
            self._encoder.encode(value), status_code=status, media_type="application/json"
        )

    # --- the agent ---------------------------------------------------------------------

    async def alive(self, request: Request) -> Response:
        return self._json(wire.AliveResponse())

    async def version(self, request: Request) -> Response:
        machine = platform.machine().lower()
        version = _build_version(
            self._service.agent.version,
            goos=platform.system().lower(),
            goarch=_GOARCH.get(machine, machine),
        )
        return self._json(version)

    async def agent_node(self, request: Request) -> Response:
        return self._json(self._own_state(time.time()).info)

    async def agent_mesh(self, request: Request) -> Response:
        service = self._service
        own_id = service.node_info.id
        if not isinstance(service, MeshService):
            info = wire.MeshInfo(
                node_id=own_id, addresses=(), connected_peers=(), members={"alive": 1}, stats={}
            )
            return self._json(info)
        counts = dict.fromkeys((state.value for state in MemberState), 0)
        counts[MemberState.ALIVE.value] += 1  # this node
        for member in service.core.members():
            if member.id != own_id:
                counts[member.state.value] += 1
        info = wire.MeshInfo(
            node_id=own_id,
            addresses=tuple(service.listen_addrs()),
            connected_peers=tuple(sorted(service.connected_peers())),
            members=counts,
            stats=service.mesh_stats(),
        )
        return self._json(info)

    # --- jobs --------------------------------------------------------------------------

    async def put_job(self, request: Request) -> Response:
        document = await _json_body(request, example='{"Job": {...}}')
        spec = job_from_document(_job_document(document))
        result = await self._service.submit(spec)
        return self._json(
            wire.PutJobResponse(
                job_id=result.job_id,
                evaluation_id=result.evaluation_id,
                warnings=result.warnings,
            )
        )

    async def list_jobs(self, request: Request) -> Response:
        limit = _page_limit(request)
        order_by = request.query_params.get("order_by", "")
        if order_by not in ("", "created_at"):
            raise _HttpError(400, f"order_by {order_by!r} is not supported (only created_at)")
        newest_first = _query_bool(request, "reverse", default=False)
        cursor: tuple[float, str] | None = None
        token = request.query_params.get("next_token", "")
        if token:
            decoded = self._decode_token(token)
            # The token keeps the direction it was issued for, so pages stay consistent.
            cursor, newest_first = (decoded.created_at, decoded.job_id), decoded.newest_first
        namespace = request.query_params.get("namespace", "")
        selector = _label_constraints(request)

        def matches(job: JobRecord) -> bool:
            if namespace not in ("", "*") and job.spec.namespace != namespace:
                return False
            return all(constraint_matches(c, job.spec.labels) for c in selector)

        filtered = bool(selector) or namespace not in ("", "*")
        jobs, resume_after = self._scan_jobs(
            after=cursor,
            limit=limit,
            newest_first=newest_first,
            matches=matches if filtered else None,
        )
        next_token = ""
        if resume_after is not None:
            next_token = self._encode_token(
                wire.PageCursor(resume_after[0], resume_after[1], newest_first)
            )
        return self._json(
            wire.ListResponse[wire.Job](
                items=tuple(_job_out(job) for job in jobs), next_token=next_token
            )
        )

    def _scan_jobs(
        self,
        *,
        after: tuple[float, str] | None,
        limit: int,
        newest_first: bool,
        matches: Callable[[JobRecord], bool] | None,
    ) -> tuple[list[JobRecord], tuple[float, str] | None]:
        """Up to `limit` matching jobs after the cursor, and where the next page starts
        (None when nothing matching is left). Reads one job past a full page to know."""
        store = self._service.store
        # Unfiltered, a page is the next limit+1 rows; filtered, bigger reads waste less.
        batch = limit + 1 if matches is None else min(max(limit + 1, 50), 500)
        found: list[JobRecord] = []
        scanned = 0
        last: JobRecord | None = None
        while scanned < SCAN_BUDGET_JOBS:
            rows = store.jobs_page(after=after, limit=batch, newest_first=newest_first)
            for job in rows:
                scanned += 1
                last = job
                if matches is None or matches(job):
                    if len(found) == limit:
                        return found, (found[-1].created_at, found[-1].id)
                    found.append(job)
            if len(rows) < batch:
                return found, None
            after = (rows[-1].created_at, rows[-1].id)
        assert last is not None, "the scan budget ran out without reading a job"
        return found, (last.created_at, last.id)

    def _encode_token(self, cursor: wire.PageCursor) -> str:
        return base64.urlsafe_b64encode(self._encoder.encode(cursor)).decode().rstrip("=")

    @staticmethod
    def _decode_token(token: str) -> wire.PageCursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return msgspec.json.decode(raw, type=wire.PageCursor)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise _HttpError(400, "next_token is not a token this node gave out") from None

    async def get_job(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        include = {part.strip() for part in request.query_params.get("include", "").split(",")}
        executions = history = None
        if "executions" in include:
            executions = wire.ListResponse[wire.Execution](
                items=self._executions_out(
                    request, job, _most_recent(self._service.store.executions_of(job.id))
                )
            )
        if "history" in include:
            history = wire.ListResponse[wire.JobHistory](
                items=self._history_out(job, self._service.store.history_of(job.id))
            )
        return self._json(
            wire.GetJobResponse(job=_job_out(job), executions=executions, history=history)
        )

    async def stop_job(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        reason = request.query_params.get("reason", "")
        message = await self._service.stop(job.id, reason)
        return self._json(wire.StopJobResponse(evaluation_id="", message=message))

    async def job_executions(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        records = self._service.store.executions_of(job.id)
        order_by = request.query_params.get("order_by", "")
        keys: dict[str, Callable[[ExecutionRecord], float | int | str]] = {
            "": lambda e: e.modified_at,
            "modify_time": lambda e: e.modified_at,
            "create_time": lambda e: e.created_at,
            "id": lambda e: e.id,
            "state": lambda e: int(e.state),
        }
        if order_by not in keys:
            raise _HttpError(
                400, f"order_by {order_by!r} is not one of modify_time, create_time, id, state"
            )
        records = _most_recent(records)
        records.sort(key=keys[order_by], reverse=_query_bool(request, "reverse", default=False))
        limit = _query_int(request, "limit", default=0)
        if limit:
            records = records[:limit]
        return self._json(
            wire.ListResponse[wire.Execution](items=self._executions_out(request, job, records))
        )

    async def job_history(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        since_s = _query_int(request, "since", default=0)
        events = [e for e in self._service.store.history_of(job.id) if e.time >= since_s]
        # Bacalhau's filters: event_type "job" or "execution" (anything else: both).
        event_type = request.query_params.get("event_type", "")
        execution_id = request.query_params.get("execution_id", "")
        node_id = request.query_params.get("node_id", "")
        history = [
            item
            for item in self._history_out(job, events)
            if not (event_type == "job" and item.type != "JobLevel")
            and not (event_type == "execution" and item.type != "ExecutionLevel")
            and (not execution_id or item.execution_id == execution_id)
            and (not node_id or item.node_id == node_id)
        ]
        return self._json(wire.ListResponse[wire.JobHistory](items=tuple(history)))

    async def job_results(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        results = [
            self._published_result(request, execution.id, execution.node_id)
            for execution in self._service.store.executions_of(job.id)
            if execution.state is ExecutionState.COMPLETED
        ]
        return self._json(wire.ListResponse[wire.SpecConfig](items=tuple(results)))

    async def job_logs(self, request: Request) -> Response:
        job = self._service.store.job(request.path_params["job_id"])
        executions = self._service.store.executions_of(job.id)
        wanted = request.query_params.get("execution_id", "")
        if wanted:
            executions = [e for e in executions if e.id == wanted]
            if not executions:
                raise NotFoundError(f"job {job.id} has no execution {wanted!r}")
        follow = _query_bool(request, "follow", default=False)
        here = self._service.node_info.id
        local = [e for e in executions if e.node_id == here or not isinstance(
            self._service, MeshService)]  # fmt: skip
        remote = [e for e in executions if e not in local]
        files = [
            _LogFile(execution.id, kind, self._service.execution_dir(execution.id) / kind)
            for execution in local
            for kind in ("stdout", "stderr")
        ]
        if not remote:
            return StreamingResponse(
                self._log_records(files, follow=follow),
                media_type="application/x-ndjson",
                headers={"Cache-Control": "no-cache"},
            )
        service = self._service
        assert isinstance(service, MeshService)
        sources = [self._log_records(files, follow=follow)] if files else []
        sources += [
            service.remote_logs(e.node_id, e.id, follow=follow and e.active) for e in remote
        ]
        return StreamingResponse(
            _merged(sources),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-cache"},
        )

    async def execution_logs(self, request: Request) -> Response:
        """The logs of an execution that ran on this node, whoever holds its job: what the
        job's requester streams from here when a job's executions ran on several nodes."""
        execution_id = request.path_params["execution_id"]
        directory = self._service.execution_dir(execution_id)
        if not directory.is_dir():
            raise NotFoundError(f"execution {execution_id} left no logs on this node")
        follow = _query_bool(request, "follow", default=False)
        files = [_LogFile(execution_id, kind, directory / kind) for kind in ("stdout", "stderr")]
        return StreamingResponse(
            self._log_records(files, follow=follow),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-cache"},
        )

    async def _log_records(self, files: list[_LogFile], *, follow: bool) -> AsyncIterator[bytes]:
        while pending := [f for f in files if not f.done]:
            more_waiting = False
            # A few files per read, so what one round holds stays small however many
            # executions the job has had.
            for start in range(0, len(pending), LOG_FILES_PER_READ):
                group = pending[start : start + LOG_FILES_PER_READ]
                # Asked before reading: a file read to its end after its execution ended has
                # nothing more to come, so the last lines are never lost.
                live = {
                    f.execution_id: follow and self._service.is_execution_live(f.execution_id)
                    for f in group
                }
                chunks = await trio.to_thread.run_sync(
                    _read_log_chunks, [(f.path, f.offset) for f in group]
                )
                out = bytearray()
                for log, chunk in zip(group, chunks, strict=True):
                    log.offset += len(chunk)
                    lines, log.partial = _split_lines(log.partial + chunk)
                    if len(chunk) == LOG_READ_BYTES:
                        more_waiting = True
                    elif not live[log.execution_id]:
                        log.done = True
                        if log.partial:
                            lines.append(log.partial)
                            log.partial = b""
                    for line in lines:
                        record = wire.LogRecord(
                            type=log.kind,
                            line=line.decode("utf-8", "replace"),
                            execution_id=log.execution_id,
                        )
                        out += self._encoder.encode(record) + b"\n"
                if out:
                    yield bytes(out)
            if not more_waiting and any(not f.done for f in files):
                await trio.sleep(LOG_POLL_S)

    # --- results -------------------------------------------------------------------------

    def _published_result(
        self, request: Request, execution_id: str, node_id: str
    ) -> wire.SpecConfig:
        # The address the client reached us by: the node may listen on 0.0.0.0. The files
        # are on the node that ran it: `node` lets any node's API route there.
        base = str(request.base_url).rstrip("/")
        url = f"{base}/api/v1/executions/{execution_id}/results?node={node_id}"
        return wire.SpecConfig(type="local", params={"URL": url})

    def _ended_execution(self, request: Request) -> str:
        """Results are served once an execution has ended: before, its files still change
        (and a file that grows while it is sent would break its Content-Length). The node
        that ran it may hold no record of its job (another node is the requester): then its
        folder is what says it ran here."""
        execution_id = request.path_params["execution_id"]
        try:
            execution_id = self._service.store.execution(execution_id).id
        except NotFoundError:
            if not self._service.execution_dir(execution_id).is_dir():
                raise
        if self._service.is_execution_live(execution_id):
            raise _HttpError(
                409, f"execution {execution_id} is still running; its results come when it ends"
            )
        return execution_id

    async def results_archive(self, request: Request) -> Response:
        execution_id = self._ended_execution(request)
        directory = self._service.execution_dir(execution_id)
        if not directory.is_dir():
            raise NotFoundError(f"execution {execution_id} left no results on this node")
        return _ArchiveResponse(directory, filename=f"{execution_id}.tar.gz")

    async def result_file(self, request: Request) -> Response:
        execution_id = self._ended_execution(request)
        base = self._service.execution_dir(execution_id).resolve()
        relative = request.path_params["path"]
        try:
            target = (base / relative).resolve()
        except (OSError, ValueError):
            raise _HttpError(400, f"{relative!r} is not a path") from None
        # After resolving (`..`, symlinks): whatever a path says, it must stay inside.
        if not target.is_relative_to(base) or target == base:
            raise _HttpError(400, f"{relative!r} is outside the execution's results")
        if not target.is_file():
            raise NotFoundError(f"execution {execution_id} has no result file {relative!r}")
        return FileResponse(target)

    # --- nodes ---------------------------------------------------------------------------

    async def list_nodes(self, request: Request) -> Response:
        selector = _label_constraints(request)
        status = request.query_params.get("filter-status", "").upper()
        approval = (
            request.query_params.get("filter-approval")
            or request.query_params.get("filter_approval")
            or ""
        ).upper()
        order_by = request.query_params.get("order_by", "")
        if order_by not in _NODE_ORDER:
            raise _HttpError(
                400, f"order_by {order_by!r} is not one of {', '.join(sorted(_NODE_ORDER)[1:])}"
            )
        nodes = [
            state
            for state in self._node_states(time.time())
            if status in ("", state.connection)
            and approval in ("", state.membership)
            and all(constraint_matches(c, state.info.labels) for c in selector)
        ]
        nodes.sort(key=lambda state: state.info.node_id)
        nodes.sort(
            key=_NODE_ORDER[order_by], reverse=_query_bool(request, "reverse", default=False)
        )
        # Bacalhau answers every node in one page; so do we, up to a bound, then pages.
        limit = _query_int(request, "limit", default=0)
        limit = min(limit, MAX_PAGE_LIMIT) if limit else MAX_PAGE_LIMIT
        offset = _node_offset(request.query_params.get("next_token", ""))
        page = tuple(nodes[offset : offset + limit])
        next_token = ""
        if offset + limit < len(nodes):
            next_token = _encode_node_offset(offset + limit)
        return self._json(wire.ListNodesResponse(items=page, nodes=page, next_token=next_token))

    async def get_node(self, request: Request) -> Response:
        wanted = request.path_params["node_id"]
        states = self._node_states(time.time())
        full_id = _resolve_node_id(wanted, [state.info.node_id for state in states])
        if full_id is None:
            raise NotFoundError(f"no node with id {wanted!r}")
        (state,) = [state for state in states if state.info.node_id == full_id]
        return self._json(wire.GetNodeResponse(node=state))

    async def update_node(self, request: Request) -> Response:
        """Bacalhau's node actions: approve, reject, delete."""
        document = await _json_body(
            request, example='{"NodeID": "...", "Action": "approve", "Message": "..."}'
        )
        if not isinstance(document, dict):
            raise _HttpError(400, 'the body must be a JSON object: {"NodeID", "Action"}')
        fields = {str(k).lower(): v for k, v in document.items()}
        body_id, action, message = (fields.get(k) or "" for k in ("nodeid", "action", "message"))
        if not all(isinstance(value, str) for value in (body_id, action, message)):
            raise _HttpError(400, "NodeID, Action and Message must be strings")
        path_id = request.path_params.get("node_id", "")
        if path_id and body_id and path_id != body_id:
            raise _HttpError(400, f"NodeID {body_id!r} in the body is not {path_id!r} of the path")
        wanted = path_id or body_id
        if not wanted:
            raise _HttpError(400, "missing node id: send NodeID in the body or the path")
        decision = _NODE_DECISIONS.get(action.lower())
        if decision is None:
            raise _HttpError(400, f"Action {action!r} is not one of approve, reject, delete")
        service = self._service
        if not isinstance(service, MeshService):
            raise _HttpError(400, "this node runs without a mesh: there is no node to approve")
        known = [service.node_info.id, *(m.id for m in service.core.members())]
        # A node nobody knows any more (deleted, forgotten) may still have a decision on
        # record: an unmatched id goes to the core as it is, which says if it is unknown.
        full_id = _resolve_node_id(wanted, known) or wanted
        result = await service.decide_approval(full_id, decision)
        LOGGER.info("API: %s; operator's message: %r", result, message[:MAX_LOGGED_MESSAGE_CHARS])
        return self._json(wire.PutNodeResponse(success=True, message=result))

    def _node_states(self, now_s: float) -> list[wire.NodeState]:
        """This node and every member of the mesh it knows."""
        own = self._own_state(now_s)
        service = self._service
        if not isinstance(service, MeshService):
            return [own]
        core = service.core
        require_approval = core.params.requester.require_approval
        states = [own]
        for member in core.members():
            if member.id == own.info.node_id:
                continue
            decision = core.membership.approval_of(member.id)
            states.append(
                self._member_state(member, _membership(decision, require_approval=require_approval))
            )
        return states

    def _member_state(self, member: Member, membership: str) -> wire.NodeState:
        info = member.info
        labels = dict(info.node.labels) if info is not None else {}
        compute = None
        node_type = "Compute"
        if info is not None and "compute" not in info.roles:
            node_type = "Requester"
        elif info is not None:
            node = info.node
            compute = wire.ComputeNodeInfo(
                execution_engines=node.engines,
                publishers=node.publishers,
                storage_sources=node.input_types,
                max_capacity=_resources_out(node.capacity),
                # Members advertise what is free, not what waits for it.
                queue_capacity=_resources_out(ResourceAmounts()),
                available_capacity=_resources_out(_floor_zero(info.free)),
                max_job_requirements=_resources_out(node.capacity),
                running_executions=info.running,
                enqueued_executions=0,
            )
        alive = member.state is MemberState.ALIVE
        since = _rfc3339(member.state_since) if member.state_since > 0 else _GO_ZERO_TIME
        return wire.NodeState(
            info=wire.NodeInfo(
                node_id=member.id,
                node_type=node_type,
                labels=labels,
                compute_node_info=compute,
                bacalhau_version=_build_version(
                    info.version if info is not None else "",
                    goos=labels.get("Operating-System", ""),
                    goarch=labels.get("Architecture", ""),
                ),
                addresses=info.addrs if info is not None else (),
            ),
            membership=membership,
            connection="CONNECTED" if alive else "DISCONNECTED",
            connection_state=wire.ConnectionState(
                status="CONNECTED" if alive else "DISCONNECTED",
                last_heartbeat=(
                    _rfc3339(member.last_seen) if member.last_seen > 0 else _GO_ZERO_TIME
                ),
                connected_since=since if alive else _GO_ZERO_TIME,
                disconnected_since=_GO_ZERO_TIME if alive else since,
            ),
            state=member.state.value,
        )

    def _own_state(self, now_s: float) -> wire.NodeState:
        info = self._service.node_info
        if isinstance(self._service, MeshService):
            # What runs here is the compute side's account (the store holds the records of
            # jobs this node is requester for, which may run anywhere).
            runs = self._service.core.runs
            running = [r.execution for r in runs if r.phase == "running"]
            waiting = [r.execution for r in runs if r.phase == "queued"]
        else:
            _, executions = self._service.store.live_state()
            running = [e for e in executions if e.running]
            waiting = [
                e
                for e in executions
                if e.state is ExecutionState.BID_ACCEPTED and e.started_at is None
            ]
        if isinstance(self._service, _ReportsUsage):
            used = self._service.used_resources()
        else:
            used = _total(e.resources for e in running)
        compute = wire.ComputeNodeInfo(
            execution_engines=info.engines,
            publishers=info.publishers,
            storage_sources=info.input_types,
            max_capacity=_resources_out(info.capacity),
            queue_capacity=_resources_out(_total(e.resources for e in waiting)),
            available_capacity=_resources_out(_floor_zero(info.capacity - used)),
            max_job_requirements=_resources_out(info.capacity),
            running_executions=len(running),
            enqueued_executions=len(waiting),
        )
        service = self._service
        membership = "APPROVED"
        addresses: tuple[str, ...] = ()
        if isinstance(service, MeshService):
            core = service.core
            membership = _membership(
                core.membership.approval_of(info.id),
                require_approval=core.params.requester.require_approval,
            )
            addresses = tuple(service.listen_addrs())
        machine = platform.machine().lower()
        return wire.NodeState(
            info=wire.NodeInfo(
                node_id=info.id,
                node_type="Compute",
                labels=dict(info.labels),
                compute_node_info=compute,
                bacalhau_version=_build_version(
                    service.agent.version,
                    goos=platform.system().lower(),
                    goarch=_GOARCH.get(machine, machine),
                ),
                addresses=addresses,
            ),
            membership=membership,
            connection_state=wire.ConnectionState(
                status="CONNECTED",
                last_heartbeat=_rfc3339(now_s),
                connected_since=_rfc3339(service.agent.started_at),
                disconnected_since=_GO_ZERO_TIME,
            ),
        )

    # --- mapping records to Bacalhau's shapes --------------------------------------------

    def _executions_out(
        self, request: Request, job: JobRecord, records: Iterable[ExecutionRecord]
    ) -> tuple[wire.Execution, ...]:
        task_name = job.spec.tasks[0].name if job.spec.tasks else "main"
        out = []
        for record in records:
            run_output = None
            if record.state.terminal:
                exit_code = -1 if record.exit_code is None else record.exit_code
                run_output = wire.RunCommandResult(exit_code=exit_code, error_msg=record.error)
            published = None
            if record.state is ExecutionState.COMPLETED:
                published = self._published_result(request, record.id, record.node_id)
            out.append(
                wire.Execution(
                    id=record.id,
                    namespace=job.spec.namespace,
                    name=job.name,
                    node_id=record.node_id,
                    job_id=record.job_id,
                    allocated_resources=wire.AllocatedResources(
                        tasks={task_name: _resources_out(record.resources)}
                    ),
                    desired_state=wire.ExecutionStateOf(state_type=int(record.desired)),
                    compute_state=wire.ExecutionStateOf(
                        state_type=int(record.state), message=record.message
                    ),
                    published_result=published,
                    run_output=run_output,
                    revision=record.revision,
                    create_time=_nanoseconds(record.created_at),
                    modify_time=_nanoseconds(record.modified_at),
                )
            )
        return tuple(out)

    def _history_out(
        self, job: JobRecord, events: Iterable[HistoryEvent]
    ) -> tuple[wire.JobHistory, ...]:
        node_of = {e.id: e.node_id for e in self._service.store.executions_of(job.id)}
        out = []
        for event in events:
            at = _rfc3339(event.time)
            job_level = event.kind == "job"
            item = wire.JobHistory(
                type="JobLevel" if job_level else "ExecutionLevel",
                job_id=event.job_id,
                node_id="" if job_level else node_of.get(event.execution_id, ""),
                execution_id=event.execution_id,
                job_state=(
                    wire.JobStateChange(previous=event.previous, new=event.new)
                    if job_level
                    else None
                ),
                execution_state=(
                    None
                    if job_level
                    else wire.ExecutionStateChange(
                        previous=_EXECUTION_STATE_BY_NAME.get(event.previous, 0),
                        new=_EXECUTION_STATE_BY_NAME.get(event.new, 0),
                    )
                ),
                new_revision=event.revision,
                comment=event.message,
                event=wire.HistoryEvent(message=event.message, topic="", timestamp=at),
                time=at,
            )
            out.append(item)
        return tuple(out)


def _build_version(version: str, *, goos: str, goarch: str) -> wire.BuildVersionInfo:
    parts = re.findall(r"\d+", version)
    return wire.BuildVersionInfo(
        major=parts[0] if parts else "0",
        minor=parts[1] if len(parts) > 1 else "0",
        git_version=f"v{version}" if version else "",
        git_commit="",
        build_date=_UNKNOWN_BUILD_DATE,
        goos=goos,
        goarch=goarch,
    )


# --- nodes -----------------------------------------------------------------------------------


def _membership(decision: str, *, require_approval: bool) -> str:
    """Bacalhau's Membership for the core's approval decision (see the module header)."""
    if decision in _MEMBERSHIP_OF_DECISION:
        return _MEMBERSHIP_OF_DECISION[decision]
    return "PENDING" if require_approval else "APPROVED"


def _resolve_node_id(wanted: str, node_ids: Iterable[str]) -> str | None:
    """The one id `wanted` is, or is a prefix of; None when none is."""
    ids = list(node_ids)
    if not wanted:
        return None
    if wanted in ids:
        return wanted
    matches = sorted({node_id for node_id in ids if node_id.startswith(wanted)})
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
        raise AmbiguousIdError(
            f"node id prefix {wanted!r} matches {len(matches)} nodes ({shown}); give more of it"
        )
    return matches[0] if matches else None


def _available(state: wire.NodeState) -> wire.Resources:
    compute = state.info.compute_node_info
    return compute.available_capacity if compute is not None else wire.Resources()


# Bacalhau's order_by values for nodes; available capacity sorts most first, as Bacalhau does.
_NODE_ORDER: Final[dict[str, Callable[[wire.NodeState], str | float]]] = {
    "": lambda state: state.info.node_id,
    "id": lambda state: state.info.node_id,
    "type": lambda state: state.info.node_type,
    "available_cpu": lambda state: -_available(state).cpu,
    "available_memory": lambda state: -_available(state).memory,
    "available_disk": lambda state: -_available(state).disk,
    "available_gpu": lambda state: -_available(state).gpu,
    "approval": lambda state: state.membership,
    "status": lambda state: state.membership,
}
_NODE_TOKEN_PREFIX: Final = "nodes:"


def _encode_node_offset(offset: int) -> str:
    text = f"{_NODE_TOKEN_PREFIX}{offset}".encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _node_offset(token: str) -> int:
    """Where a page of nodes starts. The list can change between pages (members come and
    go); a node may then be missed or shown twice, as in any listing of a live set."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        text = ""
    number = text.removeprefix(_NODE_TOKEN_PREFIX)
    if not text.startswith(_NODE_TOKEN_PREFIX) or not number.isdigit() or len(number) > 9:
        raise _HttpError(400, "next_token is not a token this node gave out")
    return int(number)


def _most_recent(executions: list[ExecutionRecord]) -> list[ExecutionRecord]:
    """A bound on an answer: a daemon restarted for a year has had many executions; the
    MAX_PAGE_LIMIT last changed are the ones anybody asks about."""
    if len(executions) <= MAX_PAGE_LIMIT:
        return executions
    return sorted(executions, key=lambda e: (e.modified_at, e.id))[-MAX_PAGE_LIMIT:]


def _job_out(record: JobRecord) -> wire.Job:
    spec = record.spec
    return wire.Job(
        id=record.id,
        name=record.name,
        namespace=spec.namespace,
        type=spec.type,
        priority=spec.priority,
        count=spec.count or 0,
        constraints=spec.constraints,
        meta=dict(spec.meta),
        labels=dict(spec.labels),
        tasks=spec.tasks,
        state=wire.JobState(state_type=record.state.value, message=record.message),
        version=record.version,
        revision=record.revision,
        create_time=_nanoseconds(record.created_at),
        modify_time=_nanoseconds(record.modified_at),
    )


def _resources_out(amounts: ResourceAmounts) -> wire.Resources:
    return wire.Resources(
        cpu=amounts.cpu_millicores / 1000,
        memory=amounts.memory_bytes,
        disk=amounts.disk_bytes,
        gpu=amounts.gpu_count,
    )


def _total(amounts: Iterable[ResourceAmounts]) -> ResourceAmounts:
    total = ResourceAmounts()
    for amount in amounts:
        total += amount
    return total


def _floor_zero(amounts: ResourceAmounts) -> ResourceAmounts:
    return ResourceAmounts(
        cpu_millicores=max(amounts.cpu_millicores, 0),
        memory_bytes=max(amounts.memory_bytes, 0),
        disk_bytes=max(amounts.disk_bytes, 0),
        gpu_count=max(amounts.gpu_count, 0),
    )


def _nanoseconds(seconds: float) -> int:
    # Whole seconds apart from the fraction: a float holds ~16 digits, nanoseconds need 19.
    whole = math.floor(seconds)
    return whole * 1_000_000_000 + round((seconds - whole) * 1_000_000_000)


def _rfc3339(seconds: float) -> str:
    """Go's RFC3339Nano in UTC (`2024-07-02T14:26:57.160015Z`), as Bacalhau writes times."""
    whole, fraction = divmod(_nanoseconds(seconds), 1_000_000_000)
    text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


# --- reading requests ------------------------------------------------------------------------


async def _json_body(request: Request, *, example: str) -> object:
    """The request's JSON body (`_BodyLimit` bounds what arrives)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    if not body.strip():
        raise _HttpError(400, f"the body is empty; send {example}")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise _HttpError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise _HttpError(400, "the body is not valid JSON: nested too deeply") from None


def _job_document(document: object) -> dict[str, object]:
    """The spec inside a `{"Job": {...}}` body, without what the server owns."""
    if not isinstance(document, dict):
        raise _HttpError(400, 'the body must be a JSON object: {"Job": {...}}')
    job = next((v for k, v in document.items() if isinstance(k, str) and k.lower() == "job"), None)
    if job is None:
        raise _HttpError(400, 'the body has no "Job": send {"Job": {...}}')
    if not isinstance(job, dict):
        raise SpecError.single("Job", "must be a mapping of fields (Name, Type, Tasks, …)")
    spec = {k: v for k, v in job.items() if str(k).lower() not in _SERVER_OWNED_FIELDS}
    for key, tasks in spec.items():
        if str(key).lower() == "tasks" and isinstance(tasks, list):
            spec[key] = [_without_empty_publisher(task) for task in tasks]
    return spec


def _without_empty_publisher(task: object) -> object:
    """Bacalhau reads a publisher with no Type (`{}`, as the Python SDK's `SpecConfig()`
    sends) as "no publisher"; so do we."""
    if not isinstance(task, dict):
        return task
    kept = {}
    for key, value in task.items():
        if str(key).lower() == "publisher" and isinstance(value, dict):
            fields = {str(k).lower(): v for k, v in value.items()}
            if not fields.get("type") and not fields.get("params"):
                continue
        kept[key] = value
    return kept


def _query_bool(request: Request, name: str, *, default: bool) -> bool:
    text = request.query_params.get(name, "").strip().lower()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _HttpError(400, f"{name}={text!r} is not a boolean (true or false)")


def _query_int(request: Request, name: str, *, default: int) -> int:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise _HttpError(400, f"{name}={text!r} is not a whole number ≥ 0")
    return int(text)


def _page_limit(request: Request) -> int:
    limit = _query_int(request, "limit", default=0)
    return min(limit, MAX_PAGE_LIMIT) if limit else DEFAULT_PAGE_LIMIT


def _label_constraints(request: Request) -> list[Constraint]:
    constraints: list[Constraint] = []
    for text in request.query_params.getlist("labels"):
        constraints.extend(parse_label_selector(text))
    return constraints


# --- label selectors -------------------------------------------------------------------------

_KEY: Final = r"[^\s,()=!<>]+"
_VALUE: Final = r"[^\s,()=!<>]*"
_NOT_EXISTS: Final = re.compile(rf"!\s*({_KEY})")
_SET: Final = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)")
_COMPARE: Final = re.compile(rf"({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})")
_EXISTS: Final = re.compile(_KEY)
_OPERATORS: Final = {"=": "=", "==": "=", "!=": "!=", ">": "gt", "<": "lt"}


def parse_label_selector(text: str) -> list[Constraint]:
    """Bacalhau's (Kubernetes') label selector: comma-separated requirements `k=v`, `k==v`,
    `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`, `k>3`, `k<3`; all must hold."""
    constraints = []
    for part in _split_requirements(text):
        requirement = part.strip()
        if match := _NOT_EXISTS.fullmatch(requirement):
            constraints.append(Constraint(key=match[1], operator="!"))
        elif match := _SET.fullmatch(requirement):
            values = tuple(value.strip() for value in match[3].split(","))
            if any(not re.fullmatch(_VALUE, value) for value in values):
                raise LabelSelectorError(f"label selector {text!r}: bad value in {requirement!r}")
            constraints.append(Constraint(key=match[1], operator=match[2], values=values))
        elif match := _COMPARE.fullmatch(requirement):
            operator = _OPERATORS[match[2]]
            constraints.append(Constraint(key=match[1], operator=operator, values=(match[3],)))
        elif _EXISTS.fullmatch(requirement):
            constraints.append(Constraint(key=requirement, operator="exists"))
        else:
            raise LabelSelectorError(
                f"label selector {text!r}: cannot read {requirement!r} (forms: k=v, k!=v, "
                "k in (a,b), k notin (a), k, !k)"
            )
    return constraints


def _split_requirements(text: str) -> list[str]:
    """Split at the commas that are not inside a `(…)` value set."""
    if not text.strip():
        return []
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
        if depth not in (0, 1):
            raise LabelSelectorError(f"label selector {text!r}: unbalanced parentheses")
    if depth:
        raise LabelSelectorError(f"label selector {text!r}: unbalanced parentheses")
    parts.append(text[start:])
    return parts


# --- logs ------------------------------------------------------------------------------------


@dataclass
class _LogFile:
    execution_id: str
    kind: str  # "stdout" | "stderr": the file's name and the records' Type
    path: Path
    offset: int = 0
    partial: bytes = b""  # the start of a line whose newline has not come yet
    done: bool = False


def _read_log_chunks(files: list[tuple[Path, int]]) -> list[bytes]:
    """In a worker thread: what each file holds past its offset (bounded)."""
    chunks = []
    for path, offset in files:
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunks.append(handle.read(LOG_READ_BYTES))
        except FileNotFoundError:
            chunks.append(b"")  # the execution has not started writing yet
    return chunks


def _split_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without newlines, cut to MAX_LOG_LINE_BYTES), and the rest."""
    *complete, rest = buffer.split(b"\n")
    lines = []
    for line in complete:
        lines.extend(_pieces(line) or [b""])
    while len(rest) > MAX_LOG_LINE_BYTES:
        lines.append(rest[:MAX_LOG_LINE_BYTES])
        rest = rest[MAX_LOG_LINE_BYTES:]
    return lines, rest


def _pieces(line: bytes) -> list[bytes]:
    return [line[i : i + MAX_LOG_LINE_BYTES] for i in range(0, len(line), MAX_LOG_LINE_BYTES)]


# --- result archives -------------------------------------------------------------------------


class _ArchiveResponse(Response):
    """A tar.gz of a folder, built in a worker thread and streamed through a pipe: memory
    stays at a pipe's worth whatever the size. A client that goes away closes the pipe,
    which stops the thread (its next write fails)."""

    def __init__(self, directory: Path, *, filename: str) -> None:
        # Not Response.__init__: that would declare a Content-Length for an empty body.
        self.status_code = 200
        self.media_type = "application/gzip"
        self.background = None
        self.init_headers({"Content-Disposition": f'attachment; filename="{filename}"'})
        self._directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read_fd, write_fd = os.pipe()
        reader = trio.lowlevel.FdStream(read_fd)
        pipe = open(write_fd, "wb")  # noqa: SIM115 (the writer thread closes it)
        failures: list[Exception] = []
        written = trio.Event()

        async def write() -> None:
            try:
                await trio.to_thread.run_sync(_write_archive, self._directory, pipe)
            except Exception as error:
                failures.append(error)
            finally:
                written.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            # Closing the reader (however this block ends) is what lets a blocked writer
            # thread finish, so it comes before the nursery waits for that thread.
            async with reader:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                while chunk := await reader.receive_some(ARCHIVE_CHUNK_BYTES):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await written.wait()
                if failures:
                    # Started already: raising makes the server cut the connection, so
                    # the client cannot take a truncated archive for a whole one.
                    raise failures[0]
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()  # stop watching for a disconnect


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _write_archive(directory: Path, pipe: IO[bytes]) -> None:
    """In a worker thread. Symlinks are archived as links (never followed), so nothing
    outside the folder is read."""
    try:
        with tarfile.open(fileobj=pipe, mode="w|gz") as archive:
            for child in sorted(directory.iterdir()):
                archive.add(child, arcname=child.name)
    except BrokenPipeError:
        pass  # the reader closed its end: the client went away
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


async def _merged(sources: list[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """Interleave whole-line chunks from several streams as they come (logs of executions
    on several nodes, followed at once)."""
    send, receive = trio.open_memory_channel[bytes](64)

    async def pump(source: AsyncIterator[bytes], out: trio.MemorySendChannel[bytes]) -> None:
        async with out:
            async for chunk in source:
                await out.send(chunk)

    async with trio.open_nursery() as nursery:
        async with send:
            for source in sources:
                nursery.start_soon(pump, source, send.clone())
        async with receive:
            async for chunk in receive:
                yield chunk
