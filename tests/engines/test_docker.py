"""The docker engine against a real Docker Engine and real containers (no mocks).

Rules of these tests:
- Every container runs `meshnode-busybox:latest` (built from the host's busybox, see
  docker_images.py) and is labelled with a node id unique to the test, so the recovery
  tests only ever see their own containers; every test checks that its containers are gone.
- Network: loopback, the containers the tests create and the networks the engine creates.
  Names that stand for the outside world (`allowed.test`, `denied.test`) resolve to
  loopback servers through the proxy's resolver override.
- Waiting for a container to be running is a handshake through FIFOs in a mounted folder
  (the container writes "ready" and blocks reading "go"), not a sleep. Only the tests about
  time (timeout, cancellation) measure time.
- No Docker: these tests fail (CI installs Docker); MESHNODE_SKIP_DOCKER=1 skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import docker
import docker.errors
import pytest
import trio
from docker.models.containers import Container

from meshnode.engines.base import (
    EngineUnavailableError,
    ExecutionError,
    Limits,
    Mount,
    RunOutcome,
    RunRequest,
)
from meshnode.engines.docker import (
    EXECUTION_ID_LABEL,
    HTTP_DOMAINS_LABEL,
    HTTP_NETWORK_NAME,
    JOB_ID_LABEL,
    NODE_ID_LABEL,
    DockerEngine,
)
from meshnode.engines.http_proxy import HttpFilterProxy
from meshnode.spec import DockerParams, NetworkSpec
from tests.engines.docker_images import busybox_image, docker_client  # noqa: F401 (fixtures)

MiB = 1024 * 1024
HANDSHAKE_WAIT_S = 20  # an upper bound for a container to start; it takes well under 1 s


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Task:
    """One test's engine and the folder its requests live in."""

    engine: DockerEngine
    node_id: str
    folder: Path
    image: str
    client: docker.DockerClient

    def request(
        self,
        script: str | None = None,
        *,
        parameters: Sequence[str] = (),
        entrypoint: Sequence[str] | None = None,
        environment_variables: Sequence[str] = (),
        working_directory: str = "",
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        limits: Limits | None = None,
        network: NetworkSpec | None = None,
        labels: Mapping[str, str] | None = None,
        image: str | None = None,
    ) -> RunRequest:
        execution_id = f"e-{uuid.uuid4().hex[:12]}"
        run_folder = self.folder / execution_id
        outputs = run_folder / "outputs"
        outputs.mkdir(parents=True)
        for name in ("stdout", "stderr"):
            (run_folder / name).touch()
        return RunRequest(
            execution_id=execution_id,
            job_id="j-test",
            params=DockerParams(
                image=image or self.image,
                entrypoint=tuple(entrypoint) if entrypoint is not None else None,
                parameters=("sh", "-c", script) if script is not None else tuple(parameters),
                environment_variables=tuple(environment_variables),
                working_directory=working_directory,
            ),
            env=dict(env or {}),
            mounts=tuple(mounts),
            outputs_dir=outputs,
            stdout_path=run_folder / "stdout",
            stderr_path=run_folder / "stderr",
            limits=limits or Limits(),
            network=network or NetworkSpec(type="None"),
            labels=dict(labels or {}),
        )

    async def run(self, request: RunRequest) -> tuple[RunOutcome, str, str]:
        outcome = await self.engine.run(request)
        return outcome, request.stdout_path.read_text(), request.stderr_path.read_text()

    def containers(self, execution_id: str | None = None) -> list[Container]:
        label = f"{EXECUTION_ID_LABEL}={execution_id}" if execution_id else EXECUTION_ID_LABEL
        return self.client.containers.list(
            all=True, filters={"label": [label, f"{NODE_ID_LABEL}={self.node_id}"]}
        )


@pytest.fixture
def task(
    tmp_path: Path,
    busybox_image: str,  # noqa: F811 (a fixture)
    docker_client: docker.DockerClient,  # noqa: F811 (a fixture)
) -> Iterator[Task]:
    node_id = f"test-{uuid.uuid4().hex[:8]}"
    task = Task(DockerEngine(node_id=node_id), node_id, tmp_path, busybox_image, docker_client)
    yield task
    leftovers = task.containers()
    for container in leftovers:
        container.remove(force=True)
    assert [c.name for c in leftovers] == [], "the engine left containers behind"


