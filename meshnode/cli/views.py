"""Human views of the API's objects: tables, describe pages and the progress line.

Rules of this module:
- Views read Bacalhau's JSON shapes (`Job`, `Execution`, `JobHistory`, `NodeState`) and
  write through a `Console`; they never talk HTTP and never read the clock (`now_s` is an
  argument), so tests render them into a StringIO.
- Keys are looked up case-insensitively and every field may be missing: Bacalhau's own
  server spells a few keys in lower case (`nodes`, `stderr`), and a view must not crash on
  an older or newer node. `--output json|yaml` is where exact data lives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from meshnode.cli.output import (
    Console,
    ago,
    desired_state_name,
    execution_state_name,
    format_bytes,
    job_state_name,
    local_time,
    short_id,
    short_node_id,
    state_message,
)

__all__ = [
    "TERMINAL_JOB_STATES",
    "describe_job",
    "describe_mesh",
    "describe_node",
    "executions_table",
    "field",
    "history_table",
    "items_of",
    "jobs_table",
    "nodes_table",
    "progress_text",
]

TERMINAL_JOB_STATES: Final = frozenset({"Completed", "Failed", "Stopped"})
COMPLETED_EXECUTION: Final = 7
# Stdout shown by `job describe`; the rest is one `job logs` away.
DESCRIBE_OUTPUT_CHARS: Final = 2000
# Labels in `node list`; `node describe` shows them all.
NODE_LABELS_CHARS: Final = 40
# Labels every node sets itself (runtime/sysinfo.py); `node list` shows an operator's first.
AUTOMATIC_LABELS: Final = frozenset({"Operating-System", "Architecture", "hostname"})
AUTOMATIC_LABEL_PREFIXES: Final = ("engine-", "GPU-")


def field(obj: object, *keys: str, default: Any = None) -> Any:
    """`obj[key]` for the first key present, matched case-insensitively; `default` if none."""
    if not isinstance(obj, Mapping):
        return default
    for key in keys:
        if key in obj:
            return obj[key]
        lowered = key.lower()
        for candidate, value in obj.items():
            if isinstance(candidate, str) and candidate.lower() == lowered:
                return value
    return default


def items_of(response: object, *keys: str) -> list[Any]:
    """The list in a list response (`Items`, `nodes`, …); [] when there is none."""
    found = field(response, *(keys or ("Items",)))
    return list(found) if isinstance(found, list) else []


def _labels_text(labels: object) -> str:
    if not isinstance(labels, Mapping) or not labels:
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _name(job: object) -> str:
    """The job's name, or nothing when the node named it after its id (no name given)."""
    name = str(field(job, "Name", default="") or "")
    return "" if name == field(job, "ID") else name


def _engine_type(job: object) -> str:
    tasks = field(job, "Tasks")
    if isinstance(tasks, list) and tasks:
        return str(field(field(tasks[0], "Engine"), "Type", default="") or "")
    return ""


# --- jobs ----------------------------------------------------------------------------------


def jobs_table(console: Console, jobs: Iterable[object], *, now_s: float) -> None:
    rows = [
        (
            short_id(str(field(job, "ID", default=""))),
            _name(job),
            str(field(job, "Type", default="") or ""),
            _engine_type(job),
            job_state_name(field(job, "State")),
            ago(field(job, "CreateTime"), now_s),
            _labels_text(field(job, "Labels")),
        )
        for job in jobs
    ]
    console.table(("ID", "NAME", "TYPE", "ENGINE", "STATE", "CREATED", "LABELS"), rows)


def executions_table(console: Console, executions: Iterable[object], *, now_s: float) -> None:
    rows = []
    for execution in executions:
        run_output = field(execution, "RunOutput")
        exit_code = field(run_output, "ExitCode")
        compute = field(execution, "ComputeState")
        state = execution_state_name(compute)
        message = state_message(compute) or str(field(run_output, "ErrorMsg", default="") or "")
        rows.append(
            (
                short_id(str(field(execution, "ID", default=""))),
                short_node_id(str(field(execution, "NodeID", default="") or "")),
                state,
                desired_state_name(field(execution, "DesiredState")),
                _exit_code_text(exit_code, state),
                ago(field(execution, "CreateTime"), now_s),
                ago(field(execution, "ModifyTime"), now_s),
                _one_line(message),
            )
        )
    console.table(
        ("ID", "NODE", "STATE", "DESIRED", "EXIT", "CREATED", "MODIFIED", "MESSAGE"), rows
    )


_ENDED: Final = frozenset({"Completed", "Failed", "Cancelled"})


def _exit_code_text(exit_code: object, state: str) -> str:
    """Only an execution that ended has an exit code; a negative one means "none" (it never
    ran, or was killed) and is left blank rather than shown as a code."""
    if not isinstance(exit_code, int) or exit_code < 0 or state not in _ENDED:
        return ""
    return str(exit_code)


