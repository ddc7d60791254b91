"""The rules of a job spec, one test per rule: each asserts the exact field path, a
distinctive part of the message and, where there is one, the bad value."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from meshnode.spec import (
    DockerParams,
    InputSource,
    Job,
    LocalDirectoryParams,
    SpecError,
    WasmParams,
    job_from_document,
    load_job,
)

CID = "QmSYE8dVx6RTdDFFhBu51JjFG1fwwPdUJoXZ4ZNXvfoK2V"
CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

BASE: dict[str, Any] = {
    "Name": "rules",
    "Type": "batch",
    "Tasks": [{"Name": "main", "Engine": {"Type": "docker", "Params": {"Image": "ubuntu:24.04"}}}],
}

WASM_ENGINE: dict[str, Any] = {"Type": "wasm", "Params": {"EntryModule": "/opt/modules/m.wasm"}}

BASE_YAML = """\
Name: rules
Type: batch
Tasks:
  - Name: main
    Engine:
      Type: docker
      Params:
        Image: ubuntu:24.04
"""


def spec(change: Callable[[dict[str, Any]], object] | None = None, **fields: Any) -> dict[str, Any]:
    """A deep copy of BASE with top-level `fields` set (None deletes) and `change` applied."""
    document = copy.deepcopy(BASE)
    for key, value in fields.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    if change is not None:
        change(document)
    return document


def task_spec(**fields: Any) -> dict[str, Any]:
    """BASE with fields of its one task set (None deletes)."""

    def change(document: dict[str, Any]) -> None:
        task = document["Tasks"][0]
        for key, value in fields.items():
            if value is None:
                task.pop(key, None)
            else:
                task[key] = value

    return spec(change)


def docker_params(**params: Any) -> dict[str, Any]:
    return {"Type": "docker", "Params": {"Image": "ubuntu:24.04", **params}}


def problems_of(document: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        job_from_document(document)
    problems = [(problem.path, problem.message) for problem in caught.value.problems]
    assert problems, "a SpecError must carry at least one problem"
    return problems


def yaml_problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        load_job(text)
    return [(problem.path, problem.message) for problem in caught.value.problems]


def assert_problem(
    problems: list[tuple[str, str]], path: str, *fragments: str, only: bool = True
) -> str:
    """The message of the problem at `path`; every fragment must be in it."""
    at_path = [message for where, message in problems if where == path]
    assert at_path, f"no problem at {path!r}; got {problems!r}"
    message = at_path[0]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if only:
        assert len(problems) == 1, f"expected only the problem at {path!r}; got {problems!r}"
    return message


def shown(value: str) -> str:
    """How a bad string value appears in a message."""
    return json.dumps(value, ensure_ascii=False)


# --- valid specs -------------------------------------------------------------------------------


def test_base_spec_is_valid() -> None:
    job = job_from_document(spec())
    assert isinstance(job, Job)
    assert job.name == "rules"
    assert job.type == "batch"
    assert job.task.engine is not None
    assert job.task.engine.params == DockerParams(image="ubuntu:24.04")


@pytest.mark.parametrize("job_type", ["batch", "ops", "daemon", "service"])
@pytest.mark.parametrize("engine", ["docker", "wasm"])
def test_every_job_type_with_every_engine_parses(job_type: str, engine: str) -> None:
    engine_spec = docker_params() if engine == "docker" else copy.deepcopy(WASM_ENGINE)
    document = spec(Type=job_type)
    document["Tasks"][0]["Engine"] = engine_spec
    job = job_from_document(document)
    assert job.type == job_type
    assert job.task.engine is not None
    assert job.task.engine.type == engine
    params_type = DockerParams if engine == "docker" else WasmParams
    assert isinstance(job.task.engine.params, params_type)


def test_full_spec_with_every_section_parses() -> None:
    document = task_spec(
        Engine=docker_params(
            Entrypoint=["/bin/sh", "-c"],
            Parameters=["echo hi"],
            EnvironmentVariables=["A=b"],
            WorkingDirectory="/work",
        ),
        Publisher={"Type": "s3", "Params": {"Bucket": "results", "Key": "{jobID}/"}},
        Env={"HOME": "/root"},
        Meta={"purpose": "test"},
        InputSources=[
            {"Target": "/ipfs", "Source": {"Type": "ipfs", "Params": {"CID": CID}}},
            {"Target": "/ipfs1", "Source": {"Type": "ipfs", "Params": {"CID": CID_V1}}},
            {
                "Target": "/url",
                "Source": {"Type": "urlDownload", "Params": {"URL": "https://example.com/a"}},
            },
            {
                "Target": "/inline",
                "Source": {"Type": "inline", "Params": {"URL": "data:text/plain;base64,aGk="}},
            },
            {
                "Target": "/local",
                "Source": {
                    "Type": "localDirectory",
                    "Params": {"SourcePath": "/srv/data", "ReadWrite": True},
                },
            },
            {"Target": "/s3", "Source": {"Type": "s3", "Params": {"Bucket": "in", "Key": "k"}}},
        ],
        ResultPaths=[{"Name": "outputs", "Path": "/outputs"}, {"Name": "logs", "Path": "/logs"}],
        Resources={"CPU": "500m", "Memory": "512Mi", "Disk": "1Gb", "GPU": "1"},
        Network={"Type": "HTTP", "Domains": ["example.com", ".example.org", "10.0.0.1"]},
        Timeouts={"QueueTimeout": 10, "ExecutionTimeout": 20, "TotalTimeout": 30},
    )
    document["Constraints"] = [{"Key": "arch", "Operator": "=", "Values": ["arm64"]}]
    job = job_from_document(document)
    task = job.task
    assert len(task.input_sources) == 6
    assert isinstance(task.input_sources[4].source.params, LocalDirectoryParams)  # type: ignore[union-attr]
    assert task.input_sources[4].source.params.read_write is True  # type: ignore[union-attr]
    assert task.resources is not None
    assert task.resources.cpu_millicores == 500
    assert task.resources.memory_bytes == 512 * 2**20
    assert task.resources.disk_bytes == 2**30
    assert task.resources.gpu_count == 1
    assert task.network is not None
    assert task.network.domains == ("example.com", ".example.org", "10.0.0.1")


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_of_a_minimal_batch_job() -> None:
    document = {"Type": "batch", "Tasks": [{"Engine": docker_params()}]}
    job = job_from_document(document)
    assert job.namespace == "default"
    assert job.count == 1
    assert job.priority == 0
    assert job.task.name == "main"
    assert job.task.network is not None
    assert job.task.network.type == "None"
    assert job.task.network.domains == ()


@pytest.mark.parametrize(
    ("job_type", "count"), [("batch", 1), ("service", 1), ("ops", 0), ("daemon", 0)]
)
def test_default_count_depends_on_job_type(job_type: str, count: int) -> None:
    assert job_from_document(spec(Type=job_type)).count == count


@pytest.mark.parametrize("count", [0, 1, 3])
def test_explicit_count_is_kept(count: int) -> None:
    assert job_from_document(spec(Count=count)).count == count


def test_blank_namespace_and_task_name_take_defaults() -> None:
    document = spec(Namespace="  ")
    document["Tasks"][0]["Name"] = " "
    job = job_from_document(document)
    assert job.namespace == "default"
    assert job.task.name == "main"


def test_explicit_namespace_priority_and_task_name_are_kept() -> None:
    document = spec(Namespace="fleet", Priority=50)
    document["Tasks"][0]["Name"] = "work"
    job = job_from_document(document)
    assert (job.namespace, job.priority, job.task.name) == ("fleet", 50, "work")


def test_wasm_entry_point_defaults_to_start() -> None:
    job = job_from_document(task_spec(Engine=copy.deepcopy(WASM_ENGINE)))
    assert job.task.engine is not None
    params = job.task.engine.params
    assert isinstance(params, WasmParams)
    assert params.entry_point == "_start"
    assert params.entry_module == "/opt/modules/m.wasm"


def test_wasm_explicit_entry_point_is_kept() -> None:
    engine = copy.deepcopy(WASM_ENGINE)
    engine["Params"]["EntryPoint"] = "run"
    job = job_from_document(task_spec(Engine=engine))
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, WasmParams)
    assert job.task.engine.params.entry_point == "run"


def test_wasm_entry_module_as_input_source() -> None:
    engine = {
        "Type": "wasm",
        "Params": {
            "EntryModule": {
                "Source": {"Type": "urlDownload", "Params": {"URL": "https://x.org/m.wasm"}}
            }
        },
    }
    job = job_from_document(task_spec(Engine=engine))
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, WasmParams)
    assert isinstance(job.task.engine.params.entry_module, InputSource)


def test_docker_environment_variables_are_tidied() -> None:
    engine = docker_params(EnvironmentVariables=["A = b", "C=d", " E =  f g ", "H="])
    job = job_from_document(task_spec(Engine=engine))
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, DockerParams)
    assert job.task.engine.params.environment_variables == ("A=b", "C=d", "E=f g", "H=")


def test_docker_environment_variable_without_equals_is_an_error() -> None:
    problems = problems_of(task_spec(Engine=docker_params(EnvironmentVariables=["A=b", "C"])))
    assert_problem(
        problems, "Tasks[0].Engine.Params.EnvironmentVariables[1]", '"C"', "is not NAME=value"
    )


# --- keys ----------------------------------------------------------------------------------------


def test_keys_match_case_insensitively() -> None:
    lower = {
        "name": "rules",
        "type": "batch",
        "tasks": [
            {"name": "main", "engine": {"type": "docker", "params": {"image": "ubuntu:24.04"}}}
        ],
    }
    mixed = {
        "NAME": "rules",
        "tYpE": "batch",
        "Tasks": [
            {"nAmE": "main", "ENGINE": {"Type": "docker", "PARAMS": {"iMaGe": "ubuntu:24.04"}}}
        ],
    }
    expected = job_from_document(spec())
    assert job_from_document(lower) == expected
    assert job_from_document(mixed) == expected


def test_acronym_keys_match_case_insensitively() -> None:
    document = task_spec(
        Resources={"cpu": "1", "Gpu": "1"},
        InputSources=[{"target": "/d", "source": {"type": "IPFS", "params": {"cid": CID}}}],
    )
    job = job_from_document(document)
    assert job.task.resources is not None
    assert job.task.resources.cpu == "1"
    assert job.task.resources.gpu == "1"
    source = job.task.input_sources[0].source
    assert source is not None
    assert source.type == "ipfs"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (spec(name="other"), "name"),
        (task_spec(engine=docker_params()), "Tasks[0].engine"),
        (task_spec(RESOURCES={"CPU": "1"}, Resources={"CPU": "2"}), "Tasks[0].Resources"),
    ],
    ids=["top", "task", "task-reversed"],
)
def test_same_key_in_two_spellings_is_an_error(document: dict[str, Any], path: str) -> None:
    problems = problems_of(document)
    assert len(problems) == 1, problems
    where, message = problems[0]
    assert where.lower() == path.lower()
    assert "given twice" in message


@pytest.mark.parametrize(
    ("document", "path", "suggestion"),
    [
        (spec(Nmae="x"), "Nmae", "Name"),
        (spec(Constraint=[]), "Constraint", "Constraints"),
        (task_spec(Resourcs={"CPU": "1"}), "Tasks[0].Resourcs", "Resources"),
        (task_spec(Timeout={}), "Tasks[0].Timeout", "Timeouts"),
        (
            task_spec(Engine=docker_params(Entrypont=["x"])),
            "Tasks[0].Engine.Params.Entrypont",
            "Entrypoint",
        ),
        (task_spec(Resources={"Memmory": "1Gb"}), "Tasks[0].Resources.Memmory", "Memory"),
        (
            task_spec(Network={"Domain": ["a.com"], "Type": "HTTP"}),
            "Tasks[0].Network.Domain",
            "Domains",
        ),
    ],
)
def test_unknown_key_near_miss_says_did_you_mean(
    document: dict[str, Any], path: str, suggestion: str
) -> None:
    problems = problems_of(document)
    assert_problem(problems, path, "unknown field", f'did you mean "{suggestion}"', only=False)


def test_unknown_key_far_miss_lists_known_fields() -> None:
    problems = problems_of(spec(Zzzzzz="x"))
    message = assert_problem(problems, "Zzzzzz", "unknown field")
    assert "did you mean" not in message
    assert "Tasks" in message


def test_unknown_key_in_params_of_a_type_without_params() -> None:
    problems = problems_of(task_spec(Publisher={"Type": "ipfs", "Params": {"Bucket": "b"}}))
    assert_problem(problems, "Tasks[0].Publisher.Params.Bucket", "unknown field")


# --- Type ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("batch", "batch"),
        ("Batch", "batch"),
        ("OPS", "ops"),
        ("Daemon", "daemon"),
        ("sErViCe", "service"),
    ],
)
def test_job_type_is_case_insensitive_and_normalized(given: str, expected: str) -> None:
    assert job_from_document(spec(Type=given)).type == expected


def test_missing_job_type_is_an_error() -> None:
    assert_problem(problems_of(spec(Type=None)), "Type", "required", "batch")


@pytest.mark.parametrize("bad", ["batc", "job", "cron"])
def test_unknown_job_type_is_an_error(bad: str) -> None:
    assert_problem(problems_of(spec(Type=bad)), "Type", shown(bad), "not a job type")


def test_unknown_job_type_near_miss_says_did_you_mean() -> None:
    assert_problem(problems_of(spec(Type="servce")), "Type", 'did you mean "service"')


# --- Tasks ---------------------------------------------------------------------------------------


def test_no_tasks_is_an_error() -> None:
    assert_problem(problems_of(spec(Tasks=[])), "Tasks", "exactly one task")


def test_missing_tasks_is_an_error() -> None:
    assert_problem(problems_of(spec(Tasks=None)), "Tasks", "exactly one task")


def test_two_tasks_are_an_error_never_truncated() -> None:
    document = spec(change=lambda d: d["Tasks"].append(copy.deepcopy(d["Tasks"][0])))
    message = assert_problem(problems_of(document), "Tasks", "exactly one task")
    assert "2" in message


def test_two_tasks_still_report_the_problems_inside_each_task() -> None:
    # All errors of a spec are reported together: the task-count error must not hide a
    # missing engine in the second task.
    document = spec(change=lambda d: d["Tasks"].append({"Name": "second"}))
    problems = problems_of(document)
    assert_problem(problems, "Tasks", "exactly one task", only=False)
    assert_problem(problems, "Tasks[1].Engine", "required", only=False)


def test_job_task_property_is_the_one_task() -> None:
    job = job_from_document(spec())
    assert job.task is job.tasks[0]
    assert len(job.tasks) == 1


# --- result paths and publishers -----------------------------------------------------------------


def test_result_paths_need_a_publisher() -> None:
    document = task_spec(ResultPaths=[{"Name": "outputs", "Path": "/outputs"}])
    assert_problem(problems_of(document), "Tasks[0].ResultPaths", "Publisher")


@pytest.mark.parametrize("publisher", ["ipfs", "local", "noop", "IPFS", "Local"])
def test_result_paths_with_a_publisher_are_valid(publisher: str) -> None:
    document = task_spec(
        Publisher={"Type": publisher}, ResultPaths=[{"Name": "outputs", "Path": "/outputs"}]
    )
    job = job_from_document(document)
    assert job.task.publisher is not None
    assert job.task.publisher.type == publisher.lower()


def test_s3_publisher_needs_a_bucket() -> None:
    problems = problems_of(task_spec(Publisher={"Type": "s3", "Params": {"Key": "k"}}))
    assert_problem(problems, "Tasks[0].Publisher.Params.Bucket", "required")


def test_unknown_publisher_type() -> None:
    problems = problems_of(task_spec(Publisher={"Type": "ipfz"}))
    assert_problem(problems, "Tasks[0].Publisher.Type", '"ipfz"', 'did you mean "ipfs"')


@pytest.mark.parametrize(
    ("result_paths", "path", "fragments"),
    [
        ([{"Path": "/outputs"}], "Tasks[0].ResultPaths[0].Name", ("required",)),
        ([{"Name": "outputs"}], "Tasks[0].ResultPaths[0].Path", ("required",)),
        (
            [{"Name": "outputs", "Path": "outputs"}],
            "Tasks[0].ResultPaths[0].Path",
            ('"outputs"', "absolute"),
        ),
        (
            [{"Name": "a", "Path": "/a"}, {"Name": "a", "Path": "/b"}],
            "Tasks[0].ResultPaths[1].Name",
            ('"a"', "ResultPaths[0]"),
        ),
    ],
    ids=["no-name", "no-path", "relative-path", "duplicate-name"],
)
def test_result_path_rules(
    result_paths: list[dict[str, str]], path: str, fragments: tuple[str, ...]
) -> None:
    document = task_spec(Publisher={"Type": "local"}, ResultPaths=result_paths)
    assert_problem(problems_of(document), path, *fragments)


# --- constraints ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "values"),
    [
        ("=", ["linux"]),
        ("==", ["linux"]),
        ("!=", ["linux"]),
        ("in", ["a"]),
        ("in", ["a", "b", "c"]),
        ("notin", ["a"]),
        ("notin", ["a", "b"]),
        ("exists", []),
        ("!", []),
        ("gt", ["4"]),
        ("lt", ["-4"]),
        ("gt", ["+10"]),
    ],
)
def test_valid_constraints(operator: str, values: list[str]) -> None:
    constraint = {"Key": "label", "Operator": operator, "Values": values}
    job = job_from_document(spec(Constraints=[constraint]))
    assert job.constraints[0].operator == operator
    assert job.constraints[0].values == tuple(values)


@pytest.mark.parametrize("operator", ["exists", "!"])
def test_operators_without_values_may_omit_values(operator: str) -> None:
    job = job_from_document(spec(Constraints=[{"Key": "gpu", "Operator": operator}]))
    assert job.constraints[0].values == ()


@pytest.mark.parametrize(
    ("given", "expected"), [("IN", "in"), ("NotIn", "notin"), ("GT", "gt"), ("Exists", "exists")]
)
def test_operators_are_case_insensitive(given: str, expected: str) -> None:
    values = [] if expected == "exists" else ["1"]
    constraint = {"Key": "label", "Operator": given, "Values": values}
    assert job_from_document(spec(Constraints=[constraint])).constraints[0].operator == expected


@pytest.mark.parametrize(
    ("operator", "values", "wanted"),
    [
        ("=", [], "exactly one value"),
        ("=", ["a", "b"], "exactly one value"),
        ("==", [], "exactly one value"),
        ("!=", ["a", "b"], "exactly one value"),
        ("in", [], "at least one value"),
        ("notin", [], "at least one value"),
        ("exists", ["a"], "no values"),
        ("!", ["a"], "no values"),
        ("gt", [], "exactly one value"),
        ("lt", ["1", "2"], "exactly one value"),
    ],
)
def test_constraint_with_the_wrong_number_of_values(
    operator: str, values: list[str], wanted: str
) -> None:
    constraints = [
        {"Key": "ok", "Operator": "exists"},
        {"Key": "label", "Operator": operator, "Values": values},
    ]
    problems = problems_of(spec(Constraints=constraints))
    assert len(problems) == 1, problems
    path, message = problems[0]
    assert path in ("Constraints[1]", "Constraints[1].Values")
    assert wanted in message
    assert shown(operator) in message or operator in message


@pytest.mark.parametrize("operator", ["gt", "lt"])
@pytest.mark.parametrize("value", ["abc", "1.5", "", "1e3"])
def test_gt_lt_need_an_integer(operator: str, value: str) -> None:
    constraints = [
        {"Key": "a", "Operator": "=", "Values": ["x"]},
        {"Key": "cores", "Operator": operator, "Values": [value]},
    ]
    problems = problems_of(spec(Constraints=constraints))
    assert_problem(problems, "Constraints[1].Values[0]", shown(value), "not an integer")


@pytest.mark.parametrize("operator", ["~", "like", "<", "=>"])
def test_unknown_operator(operator: str) -> None:
    constraints = [{"Key": "label", "Operator": operator, "Values": ["a"]}]
    assert_problem(
        problems_of(spec(Constraints=constraints)),
        "Constraints[0].Operator",
        shown(operator),
        "not an operator",
    )


def test_constraint_needs_a_key() -> None:
    constraints = [{"Operator": "exists"}]
    assert_problem(problems_of(spec(Constraints=constraints)), "Constraints[0].Key", "required")


# --- network -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("None", "None"), ("none", "None"), ("Full", "Full"), ("FULL", "Full"), ("", "None")],
)
def test_network_type_is_case_insensitive(given: str, expected: str) -> None:
    job = job_from_document(task_spec(Network={"Type": given}))
    assert job.task.network is not None
    assert job.task.network.type == expected


@pytest.mark.parametrize("given", ["HTTP", "http", "Http"])
def test_http_network_with_domains(given: str) -> None:
    job = job_from_document(task_spec(Network={"Type": given, "Domains": ["example.com"]}))
    assert job.task.network is not None
    assert job.task.network.type == "HTTP"
    assert job.task.network.domains == ("example.com",)


def test_http_network_needs_a_domain() -> None:
    problems = problems_of(task_spec(Network={"Type": "HTTP"}))
    assert_problem(problems, "Tasks[0].Network.Domains", "HTTP", "at least one domain")


@pytest.mark.parametrize("network_type", ["Full", "None", None])
def test_domains_need_network_type_http(network_type: str | None) -> None:
    network: dict[str, Any] = {"Domains": ["example.com"]}
    if network_type is not None:
        network["Type"] = network_type
    problems = problems_of(task_spec(Network=network))
    assert_problem(problems, "Tasks[0].Network.Domains", "only used with network type HTTP")


@pytest.mark.parametrize("bad", ["htp", "Public", "bridge"])
def test_unknown_network_type(bad: str) -> None:
    problems = problems_of(task_spec(Network={"Type": bad}))
    assert_problem(problems, "Tasks[0].Network.Type", shown(bad), "not a network type")


def test_unknown_network_type_near_miss() -> None:
    problems = problems_of(task_spec(Network={"Type": "Ful"}))
    assert_problem(problems, "Tasks[0].Network.Type", 'did you mean "Full"')


@pytest.mark.parametrize(
    "domain",
    [
        "example.com",
        ".example.com",
        "ghcr.io",
        "localhost",
        "a-b.example.co.uk",
        "192.168.1.10",
        "::1",
        "2001:db8::1",
    ],
)
def test_valid_domains(domain: str) -> None:
    job = job_from_document(task_spec(Network={"Type": "HTTP", "Domains": [domain]}))
    assert job.task.network is not None
    assert job.task.network.domains == (domain,)


@pytest.mark.parametrize(
    "domain",
    [
        "exa mple.com",
        "-a.com",
        "a-.com",
        "a..b",
        "http://example.com",
        "example.com/path",
        "",
        "a_b$.com",
        "x" * 64 + ".com",
    ],
)
def test_invalid_domains(domain: str) -> None:
    network = {"Type": "HTTP", "Domains": ["good.example.com", domain]}
    problems = problems_of(task_spec(Network=network))
    assert_problem(problems, "Tasks[0].Network.Domains[1]", shown(domain)[:60], "not a host name")


# --- timeouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timeouts",
    [
        {"QueueTimeout": 4, "ExecutionTimeout": 6, "TotalTimeout": 10},
        {"QueueTimeout": 0, "ExecutionTimeout": 10, "TotalTimeout": 10},
        {"QueueTimeout": 100, "ExecutionTimeout": 600},  # no total: no limit on the sum
        {"TotalTimeout": 5},
        {},
    ],
)
def test_valid_timeouts(timeouts: dict[str, int]) -> None:
    job = job_from_document(task_spec(Timeouts=timeouts))
    assert job.task.timeouts is not None
    assert job.task.timeouts.queue_timeout == timeouts.get("QueueTimeout", 0)
    assert job.task.timeouts.execution_timeout == timeouts.get("ExecutionTimeout", 0)
    assert job.task.timeouts.total_timeout == timeouts.get("TotalTimeout", 0)


def test_execution_plus_queue_timeout_must_fit_in_total() -> None:
    timeouts = {"QueueTimeout": 5, "ExecutionTimeout": 6, "TotalTimeout": 10}
    problems = problems_of(task_spec(Timeouts=timeouts))
    assert_problem(problems, "Tasks[0].Timeouts", "TotalTimeout", "11", "10")


@pytest.mark.parametrize("field", ["QueueTimeout", "ExecutionTimeout", "TotalTimeout"])
def test_negative_timeout_is_an_error(field: str) -> None:
    problems = problems_of(task_spec(Timeouts={field: -1}))
    assert_problem(problems, f"Tasks[0].Timeouts.{field}", "-1")


@pytest.mark.parametrize("field", ["QueueTimeout", "ExecutionTimeout", "TotalTimeout"])
def test_timeout_must_be_a_whole_number(field: str) -> None:
    problems = problems_of(task_spec(Timeouts={field: "soon"}))
    assert_problem(problems, f"Tasks[0].Timeouts.{field}", '"soon"', "whole number")


# --- Count and Priority --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [-1, "-1", -100])
def test_negative_count_is_an_error(count: object) -> None:
    assert_problem(problems_of(spec(Count=count)), "Count", "-1" if count != -100 else "-100")


@pytest.mark.parametrize("count", [2.5, "two", True, [1], {"a": 1}])
def test_count_must_be_a_whole_number(count: object) -> None:
    assert_problem(problems_of(spec(Count=count)), "Count")


def test_count_as_string_or_integral_float() -> None:
    assert job_from_document(spec(Count="2")).count == 2
    assert job_from_document(spec(Count=2.0)).count == 2
    assert job_from_document(spec(Count=" 3 ")).count == 3


def test_huge_count_is_an_error_not_a_crash() -> None:
    problems = problems_of(spec(Count="9" * 30))
    assert_problem(problems, "Count")


def test_count_with_more_digits_than_python_converts_is_a_spec_error() -> None:
    # Python refuses int() of strings over 4300 digits with ValueError; a spec must get a
    # SpecError at Count instead.
    problems = problems_of(spec(Count="1" * 5000))
    assert_problem(problems, "Count")


@pytest.mark.parametrize("priority", [-5, 0, 7, "12"])
def test_priority_is_an_integer(priority: object) -> None:
    assert job_from_document(spec(Priority=priority)).priority == int(priority)  # type: ignore[call-overload]


# --- NUL bytes -----------------------------------------------------------------------------------


def _set(path: tuple[object, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for step in path[:-1]:
            if isinstance(target, dict) and step not in target:
                target[step] = {}
            target = target[step]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (("Name",), "Name"),
        (("Namespace",), "Namespace"),
        (("Labels", "team"), 'Labels["team"]'),
        (("Meta", "purpose"), 'Meta["purpose"]'),
        (("Tasks", 0, "Name"), "Tasks[0].Name"),
        (("Tasks", 0, "Engine", "Params", "Image"), "Tasks[0].Engine.Params.Image"),
        (("Tasks", 0, "Engine", "Params", "Parameters"), "Tasks[0].Engine.Params.Parameters[1]"),
        (("Tasks", 0, "Env", "HOME"), 'Tasks[0].Env["HOME"]'),
        (("Tasks", 0, "Resources", "Memory"), "Tasks[0].Resources.Memory"),
        (("Constraints",), "Constraints[0].Values[0]"),
    ],
)
def test_nul_bytes_are_errors_at_their_path(where: tuple[object, ...], path: str) -> None:
    bad = "bad\x00value"
    value: object = bad
    if where[-1] == "Parameters":
        value = ["ok", bad]
    elif where == ("Constraints",):
        value = [{"Key": "k", "Operator": "=", "Values": [bad]}]
    document = spec(_set(where, value))
    problems = problems_of(document)
    assert_problem(problems, path, "NUL", only=False)


def test_nul_byte_in_a_map_key_is_an_error_at_the_map() -> None:
    problems = problems_of(spec(Labels={"te\x00am": "data"}))
    assert_problem(problems, "Labels", "NUL")


def test_nul_byte_through_yaml() -> None:
    problems = yaml_problems(BASE_YAML.replace("Name: rules", 'Name: "ru\\0les"'))
    assert_problem(problems, "Name", "NUL")


# --- engines -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "suggestion"), [("dockr", "docker"), ("Dokcer", "docker"), ("wasn", "wasm")]
)
def test_unknown_engine_type_says_did_you_mean(given: str, suggestion: str) -> None:
    problems = problems_of(task_spec(Engine={"Type": given}))
    assert_problem(problems, "Tasks[0].Engine.Type", shown(given), f'did you mean "{suggestion}"')


def test_unknown_engine_type_far_miss() -> None:
    problems = problems_of(task_spec(Engine={"Type": "podman"}))
    message = assert_problem(problems, "Tasks[0].Engine.Type", '"podman"', "docker", "wasm")
    assert "did you mean" not in message


@pytest.mark.parametrize(("given", "expected"), [("Docker", "docker"), ("WASM", "wasm")])
def test_engine_type_is_case_insensitive(given: str, expected: str) -> None:
    engine = docker_params() if expected == "docker" else copy.deepcopy(WASM_ENGINE)
    engine["Type"] = given
    job = job_from_document(task_spec(Engine=engine))
    assert job.task.engine is not None
    assert job.task.engine.type == expected


def test_engine_type_is_required() -> None:
    problems = problems_of(task_spec(Engine={"Params": {"Image": "x"}}))
    assert_problem(problems, "Tasks[0].Engine.Type", "required")


def test_engine_is_required() -> None:
    assert_problem(problems_of(task_spec(Engine=None)), "Tasks[0].Engine", "required")


@pytest.mark.parametrize("params", [{}, {"Image": ""}, {"Image": "  "}, None])
def test_docker_needs_an_image(params: dict[str, str] | None) -> None:
    engine: dict[str, Any] = {"Type": "docker"}
    if params is not None:
        engine["Params"] = params
    problems = problems_of(task_spec(Engine=engine))
    assert_problem(problems, "Tasks[0].Engine.Params.Image", "required")


@pytest.mark.parametrize("params", [{}, {"EntryModule": ""}, {"EntryPoint": "_start"}])
def test_wasm_needs_an_entry_module(params: dict[str, str]) -> None:
    problems = problems_of(task_spec(Engine={"Type": "wasm", "Params": params}))
    assert_problem(problems, "Tasks[0].Engine.Params.EntryModule", "required")


def test_wasm_entry_module_url_must_be_http() -> None:
    engine = {"Type": "wasm", "Params": {"EntryModule": "ftp://x.org/m.wasm"}}
    problems = problems_of(task_spec(Engine=engine))
    assert_problem(problems, "Tasks[0].Engine.Params.EntryModule", '"ftp://x.org/m.wasm"', "http")


# --- input sources -------------------------------------------------------------------------------


def _input(target: str | None = "/data", source: dict[str, Any] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if target is not None:
        item["Target"] = target
    if source is not None:
        item["Source"] = source
    return item


IPFS_SOURCE = {"Type": "ipfs", "Params": {"CID": CID}}


@pytest.mark.parametrize(
    ("item", "path", "fragments"),
    [
        (_input(None, IPFS_SOURCE), "Tasks[0].InputSources[0].Target", ("required",)),
        (_input("", IPFS_SOURCE), "Tasks[0].InputSources[0].Target", ("required",)),
        (_input("data", IPFS_SOURCE), "Tasks[0].InputSources[0].Target", ('"data"', "absolute")),
        (_input("/data", None), "Tasks[0].InputSources[0].Source", ("required",)),
        (
            _input("/data", {"Type": "ipfz"}),
            "Tasks[0].InputSources[0].Source.Type",
            ('"ipfz"', 'did you mean "ipfs"'),
        ),
        (
            _input("/data", {"Params": {"CID": CID}}),
            "Tasks[0].InputSources[0].Source.Type",
            ("required",),
        ),
        (
            _input("/data", {"Type": "ipfs", "Params": {"CID": "hello"}}),
            "Tasks[0].InputSources[0].Source.Params.CID",
            ('"hello"', "not a CID"),
        ),
        (
            _input("/data", {"Type": "ipfs"}),
            "Tasks[0].InputSources[0].Source.Params.CID",
            ("required",),
        ),
        (
            _input("/data", {"Type": "urlDownload", "Params": {"URL": "ftp://x.org/a"}}),
            "Tasks[0].InputSources[0].Source.Params.URL",
            ('"ftp://x.org/a"', "http"),
        ),
        (
            _input("/data", {"Type": "urlDownload", "Params": {"URL": "example.com/a"}}),
            "Tasks[0].InputSources[0].Source.Params.URL",
            ('"example.com/a"', "http"),
        ),
        (
            _input("/data", {"Type": "urlDownload", "Params": {}}),
            "Tasks[0].InputSources[0].Source.Params.URL",
            ("required",),
        ),
        (
            _input("/data", {"Type": "inline", "Params": {"URL": "https://x.org/a"}}),
            "Tasks[0].InputSources[0].Source.Params.URL",
            ('"https://x.org/a"', "data:"),
        ),
        (
            _input("/data", {"Type": "localDirectory", "Params": {"SourcePath": "srv/data"}}),
            "Tasks[0].InputSources[0].Source.Params.SourcePath",
            ('"srv/data"', "absolute"),
        ),
        (
            _input("/data", {"Type": "localDirectory", "Params": {"SourcePath": "/srv/../etc"}}),
            "Tasks[0].InputSources[0].Source.Params.SourcePath",
            ('"/srv/../etc"', ".."),
        ),
        (
            _input("/data", {"Type": "s3", "Params": {"Key": "k"}}),
            "Tasks[0].InputSources[0].Source.Params.Bucket",
            ("required",),
        ),
        (
            _input(
                "/data",
                {"Type": "localDirectory", "Params": {"SourcePath": "/srv", "ReadWrite": "maybe"}},
            ),
            "Tasks[0].InputSources[0].Source.Params.ReadWrite",
            ('"maybe"', "true or false"),
        ),
    ],
    ids=[
        "no-target",
        "empty-target",
        "relative-target",
        "no-source",
        "unknown-type",
        "no-type",
        "bad-cid",
        "no-cid",
        "ftp-url",
        "no-scheme-url",
        "no-url",
        "inline-not-data",
        "relative-source-path",
        "dotdot-source-path",
        "s3-no-bucket",
        "bad-bool",
    ],
)
def test_input_source_rules(item: dict[str, Any], path: str, fragments: tuple[str, ...]) -> None:
    problems = problems_of(task_spec(InputSources=[item]))
    assert_problem(problems, path, *fragments)


def test_input_targets_must_be_unique() -> None:
    items = [
        _input("/data", IPFS_SOURCE),
        _input("/other", IPFS_SOURCE),
        _input("/data", IPFS_SOURCE),
    ]
    problems = problems_of(task_spec(InputSources=items))
    assert_problem(problems, "Tasks[0].InputSources[2].Target", '"/data"', "InputSources[0]")


@pytest.mark.parametrize(
    "source_type", ["ipfs", "IPFS", "urldownload", "UrlDownload", "localdirectory", "S3", "Inline"]
)
def test_input_source_type_is_case_insensitive(source_type: str) -> None:
    params = {
        "ipfs": {"CID": CID},
        "urldownload": {"URL": "https://x.org/a"},
        "localdirectory": {"SourcePath": "/srv"},
        "s3": {"Bucket": "b"},
        "inline": {"URL": "data:,hi"},
    }[source_type.lower()]
    job = job_from_document(
        task_spec(InputSources=[_input("/d", {"Type": source_type, "Params": params})])
    )
    source = job.task.input_sources[0].source
    assert source is not None
    canonical = {"urldownload": "urlDownload", "localdirectory": "localDirectory"}
    assert source.type == canonical.get(source_type.lower(), source_type.lower())


# --- resources -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("CPU", "0.0001", "finer than one millicore"),
        ("CPU", "lots", "not a CPU quantity"),
        ("Memory", "1 Gigs", "is not a size (examples: 512Mi, 1Gb"),
        ("Disk", "-1", "is not a size"),
        ("GPU", "1.5", "not a whole number of GPUs"),
        ("GPU", "-1", "not a whole number of GPUs"),
    ],
)
def test_bad_quantity_is_an_error_at_its_field(field: str, value: str, fragment: str) -> None:
    problems = problems_of(task_spec(Resources={field: value}))
    assert_problem(problems, f"Tasks[0].Resources.{field}", shown(value), fragment)


def test_memory_error_message_in_full() -> None:
    with pytest.raises(SpecError) as caught:
        job_from_document(task_spec(Resources={"Memory": "1 Gigs"}))
    assert str(caught.value) == (
        'Tasks[0].Resources.Memory: "1 Gigs" is not a size (examples: 512Mi, 1Gb, 1.5GB, 100mb)'
    )


@pytest.mark.parametrize(
    ("resources", "cpu", "memory", "disk", "gpu"),
    [
        ({"CPU": "250m", "Memory": "1Gb", "Disk": "100mb", "GPU": "0"}, 250, 2**30, 100 * 2**20, 0),
        ({"CPU": "0.25", "Memory": "4Gb"}, 250, 4 * 2**30, 0, 0),
        (
            {"CPU": 2, "Memory": "512Mi", "Disk": "1.5GB", "GPU": 1},
            2000,
            512 * 2**20,
            1610612736,
            1,
        ),
        ({"CPU": "", "Memory": 1024}, 0, 1024, 0, 0),
    ],
)
def test_quantities_in_a_spec(
    resources: dict[str, object], cpu: int, memory: int, disk: int, gpu: int
) -> None:
    job = job_from_document(task_spec(Resources=resources))
    parsed = job.task.resources
    assert parsed is not None
    assert (parsed.cpu_millicores, parsed.memory_bytes, parsed.disk_bytes, parsed.gpu_count) == (
        cpu,
        memory,
        disk,
        gpu,
    )


def test_gpu_as_a_non_integral_number_is_an_error() -> None:
    problems = problems_of(task_spec(Resources={"GPU": 1.5}))
    assert_problem(problems, "Tasks[0].Resources.GPU", "1.5", "GPUs")


# --- every error of a spec, together -------------------------------------------------------------

MANY_MISTAKES = """\
Name: many-mistakes
Type: batc
Count: -1
Constraints:
  - Key: cores
    Operator: gt
    Values: [lots]
