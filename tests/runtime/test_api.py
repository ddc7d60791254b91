"""The HTTP API over real HTTP on loopback, against a real core and a real SQLite store.

Rules of these tests: the service behind the API is `CoreService` below, a real `NodeCore`
whose `Persist` commands go to a real `Store`; nothing runs (StartExecution is ignored), and a
test ends an execution by handing the core `ExecutionEnded`, as an engine would. The mesh is
the core's own membership, fed the updates a peer would send (`CoreService.hear`); nothing
is sent back (Send and Publish are dropped), and the libp2p addresses are made up. The API is
served by `serve_api` on 127.0.0.1 port 0 in the test's nursery and spoken to with httpx
(and, for compatibility, with Bacalhau's own Python client). No sleeps: only the server
polls, while following logs.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import msgspec
import pytest
import trio

from meshnode import __version__
from meshnode.core.membership import MembershipParams, MemberState
from meshnode.core.messages import Alive, Dead, Left, MemberInfo, PushPull, Suspect, Update, encode
from meshnode.core.node import (
    ApproveNode,
    CoreParams,
    Event,
    ExecutionEnded,
    JobAccepted,
    MessageReceived,
    NodeCore,
    Persist,
    Recovered,
    Reply,
    StartExecution,
    StopExecution,
    StopJob,
    SubmitJob,
    Tick,
)
from meshnode.core.records import NodeInfo
from meshnode.core.requester import RequesterParams
from meshnode.core.resources import ResourceAmounts
from meshnode.core.states import DesiredState, ExecutionState
from meshnode.runtime.api import (
    DEFAULT_PAGE_LIMIT,
    LabelSelectorError,
    create_app,
    parse_label_selector,
    serve_api,
)
from meshnode.runtime.service import AgentInfo, MeshService, NodeService, SubmitResult
from meshnode.runtime.store import NotFoundError, Store
from meshnode.spec import Constraint, Job

LOOPBACK: Final = "127.0.0.1"
WAIT_S: Final = 10  # an upper bound on any one exchange; they take milliseconds
LIMIT_BYTES: Final = 64 * 1024  # the body limit the test app is built with
JOBS: Final = "/api/v1/orchestrator/jobs"
NODE: Final = NodeInfo(
    id="n-test-node-1",
    labels={"Operating-System": "linux", "zone": "lab"},
    capacity=ResourceAmounts(cpu_millicores=8000, memory_bytes=16 * 1024**3),
    engines=("docker", "wasm"),
    input_types=("localDirectory", "urlDownload", "inline"),
    publishers=("local", "noop"),
)
T = TypeVar("T")
# Peer ids (shaped like libp2p's; the core does not care) sorted A < B < C < D < E.
PEER_A: Final = "12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
PEER_B: Final = "12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
PEER_C: Final = "12D3KooWCccccccccccccccccccccccccccccccccccccccccccc"
PEER_D: Final = "12D3KooWDddddddddddddddddddddddddddddddddddddddddddd"
PEER_E: Final = "12D3KooWEeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
NODES: Final = "/api/v1/orchestrator/nodes"


def multiaddr_of(node_id: str, port: int = 4001) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{node_id}"


def peer_info(
    node_id: str,
    *,
    labels: dict[str, str] | None = None,
    cpu_millicores: int = 4000,
    free_millicores: int = 4000,
    running: int = 0,
    roles: tuple[str, ...] = ("requester", "compute"),
) -> MemberInfo:
    capacity = ResourceAmounts(cpu_millicores=cpu_millicores, memory_bytes=8 * 1024**3)
    return MemberInfo(
        node=NodeInfo(
            id=node_id,
            labels=labels or {},
            capacity=capacity,
            engines=("wasm",),
            input_types=("inline",),
            publishers=("local",),
        ),
        addrs=(multiaddr_of(node_id, 4002),),
        roles=roles,
        version="0.9.1",
        free=ResourceAmounts(cpu_millicores=free_millicores, memory_bytes=2 * 1024**3),
        running=running,
    )


# --- the service behind the API ------------------------------------------------------------


class CoreService:
    """A `NodeService` (and `MeshService`) made of a real core and a real store; executions
    never run."""

    def __init__(self, root: Path, *, require_approval: bool = False) -> None:
        self.root = root
        self._store = Store(root / "node.db")
        params = CoreParams(
            # Nothing answers the core's probes here: the peers a test makes up are never
            # probed (each step is a second later; they would turn suspect one by one).
            membership=MembershipParams(probe_interval_s=1e6, push_pull_interval_s=1e6),
            requester=RequesterParams(require_approval=require_approval),
        )
        self._core = NodeCore(NODE, rng=random.Random(7), params=params)
        self._clock_s = 1_700_000_000.0
        self._replies: dict[str, JobAccepted | Reply] = {}
        self._requests = 0
        self._step(Recovered())  # the core starts executions only once recovered

    # NodeService

    @property
    def store(self) -> Store:
        return self._store

    @property
    def node_info(self) -> NodeInfo:
        return self._core.node

    @property
    def agent(self) -> AgentInfo:
        return AgentInfo(
            version=__version__, started_at=1_700_000_000.0, api_address="", data_dir=self.root
        )

    async def submit(self, spec: Job) -> SubmitResult:
        request_id = self._request_id()
        self._step(SubmitJob(request_id, spec))
        answer = self._replies.pop(request_id)
        assert isinstance(answer, JobAccepted), answer
        return SubmitResult(answer.job_id, answer.evaluation_id, answer.warnings)

    async def stop(self, job_id: str, reason: str) -> str:
        job = self._store.job(job_id)
        if job.state.terminal:
            return f"job {job.id} had already ended ({job.state.value})"
        request_id = self._request_id()
        self._step(StopJob(request_id, job.id, reason))
        answer = self._replies.pop(request_id)
        assert isinstance(answer, Reply), answer
        if not answer.ok:
            raise NotFoundError(answer.message)
        return answer.message

    def execution_dir(self, execution_id: str) -> Path:
        return self.root / "executions" / execution_id

    # MeshService

    @property
    def core(self) -> NodeCore:
        return self._core

    def listen_addrs(self) -> list[str]:
        return [multiaddr_of(NODE.id)]

    def connected_peers(self) -> list[str]:
        return [m.id for m in self._core.members() if m.state is MemberState.ALIVE]

    def mesh_stats(self) -> dict[str, int]:
        return {"messages_handled": self._core.stats["messages_handled"]}

    async def remote_logs(
        self, node_id: str, execution_id: str, *, follow: bool
    ) -> AsyncIterator[bytes]:
        """A peer's execution logs, as the mesh would stream them."""
        yield (
            b'{"Type":"stdout","Line":"from '
            + node_id.encode()
            + b'","ExecutionID":"'
            + execution_id.encode()
            + b'"}\n'
        )

    async def decide_approval(self, node_id: str, decision: str) -> str:
        request_id = self._request_id()
        self._step(ApproveNode(request_id, node_id, decision))
        answer = self._replies.pop(request_id)
        assert isinstance(answer, Reply), answer
        if not answer.ok:
            raise NotFoundError(answer.message)
        return answer.message

    def is_execution_live(self, execution_id: str) -> bool:
        execution = self._core.execution(execution_id)
        return execution is not None and execution.active

    # what a test does in a peer's place

    def hear(self, *updates: Update) -> None:
        """Membership updates, as a peer's push-pull brings them."""
        frame = encode(PushPull(updates=updates))
        self._step(MessageReceived(PEER_A, frame))

    # what a test does in the engine's place

    def end(self, execution_id: str, exit_code: int | None = 0, error: str = "") -> None:
        self._step(ExecutionEnded(execution_id, exit_code, error))

    def fail_and_retry(self, job_id: str) -> None:
        """Fails the job's running execution, and lets (simulated) time pass until the core
        retries it (the retry delay doubles each time)."""
        (running,) = [e for e in self._store.executions_of(job_id) if e.active]
        self.end(running.id, exit_code=1)
        for _ in range(60):
            self._step(Tick())  # each step is one second later
            if any(e.active for e in self._store.executions_of(job_id)):
                return
        raise AssertionError(f"job {job_id} was not retried")

    def _request_id(self) -> str:
        self._requests += 1
        return f"request-{self._requests}"

    def _step(self, event: Event) -> None:
        self._clock_s += 1.0  # every step one second later: creation order is time order
        stopped = []
        for command in self._core.handle(event, self._clock_s):
            match command:
                case Persist():
                    self._store.apply(command)
                case JobAccepted() | Reply():
                    self._replies[command.request_id] = command
                case StopExecution():
                    stopped.append(command.execution_id)
                case StartExecution():
                    pass
        for execution_id in stopped:  # an engine that stops at once
            self.end(execution_id, exit_code=None)


