"""Human views of API objects (`meshnode.cli.output`, `meshnode.cli.views`), rendered into a
StringIO console exactly as a user would read them."""

from __future__ import annotations

import io
import json
import re
from typing import Any, Final

import pytest
import yaml

from meshnode.cli.output import (
    Console,
    ago,
    execution_state_name,
    format_bytes,
    job_state_name,
    print_data,
    short_id,
    short_node_id,
    timestamp_s,
)
from meshnode.cli.views import (
    describe_job,
    describe_mesh,
    describe_node,
    executions_table,
    history_table,
    jobs_table,
    nodes_table,
    progress_text,
)

NOW_S: Final = 1_700_000_000.0
NS: Final = 1_000_000_000
JOB_ID: Final = "j-1234abcd-5678-4def-9abc-0123456789ab"
EXECUTION_ID: Final = "e-feedbeef-5678-4def-9abc-0123456789ab"
NODE_ID: Final = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


def _console() -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out, err, terminal=False), out, err


def _job(**overrides: Any) -> dict[str, Any]:
    job = {
        "ID": JOB_ID,
        "Name": "word-count",
        "Namespace": "default",
        "Type": "batch",
        "Count": 1,
        "Labels": {"team": "data", "env": "prod"},
        "Tasks": [{"Name": "main", "Engine": {"Type": "docker", "Params": {"Image": "busybox"}}}],
        "State": {"StateType": "Completed", "Message": ""},
        "Revision": 4,
        "CreateTime": int((NOW_S - 5) * NS),
        "ModifyTime": int((NOW_S - 2) * NS),
    }
    return {**job, **overrides}


def _execution(**overrides: Any) -> dict[str, Any]:
    execution = {
        "ID": EXECUTION_ID,
        "JobID": JOB_ID,
        "NodeID": NODE_ID,
        "ComputeState": {"StateType": 7, "Message": ""},
        "DesiredState": {"StateType": 2, "Message": ""},
        "RunOutput": {"Stdout": "hello\n", "stderr": "", "ExitCode": 0, "ErrorMsg": ""},
        "CreateTime": int((NOW_S - 4) * NS),
        "ModifyTime": int((NOW_S - 3 * 3600) * NS),
    }
    return {**execution, **overrides}