Tasks:
  - Name: main
    Engine:
      Type: docker
      Params:
        Image: ubuntu
        Imag: typo
    InputSources:
      - Target: data
        Source:
          Type: ipfs
          Params:
            CID: QmSYE8dVx6RTdDFFhBu51JjFG1fwwPdUJoXZ4ZNXvfoK2V
    ResultPaths:
      - Name: outputs
        Path: /outputs
    Resources:
      Memory: 1 Gigs
      CPU: 0.0001
    Network:
      Type: HTTP
    Timeouts:
      QueueTimeout: 50
      ExecutionTimeout: 60
      TotalTimeout: 100
"""

MANY_EXPECTED = {
    "Type": ('"batc"', 'did you mean "batch"'),
    "Count": ("-1",),
    "Constraints[0].Values[0]": ('"lots"', "not an integer"),
    "Tasks[0].Engine.Params.Imag": ("unknown field", 'did you mean "Image"'),
    "Tasks[0].InputSources[0].Target": ('"data"', "absolute"),
    "Tasks[0].ResultPaths": ("Publisher",),
    "Tasks[0].Resources.Memory": ('"1 Gigs" is not a size (examples: 512Mi, 1Gb',),
    "Tasks[0].Resources.CPU": ('"0.0001"', "millicore"),
    "Tasks[0].Network.Domains": ("at least one domain",),
    "Tasks[0].Timeouts": ("TotalTimeout", "110", "100"),
}


def test_every_problem_of_a_spec_is_reported_together() -> None:
    with pytest.raises(SpecError) as caught:
        load_job(MANY_MISTAKES)
    problems = [(problem.path, problem.message) for problem in caught.value.problems]
    assert sorted(path for path, _ in problems) == sorted(MANY_EXPECTED), problems
    for path, fragments in MANY_EXPECTED.items():
        assert_problem(problems, path, *fragments, only=False)
    text = str(caught.value)
    assert text.startswith(f"{len(MANY_EXPECTED)} problems:")
    for path, message in problems:
        assert f"{path}: {message}" in text


def test_a_single_problem_is_shown_as_path_and_message() -> None:
    with pytest.raises(SpecError) as caught:
        job_from_document(spec(Type="batc"))
    assert str(caught.value).startswith('Type: "batc" is not a job type')


# --- scalars as Go's YAML decoder reads them -----------------------------------------------------


def test_on_stays_a_string() -> None:
    text = (
        BASE_YAML
        + "Constraints:\n  - Key: flag\n    Operator: in\n    Values: [on, off, yes, no, true, y]\n"
    )
    job = load_job(text)
    assert job.constraints[0].values == ("on", "off", "yes", "no", "true", "y")


@pytest.mark.parametrize(
    ("written", "image"), [("1.10", "1.10"), ("010", "010"), ("1e3", "1e3"), ("0x1F", "0x1F")]
)
def test_number_looking_image_stays_as_written(written: str, image: str) -> None:
    job = load_job(BASE_YAML.replace("Image: ubuntu:24.04", f"Image: {written}"))
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, DockerParams)
    assert job.task.engine.params.image == image


@pytest.mark.parametrize("written", ['"2"', "2", "'2'", "+2"])
def test_count_as_text_or_number(written: str) -> None:
    assert load_job(BASE_YAML + f"Count: {written}\n").count == 2


@pytest.mark.parametrize(
    ("written", "value"), [("true", True), ("false", False), ("True", True), ('"true"', True)]
)
def test_booleans(written: str, value: bool) -> None:
    text = BASE_YAML + (
        "    InputSources:\n"
        "      - Target: /state\n"
        "        Source:\n"
        "          Type: localDirectory\n"
        "          Params:\n"
        "            SourcePath: /srv/state\n"
        f"            ReadWrite: {written}\n"
    )
    params = load_job(text).task.input_sources[0].source.params  # type: ignore[union-attr]
    assert isinstance(params, LocalDirectoryParams)
    assert params.read_write is value


@pytest.mark.parametrize("null", ["null", "~", "", "Null", "NULL"])
def test_null_means_absent(null: str) -> None:
    text = BASE_YAML.replace(
        "Name: rules", f"Name: rules\nNamespace: {null}\nCount: {null}\nPriority: {null}"
    )
    text += f"    Network: {null}\n    Resources: {null}\n"
    job = load_job(text)
    assert job.namespace == "default"
    assert job.count == 1
    assert job.priority == 0
    assert job.task.network is not None
    assert job.task.network.type == "None"
    assert job.task.resources is None


def test_null_publisher_is_absent() -> None:
    text = BASE_YAML + "    Publisher: null\n    ResultPaths:\n      - Name: o\n        Path: /o\n"
    assert_problem(yaml_problems(text), "Tasks[0].ResultPaths", "Publisher")


def test_quoted_null_is_a_string() -> None:
    job = load_job(BASE_YAML.replace("Name: rules", 'Name: "null"'))
    assert job.name == "null"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (BASE_YAML + "Type: ops\n", '"Type"'),
        (BASE_YAML.replace("      Params:", "      Type: wasm\n      Params:"), '"Type"'),
        ("Name: a\nName: a\n", '"Name"'),
    ],
)
def test_duplicate_yaml_keys_are_an_error(text: str, key: str) -> None:
    problems = yaml_problems(text)
    assert len(problems) == 1, problems
    path, message = problems[0]
    assert path == ""
    assert "twice" in message
    assert key in message


@pytest.mark.parametrize("key", ["Job", "job", "JOB"])
def test_job_envelope_is_accepted(key: str) -> None:
    expected = job_from_document(spec())
    assert job_from_document({key: spec()}) == expected
    assert load_job(json.dumps({key: spec()})) == expected
    indented = "\n".join("  " + line for line in BASE_YAML.splitlines())
    assert load_job(f"{key}:\n{indented}\n") == expected


def test_json_is_accepted() -> None:
    expected = job_from_document(spec())
    text = json.dumps(spec())
    assert load_job(text) == expected
    assert load_job(text.encode()) == expected
    assert load_job("  \n" + text) == expected
    assert load_job(text, spec_format="json") == expected
    assert load_job(BASE_YAML, spec_format="yaml") == expected
    assert load_job(BASE_YAML) == expected


def test_invalid_json_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        load_job('{"Type": "batch",')
    assert caught.value.problems[0].path == ""
    assert "JSON" in caught.value.problems[0].message


def test_invalid_yaml_is_a_spec_error_with_a_line() -> None:
    with pytest.raises(SpecError) as caught:
        load_job("Type: batch\nTasks: [\n")
    assert caught.value.problems[0].path == ""
    assert "YAML" in caught.value.problems[0].message
    assert "line" in caught.value.problems[0].message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "null\n"])
def test_empty_spec_is_an_error(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_job(text)
    assert "empty" in caught.value.problems[0].message


@pytest.mark.parametrize("text", ["just text\n", "- a\n- b\n", "42\n", "[]"])
def test_a_spec_must_be_a_mapping(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_job(text)
    assert caught.value.problems[0].path == ""
    assert "mapping" in caught.value.problems[0].message


def test_a_list_where_a_mapping_belongs() -> None:
    problems = problems_of(task_spec(Resources=["1"]))
    assert_problem(problems, "Tasks[0].Resources", "mapping", "a list")


def test_a_mapping_where_a_string_belongs() -> None:
    problems = problems_of(spec(Name={"first": "x"}))
    assert_problem(problems, "Name", "string", "a mapping")


def test_utf8_bom_is_accepted() -> None:
    assert load_job(b"\xef\xbb\xbf" + BASE_YAML.encode()) == load_job(BASE_YAML)


def test_non_utf8_bytes_are_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        load_job(b"Name: \xff\xfe\n")
    assert "UTF-8" in caught.value.problems[0].message


# --- inputs that must give a SpecError, not another exception ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Type: batch\nCount: !!int abc\n",
        "Type: batch\nCount: !!int\n",
        "Type: batch\nCount: !!float abc\n",
        "Type: batch\nCount: !!bool maybe\n",
        "Type: batch\nName: !!timestamp yesterday\n",
        "Type: batch\nCount: !!int " + "1" * 5000 + "\n",
        "Type: batch\nName: !!python/object:os.system x\n",
        "Type: batch\nName: !!binary '@@@'\n",
    ],
    ids=["int", "int-empty", "float", "bool", "timestamp", "int-5000-digits", "python", "binary"],
)
def test_explicit_yaml_tags_give_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_job(text)
    assert caught.value.problems


@pytest.mark.parametrize(
    "text",
    [
        BASE_YAML + "Name: !!timestamp 2001-12-14\n",
        BASE_YAML.replace("Name: rules", "Name: !!binary aGVsbG8="),
        BASE_YAML.replace("Name: rules", "Name: !!set {a, b}"),
    ],
    ids=["timestamp", "binary", "set"],
)
def test_explicit_yaml_tags_of_the_wrong_type(text: str) -> None:
    with pytest.raises(SpecError):
        load_job(text)


def test_json_with_a_lone_surrogate_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        load_job('{"Name": "\ud800", "Type": "batch"}')


def test_yaml_with_a_lone_surrogate_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        load_job("Name: \ud800\nType: batch\n")