def history_table(console: Console, events: Iterable[object], *, now_s: float) -> None:
    rows = []
    for event in events:
        execution_id = str(field(event, "ExecutionID", default="") or "")
        if execution_id:
            change = field(event, "ExecutionState")
            name = execution_state_name
        else:
            change = field(event, "JobState")
            name = job_state_name
        previous, new = field(change, "Previous"), field(change, "New")
        transition = ""
        if new is not None:
            transition = f"{name(previous)} → {name(new)}" if previous is not None else name(new)
        message = field(field(event, "Event"), "Message", default="") or field(
            event, "Comment", default=""
        )
        rows.append(
            (
                ago(field(event, "Time"), now_s),
                "execution" if execution_id else "job",
                short_id(execution_id),
                transition,
                _one_line(str(message or "")),
            )
        )
    console.table(("TIME", "LEVEL", "EXECUTION", "STATE", "MESSAGE"), rows)


def describe_job(console: Console, response: object, *, now_s: float) -> None:
    """`job describe`: the job, its executions, and what each execution printed."""
    job = field(response, "Job", default={})
    state = field(job, "State")
    tasks = field(job, "Tasks")
    task = tasks[0] if isinstance(tasks, list) and tasks else {}
    engine = field(task, "Engine")
    params = field(engine, "Params")
    created = field(job, "CreateTime")
    pairs = [
        ("ID", str(field(job, "ID", default=""))),
        ("Name", str(field(job, "Name", default="") or "")),
        ("Namespace", str(field(job, "Namespace", default="") or "")),
        ("Type", str(field(job, "Type", default="") or "")),
        ("State", job_state_name(state)),
    ]
    if state_message(state):
        pairs.append(("Message", state_message(state)))
    pairs += [
        ("Count", str(field(job, "Count", default=""))),
        ("Engine", str(field(engine, "Type", default="") or "")),
    ]
    image = field(params, "Image")
    if image:
        pairs.append(("Image", str(image)))
    module = field(params, "EntryModule")
    if isinstance(module, str) and module:
        pairs.append(("Module", module))
    elif module:
        pairs.append(("Module", str(field(field(module, "Source"), "Type", default="source"))))
    labels = _labels_text(field(job, "Labels"))
    if labels:
        pairs.append(("Labels", labels))
    pairs += [
        ("Created", f"{local_time(created)} ({ago(created, now_s)})" if created else ""),
        ("Modified", ago(field(job, "ModifyTime"), now_s)),
        ("Revision", str(field(job, "Revision", default=""))),
    ]
    console.fields(pairs)
    executions = items_of(field(response, "Executions"))
    console.print()
    if not executions:
        console.print("Executions: none yet")
    else:
        executions_table(console, executions, now_s=now_s)
    for execution in executions:
        run_output = field(execution, "RunOutput")
        stdout = str(field(run_output, "Stdout", default="") or "")
        stderr = str(field(run_output, "Stderr", default="") or "")
        for title, text in (("Standard output", stdout), ("Standard error", stderr)):
            if text:
                console.print(f"{title} of {short_id(str(field(execution, 'ID')))}:")
                console.print(_indent(_clip(text)))