def _conforms(service: CoreService) -> NodeService:
    return service  # mypy checks the protocol here


def _conforms_to_mesh(service: CoreService) -> MeshService:
    return service


@pytest.fixture
def service(tmp_path: Path) -> CoreService:
    return CoreService(tmp_path)


@pytest.fixture
async def base_url(nursery: trio.Nursery, service: CoreService) -> str:
    app = create_app(_conforms(service), max_request_bytes=LIMIT_BYTES)
    host, port = await nursery.start(serve_api, app, LOOPBACK, 0)
    assert port > 0
    return f"http://{host}:{port}"


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_S, trust_env=False) as client:
        yield client


def job_doc(
    name: str = "hello", *, labels: dict[str, str] | None = None, namespace: str = ""
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Name": name,
        "Type": "batch",
        "Labels": labels or {},
        "Tasks": [
            {
                "Name": "main",
                "Engine": {
                    "Type": "wasm",
                    "Params": {"EntryModule": "https://example.test/hello.wasm"},
                },
                "Publisher": {"Type": "local"},
                "Resources": {"CPU": "250m", "Memory": "64Mi"},
            }
        ],
    }
    if namespace:
        doc["Namespace"] = namespace
    return doc


async def submit(client: httpx.AsyncClient, doc: dict[str, Any] | None = None) -> str:
    response = await client.put(JOBS, json={"Job": doc or job_doc()})
    assert response.status_code == 200, response.text
    job_id: str = response.json()["JobID"]
    return job_id


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "problems"}
    assert body["error"] == code
    assert body["message"]
    return body


# --- submit, get, list -----------------------------------------------------------------------


async def test_submitted_job_is_read_back_in_bacalhaus_shape(client: httpx.AsyncClient) -> None:
    put = await client.put(JOBS, json={"Job": job_doc(labels={"env": "prod"})})
    assert put.status_code == 200, put.text
    answer = put.json()
    assert set(answer) == {"JobID", "EvaluationID", "Warnings"}
    job_id = answer["JobID"]
    assert job_id.startswith("j-")

    job = (await get_json(client, f"{JOBS}/{job_id}"))["Job"]
    assert job["ID"] == job_id
    assert job["Name"] == "hello"
    assert job["Namespace"] == "default"
    assert job["Type"] == "batch"
    assert job["Count"] == 1
    assert job["Labels"] == {"env": "prod"}
    assert job["State"]["StateType"] == "Running"  # text, as Bacalhau writes it
    assert job["Tasks"][0]["Engine"]["Type"] == "wasm"
    assert job["Tasks"][0]["Resources"] == {"CPU": "250m", "Memory": "64Mi"}
    assert isinstance(job["CreateTime"], int)
    assert job["CreateTime"] == 1_700_000_002 * 10**9  # nanoseconds
    assert job["ModifyTime"] >= job["CreateTime"]
    assert job["Revision"] >= 1

    listed = await get_json(client, JOBS)
    assert [item["ID"] for item in listed["Items"]] == [job_id]
    assert listed["NextToken"] == ""


async def test_server_owned_fields_and_nulls_a_client_sends_are_ignored(
    client: httpx.AsyncClient,
) -> None:
    # What Go's client marshals for a new job, plus the Python SDK's empty `SpecConfig()`
    # publisher.
    doc = job_doc() | {
        "ID": "",
        "State": {"StateType": "Undefined"},
        "Version": 0,
        "Revision": 0,
        "CreateTime": 0,
        "ModifyTime": 0,
        "Constraints": None,
        "Meta": None,
    }
    doc["Tasks"][0]["Publisher"] = {}
    job_id = await submit(client, doc)
    job = (await get_json(client, f"{JOBS}/{job_id}"))["Job"]
    assert job["ID"] == job_id
    assert "Publisher" not in job["Tasks"][0]
    assert job["CreateTime"] > 0