class Handshake:
    """Two FIFOs in a folder mounted at /handshake: the container says `ready`, then blocks
    until the test says `go`. Opening a FIFO blocks until the other side opens it, so this
    waits for the container without polling."""

    SCRIPT_READY = "echo ready > /handshake/ready; read word < /handshake/go"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        os.mkfifo(folder / "ready")
        os.mkfifo(folder / "go")
        self.mount = Mount(host_path=folder, target="/handshake", read_only=False)

    async def wait_ready(self) -> None:
        path = self.folder / "ready"
        try:
            with trio.fail_after(HANDSHAKE_WAIT_S):
                text = await trio.to_thread.run_sync(path.read_text, abandon_on_cancel=True)
        except trio.TooSlowError:
            _release_fifo_reader(path)  # let the abandoned thread end
            raise
        assert text == "ready\n"

    async def go(self) -> None:
        path = self.folder / "go"
        with trio.fail_after(HANDSHAKE_WAIT_S):
            await trio.to_thread.run_sync(path.write_text, "go\n", abandon_on_cancel=True)


def _release_fifo_reader(path: Path) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "w"):
        pass


async def wait_gone(task: Task, execution_id: str) -> None:
    assert task.containers(execution_id) == []


# --- what runs, and how it ends ----------------------------------------------------------


async def test_stdout_and_stderr_are_separated_exactly(task: Task) -> None:
    request = task.request("echo out; echo err >&2; echo out2; printf 'no newline' >&2")
    outcome, stdout, stderr = await task.run(request)
    assert outcome == RunOutcome(exit_code=0, error="")
    assert outcome.succeeded
    assert stdout == "out\nout2\n"
    assert stderr == "err\nno newline"
    await wait_gone(task, request.execution_id)


@pytest.mark.parametrize("attempt", range(3))
async def test_output_of_a_container_that_exits_at_once_is_complete(
    task: Task, attempt: int
) -> None:
    outcome, stdout, stderr = await task.run(task.request("seq 1 20000; seq 1 3000 >&2"))
    assert outcome.exit_code == 0
    assert stdout == "".join(f"{n}\n" for n in range(1, 20001))
    assert stderr == "".join(f"{n}\n" for n in range(1, 3001))


async def test_exit_code_is_reported(task: Task) -> None:
    outcome, _, _ = await task.run(task.request("exit 3"))
    assert outcome == RunOutcome(exit_code=3, error="")
    assert not outcome.succeeded


async def test_entrypoint_and_parameters(task: Task) -> None:
    request = task.request(entrypoint=["/bin/echo", "from-entrypoint"], parameters=["a", "b c"])
    outcome, stdout, _ = await task.run(request)
    assert (outcome.exit_code, stdout) == (0, "from-entrypoint a b c\n")


async def test_environment_variables_params_win_over_task_env(task: Task) -> None:
    request = task.request(
        'echo "$FROM_TASK $FROM_PARAMS $BOTH"',
        env={"FROM_TASK": "task", "BOTH": "task"},
        environment_variables=["FROM_PARAMS=params", "BOTH=params=with=equals"],
    )
    _, stdout, _ = await task.run(request)
    assert stdout == "task params params=with=equals\n"


async def test_working_directory(task: Task) -> None:
    _, stdout, _ = await task.run(task.request(parameters=["pwd"], working_directory="/work/dir"))
    assert stdout == "/work/dir\n"


async def test_a_missing_entrypoint_is_an_execution_error(task: Task) -> None:
    request = task.request(entrypoint=["/no/such/program"])
    with pytest.raises(ExecutionError, match=r"docker could not start the container: .*no/such"):
        await task.engine.run(request)
    await wait_gone(task, request.execution_id)


# --- files -------------------------------------------------------------------------------