def progress_text(job: object, executions: Sequence[object], *, elapsed_s: float | None) -> str:
    """`j-1234abcd Running · executions: 1 BidAccepted · 3s` (without the time off a
    terminal, so a log gets a line per change, not per poll)."""
    counts = Counter(execution_state_name(field(e, "ComputeState")) for e in executions)
    parts = [f"{short_id(str(field(job, 'ID', default='')))} {job_state_name(field(job, 'State'))}"]
    if counts:
        parts.append("executions: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    else:
        parts.append("waiting for a node")
    if elapsed_s is not None:
        parts.append(f"{int(elapsed_s)}s")
    return " · ".join(parts)


# --- nodes -----------------------------------------------------------------------------------


def _node_info(node: object) -> object:
    """A `NodeState` has the info under `Info`; `agent/node` answers the `NodeInfo` itself."""
    info = field(node, "Info")
    return info if isinstance(info, Mapping) else node


def _capacity(info: object, which: str) -> object:
    return field(field(info, "ComputeNodeInfo"), which)


def _status_text(value: object) -> str:
    """Connection/membership: text ("HEALTHY"), or an object wrapping it."""
    if isinstance(value, Mapping):
        value = next(iter(value.values()), "")
    return str(value or "")


def _mesh_state(node: object) -> str:
    """meshnode's `State` (alive, suspect, dead, left); from Bacalhau's fields otherwise."""
    state = field(node, "State")
    if isinstance(state, str) and state:
        return state
    connection = _status_text(field(field(node, "ConnectionState"), "Status"))
    return (connection or _status_text(field(node, "Connection"))).lower()


def _last_seen(node: object) -> object:
    return field(field(node, "ConnectionState"), "LastHeartbeat")


def _free_of_total(free: object, total: object, text: Callable[[object], str]) -> str:
    if total is None:
        return ""
    return f"{text(free)} / {text(total)}" if free is not None else text(total)


def _labels_short(labels: object) -> str:
    """An operator's labels first, then those every node sets itself."""
    if not isinstance(labels, Mapping) or not labels:
        return ""

    def automatic(key: str) -> bool:
        return key in AUTOMATIC_LABELS or key.startswith(AUTOMATIC_LABEL_PREFIXES)

    keys = sorted(labels, key=lambda key: (automatic(str(key)), str(key)))
    return ",".join(f"{key}={labels[key]}" for key in keys)


def nodes_table(console: Console, nodes: Iterable[object], *, now_s: float) -> None:
    rows = []
    for node in nodes:
        info = _node_info(node)
        free = _capacity(info, "AvailableCapacity")
        total = _capacity(info, "MaxCapacity")
        running = _capacity(info, "RunningExecutions")
        rows.append(
            (
                short_node_id(str(field(info, "NodeID", "ID", default=""))),
                str(field(info, "NodeType", default="") or ""),
                _mesh_state(node),
                _status_text(field(node, "Membership")),
                _one_line(_labels_short(field(info, "Labels")), NODE_LABELS_CHARS),
                _free_of_total(field(free, "CPU"), field(total, "CPU"), _cpu_text),
                _free_of_total(field(free, "Memory"), field(total, "Memory"), format_bytes),
                "" if running is None else str(running),
                ago(_last_seen(node), now_s),
            )
        )
    console.table(
        ("ID", "TYPE", "STATE", "APPROVAL", "LABELS", "CPU FREE", "MEMORY FREE", "RUNNING",
         "LAST SEEN"),
        rows,
    )  # fmt: skip


def describe_node(console: Console, node: object, *, now_s: float) -> None:
    """A `NodeState` (node describe) or a `NodeInfo` (agent node)."""
    info = _node_info(node)
    compute = field(info, "ComputeNodeInfo")
    version = field(info, "BacalhauVersion")
    pairs = [
        ("ID", str(field(info, "NodeID", "ID", default=""))),
        ("Type", str(field(info, "NodeType", default="") or "")),
    ]
    if info is not node:  # a NodeState: the mesh's view of the node
        pairs.append(("State", _mesh_state(node)))
        for name, key in (("Connection", "Connection"), ("Membership", "Membership")):
            text = _status_text(field(node, key))
            if text:
                pairs.append((name, text))
        seen = ago(_last_seen(node), now_s)
        if seen:
            pairs.append(("Last seen", seen))
    if version:
        pairs.append(("Version", str(field(version, "GitVersion", default="") or "")))
    pairs.append(("Labels", _labels_text(field(info, "Labels"))))
    for name, key in (
        ("Engines", "ExecutionEngines"),
        ("Publishers", "Publishers"),
        ("Input sources", "StorageSources"),
    ):
        pairs.append((name, ", ".join(map(str, field(compute, key, default=[]) or []))))
    for name, key in (("Capacity", "MaxCapacity"), ("Available", "AvailableCapacity")):
        amounts = field(compute, key)
        if isinstance(amounts, Mapping):
            pairs.append((name, _amounts_text(amounts)))
    for name, key in (("Running", "RunningExecutions"), ("Queued", "EnqueuedExecutions")):
        count = field(compute, key)
        if count is not None:
            pairs.append((name, f"{count} executions"))
    addresses = field(info, "Addresses", default=[]) or []
    # One per line, whole: they are what `meshnode start --peers` takes.
    for index, address in enumerate(addresses):
        pairs.append(("Addresses" if index == 0 else "", str(address)))
    console.fields(pairs)


def describe_mesh(console: Console, mesh: object) -> None:
    """`GET /api/v1/agent/mesh`: this node's addresses, peers, members and counters."""
    pairs = [("ID", str(field(mesh, "NodeID", default="")))]
    for name, key in (("Addresses", "Addresses"), ("Connected peers", "ConnectedPeers")):
        values = field(mesh, key, default=[]) or []
        if not values:
            pairs.append((name, "none"))
        for index, value in enumerate(values):
            pairs.append((name if index == 0 else "", str(value)))
    members = field(mesh, "Members", default={}) or {}
    if isinstance(members, Mapping):
        pairs.append(("Members", ", ".join(f"{count} {state}" for state, count in members.items())))
    stats = field(mesh, "Stats", default={}) or {}
    if isinstance(stats, Mapping):
        for index, (name, count) in enumerate(sorted(stats.items())):
            pairs.append(("Counters" if index == 0 else "", f"{name} {count}"))
    console.fields(pairs)


def _amounts_text(amounts: Mapping[str, object]) -> str:
    return (
        f"CPU {_cpu_text(field(amounts, 'CPU'))}, memory {format_bytes(field(amounts, 'Memory'))}"
        f", disk {format_bytes(field(amounts, 'Disk'))}, GPU {field(amounts, 'GPU', default=0)}"
    )


def _cpu_text(cores: object) -> str:
    """Bacalhau sends CPU as float cores."""
    if isinstance(cores, int | float) and not isinstance(cores, bool):
        return f"{cores:g}"
    return ""


# --- text helpers ----------------------------------------------------------------------------


def _one_line(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _clip(text: str) -> str:
    if len(text) <= DESCRIBE_OUTPUT_CHARS:
        return text.rstrip("\n")
    return text[:DESCRIBE_OUTPUT_CHARS].rstrip("\n") + "\n… (more with: meshnode job logs)"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