def _rows(text: str) -> list[list[str]]:
    """A borderless table's lines, split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


# --- ids, times and states -----------------------------------------------------------------------


def test_short_ids_keep_the_first_ten_characters() -> None:
    assert short_id(JOB_ID) == "j-1234abcd"
    assert short_id(EXECUTION_ID) == "e-feedbeef"
    assert short_node_id(NODE_ID) == "12D3Ko…CVe2Xo"
    assert short_node_id("node-1") == "node-1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (int((NOW_S - 5) * NS), "5s ago"),
        (int((NOW_S - 125) * NS), "2m ago"),
        (int((NOW_S - 3 * 3600) * NS), "3h ago"),
        (int((NOW_S - 4 * 86400) * NS), "4d ago"),
        (NOW_S - 30, "30s ago"),  # seconds are recognised by their size
        ("2023-11-14T22:13:09.876543210Z", "10s ago"),  # RFC 3339 with nanoseconds
        (int((NOW_S + 2) * NS), "just now"),  # a node clock slightly ahead
        (0, ""),
        (None, ""),
        ("not a time", ""),
    ],
)
def test_times_are_human(value: object, expected: str) -> None:
    assert ago(value, NOW_S) == expected


def test_timestamps_of_every_unit_agree() -> None:
    assert timestamp_s(int(NOW_S * NS)) == timestamp_s(int(NOW_S * 1000)) == NOW_S


def test_state_names() -> None:
    assert job_state_name({"StateType": "Running"}) == "Running"
    assert job_state_name({"StateType": 6}) == "Queued"  # Bacalhau's Go integers
    assert job_state_name(None) == "Unknown"
    assert [execution_state_name({"StateType": n}) for n in (1, 5, 7, 8, 9)] == [
        "New",
        "BidAccepted",
        "Completed",
        "Failed",
        "Cancelled",
    ]
    assert execution_state_name({"StateType": 42}) == "42"


def test_sizes_are_binary() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(4 * 1024**3) == "4.0 GiB"
    assert format_bytes(None) == ""


# --- tables --------------------------------------------------------------------------------------


def test_jobs_table() -> None:
    console, out, _ = _console()
    jobs_table(
        console, [_job(), _job(ID="j-99", Name="", State={"StateType": "Failed"})], now_s=NOW_S
    )
    rows = _rows(out.getvalue())
    assert rows[0] == ["ID", "NAME", "TYPE", "ENGINE", "STATE", "CREATED", "LABELS"]
    assert rows[2] == ["j-1234abcd", "word-count", "batch", "docker", "Completed", "5s ago",
                       "env=prod,team=data"]  # fmt: skip
    assert rows[3][0] == "j-99"
    assert "Failed" in rows[3]


def test_a_table_off_a_terminal_never_wraps_cells() -> None:
    console, out, _ = _console()
    long_name = "n" * 150
    jobs_table(console, [_job(Name=long_name)], now_s=NOW_S)
    assert any(long_name in line for line in out.getvalue().splitlines())


def test_executions_table() -> None:
    console, out, _ = _console()
    failed = _execution(
        ID="e-00000000-1",
        ComputeState={"StateType": 8, "Message": "image not found:\n busybox:9"},
        RunOutput=None,
    )
    executions_table(console, [_execution(), failed], now_s=NOW_S)
    rows = _rows(out.getvalue())
    assert rows[0] == ["ID", "NODE", "STATE", "DESIRED", "EXIT", "CREATED", "MODIFIED", "MESSAGE"]
    assert rows[2] == ["e-feedbeef", "12D3Ko…CVe2Xo", "Completed", "Stopped", "0", "4s ago",
                       "3h ago"]  # fmt: skip
    assert rows[3][:3] == ["e-00000000", "12D3Ko…CVe2Xo", "Failed"]
    assert rows[3][-1] == "image not found: busybox:9"  # one line per row


def test_history_table() -> None:
    console, out, _ = _console()
    events = [
        {
            "Type": "JobLevel",
            "JobID": JOB_ID,
            "JobState": {"New": "Pending"},
            "Event": {"Message": "job submitted", "Topic": "Submission", "Timestamp": ""},
            "Time": "2023-11-14T22:13:15Z",
        },
        {
            "Type": "ExecutionLevel",
            "JobID": JOB_ID,
            "ExecutionID": EXECUTION_ID,
            "ExecutionState": {"Previous": 5, "New": 7},
            "Event": {"Message": "", "Topic": "Execution", "Timestamp": ""},
            "Comment": "exit code 0",
            "Time": "2023-11-14T22:13:18Z",
        },
    ]
    history_table(console, events, now_s=NOW_S)
    rows = _rows(out.getvalue())
    assert rows[0] == ["TIME", "LEVEL", "EXECUTION", "STATE", "MESSAGE"]
    assert rows[2] == ["5s ago", "job", "Pending", "job submitted"]
    assert rows[3] == ["2s ago", "execution", "e-feedbeef", "BidAccepted → Completed",
                       "exit code 0"]  # fmt: skip


def test_nodes_table_reads_node_states() -> None:
    console, out, _ = _console()
    node = {
        "Info": {
            "NodeID": NODE_ID,
            "NodeType": "Compute",
            "Labels": {"Architecture": "amd64", "zone": "eu", "engine-wasm": "true"},
            "ComputeNodeInfo": {
                "ExecutionEngines": ["wasm"],
                "MaxCapacity": {"CPU": 2.5, "Memory": 4 * 1024**3, "Disk": 10 * 1024**3, "GPU": 0},
                "AvailableCapacity": {"CPU": 1.5, "Memory": 1024**3, "Disk": 0, "GPU": 0},
                "RunningExecutions": 2,
            },
            "Addresses": [f"/ip4/10.0.0.7/tcp/1235/p2p/{NODE_ID}"],
        },
        "Membership": "APPROVED",
        "Connection": "DISCONNECTED",
        "ConnectionState": {
            "Status": "DISCONNECTED",
            "LastHeartbeat": "2023-11-14T22:13:07.5Z",  # NOW_S - 13 s
        },
        "State": "suspect",
    }
    nodes_table(console, [node], now_s=NOW_S)
    rows = _rows(out.getvalue())
    assert rows[0] == ["ID", "TYPE", "STATE", "APPROVAL", "LABELS", "CPU FREE", "MEMORY FREE",
                       "RUNNING", "LAST SEEN"]  # fmt: skip
    # An operator's labels first, then those every node sets itself.
    # (cut at 40 characters: `node describe` shows them all)
    assert rows[2] == ["12D3Ko…CVe2Xo", "Compute", "suspect", "APPROVED",
                       "zone=eu,Architecture=amd64,engine-wasm=…", "1.5 / 2.5",
                       "1.0 GiB / 4.0 GiB", "2", "12s ago"]  # fmt: skip
    console, out, _ = _console()
    describe_node(console, node, now_s=NOW_S)
    text = out.getvalue()
    assert re.search(rf"^ID +{NODE_ID}$", text, re.MULTILINE)
    assert re.search(r"^State +suspect$", text, re.MULTILINE)
    assert re.search(r"^Last seen +12s ago$", text, re.MULTILINE)
    assert re.search(r"^Capacity +CPU 2.5, memory 4.0 GiB, disk 10.0 GiB, GPU 0$", text, re.M)
    assert re.search(rf"^Addresses +/ip4/10.0.0.7/tcp/1235/p2p/{NODE_ID}$", text, re.M)


def test_nodes_table_reads_an_older_node_without_meshnode_fields() -> None:
    """Bacalhau 1.4's NodeState: no State, no ConnectionState."""
    console, out, _ = _console()
    node = {
        "Info": {"NodeID": "node-1", "NodeType": "Requester", "Labels": {}},
        "Membership": "PENDING",
        "Connection": "CONNECTED",
    }
    nodes_table(console, [node], now_s=NOW_S)
    assert _rows(out.getvalue())[2] == ["node-1", "Requester", "connected", "PENDING"]


