"""An edge node cut off from the mesh keeps its daemon and service executions running and its
finished results; when it is back it is reconciled: its executions are adopted or stopped by
the job's current plan, and what it finished while cut off is reported. Real processes: three
`meshnode start` nodes, each in a network namespace of its own, joined by a bridge
(`netns_mesh.py`); the cut is node c's link going down, the heal it coming back up.

The scenario: a daemon (one execution per node), a service of Count 2 (one on c: c has the
most room) and a batch job pinned to c (`name=c`, sleeps 8 s then prints). c is cut off just
after its batch execution started. While cut off: a and b declare c dead and run the service
on a and b; c answers its API, keeps its daemon and service executions and finishes its batch.
After the heal: one daemon execution per node (c's adopted), the service's original two (the
replacement stopped), the batch Completed everywhere with its execution on c Completed, its
output readable from a, and a's history of it telling that c was unreachable and came back.
Checks that do not block the next step are collected and reported together at the end, with
a timeline and every node's view of the three jobs.

Network rule: all traffic stays inside the namespaces the test makes (private subnet
10.232.x.0/24, APIs on each namespace's loopback); every node runs with `--no-mdns`.
Needs root and `ip netns`; skipped otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.engines import wasm_modules
from tests.integration.netns_mesh import BridgedMesh, NetnsNode, netns_unavailable
from tests.integration.test_mesh import wasm_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RUNNING: Final = 5  # BidAccepted: the execution runs
COMPLETED: Final = 7
CANCELLED: Final = 9
DECLARED_DEAD_WITHIN_S: Final = 15.0
RECONCILED_WITHIN_S: Final = 30.0
BATCH_SLEEP_S: Final = 8.0


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[BridgedMesh]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    bridged = BridgedMesh(tmp_path, ("a", "b", "c"))
    try:
        bridged.create()
        yield bridged
    finally:
        left = bridged.close()
        print(f"node logs under {tmp_path}")
    assert not left, f"left behind: {left}"


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, mesh: BridgedMesh) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except OSError as error:  # an API that is busy forwarding over a dead link
            last = error
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what}; last: {last}\n{mesh.logs()}"
            )
        time.sleep(0.2)


def submit(node: NetnsNode, job: dict[str, Any]) -> str:
    return str(node.call("PUT", "/api/v1/orchestrator/jobs", {"Job": job})["JobID"])


def states(node: NetnsNode) -> dict[str, str]:
    """Node id → its state in `node`'s view: alive, suspect, dead or left."""
    items = node.get("/api/v1/orchestrator/nodes")["Items"]
    return {n["Info"]["NodeID"]: n["State"] for n in items}


def alive(node: NetnsNode) -> set[str]:
    answer = node.get("/api/v1/orchestrator/nodes")
    items = answer.get("Nodes") or answer.get("Items") or []
    return {n["Info"]["NodeID"] for n in items if n.get("Connection") == "CONNECTED"}


def busy_nodes(node: NetnsNode) -> set[str]:
    """The nodes this node knows to be using CPU (their load is advertised). Not
    `RunningExecutions`: a node's own entry counts the executions it holds records of."""
    busy = set()
    for item in node.get("/api/v1/orchestrator/nodes").get("Items") or []:
        compute = item["Info"].get("ComputeNodeInfo") or {}
        if compute and compute["AvailableCapacity"]["CPU"] < compute["MaxCapacity"]["CPU"]:
            busy.add(item["Info"]["NodeID"])
    return busy


def executions(node: NetnsNode, job_id: str) -> list[dict[str, Any]]:
    return list(node.get(f"/api/v1/orchestrator/jobs/{job_id}/executions")["Items"])


def running(node: NetnsNode, job_id: str) -> dict[str, str]:
    """Execution id → node id of the job's executions that `node` lists as running."""
    return {
        e["ID"]: e["NodeID"]
        for e in executions(node, job_id)
        if e["ComputeState"]["StateType"] == RUNNING
    }


def job_state(node: NetnsNode, job_id: str) -> str:
    return str(node.get(f"/api/v1/orchestrator/jobs/{job_id}")["Job"]["State"]["StateType"])


def history_comments(node: NetnsNode, job_id: str) -> list[str]:
    items = node.get(f"/api/v1/orchestrator/jobs/{job_id}/history")["Items"]
    return [str(item.get("Comment") or item["Event"]["Message"]) for item in items]


def _named(text: str, name_of: dict[str, str]) -> str:
    for node_id, name in name_of.items():
        text = text.replace(node_id, name)
    return text