async def test_inputs_are_read_only(task: Task, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.txt").write_text("hello\n")
    request = task.request(
        "cat /inputs/data.txt; echo changed > /inputs/data.txt && echo WROTE || echo REFUSED",
        mounts=[Mount(host_path=inputs, target="/inputs")],
    )
    outcome, stdout, stderr = await task.run(request)
    assert outcome.exit_code == 0
    assert stdout == "hello\nREFUSED\n"
    assert "Read-only file system" in stderr
    assert (inputs / "data.txt").read_text() == "hello\n"


async def test_read_write_mounts_when_allowed(task: Task, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("before\n")
    request = task.request(
        "cat /shared/data.txt; echo after > /shared/data.txt",
        mounts=[Mount(host_path=shared, target="/shared", read_only=False)],
    )
    outcome, stdout, _ = await task.run(request)
    assert (outcome.exit_code, stdout) == (0, "before\n")
    assert (shared / "data.txt").read_text() == "after\n"


async def test_outputs_written_to_slash_outputs_reach_the_outputs_dir(task: Task) -> None:
    request = task.request("mkdir /outputs/sub; echo result > /outputs/sub/result.txt")
    outcome, _, _ = await task.run(request)
    assert outcome.exit_code == 0
    assert (request.outputs_dir / "sub" / "result.txt").read_text() == "result\n"


async def test_log_files_are_capped(tmp_path: Path, task: Task) -> None:
    engine = DockerEngine(node_id=task.node_id, log_limit_bytes=1000)
    request = task.request("seq 1 2000")  # 8893 bytes
    outcome = await engine.run(request)
    assert outcome.exit_code == 0
    stdout = request.stdout_path.read_text()
    assert stdout.startswith("".join(f"{n}\n" for n in range(1, 300))[:1000])
    assert stdout.endswith("\n[meshnode: 7893 more bytes dropped: the log limit is 1000 bytes]\n")


# --- limits ------------------------------------------------------------------------------


async def test_hitting_the_memory_limit_says_so(task: Task) -> None:
    # tail keeps the current line in memory, and /dev/zero has no newline: it grows until
    # the kernel's OOM killer stops it.
    request = task.request("tail /dev/zero", limits=Limits(memory_bytes=32 * MiB))
    outcome, _, _ = await task.run(request)
    assert outcome.exit_code == 137
    assert outcome.error == "the task hit its memory limit (32 MiB) and was killed (out of memory)"


async def test_timeout_kills_and_removes_the_container(task: Task) -> None:
    request = task.request(parameters=["sleep", "30"], limits=Limits(timeout_s=1))
    started = trio.current_time()
    outcome, _, _ = await task.run(request)
    elapsed_s = trio.current_time() - started
    assert outcome == RunOutcome(exit_code=None, error="execution timed out after 1 s")
    # Killed long before the 30 s sleep ends (the bound is loose: CI machines are shared).
    assert 1 <= elapsed_s < 10
    await wait_gone(task, request.execution_id)


async def run_recording_what_ends_it(
    engine: DockerEngine, request: RunRequest, ended_by: list[type[BaseException]]
) -> None:
    try:
        await engine.run(request)
    except BaseException as error:
        ended_by.append(type(error))
        raise


async def test_cancellation_removes_the_container_promptly(task: Task) -> None:
    handshake = Handshake(task.folder / "handshake")
    request = task.request(f"{Handshake.SCRIPT_READY}; sleep 30", mounts=[handshake.mount])
    ended_by: list[type[BaseException]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_recording_what_ends_it, task.engine, request, ended_by)
        await handshake.wait_ready()
        assert len(task.containers(request.execution_id)) == 1
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at < 10
    assert ended_by == [trio.Cancelled]  # plain, not in an exception group
    await wait_gone(task, request.execution_id)


async def test_cancellation_half_a_second_in(task: Task) -> None:
    request = task.request(parameters=["sleep", "30"])
    ended_by: list[type[BaseException]] = []
    with trio.move_on_after(0.5) as scope:
        await run_recording_what_ends_it(task.engine, request, ended_by)
    assert scope.cancelled_caught
    assert trio.current_time() - scope.deadline < 2
    assert ended_by == [trio.Cancelled]
    await wait_gone(task, request.execution_id)


async def test_container_carries_labels_limits_and_mounts(task: Task, tmp_path: Path) -> None:
    handshake = Handshake(task.folder / "handshake")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    request = task.request(
        Handshake.SCRIPT_READY,
        mounts=[handshake.mount, Mount(host_path=inputs, target="/inputs")],
        limits=Limits(cpu_millicores=250, memory_bytes=64 * MiB),
        labels={"org.example.team": "edge"},
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.engine.run, request)
        await handshake.wait_ready()
        [container] = task.containers(request.execution_id)
        labels = container.labels
        host_config = container.attrs["HostConfig"]
        mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        await handshake.go()
    assert labels == {
        EXECUTION_ID_LABEL: request.execution_id,
        JOB_ID_LABEL: "j-test",
        NODE_ID_LABEL: task.node_id,
        "org.example.team": "edge",
    }
    assert host_config["NanoCpus"] == 250_000_000
    assert host_config["Memory"] == host_config["MemorySwap"] == 64 * MiB
    assert host_config["PidsLimit"] == 1024
    assert host_config["NetworkMode"] == "none"
    assert mounts == {"/handshake": True, "/inputs": False, "/outputs": True}
    assert container.name == f"meshnode-{request.execution_id}"
    await wait_gone(task, request.execution_id)


# --- errors ------------------------------------------------------------------------------


async def test_a_missing_image_is_an_execution_error_naming_it(task: Task) -> None:
    request = task.request(parameters=["true"], image="meshnode-no-such-image:1.0")
    with pytest.raises(ExecutionError) as caught:
        await task.engine.run(request)
    assert str(caught.value) == (
        'image "meshnode-no-such-image:1.0" is not available on this node (no registry is '
        "reachable; load it with docker load or build it)"
    )
    await wait_gone(task, request.execution_id)


async def test_docker_down_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    engine = DockerEngine()
    assert await engine.is_available() is False
    request = RunRequest(
        execution_id="e-1",
        job_id="j-1",
        params=DockerParams(image="anything"),
        env={},
        mounts=(),
        outputs_dir=tmp_path,
        stdout_path=tmp_path / "stdout",
        stderr_path=tmp_path / "stderr",
    )
    with pytest.raises(EngineUnavailableError, match=r"^Docker is not available on this node: "):
        await engine.run(request)


async def test_is_available_with_docker_running(task: Task) -> None:
    assert await task.engine.is_available() is True


# --- recovery after a restart ------------------------------------------------------------


def start_as_previous_process(
    task: Task,
    execution_id: str,
    script: str,
    labels: Mapping[str, str] | None = None,
    **extra: object,
) -> str:
    """Starts a labelled container directly, the way a node process that has since died
    would have left it."""
    options: dict[str, object] = {"network_mode": "none", **extra}
    labels = labels or {}
    container = task.client.containers.run(
        task.image,
        ["sh", "-c", script],
        detach=True,
        labels={
            EXECUTION_ID_LABEL: execution_id,
            JOB_ID_LABEL: "j-test",
            NODE_ID_LABEL: task.node_id,
            **labels,
        },
        **options,
    )
    container_id: str = container.id
    return container_id


@pytest.mark.parametrize("state", ["running", "exited"])
async def test_reattach_collects_output_and_exit_code(task: Task, state: str) -> None:
    handshake = Handshake(task.folder / "handshake")
    request = task.request(parameters=["unused"])
    script = f"echo before; echo oops >&2; {Handshake.SCRIPT_READY}; echo after; exit 5"
    container_id = start_as_previous_process(
        task,
        request.execution_id,
        script,
        mounts=[docker.types.Mount("/handshake", str(handshake.folder), type="bind")],
    )
    await handshake.wait_ready()
    if state == "exited":
        await handshake.go()
        await trio.to_thread.run_sync(task.client.api.wait, container_id)
    assert await task.engine.running_executions() == {request.execution_id: container_id}
    async with trio.open_nursery() as nursery:
        if state == "running":
            nursery.start_soon(handshake.go)
        outcome = await task.engine.reattach(request.execution_id, request)
    assert outcome == RunOutcome(exit_code=5, error="")
    assert request.stdout_path.read_text() == "before\nafter\n"
    assert request.stderr_path.read_text() == "oops\n"
    await wait_gone(task, request.execution_id)


async def test_reattach_applies_the_timeout_from_the_container_start(task: Task) -> None:
    request = task.request(parameters=["unused"], limits=Limits(timeout_s=1))
    start_as_previous_process(task, request.execution_id, "echo started; sleep 30")
    outcome = await task.engine.reattach(request.execution_id, request)
    assert outcome == RunOutcome(exit_code=None, error="execution timed out after 1 s")
    assert request.stdout_path.read_text() == "started\n"
    await wait_gone(task, request.execution_id)


async def test_reattach_to_an_unknown_execution(task: Task) -> None:
    with pytest.raises(ExecutionError, match="no container for execution e-unknown"):
        await task.engine.reattach("e-unknown", task.request("true"))


async def test_remove_orphans_keeps_only_the_named_executions(task: Task) -> None:
    kept = start_as_previous_process(task, "e-kept", "sleep 30")
    start_as_previous_process(task, "e-orphan-1", "sleep 30")
    start_as_previous_process(task, "e-orphan-2", "exit 0")
    removed = await task.engine.remove_orphans(keep={"e-kept"})
    assert removed == ["e-orphan-1", "e-orphan-2"]
    assert await task.engine.running_executions() == {"e-kept": kept}
    assert await task.engine.remove_orphans(keep=set()) == ["e-kept"]
    assert task.containers() == []


async def test_engines_of_other_nodes_are_left_alone(task: Task) -> None:
    mine = start_as_previous_process(task, "e-mine", "sleep 30")
    other = DockerEngine(node_id=f"{task.node_id}-other")
    assert await other.running_executions() == {}
    assert await other.remove_orphans(keep=set()) == []
    assert await task.engine.running_executions() == {"e-mine": mine}
    assert await task.engine.remove_orphans(keep=set()) == ["e-mine"]


# --- networks ----------------------------------------------------------------------------


def interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


async def test_network_none_has_only_loopback(task: Task) -> None:
    _, stdout, _ = await task.run(task.request("cat /proc/net/dev"))
    assert interfaces(stdout) == ["lo"]


async def test_network_full_has_an_interface(task: Task) -> None:
    request = task.request("cat /proc/net/dev", network=NetworkSpec(type="Full"))
    _, stdout, _ = await task.run(request)
    assert interfaces(stdout) == ["eth0", "lo"]


async def origin_server(name: str, stream: trio.SocketStream) -> None:
    """Answers one HTTP request with `hello from <name>`."""
    async with stream:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            received += chunk
        body = f"hello from {name}\n".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        await stream.send_all(head.encode() + body)


@pytest.fixture
async def bridge_web_server(task: Task) -> AsyncIterator[str]:
    """A web server in a container on Docker's default bridge: something a job with full
    networking reaches and a job with HTTP networking must not reach directly."""
    container = task.client.containers.run(
        task.image,
        ["httpd", "-f", "-p", "8000", "-h", "/etc"],
        detach=True,
        labels={EXECUTION_ID_LABEL: "web", NODE_ID_LABEL: task.node_id},
    )
    try:
        container.reload()
        address: str = container.attrs["NetworkSettings"]["IPAddress"]
        with trio.fail_after(HANDSHAKE_WAIT_S):
            while True:  # httpd binds its port a moment after the container starts
                try:
                    await (await trio.open_tcp_stream(address, 8000)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        yield address
    finally:
        container.remove(force=True)


async def start_origin_servers(nursery: trio.Nursery) -> dict[str, int]:
    """Loopback servers standing in for `allowed.test` and `denied.test`; name -> port."""
    ports = {}
    for name in ("allowed", "denied"):
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(origin_server, name), 0, host="127.0.0.1")
        )
        ports[name] = listeners[0].socket.getsockname()[1]
    return ports


NAMES = {"allowed.test": "127.0.0.1", "denied.test": "127.0.0.1"}


async def test_network_http_reaches_only_allowed_domains_through_the_proxy(
    task: Task, nursery: trio.Nursery, bridge_web_server: str
) -> None:
    ports = await start_origin_servers(nursery)
    proxy = HttpFilterProxy(resolve=NAMES.get)
    engine = DockerEngine(proxy=proxy, node_id=task.node_id)
    proxy_url = await nursery.start(engine.serve_http_proxy)
    network = task.client.networks.get(HTTP_NETWORK_NAME)
    assert network.attrs["Internal"] is True
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    assert proxy_url.startswith(f"http://{gateway}:")
    # A service of the host itself, on the address the containers see as their gateway.
    host_listeners = await nursery.start(
        partial(trio.serve_tcp, partial(origin_server, "host"), 0, host=gateway)
    )
    host_port = host_listeners[0].socket.getsockname()[1]

    script = f"""
        echo "proxy=$http_proxy $HTTPS_PROXY"
        wget -q -O- http://allowed.test:{ports["allowed"]}/; echo "allowed: $?"
        wget -q -O- http://denied.test:{ports["denied"]}/; echo "denied: $?"
        timeout 1 wget -q -O- -Y off http://{bridge_web_server}:8000/hostname; echo "direct: $?"
        timeout 1 wget -q -O- -Y off http://{gateway}:{host_port}/; echo "host: $?"
    """
    request = task.request(script, network=NetworkSpec(type="HTTP", domains=("allowed.test",)))
    outcome = await engine.run(request)
    stdout, stderr = request.stdout_path.read_text(), request.stderr_path.read_text()
    assert outcome.exit_code == 0, stderr
    assert stdout.splitlines() == [
        f"proxy={proxy_url} {proxy_url}",
        "hello from allowed",
        "allowed: 0",
        "denied: 1",
        "direct: 143",  # killed by timeout: the packets to the other network are dropped
        "host: 143",  # the host's own services are closed to the job (host_firewall.py)
    ]
    assert "403 Forbidden" in stderr
    assert proxy.registered_clients() == {}  # the address was released with the container
    await wait_gone(task, request.execution_id)


async def test_network_http_without_the_proxy_running_is_an_execution_error(task: Task) -> None:
    engine = DockerEngine(proxy=HttpFilterProxy(), node_id=task.node_id)
    request = task.request("true", network=NetworkSpec(type="HTTP", domains=("a.test",)))
    with pytest.raises(ExecutionError, match="filtering proxy, which is not running"):
        await engine.run(request)


async def test_reattach_keeps_an_http_job_on_the_proxy(task: Task, nursery: trio.Nursery) -> None:
    ports = await start_origin_servers(nursery)
    # The previous node process: its proxy served on some port, then the process died.
    previous = DockerEngine(proxy=HttpFilterProxy(), node_id=task.node_id)
    async with trio.open_nursery() as previous_nursery:
        previous_url = await previous_nursery.start(previous.serve_http_proxy)
        previous_nursery.cancel_scope.cancel()
    handshake = Handshake(task.folder / "handshake")
    request = task.request("unused", network=NetworkSpec(type="HTTP", domains=("allowed.test",)))
    script = f"{Handshake.SCRIPT_READY}; wget -q -O- http://allowed.test:{ports['allowed']}/"
    start_as_previous_process(
        task,
        request.execution_id,
        script,
        labels={HTTP_DOMAINS_LABEL: "allowed.test"},
        network_mode=HTTP_NETWORK_NAME,
        environment={"http_proxy": previous_url, "HTTP_PROXY": previous_url},
        mounts=[docker.types.Mount("/handshake", str(handshake.folder), type="bind")],
    )
    # The new process serves where its running containers expect it, with their domains
    # (from their labels) registered before it listens.
    await handshake.wait_ready()
    proxy = HttpFilterProxy(resolve=NAMES.get)
    engine = DockerEngine(proxy=proxy, node_id=task.node_id)
    assert await nursery.start(engine.serve_http_proxy) == previous_url
    assert list(proxy.registered_clients().values()) == [request.execution_id]
    async with trio.open_nursery() as reattach_nursery:
        reattach_nursery.start_soon(handshake.go)
        outcome = await engine.reattach(request.execution_id, request)
    assert outcome == RunOutcome(exit_code=0, error=""), request.stderr_path.read_text()
    assert request.stdout_path.read_text() == "hello from allowed\n"
    assert proxy.registered_clients() == {}, (request.execution_id, proxy.registered_clients())
    await wait_gone(task, request.execution_id)
