"""Reference specs and the project's examples: they parse, and parse → encode → parse is the
identity, through YAML and through JSON.

The four reference specs (Bacalhau's job-type examples) are copied verbatim into
`reference_jobs/` so the tests run from a fresh clone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshnode.spec import (
    DockerParams,
    IpfsSourceParams,
    Job,
    LocalDirectoryParams,
    encode_job,
    job_from_document,
    load_job,
)

REFERENCE_DIR = Path(__file__).parent / "reference_jobs"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

DAEMON_VARIABLES = {
    "query": "q",
    "start-time": "1",
    "end-time": "2",
    "OpenSearchEndpoint": "http://os",
    "AccessLogBucket": "b",
    "AWSRegion": "eu-west-1",
}
OPS_VARIABLES = {"query": "q"}

# name → template variables (None: a plain spec, not a template)
REFERENCE_SPECS: dict[str, dict[str, str] | None] = {
    "batch": None,
    "service": None,
    "ops": OPS_VARIABLES,
    "daemon": DAEMON_VARIABLES,
}


def load_reference(name: str) -> Job:
    text = (REFERENCE_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    return load_job(text, template_variables=REFERENCE_SPECS[name])


def assert_round_trips(job: Job) -> None:
    as_yaml = encode_job(job)
    assert load_job(as_yaml) == job, as_yaml
    assert load_job(as_yaml, spec_format="yaml") == job
    # Encoding is stable: the re-read spec encodes to the same text.
    assert encode_job(load_job(as_yaml)) == as_yaml

    as_json = encode_job(job, spec_format="json")
    assert load_job(as_json) == job, as_json
    assert load_job(as_json, spec_format="json") == job
    assert load_job(as_json.encode()) == job
    assert encode_job(load_job(as_json), spec_format="json") == as_json

    # Each encoding is a valid document of its kind, with Bacalhau's spellings.
    decoded_yaml = yaml.safe_load(as_yaml)
    decoded_json = json.loads(as_json)
    for document in (decoded_yaml, decoded_json):
        assert isinstance(document, dict)
        assert {"Type", "Tasks"} <= set(document)
        assert "Engine" in document["Tasks"][0]


def test_reference_directory_holds_the_four_specs() -> None:
    assert sorted(path.stem for path in REFERENCE_DIR.glob("*.yaml")) == sorted(REFERENCE_SPECS)


@pytest.mark.parametrize("name", sorted(REFERENCE_SPECS))
def test_reference_spec_parses(name: str) -> None:
    job = load_reference(name)
    assert job.type == name
    assert len(job.tasks) == 1


@pytest.mark.parametrize("name", sorted(REFERENCE_SPECS))
def test_reference_spec_round_trips(name: str) -> None:
    assert_round_trips(load_reference(name))


def test_batch_reference_values() -> None:
    job = load_reference("batch")
    assert job.name == "Batch Job Example"
    assert (job.type, job.namespace, job.priority, job.count) == ("batch", "default", 100, 2)
    assert job.meta == {
        "Job purpose": "Provide detailed example of the batch job",
        "Meta purpose": "Describe the job",
    }
    assert job.labels == {"Some option": "Some text", "Some other option": "Some other text"}
    (constraint,) = job.constraints
    assert (constraint.key, constraint.operator, constraint.values) == (
        "Operating-System",
        "=",
        ("linux",),
    )
    task = job.task
    assert task.name == "Important Calculations"
    assert task.engine is not None
    assert task.engine.type == "docker"
    assert task.engine.params == DockerParams(
        image="alek5eyk/batchjobexample:1.1",
        entrypoint=None,
        parameters=("python", "supercalc.py", "5", "/outputs/result.txt"),
        environment_variables=("DEFAULT_USER_NAME=root", "API_KEY=none"),
        working_directory="",
    )
    assert task.meta == {"Task goal": "show how to create declarative descriptions"}
    assert task.publisher is not None
    assert task.publisher.type == "ipfs"
    (source,) = task.input_sources
    assert source.target == "/data"
    assert source.source is not None
    assert source.source.type == "ipfs"
    assert source.source.params == IpfsSourceParams(
        cid="QmSYE8dVx6RTdDFFhBu51JjFG1fwwPdUJoXZ4ZNXvfoK2V"
    )
    assert [(r.name, r.path) for r in task.result_paths] == [("outputs", "/outputs")]
    assert task.resources is not None
    assert task.resources.cpu_millicores == 250
    assert task.resources.memory_bytes == 2**30
    assert task.resources.disk_bytes == 100 * 2**20
    assert task.resources.gpu_count == 0
    assert task.network is not None
    assert (task.network.type, task.network.domains) == ("HTTP", ("example.com", "ghcr.io"))
    assert task.timeouts is not None
    assert (
        task.timeouts.queue_timeout,
        task.timeouts.execution_timeout,
        task.timeouts.total_timeout,
    ) == (101, 0, 301)


def test_service_reference_values() -> None:
    job = load_reference("service")
    assert (job.name, job.type, job.namespace, job.count) == (
        "Kinesis Consumer",
        "service",
        "service",
        1,
    )
    assert [(c.key, c.operator, c.values) for c in job.constraints] == [
        ("Architecture", "=", ("arm64",)),
        ("region", "=", ("us-west-2",)),
    ]
    task = job.task
    assert task.resources is not None
    assert task.resources.memory_bytes == 4 * 2**30
    state = task.input_sources[1].source
    assert state is not None
    assert state.params == LocalDirectoryParams(
        source_path="/data/log-orchestration/state", read_write=True
    )
    assert task.network is not None
    assert task.network.type == "Full"


def test_daemon_reference_values() -> None:
    job = load_reference("daemon")
    assert (job.name, job.type, job.namespace, job.count) == ("Logstash", "daemon", "logging", 0)
    assert job.task.engine is not None
    params = job.task.engine.params
    assert isinstance(params, DockerParams)
    assert params.parameters == ("--query", "q", "--start-time", "1", "--end-time", "2")
    assert params.environment_variables == (
        "OPENSEARCH_ENDPOINT=http://os",
        "S3_BUCKET=b",
        "AWS_REGION=eu-west-1",
        "AGGREGATE_DURATION=10",
        "S3_TIME_FILE=60",
    )


def test_ops_reference_values() -> None:
    # start-time and end-time are optional: `{{or (index . "start-time") ""}}` renders an
    # empty plain scalar, which Go's YAML decoder reads into a []string as "".
    job = load_reference("ops")
    assert (job.name, job.type, job.namespace, job.count) == (
        "Live logs processing",
        "ops",
        "logging",
        0,
    )
    assert job.task.engine is not None
    params = job.task.engine.params
    assert isinstance(params, DockerParams)
    assert params.parameters == ("--query", "q", "--start-time", "", "--end-time", "")


def test_ops_reference_with_every_variable() -> None:
    text = (REFERENCE_DIR / "ops.yaml").read_text(encoding="utf-8")
    job = load_job(text, template_variables=DAEMON_VARIABLES)
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, DockerParams)
    assert job.task.engine.params.parameters == (
        "--query",
        "q",
        "--start-time",
        "1",
        "--end-time",
        "2",
    )
    assert_round_trips(job)


TRICKY_STRINGS = [
    "\x85",  # NEL: a line break to YAML
    "a\x85b",
    "\u2028",
    "a\u2029b",
    "\r",
    "a\rb",
    "\t",
    " lead",
    "trail ",
    "a\nb",
    "a\n",
    "'",
    '"',
    "#",
    "- x",
    "null",
    "~",
    "on",
    "yes",
    "1.10",
    "0x1F",
    "2001-12-14",
    "{a}",
    "[a]",
    "*a",
    "&a",
    "!tag",
    "%x",
    "@x",
    "`x",
    "\ufeff",
    "é 🙂",
    "a: b",
    "a #b",
    "---",
    "...",
    "\x1b",
    "\x7f",
    "\xa0",
    "x" * 150,
    "a  b " * 40,
]


@pytest.mark.parametrize("text", TRICKY_STRINGS, ids=[ascii(text)[:30] for text in TRICKY_STRINGS])
def test_strings_round_trip_as_written(text: str) -> None:
    document = {
        "Name": text,
        "Type": "batch",
        "Meta": {text: text},
        "Tasks": [
            {
                "Engine": {
                    "Type": "docker",
                    "Params": {"Image": "busybox", "Parameters": [text, "end"]},
                }
            }
        ],
    }
    job = job_from_document(document)
    assert job.name == text
    assert job.meta == {text: text}
    assert job.task.engine is not None
    assert isinstance(job.task.engine.params, DockerParams)
    assert job.task.engine.params.parameters == (text, "end")
    assert_round_trips(job)


# --- the project's examples ----------------------------------------------------------------------


EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def load_example(path: Path) -> Job:
    text = path.read_text(encoding="utf-8")
    variables: dict[str, str] | None = {} if "template" in path.name else None
    return load_job(text, template_variables=variables)


def test_there_are_examples() -> None:
    assert EXAMPLES, f"no example specs (*.yaml) in {EXAMPLES_DIR}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_parses_and_round_trips(path: Path) -> None:
    job = load_example(path)
    assert job.type in ("batch", "ops", "daemon", "service")
    assert len(job.tasks) == 1
    assert_round_trips(job)