def test_describe_mesh() -> None:
    console, out, _ = _console()
    describe_mesh(
        console,
        {
            "NodeID": NODE_ID,
            "Addresses": [f"/ip4/127.0.0.1/tcp/1235/p2p/{NODE_ID}"],
            "ConnectedPeers": [],
            "Members": {"alive": 2, "suspect": 0, "dead": 1, "left": 0},
            "Stats": {"transport_frames_sent": 7, "messages_handled": 3},
        },
    )
    lines = out.getvalue().splitlines()
    assert lines[2] == "Connected peers  none"
    assert lines[3] == "Members          2 alive, 0 suspect, 1 dead, 0 left"
    assert lines[4:] == [
        "Counters         messages_handled 3",
        "                 transport_frames_sent 7",
    ]


# --- describe and progress -----------------------------------------------------------------------


def test_describe_job_shows_the_job_its_executions_and_their_output() -> None:
    console, out, _ = _console()
    response = {"Job": _job(), "Executions": {"Items": [_execution()], "NextToken": ""}}
    describe_job(console, response, now_s=NOW_S)
    text = out.getvalue()
    assert f"ID         {JOB_ID}" in text
    assert "State      Completed" in text
    assert "Image      busybox" in text
    assert "Created    2023-11-14 22:13:15 UTC (5s ago)" in text
    assert "e-feedbeef" in text
    assert "Standard output of e-feedbeef:\n  hello" in text


def test_describe_job_without_executions_says_so() -> None:
    console, out, _ = _console()
    describe_job(console, {"Job": _job(State={"StateType": "Pending"})}, now_s=NOW_S)
    assert "Executions: none yet" in out.getvalue()


def test_progress_line() -> None:
    job = _job(State={"StateType": "Running"})
    running = _execution(ComputeState={"StateType": 5})
    assert progress_text(job, [running, _execution()], elapsed_s=3.7) == (
        "j-1234abcd Running · executions: 1 BidAccepted, 1 Completed · 3s"
    )
    assert progress_text(_job(State={"StateType": "Queued"}), [], elapsed_s=None) == (
        "j-1234abcd Queued · waiting for a node"
    )


def test_status_lines_replace_themselves_only_on_a_terminal() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err, terminal=True)
    console.status("one")
    console.status("two")
    console.print("done")
    assert err.getvalue() == "\r\x1b[Kone\r\x1b[Ktwo\r\x1b[K"
    assert out.getvalue() == "done\n"
    console, _, err = _console()
    console.status("one")
    console.status("two")
    assert err.getvalue() == "one\ntwo\n"


# --- raw output ----------------------------------------------------------------------------------


def test_raw_output_is_the_object_unchanged() -> None:
    data = {"Job": _job(), "Executions": {"Items": [], "NextToken": ""}}
    console, out, _ = _console()
    print_data(console, data, "json")
    assert json.loads(out.getvalue()) == data
    console, out, _ = _console()
    print_data(console, data, "yaml")
    assert yaml.safe_load(out.getvalue()) == data
    assert out.getvalue().startswith("Job:\n  ID: j-1234abcd")  # keys in the API's order
