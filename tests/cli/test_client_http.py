"""The HTTP client (`meshnode.cli.client`) and the CLI's error path, against a real HTTP
server on a loopback port that answers with canned Bacalhau-shaped bodies.

The server is a test double of the node's API, not of the client: every request goes through
real sockets, http.client, chunked encoding and the CLI process."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from meshnode.cli.client import ApiClient, ApiError, ApiUnreachableError, path_of


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    chunks: list[bytes] | None = None  # sent with chunked transfer encoding


@dataclass
class FakeApi:
    port: int
    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, list[str]], bytes]] = field(default_factory=list)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def _answer(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            api.requests.append((self.command, url.path, parse_qs(url.query), body))
            answer = api.answers.get(f"{self.command} {url.path}") or Answer(
                404, b'{"error": "NotFound", "message": "no route"}'
            )
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            if answer.chunks is not None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in answer.chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        def do_GET(self) -> None:
            self._answer()

        def do_PUT(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

    return Handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeApi(port=server.server_address[1])
    server.RequestHandlerClass = _handler(fake)
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _meshnode(*args: str, port: int) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert executable
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "MESHNODE_API_PORT": str(port), "MESHNODE_API_HOST": "127.0.0.1"},
    )  # fmt: skip


# --- the client -----------------------------------------------------------------------------------


def test_json_requests_and_query_spelling(api: FakeApi) -> None:
    api.answers["GET /api/v1/orchestrator/jobs"] = Answer(body=b'{"Items": [], "NextToken": ""}')
    client = ApiClient("127.0.0.1", api.port)
    params = {"limit": 5, "reverse": True, "next_token": None, "labels": ["a=1", "b"]}
    assert client.get("/api/v1/orchestrator/jobs", params) == {"Items": [], "NextToken": ""}
    method, path, query, _ = api.requests[0]
    assert (method, path) == ("GET", "/api/v1/orchestrator/jobs")
    assert query == {"limit": ["5"], "reverse": ["true"], "labels": ["a=1", "b"]}


def test_ids_cannot_add_path_segments() -> None:
    assert path_of("/api/v1/orchestrator/jobs", "../../agent") == (
        "/api/v1/orchestrator/jobs/..%2F..%2Fagent"
    )


def test_errors_carry_the_message_and_every_problem(api: FakeApi) -> None:
    body = {
        "error": "ValidationError",
        "message": "the job spec is invalid",
        "problems": [
            {"path": "Count", "message": '"-1" must be ≥ 0'},
            {"path": "Tasks[0].Engine", "message": "required"},
        ],
    }
    api.answers["PUT /api/v1/orchestrator/jobs"] = Answer(400, json.dumps(body).encode())
    with pytest.raises(ApiError) as caught:
        ApiClient("127.0.0.1", api.port).put("/api/v1/orchestrator/jobs", b'{"Job": {}}')
    error = caught.value
    assert (error.status, error.message) == (400, "the job spec is invalid")
    assert error.problems == (
        ("Count", '"-1" must be ≥ 0'),
        ("Tasks[0].Engine", "required"),
    )
    assert str(error).splitlines() == [
        "the job spec is invalid",
        'Error: Count: "-1" must be ≥ 0',
        "Error: Tasks[0].Engine: required",
    ]
    assert api.requests[0][3] == b'{"Job": {}}'


def test_an_error_that_is_not_json_is_shown_briefly(api: FakeApi) -> None:
    api.answers["GET /api/v1/agent/alive"] = Answer(502, b"<html>bad gateway</html>", "text/html")
    with pytest.raises(ApiError, match="the node answered 502: <html>bad gateway</html>"):
        ApiClient("127.0.0.1", api.port).get("/api/v1/agent/alive")


def test_an_answer_that_is_not_json_is_an_error(api: FakeApi) -> None:
    api.answers["GET /api/v1/agent/alive"] = Answer(200, b"OK", "text/plain")
    with pytest.raises(ApiError, match="is not JSON"):
        ApiClient("127.0.0.1", api.port).get("/api/v1/agent/alive")


def test_nothing_listening_is_unreachable() -> None:
    port = _free_port()
    with pytest.raises(ApiUnreachableError) as caught:
        ApiClient("127.0.0.1", port).get("/api/v1/agent/alive")
    assert str(caught.value) == (
        f"cannot reach the meshnode API at http://127.0.0.1:{port} "
        "(is a node running? start one with: meshnode start)"
    )


def test_json_lines_arrive_record_by_record_across_chunks(api: FakeApi) -> None:
    records = [
        {"Type": "stdout", "Line": "one", "ExecutionID": "e-1"},
        {"Type": "stderr", "Line": "two ✓", "ExecutionID": "e-1"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    # Cut mid-record: the client must join chunks into lines.
    api.answers["GET /api/v1/orchestrator/jobs/j-1/logs"] = Answer(
        chunks=[text[:7], text[7:40], text[40:], b"\n"]
    )
    client = ApiClient("127.0.0.1", api.port)
    got = list(
        client.json_lines("/api/v1/orchestrator/jobs/j-1/logs", {"follow": False}, read_timeout_s=5)
    )
    assert got == records
    assert api.requests[0][2] == {"follow": ["false"]}


def test_downloads_are_streamed_to_a_file(api: FakeApi) -> None:
    payload = os.urandom(700_000)
    api.answers["GET /api/v1/executions/e-1/results"] = Answer(
        body=payload, content_type="application/gzip"
    )
    sink = io.BytesIO()
    written = ApiClient("127.0.0.1", api.port).download("/api/v1/executions/e-1/results", sink)
    assert written == len(payload)
    assert sink.getvalue() == payload


# --- the CLI's error path -------------------------------------------------------------------------


def test_cli_prints_api_errors_without_a_traceback(api: FakeApi) -> None:
    api.answers["GET /api/v1/orchestrator/jobs/j-nope"] = Answer(
        404, b'{"error": "NotFound", "message": "no job with id \'j-nope\'"}'
    )
    result = _meshnode("job", "describe", "j-nope", port=api.port)
    assert result.returncode == 1
    assert result.stderr == "Error: no job with id 'j-nope'\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ("job", "list"),
        ("job", "describe", "j-1"),
        ("job", "logs", "j-1"),
        ("job", "stop", "j-1"),
        ("job", "executions", "j-1"),
        ("job", "history", "j-1"),
        ("job", "get", "j-1"),
        ("agent", "alive"),
        ("agent", "node"),
        ("agent", "version"),
        ("agent", "mesh"),
        ("node", "list"),
        ("node", "describe", "n-1"),
        ("node", "approve", "n-1"),
        ("docker", "run", "busybox"),
    ],
)
def test_every_command_says_clearly_when_no_node_answers(command: tuple[str, ...]) -> None:
    port = _free_port()
    result = _meshnode(*command, port=port)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: cannot reach the meshnode API at http://127.0.0.1:{port} "
        "(is a node running? start one with: meshnode start)\n"
    )


def test_api_port_flag_wins_over_the_environment(api: FakeApi) -> None:
    api.answers["GET /api/v1/agent/alive"] = Answer(body=b'{"Status": "OK"}')
    result = _meshnode("agent", "alive", "--api-port", str(api.port), port=_free_port())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK\n"


# --- node actions -----------------------------------------------------------------------------


def test_node_approve_sends_bacalhaus_put_node_request(api: FakeApi) -> None:
    path = "/api/v1/orchestrator/nodes/12D3KooWQY"
    api.answers[f"PUT {path}"] = Answer(
        body=b'{"Success": true, "Error": "", "Message": "node 12D3KooWQYfull approved"}'
    )
    result = _meshnode("node", "approve", "12D3KooWQY", "-m", "new rack", port=api.port)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Node 12D3KooWQYfull approved\n"
    ((method, got_path, _, body),) = api.requests
    assert (method, got_path) == ("PUT", path)
    assert json.loads(body) == {"NodeID": "12D3KooWQY", "Action": "approve", "Message": "new rack"}


def test_node_actions_that_fail_say_why(api: FakeApi) -> None:
    # Bacalhau 1.4 answers a refused action with 200 and Success false.
    api.answers["PUT /api/v1/orchestrator/nodes/n-1"] = Answer(
        body=b'{"Success": false, "Error": "node already rejected"}'
    )
    result = _meshnode("node", "reject", "n-1", port=api.port)
    assert result.returncode == 1
    assert result.stderr == "Error: could not reject node n-1: node already rejected\n"
    # A Bacalhau node answers "Ok"-style without a Message: the CLI says Ok, as Bacalhau's.
    api.answers["PUT /api/v1/orchestrator/nodes/n-1"] = Answer(body=b'{"Success": true}')
    result = _meshnode("node", "delete", "n-1", port=api.port)
    assert (result.returncode, result.stdout) == (0, "Ok\n")