def test_a_cut_off_node_keeps_its_work_and_is_reconciled_when_it_is_back(
    mesh: BridgedMesh,
) -> None:
    started = time.monotonic()
    marks: dict[str, float] = {}
    problems: list[str] = []  # what is checked after each step, reported together at the end

    def mark(what: str) -> None:
        marks[what] = round(time.monotonic() - started, 1)

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    a, b, c = (mesh.nodes[name] for name in ("a", "b", "c"))
    # c has the most room, so the service's first execution goes to c (least loaded).
    a.start("--labels", "name=a", "--limit-cpu", "1")
    b.start("--labels", "name=b", "--limit-cpu", "1", "--peers", a.multiaddr)
    c.start("--labels", "name=c", "--limit-cpu", "4", "--peers", a.multiaddr)
    everyone = {a.node_id, b.node_id, c.node_id}
    name_of = {n.node_id: n.name for n in (a, b, c)}
    for node in (a, b, c):
        wait_until(lambda node=node: alive(node) == everyone, 30, f"{node.name} sees 3", mesh)
    mark("converged")

    # 1. A daemon on every node, a service of 2 (one on c), a batch pinned to c.
    daemon_job = wasm_job("daemon", wasm_modules.sleep_then_print(600.0))
    daemon_job["Tasks"][0]["Resources"]["CPU"] = "300m"
    daemon = submit(a, daemon_job)
    daemon_runs = wait_until(
        lambda: (r := running(a, daemon)) and set(r.values()) == everyone and r,
        30, "the daemon on every node", mesh,
    )  # fmt: skip
    assert len(daemon_runs) == 3, daemon_runs
    (daemon_on_c,) = [e for e, n in daemon_runs.items() if n == c.node_id]
    for node in (a, b, c):  # every node knows every node's load before the service is placed
        wait_until(lambda node=node: busy_nodes(node) == everyone, 15, "loads", mesh)
    service = submit(b, wasm_job("service", wasm_modules.sleep_then_print(600.0), Count=2))
    service_runs = wait_until(
        lambda: len(r := running(a, service)) == 2 and r, 30, "2 service executions", mesh
    )
    assert c.node_id in service_runs.values(), {k: name_of[v] for k, v in service_runs.items()}
    (service_on_c,) = [e for e, n in service_runs.items() if n == c.node_id]
    (service_elsewhere,) = [e for e, n in service_runs.items() if n != c.node_id]
    batch_job = wasm_job("batch", wasm_modules.sleep_then_print(BATCH_SLEEP_S))
    batch_job["Constraints"] = [{"Key": "name", "Operator": "=", "Values": ["c"]}]
    batch = submit(a, batch_job)
    (batch_on_c,) = wait_until(lambda: running(a, batch), 30, "the batch to be placed", mesh)
    stdout = c.data_dir / "executions" / batch_on_c / "stdout"
    wait_until(
        lambda: stdout.exists() and stdout.read_text() == "sleeping\n", 15,
        "the batch to start on c", mesh,
    )  # fmt: skip
    mark("batch started on c")

    # 2. Cut c off.
    mesh.cut("c")
    mark("cut")
    slow_before_cut = len(c.slow_calls)
    # At once, before anyone has declared anyone dead, c's API answers about its own jobs.
    for job_id, label in ((daemon, "daemon"), (service, "service"), (batch, "batch")):
        try:
            items = c.call("GET", f"/api/v1/orchestrator/jobs/{job_id}/executions", timeout_s=3)
        except OSError as error:
            problems.append(f"c, just cut off, did not answer about its {label} in 3 s: {error}")
        else:
            listed = {e["ID"] for e in items["Items"]}
            expect(
                {daemon_on_c, service_on_c, batch_on_c} & listed != set(),
                f"c, just cut off, lists no execution of its own for its {label}: {items}",
            )
    mark("asked c about its jobs")

    # 3. While cut off: a and b declare c dead (and c them), the service runs 2 on a and b.
    for node in (a, b):
        wait_until(
            lambda node=node: states(node).get(c.node_id) == "dead",
            DECLARED_DEAD_WITHIN_S, f"{node.name} to declare c dead", mesh,
        )  # fmt: skip
        assert alive(node) == {a.node_id, b.node_id}
    mark("a and b declared c dead")
    on_a_and_b = wait_until(
        lambda: (r := {e: n for e, n in running(a, service).items() if n != c.node_id})
        and sorted(r.values()) == sorted([a.node_id, b.node_id])
        and r,
        20, "the service on a and b", mesh,
    )  # fmt: skip
    assert service_elsewhere in on_a_and_b
    (replacement,) = [e for e in on_a_and_b if e != service_elsewhere]
    mark("service rescheduled")
    wait_until(
        lambda: {s for n, s in states(c).items() if n != c.node_id} == {"dead"},
        DECLARED_DEAD_WITHIN_S, "c to declare a and b dead", mesh,
    )  # fmt: skip
    mark("c declared a and b dead")
    # c keeps running its daemon and service executions, and finishes its batch execution.
    assert c.get("/api/v1/agent/alive") == {"Status": "OK"}
    assert alive(c) == {c.node_id}
    assert running(c, daemon).get(daemon_on_c) == c.node_id
    assert running(c, service).get(service_on_c) == c.node_id
    wait_until(
        lambda: stdout.read_text() == "sleeping\nawake\n", BATCH_SLEEP_S + 10,
        "c's batch execution to finish", mesh,
    )  # fmt: skip
    done_on_c = wait_until(
        lambda: {e["ID"]: e["ComputeState"]["StateType"] for e in executions(c, batch)}, 5,
        "c's view of its batch", mesh,
    )  # fmt: skip
    assert done_on_c == {batch_on_c: COMPLETED}, done_on_c
    assert running(c, daemon).get(daemon_on_c) == c.node_id  # still running
    assert running(c, service).get(service_on_c) == c.node_id
    mark("batch done on c")
    slow = c.slow_calls[slow_before_cut:]
    expect(
        not slow,
        f"c's own API, cut off, answered slowly (> 2 s): {slow}; it forwards questions about "
        "jobs it is only a replica of to their primary on the other side",
    )
    batch_seen_by_a = job_state(a, batch)

    # 4. Heal.
    mesh.heal("c")
    healed_at = time.monotonic()
    mark("healed")
    for node in (a, b, c):
        wait_until(
            lambda node=node: alive(node) == everyone,
            RECONCILED_WITHIN_S, f"{node.name} to see c again", mesh,
        )  # fmt: skip
    mark("c alive again")

    def long_running_reconciled() -> bool:
        return sorted(running(a, daemon).values()) == sorted(everyone) and set(
            running(a, service)
        ) == {service_on_c, service_elsewhere}

    def batch_reported() -> bool:
        return all(job_state(node, batch) == "Completed" for node in (a, b, c))

    try:
        wait_until(long_running_reconciled, RECONCILED_WITHIN_S, "daemon and service", mesh)
        mark("daemon and service reconciled")
        left_s = RECONCILED_WITHIN_S - (time.monotonic() - healed_at)
        try:
            wait_until(batch_reported, max(left_s, 1.0), "the batch Completed everywhere", mesh)
            mark("batch Completed everywhere")
        except AssertionError:
            problems.append(
                f"{RECONCILED_WITHIN_S:g} s after the heal the batch job is "
                + ", ".join(f"{n.name}: {job_state(n, batch)}" for n in (a, b, c))
                + f" (a saw it {batch_seen_by_a} while c was cut off)"
            )
        time.sleep(3.0)  # and it stays so: no flapping, nothing restarted
        for node in (a, b, c):
            daemon_now = running(node, daemon)
            assert sorted(daemon_now.values()) == sorted(everyone), (node.name, daemon_now)
            assert daemon_now[daemon_on_c] == c.node_id  # adopted, not replaced
            assert running(node, service) == {
                service_on_c: c.node_id,
                service_elsewhere: service_runs[service_elsewhere],
            }, node.name
            assert job_state(node, daemon) == job_state(node, service) == "Running"
        stopped = {e["ID"]: e for e in executions(a, service)}[replacement]
        assert stopped["ComputeState"]["StateType"] == CANCELLED, stopped
        batch_views = {
            node.name: [
                (e["ID"], e["NodeID"], e["ComputeState"]["StateType"])
                for e in executions(node, batch)
            ]
            for node in (a, b, c)
        }
        for name, view in batch_views.items():
            expect(
                view == [(batch_on_c, c.node_id, COMPLETED)],
                f"{name} lists the batch's executions as {view}, not one Completed ({COMPLETED})"
                f" on c",
            )
        logs = a.cli("job", "logs", batch)
        expect(
            logs.returncode == 0 and logs.stdout.splitlines() == ["sleeping", "awake"],
            f"`job logs` on a: {logs.returncode} {logs.stdout!r} {logs.stderr[-300:]!r}",
        )
        history = history_comments(a, batch)
        expect(f"node {c.node_id} is unreachable" in history, "a's history: no unreachable")
        back = [
            h for h in history if h.startswith(f"node {c.node_id} is reachable again")
            or h.startswith(f"late report from node {c.node_id}")
        ]  # fmt: skip
        expect(bool(back), "a's history of the batch says nothing of c's return or its report")
        printed = a.cli("job", "history", batch)
        expect(printed.returncode == 0 and "unreachable" in printed.stdout, "`job history`")
    finally:
        mark("checked")
        print("timeline (s):", marks)
        print("nodes:", name_of)
        print("jobs:", {"daemon": daemon, "service": service, "batch": batch})
        print(
            "service before the cut:", {e[:8]: name_of[n] for e, n in service_runs.items()},
            "during it on a:", {e[:8]: name_of[n] for e, n in on_a_and_b.items()},
        )  # fmt: skip
        print("slow API answers:", {n.name: n.slow_calls for n in (a, b, c)})
        for node in (a, b, c):
            for job_id, label in ((daemon, "daemon"), (service, "service"), (batch, "batch")):
                print(
                    f"{node.name} {label} {job_state(node, job_id)}:",
                    [
                        (e["ID"][:8], name_of[e["NodeID"]], e["ComputeState"]["StateType"])
                        for e in executions(node, job_id)
                    ],
                )
        for node in (a, c):
            for item in node.get(f"/api/v1/orchestrator/jobs/{batch}/history")["Items"]:
                print(
                    f"batch history on {node.name}:", item["Time"][11:23],
                    item.get("ExecutionID", "")[:8], _named(item.get("Comment", ""), name_of),
                )  # fmt: skip
    assert not problems, "\n".join(problems)
    assert time.monotonic() - started < 90, marks
