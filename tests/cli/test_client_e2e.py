"""The CLI against a real node: `meshnode start --no-docker` in a subprocess, then every client
command as a user types it, in its own process, against the node's real HTTP API.

Rules of this module:
- One node for the module (it starts in about a second); each test submits the jobs it looks
  at, except that the read-only commands share one completed hello job (`hello_job`).
- Wasm modules are compiled from WAT with `wasmtime.wat2wasm` into tmp_path (the test may use
  wasmtime; the CLI never imports it).
- No fixed sleeps: waiting is the CLI's own (`--wait-timeout` bounds it), or polling the API
  with a deadline where a test must see a state change.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO: Final = Path(__file__).resolve().parents[2]
MESHNODE: Final = shutil.which("meshnode", path=str(Path(sys.executable).parent))
READY_RE: Final = re.compile(r"meshnode node (\S+) API on http://([^\s:]+):(\d+)")
START_TIMEOUT_S: Final = 60.0
WAIT: Final = ("--wait-timeout", "60")

HELLO_WAT: Final = (REPO / "examples" / "wasm" / "hello.wat").read_text()
SPIN_WAT: Final = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'
TRAP_WAT: Final = '(module (memory (export "memory") 1) (func (export "_start") unreachable))'


@dataclass(frozen=True)
class Node:
    node_id: str
    port: int
    data_dir: Path


@dataclass(frozen=True)
class HelloJob:
    job_id: str
    stdout: str


def _compile(wat: str, path: Path) -> Path:
    import wasmtime

    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    assert MESHNODE, "the meshnode console script is not installed next to this Python"
    data_dir = tmp_path_factory.mktemp("node")
    log = (data_dir / "node.log").open("w")
    # Port 0: the node binds a free port itself and says which in its ready line (no race
    # between picking a port here and binding it there).
    # Network rule: loopback only, no mDNS (a node alone: no --peers).
    process = subprocess.Popen(
        [MESHNODE, "start", "--api-port", "0", "--data-dir", str(data_dir), "--no-docker",
         "--swarm-host", "127.0.0.1", "--swarm-port", "0", "--no-mdns"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    ready = _ready_line(process, data_dir)
    match = READY_RE.search(ready)
    assert match, f"unexpected ready line: {ready!r}"
    try:
        yield Node(node_id=match[1], port=int(match[3]), data_dir=data_dir)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready_line(process: subprocess.Popen[str], data_dir: Path) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if READY_RE.search(line):
                return line
            if not line and process.poll() is not None:
                break
    process.kill()
    log = (data_dir / "node.log").read_text()
    pytest.fail(f"the node did not print its ready line in {START_TIMEOUT_S} s; log:\n{log}")


def meshnode(
    *args: str, node: Node | None = None, port: int | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHNODE_API_HOST": "127.0.0.1"}
    if node is not None or port is not None:
        env["MESHNODE_API_PORT"] = str(port if port is not None else node.port)  # type: ignore[union-attr]
    assert MESHNODE
    return subprocess.run(
        [MESHNODE, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
        check=False,
    )  # fmt: skip


def _job_id_in(text: str) -> str:
    match = re.search(r"\bj-[0-9a-f-]{36}\b", text)
    assert match, f"no job id in {text!r}"
    return match[0]


def _state(node: Node, job_id: str) -> str:
    result = meshnode("job", "describe", job_id, "-o", "json", node=node)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["Job"]["State"]["StateType"])


def _wait_for_state(node: Node, job_id: str, wanted: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    state = _state(node, job_id)
    while state != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        state = _state(node, job_id)
    assert state == wanted


@pytest.fixture(scope="module")
def hello_job(node: Node, tmp_path_factory: pytest.TempPathFactory) -> HelloJob:
    module = _compile(HELLO_WAT, tmp_path_factory.mktemp("wasm") / "hello.wasm")
    result = meshnode("wasm", "run", *WAIT, str(module), "--", "hello from e2e", node=node)
    assert result.returncode == 0, result.stderr
    return HelloJob(job_id=_job_id_in(result.stdout), stdout=result.stdout)


# --- run -----------------------------------------------------------------------------------------


def test_wasm_run_waits_and_prints_completed(hello_job: HelloJob) -> None:
    assert hello_job.stdout.splitlines() == [
        f"Job {hello_job.job_id} submitted",
        f"Job {hello_job.job_id} Completed",
    ]


def test_follow_streams_the_output_then_the_final_state(node: Node, tmp_path: Path) -> None:
    module = _compile(HELLO_WAT, tmp_path / "hello.wasm")
    result = meshnode("wasm", "run", "--follow", *WAIT, str(module), "--", "followed", node=node)
    assert result.returncode == 0, result.stderr
    # While following, stdout is the job's own output only.
    assert result.stdout == "followed\n"
    assert re.search(r"^Job j-\S+ Completed$", result.stderr, re.MULTILINE)


def test_id_only_prints_only_the_id_and_does_not_wait(node: Node, tmp_path: Path) -> None:
    module = _compile(HELLO_WAT, tmp_path / "hello.wasm")
    result = meshnode("wasm", "run", "--id-only", str(module), node=node)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert re.fullmatch(r"j-[0-9a-f-]{36}", job_id)
    assert result.stdout == job_id + "\n"
    _wait_for_state(node, job_id, "Completed")


def test_a_failed_job_exits_with_1_and_says_why(node: Node, tmp_path: Path) -> None:
    module = _compile(TRAP_WAT, tmp_path / "trap.wasm")
    # No retries, so the test does not wait through the retry backoff.
    spec = tmp_path / "trap.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "Type": "batch",
                "Meta": {"meshnode.io/max-retries": "0"},
                "Tasks": [{"Engine": {"Type": "wasm", "Params": {"EntryModule": "MODULE"}}}],
            }
        )
    )
    # The module travels inline, as `wasm run` sends it: reuse its dry run for the source.
    dry = meshnode("wasm", "run", "--dry-run", "-o", "json", str(module))
    entry = json.loads(dry.stdout)["Tasks"][0]["Engine"]["Params"]["EntryModule"]
    document = yaml.safe_load(spec.read_text())
    document["Tasks"][0]["Engine"]["Params"]["EntryModule"] = entry
    spec.write_text(json.dumps(document))
    result = meshnode("job", "run", *WAIT, str(spec), node=node)
    assert result.returncode == 1, result.stderr
    assert re.search(r"^Job j-\S+ Failed$", result.stdout, re.MULTILINE)
    assert "execution e-" in result.stdout  # the execution's reason follows
    assert "Traceback" not in result.stderr


def test_a_daemon_job_returns_once_running_and_stops(node: Node, tmp_path: Path) -> None:
    module = _compile(SPIN_WAT, tmp_path / "spin.wasm")
    dry = meshnode("wasm", "run", "--dry-run", "-o", "json", "--cpu", "100m", str(module))
    document = json.loads(dry.stdout)
    document.update(Type="daemon", Count=0, Name="spinner")
    del document["Tasks"][0]["ResultPaths"]
    spec = tmp_path / "daemon.json"
    spec.write_text(json.dumps(document))
    result = meshnode("job", "run", *WAIT, str(spec), node=node)
    assert result.returncode == 0, result.stderr
    job_id = _job_id_in(result.stdout)
    assert f"Job {job_id} Running" in result.stdout

    stopped = meshnode("job", "stop", job_id[:10], "--reason", "e2e test", node=node)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("Job ")
    _wait_for_state(node, job_id, "Stopped")
    history = meshnode("job", "history", job_id, node=node)
    assert "Running → Stopped" in history.stdout


# --- inspect -------------------------------------------------------------------------------------


def test_describe(node: Node, hello_job: HelloJob) -> None:
    result = meshnode("job", "describe", hello_job.job_id[:10], node=node)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^ID +{hello_job.job_id}$", result.stdout, re.MULTILINE)
    assert re.search(r"^State +Completed$", result.stdout, re.MULTILINE)
    assert re.search(r"^Engine +wasm$", result.stdout, re.MULTILINE)
    assert re.search(r"^e-\w{8} .* Completed ", result.stdout, re.MULTILINE)


def test_list(node: Node, hello_job: HelloJob) -> None:
    result = meshnode("job", "list", "--all", node=node)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if hello_job.job_id[:10] in line)
    assert re.search(r"batch +wasm +Completed +\d+[smh] ago", row)


def test_list_pages_through_next_token(node: Node, hello_job: HelloJob) -> None:
    everything = json.loads(meshnode("job", "list", "--all", "-o", "json", node=node).stdout)
    paged = json.loads(
        meshnode("job", "list", "--all", "--limit", "1", "-o", "json", node=node).stdout
    )
    assert [j["ID"] for j in paged["Items"]] == [j["ID"] for j in everything["Items"]]
    first = json.loads(meshnode("job", "list", "--limit", "1", "-o", "json", node=node).stdout)
    assert len(first["Items"]) == 1
    newest = json.loads(
        meshnode("job", "list", "--limit", "1", "--reverse", "-o", "json", node=node).stdout
    )
    assert newest["Items"][0]["ID"] == everything["Items"][-1]["ID"]


def test_executions(node: Node, hello_job: HelloJob) -> None:
    result = meshnode("job", "executions", hello_job.job_id, node=node)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("e-")]
    assert len(rows) == 1
    assert re.search(r" Completed +\w+ +0 ", rows[0])


def test_history(node: Node, hello_job: HelloJob) -> None:
    result = meshnode("job", "history", hello_job.job_id, node=node)
    assert result.returncode == 0, result.stderr
    assert "Pending → Running" in result.stdout
    assert "BidAccepted → Completed" in result.stdout
    assert "Running → Completed" in result.stdout


def test_logs(node: Node, hello_job: HelloJob) -> None:
    result = meshnode("job", "logs", hello_job.job_id, node=node)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from e2e\n"
    records = meshnode("job", "logs", hello_job.job_id, "-o", "json", node=node)
    assert [json.loads(line)["Line"] for line in records.stdout.splitlines()] == ["hello from e2e"]


def test_get_downloads_each_execution_into_its_own_folder(
    node: Node, hello_job: HelloJob, tmp_path: Path
) -> None:
    result = meshnode("job", "get", hello_job.job_id[:10], node=node, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / f"job-{hello_job.job_id[:10]}"
    (execution,) = list(folder.iterdir())
    assert execution.name.startswith("e-")
    assert (execution / "stdout").read_text() == "hello from e2e\n"
    again = meshnode("job", "get", hello_job.job_id, node=node, cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("job", "describe", "{job}"),
        ("job", "list"),
        ("job", "executions", "{job}"),
        ("job", "history", "{job}"),
        ("agent", "node"),
        ("agent", "version"),
        ("node", "list"),
    ],
)
@pytest.mark.parametrize("output", ["json", "yaml"])
def test_raw_output_parses(
    node: Node, hello_job: HelloJob, command: tuple[str, ...], output: str
) -> None:
    args = [part.replace("{job}", hello_job.job_id) for part in command]
    result = meshnode(*args, "--output", output, node=node)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    assert isinstance(data, dict) and data


def test_nodes_and_agent(node: Node) -> None:
    listed = meshnode("node", "list", node=node)
    # The table shows both ends of a node id (12D3Ko…CVe2Xo); describe shows it whole.
    assert f"{node.node_id[:6]}…{node.node_id[-6:]}" in listed.stdout
    assert re.search(r"\balive +APPROVED\b", listed.stdout)
    described = meshnode("node", "describe", node.node_id[:12], node=node)
    assert re.search(rf"^ID +{node.node_id}$", described.stdout, re.MULTILINE)
    assert re.search(r"^Engines +wasm$", described.stdout, re.MULTILINE)
    assert re.search(r"^State +alive$", described.stdout, re.MULTILINE)
    assert meshnode("agent", "alive", node=node).stdout == "OK\n"
    # This node's mesh addresses, whole, as another node's --peers takes them.
    agent_node = meshnode("agent", "node", node=node).stdout
    address = rf"/ip4/127\.0\.0\.1/tcp/\d+/p2p/{node.node_id}"
    assert re.search(rf"^Addresses +{address}$", agent_node, re.MULTILINE)


# --- errors --------------------------------------------------------------------------------------


def test_an_unknown_job_is_a_clear_error(node: Node) -> None:
    result = meshnode("job", "describe", "j-00000000", node=node)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no job with id")
    assert "Traceback" not in result.stderr


def test_an_unreachable_api_gives_the_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = meshnode("wasm", "run", "https://example.com/m.wasm", port=port)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: cannot reach the meshnode API at http://127.0.0.1:{port} "
        "(is a node running? start one with: meshnode start)\n"
    )