async def test_include_adds_executions_and_history(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    answer = await get_json(client, f"{JOBS}/{job_id}", include="executions,history")
    assert len(answer["Executions"]["Items"]) == 1
    assert answer["History"]["Items"][0]["Type"] == "JobLevel"
    plain = await get_json(client, f"{JOBS}/{job_id}")
    assert set(plain) == {"Job"}


async def test_jobs_page_across_three_pages_both_ways(client: httpx.AsyncClient) -> None:
    submitted = [await submit(client, job_doc(f"job-{n}")) for n in range(7)]

    async def all_pages(**params: Any) -> list[list[str]]:
        pages, token = [], ""
        while True:
            answer = await get_json(client, JOBS, limit=3, next_token=token, **params)
            pages.append([item["ID"] for item in answer["Items"]])
            token = answer["NextToken"]
            if not token:
                return pages

    forward = await all_pages()
    assert [len(page) for page in forward] == [3, 3, 1]
    assert [job for page in forward for job in page] == submitted

    backward = await all_pages(reverse="true")
    assert [len(page) for page in backward] == [3, 3, 1]
    assert [job for page in backward for job in page] == submitted[::-1]

    # Bacalhau's clients send Python's spelling of booleans.
    assert (await get_json(client, JOBS, reverse="True"))["Items"][0]["ID"] == submitted[-1]
    assert (await get_json(client, JOBS, reverse="False"))["Items"][0]["ID"] == submitted[0]


async def test_a_full_last_page_has_no_next_token(client: httpx.AsyncClient) -> None:
    for n in range(6):
        await submit(client, job_doc(f"job-{n}"))
    first = await get_json(client, JOBS, limit=3)
    second = await get_json(client, JOBS, limit=3, next_token=first["NextToken"])
    assert len(second["Items"]) == 3
    assert second["NextToken"] == ""


async def test_labels_filter_uses_bacalhaus_selector_syntax(client: httpx.AsyncClient) -> None:
    prod = await submit(client, job_doc("a", labels={"env": "prod", "tier": "web"}))
    dev = await submit(client, job_doc("b", labels={"env": "dev"}))
    bare = await submit(client, job_doc("c"))

    async def ids(*selectors: str) -> list[str]:
        answer = await get_json(client, JOBS, labels=list(selectors))
        return [item["ID"] for item in answer["Items"]]

    assert await ids("env=prod") == [prod]
    assert await ids("env==prod") == [prod]
    assert await ids("env!=prod") == [dev, bare]
    assert await ids("env in (prod, dev)") == [prod, dev]
    assert await ids("env notin (prod)") == [dev, bare]
    assert await ids("env") == [prod, dev]
    assert await ids("!env") == [bare]
    assert await ids("env=prod,tier=web") == [prod]
    assert await ids("env in (dev,prod)", "tier") == [prod]  # several params: all hold

    # Paging works through a filter.
    page = await get_json(client, JOBS, labels="env", limit=1)
    assert [item["ID"] for item in page["Items"]] == [prod]
    rest = await get_json(client, JOBS, labels="env", limit=1, next_token=page["NextToken"])
    assert [item["ID"] for item in rest["Items"]] == [dev]
    assert rest["NextToken"] == ""

    body = assert_error(await client.get(JOBS, params={"labels": "env in (a"}), 400, "BadRequest")
    assert "parentheses" in body["message"]


async def test_namespace_filter(client: httpx.AsyncClient) -> None:
    default = await submit(client, job_doc("a"))
    team = await submit(client, job_doc("b", namespace="team"))
    assert [i["ID"] for i in (await get_json(client, JOBS, namespace="team"))["Items"]] == [team]
    everything = await get_json(client, JOBS, namespace="")
    assert [i["ID"] for i in everything["Items"]] == [default, team]


async def test_bad_list_parameters_are_400(client: httpx.AsyncClient) -> None:
    await submit(client)
    for params in (
        {"order_by": "name"},
        {"limit": "-1"},
        {"limit": "many"},
        {"reverse": "maybe"},
        {"next_token": "not-a-token"},
        {"next_token": "W10"},  # base64 of "[]": JSON, but no cursor
    ):
        assert_error(await client.get(JOBS, params=params), 400, "BadRequest")
    listed = await get_json(client, JOBS, limit=10**6)  # clamped to the maximum
    assert len(listed["Items"]) == 1
    assert DEFAULT_PAGE_LIMIT > 1


# --- ids -----------------------------------------------------------------------------------


async def test_short_id_prefixes_unknown_and_ambiguous_ids(client: httpx.AsyncClient) -> None:
    first = await submit(client)
    await submit(client)
    for short in (first[:10], first[2:10]):  # with or without the `j-`
        assert (await get_json(client, f"{JOBS}/{short}"))["Job"]["ID"] == first
    assert_error(await client.get(f"{JOBS}/j-ffffffff"), 404, "NotFound")
    assert_error(await client.get(f"{JOBS}/j-ffffffff/executions"), 404, "NotFound")
    assert_error(await client.delete(f"{JOBS}/j-ffffffff"), 404, "NotFound")
    body = assert_error(await client.get(f"{JOBS}/j-"), 400, "BadRequest")
    assert "ambiguous" in body["message"]


# --- bad requests --------------------------------------------------------------------------


async def test_bad_bodies_are_400_naming_the_problem(client: httpx.AsyncClient) -> None:
    body = assert_error(await client.put(JOBS, content=b'{"Job": {'), 400, "BadRequest")
    assert "not valid JSON" in body["message"]
    assert_error(await client.put(JOBS, content=b""), 400, "BadRequest")
    assert_error(await client.put(JOBS, content=b"[1, 2]"), 400, "BadRequest")
    body = assert_error(await client.put(JOBS, json={"Name": "x"}), 400, "BadRequest")
    assert '"Job"' in body["message"]
    body = assert_error(await client.put(JOBS, json={"Job": 3}), 400, "ValidationError")
    assert [p["path"] for p in body["problems"]] == ["Job"]
    assert_error(await client.put(JOBS, content=b"[" * 60_000), 400, "BadRequest")


async def test_a_spec_with_three_problems_lists_all_three(client: httpx.AsyncClient) -> None:
    doc = job_doc() | {"Type": "nightly", "Count": -2}
    doc["Tasks"][0]["Resources"]["Memory"] = "lots"
    body = assert_error(await client.put(JOBS, json={"Job": doc}), 400, "ValidationError")
    assert sorted(p["path"] for p in body["problems"]) == [
        "Count",
        "Tasks[0].Resources.Memory",
        "Type",
    ]
    assert all(set(p) == {"path", "message"} and p["message"] for p in body["problems"])


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    too_big = json.dumps({"Job": job_doc() | {"Meta": {"pad": "x" * LIMIT_BYTES}}}).encode()
    assert_error(await client.put(JOBS, content=too_big), 413, "RequestTooLarge")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(8):
            yield b" " * (LIMIT_BYTES // 4)

    assert_error(await client.put(JOBS, content=chunked()), 413, "RequestTooLarge")
    assert (await client.get("/api/v1/agent/alive")).status_code == 200


async def test_unknown_routes_and_wrong_methods(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nothing-here"), 404, "NotFound")
    assert_error(await client.get("/"), 404, "NotFound")
    response = await client.patch(JOBS)
    assert_error(response, 405, "MethodNotAllowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "POST"}
    assert_error(await client.post("/api/v1/agent/alive"), 405, "MethodNotAllowed")


async def test_a_crashing_handler_is_a_500_and_the_server_goes_on(
    client: httpx.AsyncClient,
    service: CoreService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_submit(spec: Job) -> SubmitResult:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "submit", broken_submit)
    with caplog.at_level(logging.ERROR, logger="meshnode.api"):
        response = await client.put(JOBS, json={"Job": job_doc()})
    body = assert_error(response, 500, "InternalError")
    assert "a bug" not in body["message"]
    (record,) = [r for r in caplog.records if r.name == "meshnode.api"]
    assert record.getMessage() == f"API: PUT {JOBS} failed"
    assert record.exc_info is not None
    assert (await client.get("/api/v1/agent/alive")).json() == {"Status": "OK"}


# --- executions, history, stop, results ----------------------------------------------------


async def test_the_life_of_a_job_through_the_api(
    client: httpx.AsyncClient, service: CoreService, base_url: str
) -> None:
    job_id = await submit(client)
    executions = (await get_json(client, f"{JOBS}/{job_id}/executions"))["Items"]
    assert len(executions) == 1
    execution = executions[0]
    assert execution["JobID"] == job_id
    assert execution["NodeID"] == NODE.id
    assert execution["ComputeState"]["StateType"] == ExecutionState.BID_ACCEPTED
    assert execution["DesiredState"]["StateType"] == DesiredState.RUNNING
    assert execution["AllocatedResources"]["Tasks"]["main"] == {
        "CPU": 0.25,
        "Memory": 64 * 1024**2,
        "Disk": 0,
        "GPU": 0,
    }
    assert execution["PublishedResult"] is None
    assert (await get_json(client, f"{JOBS}/{job_id}/results"))["Items"] == []

    service.end(execution["ID"], exit_code=0)
    job = (await get_json(client, f"{JOBS}/{job_id}"))["Job"]
    assert job["State"]["StateType"] == "Completed"
    (execution,) = (await get_json(client, f"{JOBS}/{job_id}/executions"))["Items"]
    assert execution["ComputeState"]["StateType"] == ExecutionState.COMPLETED
    assert execution["RunOutput"]["ExitCode"] == 0
    results_url = (
        f"{base_url}/api/v1/executions/{execution['ID']}/results?node={execution['NodeID']}"
    )
    assert execution["PublishedResult"] == {"Type": "local", "Params": {"URL": results_url}}
    results = await get_json(client, f"{JOBS}/{job_id}/results")
    expected_result = {"Type": "local", "Params": {"URL": results_url}}
    assert results == {"Items": [expected_result], "NextToken": ""}

    history = (await get_json(client, f"{JOBS}/{job_id}/history"))["Items"]
    job_level = [h for h in history if h["Type"] == "JobLevel"]
    execution_level = [h for h in history if h["Type"] == "ExecutionLevel"]
    assert job_level[0]["JobState"] == {"New": "Pending"}
    assert job_level[-1]["JobState"] == {"Previous": "Running", "New": "Completed"}
    assert execution_level[0]["ExecutionState"] == {"New": 1}
    assert execution_level[-1]["ExecutionState"] == {"Previous": 5, "New": 7}
    assert {h["ExecutionID"] for h in execution_level} == {execution["ID"]}
    assert {h["NodeID"] for h in execution_level} == {NODE.id}
    assert all(h["Time"].endswith("Z") and h["NewRevision"] >= 1 for h in history)
    assert history[0]["Time"] == "2023-11-14T22:13:22Z"
    only_jobs = await get_json(client, f"{JOBS}/{job_id}/history", event_type="job")
    assert only_jobs["Items"] == job_level
    by_execution = await get_json(client, f"{JOBS}/{job_id}/history", execution_id=execution["ID"])
    assert by_execution["Items"] == execution_level

    stopped = await client.delete(f"{JOBS}/{job_id}", params={"reason": "done anyway"})
    assert stopped.status_code == 200
    assert stopped.json()["EvaluationID"] == ""
    assert "already ended" in stopped.json()["Message"]


async def test_stopping_a_running_job_cancels_its_execution(
    client: httpx.AsyncClient,
) -> None:
    job_id = await submit(client)
    stopped = await client.delete(f"{JOBS}/{job_id[:8]}", params={"reason": "enough"})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"EvaluationID": "", "Message": f"job {job_id} stopped"}
    job = (await get_json(client, f"{JOBS}/{job_id}"))["Job"]
    assert job["State"] == {"StateType": "Stopped", "Message": "enough"}
    (execution,) = (await get_json(client, f"{JOBS}/{job_id}/executions"))["Items"]
    assert execution["ComputeState"]["StateType"] == ExecutionState.CANCELLED
    assert execution["DesiredState"]["StateType"] == DesiredState.STOPPED
    assert execution["RunOutput"]["ExitCode"] == -1


async def test_executions_order_and_limit(client: httpx.AsyncClient, service: CoreService) -> None:
    job_id = await submit(client)
    service.fail_and_retry(job_id)
    service.fail_and_retry(job_id)  # three executions: failed, failed, running
    items = (await get_json(client, f"{JOBS}/{job_id}/executions"))["Items"]
    assert [item["ComputeState"]["StateType"] for item in items] == [8, 8, 5]
    items = (await get_json(client, f"{JOBS}/{job_id}/executions", order_by="id"))["Items"]
    ids = [item["ID"] for item in items]
    assert ids == sorted(ids)
    reverse = await get_json(client, f"{JOBS}/{job_id}/executions", order_by="id", reverse="1")
    assert [item["ID"] for item in reverse["Items"]] == ids[::-1]
    limited = await get_json(client, f"{JOBS}/{job_id}/executions", limit=2)
    assert len(limited["Items"]) == 2
    response = await client.get(f"{JOBS}/{job_id}/executions", params={"order_by": "colour"})
    assert_error(response, 400, "BadRequest")


# --- logs ----------------------------------------------------------------------------------


def only_execution(service: CoreService, job_id: str) -> str:
    (execution,) = service.store.executions_of(job_id)
    return execution.id


def write_outputs(service: CoreService, execution_id: str, files: dict[str, str]) -> Path:
    directory = service.execution_dir(execution_id)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def records_of(text: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_logs_without_follow_send_what_is_there(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    execution_id = only_execution(service, job_id)
    write_outputs(service, execution_id, {"stdout": "one\ntwo\n\nlast", "stderr": "oops\n"})
    with trio.fail_after(WAIT_S):  # the execution still runs: without follow, it ends anyway
        response = await client.get(f"{JOBS}/{job_id}/logs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert records_of(response.text) == [
        {"Type": "stdout", "Line": line, "ExecutionID": execution_id}
        for line in ("one", "two", "", "last")
    ] + [{"Type": "stderr", "Line": "oops", "ExecutionID": execution_id}]

    other = await client.get(f"{JOBS}/{job_id}/logs", params={"execution_id": "e-nope"})
    assert_error(other, 404, "NotFound")


async def test_logs_of_a_job_with_several_executions_are_tagged(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    service.fail_and_retry(job_id)
    first, second = (e.id for e in service.store.executions_of(job_id))
    write_outputs(service, first, {"stdout": "from one\n"})
    write_outputs(service, second, {"stdout": "from two\n"})
    response = await client.get(f"{JOBS}/{job_id}/logs", params={"follow": "false"})
    assert {(r["ExecutionID"], r["Line"]) for r in records_of(response.text)} == {
        (first, "from one"),
        (second, "from two"),
    }
    only = await client.get(f"{JOBS}/{job_id}/logs", params={"execution_id": second})
    assert [r["Line"] for r in records_of(only.text)] == ["from two"]


async def test_logs_follow_tails_until_the_execution_ends(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    execution_id = only_execution(service, job_id)
    directory = write_outputs(service, execution_id, {"stdout": "first\n"})
    received: list[dict[str, str]] = []
    with trio.fail_after(WAIT_S):
        url = f"{JOBS}/{job_id}/logs"
        async with client.stream("GET", url, params={"follow": "true"}) as response:
            lines = response.aiter_lines()
            received.append(json.loads(await anext(lines)))
            with (directory / "stdout").open("a") as stdout:
                stdout.write("second\n")
            received.append(json.loads(await anext(lines)))
            with (directory / "stderr").open("a") as stderr:
                stderr.write("last words")  # no newline: sent when the execution ends
            service.end(execution_id, exit_code=1)
            received.extend([json.loads(line) async for line in lines])  # and the stream ends
    assert [(r["Type"], r["Line"]) for r in received] == [
        ("stdout", "first"),
        ("stdout", "second"),
        ("stderr", "last words"),
    ]


async def test_a_follower_that_leaves_does_not_hurt_the_server(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    write_outputs(service, only_execution(service, job_id), {"stdout": "hello\n"})
    with trio.fail_after(WAIT_S):
        url = f"{JOBS}/{job_id}/logs"
        async with client.stream("GET", url, params={"follow": "true"}) as response:
            assert json.loads(await anext(response.aiter_lines()))["Line"] == "hello"
        assert (await client.get("/api/v1/agent/alive")).status_code == 200


# --- result downloads ----------------------------------------------------------------------


async def test_results_download_as_tar_gz_and_file_by_file(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    execution_id = only_execution(service, job_id)
    directory = write_outputs(
        service,
        execution_id,
        {"stdout": "out\n", "stderr": "err\n", "exitCode": "0\n", "outputs/result.txt": "42"},
    )
    archive_url = f"/api/v1/executions/{execution_id}/results"
    assert_error(await client.get(archive_url), 409, "Conflict")  # still running
    assert_error(await client.get(f"{archive_url}/stdout"), 409, "Conflict")
    service.end(execution_id, exit_code=0)

    response = await client.get(archive_url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
        assert {"stdout", "stderr", "exitCode", "outputs", "outputs/result.txt"} == names
        member = archive.extractfile("outputs/result.txt")
        assert member is not None
        assert member.read() == b"42"

    one = await client.get(f"{archive_url}/outputs/result.txt")
    assert one.status_code == 200
    assert one.content == b"42"
    assert_error(await client.get(f"{archive_url}/outputs/missing"), 404, "NotFound")
    assert_error(await client.get(f"{archive_url}/outputs"), 404, "NotFound")  # a folder

    # Whatever the spelling, nothing outside the execution's folder is served.
    (directory / "escape").symlink_to(service.root / "node.db")
    for path in ("..%2F..%2Fnode.db", "%2E%2E/%2E%2E/node.db", "escape", "%2Fetc%2Fpasswd"):
        escaped = await client.get(f"{archive_url}/{path}")
        assert_error(escaped, 400, "BadRequest")

    assert_error(await client.get("/api/v1/executions/e-nope/results"), 404, "NotFound")


async def test_a_large_archive_streams_whole(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    job_id = await submit(client)
    execution_id = only_execution(service, job_id)
    blob = random.Random(1).randbytes(3 * 1024 * 1024)  # incompressible: many pipe-fulls
    directory = service.execution_dir(execution_id)
    directory.mkdir(parents=True)
    (directory / "blob").write_bytes(blob)
    service.end(execution_id, exit_code=0)
    async with client.stream("GET", f"/api/v1/executions/{execution_id}/results") as response:
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile("blob")
        assert member is not None
        assert member.read() == blob


# --- nodes and the agent -------------------------------------------------------------------


async def test_nodes_and_agent(client: httpx.AsyncClient) -> None:
    await submit(client)  # one running execution: 250m CPU, 64 MiB
    nodes = await get_json(client, "/api/v1/orchestrator/nodes")
    assert nodes["NextToken"] == ""
    assert nodes["Items"] == nodes["nodes"]
    (state,) = nodes["Items"]
    assert state["Membership"] == "APPROVED"
    assert state["Connection"] == "CONNECTED"
    info = state["Info"]
    assert info["NodeID"] == NODE.id
    assert info["NodeType"] == "Compute"
    assert info["Labels"] == NODE.labels
    compute = info["ComputeNodeInfo"]
    assert compute["ExecutionEngines"] == ["docker", "wasm"]
    assert compute["Publishers"] == ["local", "noop"]
    assert compute["MaxCapacity"] == {"CPU": 8.0, "Memory": 16 * 1024**3, "Disk": 0, "GPU": 0}
    assert compute["AvailableCapacity"]["CPU"] == 7.75
    assert compute["AvailableCapacity"]["Memory"] == 16 * 1024**3 - 64 * 1024**2
    assert compute["RunningExecutions"] == 1
    assert compute["EnqueuedExecutions"] == 0

    filtered = await get_json(client, "/api/v1/orchestrator/nodes", labels="zone=elsewhere")
    assert filtered["Items"] == []
    got = await get_json(client, f"/api/v1/orchestrator/nodes/{NODE.id[:6]}")
    assert got["node"]["Info"]["NodeID"] == NODE.id
    assert_error(await client.get("/api/v1/orchestrator/nodes/n-other"), 404, "NotFound")

    assert await get_json(client, "/api/v1/agent/alive") == {"Status": "OK"}
    version = await get_json(client, "/api/v1/agent/version")
    assert version["GitVersion"] == f"v{__version__}"
    assert {"Major", "Minor", "GitCommit", "BuildDate", "GOOS", "GOARCH"} <= set(version)
    agent_node = await get_json(client, "/api/v1/agent/node")
    assert agent_node["NodeID"] == NODE.id
    assert agent_node["BacalhauVersion"] == version


def a_mesh_of_five_peers(service: CoreService) -> None:
    """A and E alive (E a requester only), B suspect, C dead, D gone."""
    labels = {"zone": "lab", "Operating-System": "linux", "Architecture": "arm64"}
    service.hear(
        Alive(node_id=PEER_A, incarnation=0,
              info=peer_info(PEER_A, labels=labels, free_millicores=1500, running=2)),
        Alive(node_id=PEER_B, incarnation=0, info=peer_info(PEER_B, cpu_millicores=2000,
                                                           free_millicores=2000)),
        Alive(node_id=PEER_C, incarnation=0, info=peer_info(PEER_C)),
        Alive(node_id=PEER_D, incarnation=0, info=peer_info(PEER_D)),
        Alive(node_id=PEER_E, incarnation=0, info=peer_info(PEER_E, roles=("requester",))),
    )  # fmt: skip
    service.hear(
        Suspect(node_id=PEER_B, incarnation=0, by=PEER_A),
        Dead(node_id=PEER_C, incarnation=0, by=PEER_A),
        Left(node_id=PEER_D, incarnation=0),
    )


def ids_of(answer: dict[str, Any]) -> list[str]:
    assert answer["Items"] == answer["nodes"]
    return [state["Info"]["NodeID"] for state in answer["Items"]]


async def test_nodes_are_every_member_of_the_mesh(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    a_mesh_of_five_peers(service)
    answer = await get_json(client, NODES)
    assert ids_of(answer) == [PEER_A, PEER_B, PEER_C, PEER_D, PEER_E, NODE.id]
    by_id = {state["Info"]["NodeID"]: state for state in answer["Items"]}
    states = {node_id: (s["State"], s["Connection"]) for node_id, s in by_id.items()}
    assert states == {
        NODE.id: ("alive", "CONNECTED"),
        PEER_A: ("alive", "CONNECTED"),
        PEER_B: ("suspect", "DISCONNECTED"),
        PEER_C: ("dead", "DISCONNECTED"),
        PEER_D: ("left", "DISCONNECTED"),
        PEER_E: ("alive", "CONNECTED"),
    }
    # Bacalhau 1.6's ConnectionState, which its newer CLI reads.
    a, c = by_id[PEER_A], by_id[PEER_C]
    assert a["ConnectionState"]["Status"] == "CONNECTED"
    assert a["ConnectionState"]["LastHeartbeat"].startswith("2023-11-14T22:1")  # the test clock
    assert a["ConnectionState"]["DisconnectedSince"] == "0001-01-01T00:00:00Z"
    assert c["ConnectionState"]["Status"] == "DISCONNECTED"
    assert c["ConnectionState"]["ConnectedSince"] == "0001-01-01T00:00:00Z"
    # What a member advertises: capacity, what is free, what runs, where it listens.
    info = a["Info"]
    assert info["NodeType"] == "Compute"
    assert info["Labels"]["zone"] == "lab"
    assert info["Addresses"] == [multiaddr_of(PEER_A, 4002)]
    assert info["BacalhauVersion"]["GitVersion"] == "v0.9.1"
    assert (info["BacalhauVersion"]["GOOS"], info["BacalhauVersion"]["GOARCH"]) == (
        "linux", "arm64"
    )  # fmt: skip
    compute = info["ComputeNodeInfo"]
    assert compute["MaxCapacity"]["CPU"] == 4.0
    assert compute["AvailableCapacity"] == {"CPU": 1.5, "Memory": 2 * 1024**3, "Disk": 0, "GPU": 0}
    assert compute["RunningExecutions"] == 2
    assert compute["ExecutionEngines"] == ["wasm"]
    requester_only = by_id[PEER_E]["Info"]
    assert requester_only["NodeType"] == "Requester"
    assert requester_only["ComputeNodeInfo"] is None
    own = by_id[NODE.id]
    assert own["Info"]["Addresses"] == [multiaddr_of(NODE.id)]
    assert own["ConnectionState"]["Status"] == "CONNECTED"
    assert {state["Membership"] for state in answer["Items"]} == {"APPROVED"}

    # Bacalhau's filters, upper or lower case, and its label selector.
    connected = await get_json(client, NODES, **{"filter-status": "connected"})
    assert ids_of(connected) == [PEER_A, PEER_E, NODE.id]
    disconnected = await get_json(client, NODES, **{"filter-status": "DISCONNECTED"})
    assert ids_of(disconnected) == [PEER_B, PEER_C, PEER_D]
    assert ids_of(await get_json(client, NODES, labels="zone=lab")) == [PEER_A, NODE.id]
    assert ids_of(await get_json(client, NODES, labels="zone=lab,Architecture=arm64")) == [PEER_A]

    # One node by a unique prefix of its id; an ambiguous prefix and an unknown id.
    got = await get_json(client, f"{NODES}/{PEER_C[:9]}")
    assert got["node"]["Info"]["NodeID"] == PEER_C
    assert got["node"]["State"] == "dead"
    body = assert_error(await client.get(f"{NODES}/12D3KooW"), 400, "BadRequest")
    assert "matches 5 nodes" in body["message"]
    assert_error(await client.get(f"{NODES}/12D3KooWZ"), 404, "NotFound")


async def test_nodes_order_by_and_pages(client: httpx.AsyncClient, service: CoreService) -> None:
    a_mesh_of_five_peers(service)
    by_cpu = await get_json(client, NODES, order_by="available_cpu")
    # Most free first (this node: 8 cores; A 1.5; E, a requester, none); ties by id.
    assert ids_of(by_cpu) == [NODE.id, PEER_C, PEER_D, PEER_B, PEER_A, PEER_E]
    reverse = await get_json(client, NODES, order_by="id", reverse="true")
    assert ids_of(reverse) == [NODE.id, PEER_E, PEER_D, PEER_C, PEER_B, PEER_A]
    assert_error(await client.get(NODES, params={"order_by": "age"}), 400, "BadRequest")

    pages, token = [], ""
    while True:
        answer = await get_json(client, NODES, limit=4, next_token=token)
        pages.append(ids_of(answer))
        token = answer["NextToken"]
        if not token:
            break
    assert pages == [[PEER_A, PEER_B, PEER_C, PEER_D], [PEER_E, NODE.id]]
    bad = await client.get(NODES, params={"next_token": "bm9wZQ"})
    assert_error(bad, 400, "BadRequest")


async def test_approve_reject_and_delete_nodes(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    a_mesh_of_five_peers(service)

    async def membership(node_id: str) -> str:
        got = await get_json(client, f"{NODES}/{node_id}")
        return str(got["node"]["Membership"])

    # Bacalhau's own request: PUT …/nodes/{id} with PutNodeRequest → PutNodeResponse.
    answer = await client.put(
        f"{NODES}/{PEER_A[:10]}",
        json={"NodeID": PEER_A[:10], "Action": "reject", "Message": "flaky disk"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"Success": True, "Error": "", "Message": f"node {PEER_A} rejected"}
    assert await membership(PEER_A) == "REJECTED"
    rejected = await get_json(client, NODES, **{"filter-approval": "REJECTED"})
    assert ids_of(rejected) == [PEER_A]
    approved = await get_json(client, NODES, **{"filter-approval": "approved"})
    assert PEER_A not in ids_of(approved)
    assert len(ids_of(approved)) == 5

    # The same through POST on the collection, the id in the body.
    answer = await client.post(NODES, json={"NodeID": PEER_A, "Action": "approve"})
    assert answer.json()["Success"] is True
    assert await membership(PEER_A) == "APPROVED"

    # Delete forgets the node; if it comes back, it still gets no work (REJECTED).
    answer = await client.put(f"{NODES}/{PEER_B}", json={"Action": "delete"})
    assert answer.json()["Success"] is True
    assert PEER_B not in ids_of(await get_json(client, NODES))
    service.hear(Alive(node_id=PEER_B, incarnation=1, info=peer_info(PEER_B)))
    assert await membership(PEER_B) == "REJECTED"

    # Mistakes are 4xx with a message.
    unknown = await client.put(f"{NODES}/12D3KooWZzz", json={"Action": "approve"})
    assert_error(unknown, 404, "NotFound")
    bad_action = await client.put(f"{NODES}/{PEER_A}", json={"Action": "pause"})
    assert "approve, reject, delete" in assert_error(bad_action, 400, "BadRequest")["message"]
    mismatch = await client.put(f"{NODES}/{PEER_A}", json={"NodeID": PEER_C, "Action": "reject"})
    assert_error(mismatch, 400, "BadRequest")
    assert_error(await client.post(NODES, json={"Action": "reject"}), 400, "BadRequest")
    assert_error(await client.put(f"{NODES}/{PEER_A}", content=b"[1]"), 400, "BadRequest")
    ambiguous = await client.put(f"{NODES}/12D3KooW", json={"Action": "reject"})
    assert_error(ambiguous, 400, "BadRequest")


@pytest.fixture
def approving_service(tmp_path: Path) -> CoreService:
    return CoreService(tmp_path, require_approval=True)


async def test_under_require_approval_undecided_nodes_are_pending(
    nursery: trio.Nursery, approving_service: CoreService
) -> None:
    service = approving_service
    _conforms_to_mesh(service)
    app = create_app(_conforms(service), max_request_bytes=LIMIT_BYTES)
    host, port = await nursery.start(serve_api, app, LOOPBACK, 0)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False) as client:
        a_mesh_of_five_peers(service)
        pending = await get_json(client, NODES, **{"filter-approval": "pending"})
        assert ids_of(pending) == [PEER_A, PEER_B, PEER_C, PEER_D, PEER_E, NODE.id]
        await client.put(f"{NODES}/{PEER_A}", json={"Action": "approve"})
        await client.put(f"{NODES}/{NODE.id}", json={"Action": "approve"})
        approved = await get_json(client, NODES, **{"filter-approval": "APPROVED"})
        assert ids_of(approved) == [PEER_A, NODE.id]
        still_pending = await get_json(client, NODES, **{"filter-approval": "PENDING"})
        assert ids_of(still_pending) == [PEER_B, PEER_C, PEER_D, PEER_E]


async def test_agent_node_and_mesh_say_where_this_node_listens(
    client: httpx.AsyncClient, service: CoreService
) -> None:
    a_mesh_of_five_peers(service)
    agent_node = await get_json(client, "/api/v1/agent/node")
    assert agent_node["Addresses"] == [multiaddr_of(NODE.id)]
    mesh = await get_json(client, "/api/v1/agent/mesh")
    assert mesh["NodeID"] == NODE.id
    assert mesh["Addresses"] == [multiaddr_of(NODE.id)]
    assert mesh["ConnectedPeers"] == [PEER_A, PEER_E]
    assert mesh["Members"] == {"alive": 3, "suspect": 1, "dead": 1, "left": 1}
    assert mesh["Stats"]["messages_handled"] >= 2


async def test_the_approve_command_against_this_api(base_url: str, service: CoreService) -> None:
    """`meshnode node approve|reject` as a user types it, in its own process."""
    import shutil
    import subprocess
    import sys

    a_mesh_of_five_peers(service)
    executable = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert executable
    port = base_url.rpartition(":")[2]

    async def meshnode(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            [executable, *args, "--api-port", port],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip

    rejected = await meshnode("node", "reject", PEER_A[:10], "-m", "maintenance")
    assert rejected.returncode == 0, rejected.stderr
    assert rejected.stdout.decode() == f"Node {PEER_A} rejected\n"
    assert service.core.membership.approval_of(PEER_A) == "rejected"
    approved = await meshnode("node", "approve", PEER_A, "--output", "json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["Success"] is True
    assert service.core.membership.approval_of(PEER_A) == "approved"
    unknown = await meshnode("node", "approve", "12D3KooWZzz")
    assert unknown.returncode == 1
    assert unknown.stderr.decode().startswith("Error: no node 12D3KooWZzz is known")
    listed = await meshnode("node", "list", "--filter-status", "disconnected", "-o", "json")
    assert [n["Info"]["NodeID"] for n in json.loads(listed.stdout)["nodes"]] == [
        PEER_B, PEER_C, PEER_D
    ]  # fmt: skip


async def test_available_capacity_comes_from_the_service_when_it_reports_usage(
    client: httpx.AsyncClient, service: CoreService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `runtime.node.Node` reports what running executions hold; the API then uses that.
    in_use = ResourceAmounts(cpu_millicores=3000, memory_bytes=1024**3)
    monkeypatch.setattr(service, "used_resources", lambda: in_use, raising=False)
    (state,) = (await get_json(client, "/api/v1/orchestrator/nodes"))["Items"]
    available = state["Info"]["ComputeNodeInfo"]["AvailableCapacity"]
    assert available == {"CPU": 5.0, "Memory": 15 * 1024**3, "Disk": 0, "GPU": 0}


# --- label selectors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("a=b", [Constraint(key="a", operator="=", values=("b",))]),
        ("a == b", [Constraint(key="a", operator="=", values=("b",))]),
        ("a!=", [Constraint(key="a", operator="!=", values=("",))]),
        ("x>3,x<9", [Constraint(key="x", operator="gt", values=("3",)),
                     Constraint(key="x", operator="lt", values=("9",))]),
        ("k in (a, b),!gone", [Constraint(key="k", operator="in", values=("a", "b")),
                               Constraint(key="gone", operator="!")]),
        ("bacalhau.org/x notin (1)", [Constraint(key="bacalhau.org/x", operator="notin",
                                                 values=("1",))]),
        ("present", [Constraint(key="present", operator="exists")]),
    ],
)  # fmt: skip
def test_label_selectors_parse(text: str, expected: list[Constraint]) -> None:
    assert parse_label_selector(text) == expected


@pytest.mark.parametrize("text", ["a=b,", "a b", "k in (a", "k in a)", "=b", "k in ((a))"])
def test_malformed_label_selectors_are_refused(text: str) -> None:
    with pytest.raises(LabelSelectorError):
        parse_label_selector(text)


# --- Bacalhau's own Python client ----------------------------------------------------------


class ApiclientJobs:
    """What `bacalhau_sdk.jobs.Jobs` 1.4.2 does, for where that package cannot be installed
    (it pins ruff<0.6 and Python<3.12): each method is the same one `OrchestratorApi` call of
    `bacalhau-apiclient` with the same defaults, the host from BACALHAU_API_HOST/PORT. The SDK
    itself also prints and swallows errors; this raises them."""

    def __init__(self) -> None:
        import os

        from bacalhau_apiclient.api.orchestrator_api import OrchestratorApi
        from bacalhau_apiclient.api_client import ApiClient
        from bacalhau_apiclient.configuration import Configuration

        config = Configuration()
        host, port = os.environ["BACALHAU_API_HOST"], os.environ["BACALHAU_API_PORT"]
        config.host = f"http://{host}:{port}"
        self.api_client = ApiClient(config)
        self.endpoint = OrchestratorApi(self.api_client)

    def put(self, request: Any) -> Any:
        return self.endpoint.orchestratorput_job(request)

    def stop(self, job_id: str, reason: str | None = None) -> Any:
        return self.endpoint.orchestratorstop_job(id=job_id, reason=reason)

    def executions(self, job_id: str, limit: int = 5) -> Any:
        return self.endpoint.orchestratorjob_executions(
            id=job_id, namespace="", limit=limit, next_token="", reverse=False, order_by=""
        )

    def results(self, job_id: str) -> Any:
        return self.endpoint.orchestratorjob_results(id=job_id)

    def get(self, job_id: str, include: str = "", limit: int = 10) -> Any:
        return self.endpoint.orchestratorget_job(id=job_id, include=include, limit=limit)

    def history(self, job_id: str, event_type: str = "execution") -> Any:
        return self.endpoint.orchestratorjob_history(
            id=job_id, event_type=event_type, node_id="", execution_id=""
        )

    def list(self, limit: int = 5, next_token: str = "", reverse: bool = False) -> Any:
        return self.endpoint.orchestratorlist_jobs(
            limit=limit, order_by="created_at", reverse=reverse, next_token=next_token
        )


def _sdk_installed() -> bool:
    try:
        import bacalhau_sdk.jobs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    "client_kind",
    [
        pytest.param(
            "bacalhau_sdk",
            marks=pytest.mark.skipif(
                not _sdk_installed(),
                reason="bacalhau-sdk 1.4.2 is not installable beside our pins (ruff<0.6)",
            ),
        ),
        "bacalhau_apiclient",
    ],
)
async def test_bacalhaus_python_client_works_unmodified(
    client_kind: str,
    service: CoreService,
    base_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("bacalhau_apiclient")
    from bacalhau_apiclient.api.ops_api import OpsApi
    from bacalhau_apiclient.api.orchestrator_api import OrchestratorApi
    from bacalhau_apiclient.models.api_put_job_request import ApiPutJobRequest
    from bacalhau_apiclient.models.job import Job as SdkJob
    from bacalhau_apiclient.models.spec_config import SpecConfig
    from bacalhau_apiclient.models.task import Task as SdkTask

    port = base_url.rpartition(":")[2]
    monkeypatch.setenv("BACALHAU_API_HOST", LOOPBACK)
    monkeypatch.setenv("BACALHAU_API_PORT", port)
    monkeypatch.setenv("BACALHAU_DIR", str(tmp_path))

    def in_thread(call: Callable[[], T]) -> Any:  # the client blocks; the server must not
        return trio.to_thread.run_sync(call)

    if client_kind == "bacalhau_sdk":
        from bacalhau_sdk.jobs import Jobs

        jobs: Any = await in_thread(Jobs)
        api_client = jobs.orchestrator_service.api_client
    else:
        jobs = await in_thread(ApiclientJobs)
        api_client = jobs.api_client

    try:
        # The job of bacalhau-sdk's README, with its empty publisher.
        task = SdkTask(
            name="My Main task",
            engine=SpecConfig(
                type="docker",
                params={
                    "Image": "ubuntu:latest",
                    "Entrypoint": ["/bin/bash"],
                    "Parameters": ["-c", "echo Hello World"],
                },
            ),
            publisher=SpecConfig(),
        )
        job = SdkJob(name="A Simple Docker Job", type="batch", count=1, tasks=[task])
        put = await in_thread(lambda: jobs.put(ApiPutJobRequest(job=job)))
        assert put.job_id.startswith("j-")
        assert put.evaluation_id
        job_id = put.job_id

        listed = await in_thread(jobs.list)
        assert [item.id for item in listed.items] == [job_id]
        assert listed.items[0].state.state_type == "Running"
        assert listed.next_token == ""

        got = await in_thread(lambda: jobs.get(job_id, include="executions,history"))
        assert got.job.name == "A Simple Docker Job"
        assert got.job.tasks[0].engine.params["Image"] == "ubuntu:latest"
        assert got.job.create_time == service.store.job(job_id).created_at * 10**9
        assert got.executions.items[0].compute_state.state_type == 5

        executions = await in_thread(lambda: jobs.executions(job_id))
        (execution,) = executions.items
        assert execution.job_id == job_id
        assert execution.compute_state.state_type == ExecutionState.BID_ACCEPTED
        assert execution.desired_state.state_type == DesiredState.RUNNING

        service.end(execution.id, exit_code=0)
        got = await in_thread(lambda: jobs.get(job_id))
        assert got.job.state.state_type == "Completed"
        executions = await in_thread(lambda: jobs.executions(job_id))
        assert executions.items[0].compute_state.state_type == ExecutionState.COMPLETED
        assert executions.items[0].run_output.exit_code == 0

        history = await in_thread(lambda: jobs.history(job_id))  # execution events by default
        assert {item.type for item in history.items} == {"ExecutionLevel"}
        assert history.items[-1].execution_state.new == ExecutionState.COMPLETED
        assert history.items[-1].execution_state.previous == ExecutionState.BID_ACCEPTED
        assert history.items[-1].execution_id == execution.id

        results = await in_thread(lambda: jobs.results(job_id))
        (result,) = results.items
        assert result.type == "local"
        assert f"/api/v1/executions/{execution.id}/results?node=" in result.params["URL"]

        second = await in_thread(lambda: jobs.put(ApiPutJobRequest(job=job)))
        stopped = await in_thread(lambda: jobs.stop(second.job_id, reason="from the SDK"))
        assert stopped.evaluation_id == ""
        got = await in_thread(lambda: jobs.get(second.job_id))
        assert got.job.state.state_type == "Stopped"
        assert got.job.state.message == "from the SDK"

        # Nodes and the agent, through the same generated client.
        orchestrator = OrchestratorApi(api_client)
        nodes = await in_thread(orchestrator.orchestratorlist_nodes)
        assert [node.info.node_id for node in nodes.nodes] == [NODE.id]
        node = await in_thread(lambda: orchestrator.orchestratorget_node(NODE.id))
        assert node.node.info.compute_node_info.execution_engines == ["docker", "wasm"]
        ops = OpsApi(api_client)
        version = await in_thread(ops.agentversion)
        assert version.git_version == f"v{__version__}"
        agent_node = await in_thread(ops.agentnode)
        assert agent_node.node_id == NODE.id
    finally:
        api_client.pool.close()
        api_client.pool.join()


def test_api_models_encode_in_bacalhaus_spelling() -> None:
    from meshnode.runtime import api_models as wire

    encoded = msgspec.json.decode(
        msgspec.json.encode(
            wire.Execution(
                id="e-1",
                namespace="default",
                name="x",
                node_id="n",
                job_id="j-1",
                allocated_resources=wire.AllocatedResources(tasks={}),
                desired_state=wire.ExecutionStateOf(state_type=1),
                compute_state=wire.ExecutionStateOf(state_type=5),
                run_output=wire.RunCommandResult(stderr="e"),
                revision=1,
                create_time=1,
                modify_time=2,
            )
        )
    )
    assert {"ID", "EvalID", "NodeID", "JobID", "FollowupEvalID", "RunOutput"} <= set(encoded)
    assert encoded["RunOutput"]["stderr"] == "e"  # Bacalhau's one lower-case key
