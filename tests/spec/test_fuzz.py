"""Properties of the spec reader: whatever it is given, it returns a Job or raises a
SpecError with problems, never any other exception; an accepted spec round-trips."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.spec import Job, SpecError, encode_job, job_from_document, load_job

FIELD_NAMES = [
    "Job",
    "Name",
    "Type",
    "Namespace",
    "Priority",
    "Count",
    "Meta",
    "Labels",
    "Tasks",
    "Engine",
    "Params",
    "Image",
    "Entrypoint",
    "Parameters",
    "EnvironmentVariables",
    "EntryModule",
    "EntryPoint",
    "Resources",
    "CPU",
    "Memory",
    "Disk",
    "GPU",
    "Network",
    "Domains",
    "Timeouts",
    "QueueTimeout",
    "ExecutionTimeout",
    "TotalTimeout",
    "InputSources",
    "Source",
    "Target",
    "CID",
    "URL",
    "SourcePath",
    "ReadWrite",
    "Bucket",
    "Constraints",
    "Key",
    "Operator",
    "Values",
    "Publisher",
    "ResultPaths",
    "Path",
    "Env",
]

INTERESTING_TEXT = [
    "batch",
    "ops",
    "daemon",
    "service",
    "docker",
    "wasm",
    "ipfs",
    "s3",
    "local",
    "noop",
    "urlDownload",
    "inline",
    "localDirectory",
    "HTTP",
    "Full",
    "None",
    "250m",
    "0.0001",
    "1Gb",
    "1 Gigs",
    "512Mi",
    "-1",
    "1.5",
    "0",
    "2",
    "/data",
    "data",
    "/outputs",
    "example.com",
    ".example.com",
    "https://example.com/a",
    "data:,hi",
    "QmSYE8dVx6RTdDFFhBu51JjFG1fwwPdUJoXZ4ZNXvfoK2V",
    "=",
    "in",
    "exists",
    "gt",
    "on",
    "true",
    "null",
    "~",
    "",
    " ",
    "A = b",
    "a\x00b",
    "{{.x}}",
]

keys = st.one_of(
    st.sampled_from(FIELD_NAMES),
    st.sampled_from([name.lower() for name in FIELD_NAMES]),
    st.text(max_size=10),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from(INTERESTING_TEXT),
    st.text(max_size=20),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)


def check(data: str | bytes, **kwargs: Any) -> Job | None:
    """Load; a Job or a SpecError with problems are the only acceptable outcomes."""
    try:
        job = load_job(data, **kwargs)
    except SpecError as error:
        assert_good_error(error)
        return None
    assert isinstance(job, Job)
    assert len(job.tasks) == 1
    return job


def check_document(document: object) -> Job | None:
    try:
        job = job_from_document(document)
    except SpecError as error:
        assert_good_error(error)
        return None
    assert isinstance(job, Job)
    assert len(job.tasks) == 1
    return job


def assert_good_error(error: SpecError) -> None:
    assert error.problems, "a SpecError without problems"
    for problem in error.problems:
        assert isinstance(problem.path, str)
        assert isinstance(problem.message, str)
        assert problem.message.strip(), f"empty message at {problem.path!r}"
    assert str(error)


def assert_round_trips(job: Job) -> None:
    as_yaml = encode_job(job)
    assert load_job(as_yaml) == job, as_yaml
    as_json = encode_job(job, spec_format="json")
    assert load_job(as_json) == job, as_json


# --- arbitrary input ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["yaml", "json"]))
def test_arbitrary_bytes_in_a_given_format(data: bytes, spec_format: str) -> None:
    check(data, spec_format=spec_format)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_yaml_documents(document: object) -> None:
    text = yaml.safe_dump(document, allow_unicode=True)
    job = check(text)
    if job is not None:
        assert_round_trips(job)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_json_documents(document: object) -> None:
    text = json.dumps(document)
    job = check(text)
    if job is not None:
        assert_round_trips(job)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, documents, max_size=8))
def test_arbitrary_top_level_mappings(document: dict[str, Any]) -> None:
    job = check_document(document)
    if job is not None:
        assert_round_trips(job)


YAML_TOKENS = [
    *(f"!!{tag} " for tag in ("int", "float", "bool", "str", "null", "binary", "timestamp")),
    *(f"!!{tag} " for tag in ("map", "seq", "set", "omap", "pairs", "merge", "python/none")),
    "!local ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "- ",
    "? ",
    "\n",
    "\n  ",
    "\n    ",
    "'",
    '"',
    "#",
    "|\n",
    ">\n",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    *FIELD_NAMES[:12],
    "abc",
    "1",
    "-1",
    "0x1f",
    "1.5",
    "1e400",
    "yes",
    "null",
    "2001-12-14",
    "2001-13-45T99:99",
    ".nan",
    "=",
    "aGVsbG8=",
]
yaml_soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(yaml_soup)
def test_yaml_token_soup(text: str) -> None:
    # Tags, anchors, aliases, merges and flow syntax in random order.
    check(text)


@settings(max_examples=150, deadline=None)
@given(yaml_soup, st.sampled_from(FIELD_NAMES[:12]))
def test_yaml_token_soup_as_a_field_value(soup: str, field: str) -> None:
    base = "Type: batch\nTasks:\n  - Engine:\n      Type: docker\n      Params: {Image: x}\n"
    check(base + f"{field}: {soup}\n")


# --- mutated valid specs ------------------------------------------------------------------------

VALID_SPECS: list[dict[str, Any]] = [
    {
        "Name": "docker-batch",
        "Type": "batch",
        "Count": 2,
        "Priority": 10,
        "Meta": {"purpose": "fuzz"},
        "Labels": {"team": "data"},
        "Constraints": [
            {"Key": "arch", "Operator": "=", "Values": ["arm64"]},
            {"Key": "cores", "Operator": "gt", "Values": ["2"]},
            {"Key": "gpu", "Operator": "exists"},
        ],
        "Tasks": [
            {
                "Name": "main",
                "Engine": {
                    "Type": "docker",
                    "Params": {
                        "Image": "ubuntu:24.04",
                        "Entrypoint": ["/bin/sh", "-c"],
                        "Parameters": ["echo hi > /outputs/a"],
                        "EnvironmentVariables": ["A = b", "C=d"],
                        "WorkingDirectory": "/work",
                    },
                },
                "Publisher": {"Type": "s3", "Params": {"Bucket": "results", "Key": "{jobID}"}},
                "Env": {"HOME": "/root"},
                "Meta": {"k": "v"},
                "InputSources": [
                    {
                        "Target": "/ipfs",
                        "Source": {
                            "Type": "ipfs",
                            "Params": {"CID": "QmSYE8dVx6RTdDFFhBu51JjFG1fwwPdUJoXZ4ZNXvfoK2V"},
                        },
                    },
                    {
                        "Target": "/local",
                        "Source": {
                            "Type": "localDirectory",
                            "Params": {"SourcePath": "/srv/data", "ReadWrite": True},
                        },
                    },
                    {
                        "Target": "/url",
                        "Source": {
                            "Type": "urlDownload",
                            "Params": {"URL": "https://example.com/a.csv"},
                        },
                    },
                ],
                "ResultPaths": [{"Name": "outputs", "Path": "/outputs"}],
                "Resources": {"CPU": "250m", "Memory": "1Gb", "Disk": "100mb", "GPU": "0"},
                "Network": {"Type": "HTTP", "Domains": ["example.com", ".example.org"]},
                "Timeouts": {"QueueTimeout": 10, "ExecutionTimeout": 20, "TotalTimeout": 60},
            }
        ],
    },
    {
        "Name": "wasm-service",
        "Type": "service",
        "Tasks": [
            {
                "Engine": {
                    "Type": "wasm",
                    "Params": {
                        "EntryModule": {
                            "Source": {"Type": "inline", "Params": {"URL": "data:,AGFzbQ=="}}
                        },
                        "Parameters": ["a", "b"],
                        "EnvironmentVariables": {"LOG": "info"},
                        "ImportModules": ["/opt/lib.wasm"],
                    },
                },
                "Publisher": {"Type": "local"},
                "ResultPaths": [{"Name": "o", "Path": "/o"}, {"Name": "p", "Path": "/p"}],
                "Network": {"Type": "Full"},
            }
        ],
    },
    {
        "Job": {
            "Type": "daemon",
            "Namespace": "fleet",
            "Tasks": [{"Engine": {"Type": "docker", "Params": {"Image": "busybox"}}}],
        }
    },
]

Step = str | int
Location = tuple[Step, ...]


def locations(value: object, here: Location = ()) -> list[Location]:
    """Every path to a value inside `value` (not the root)."""
    found: list[Location] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*here, key))
            found.extend(locations(item, (*here, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*here, index))
            found.extend(locations(item, (*here, index)))
    return found


def parent_of(document: Any, location: Location) -> Any:
    target = document
    for step in location[:-1]:
        target = target[step]
    return target


def change_case(key: str, how: str) -> str:
    return {"lower": key.lower(), "upper": key.upper(), "swap": key.swapcase()}[how]


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    document = copy.deepcopy(draw(st.sampled_from(VALID_SPECS)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        spots = locations(document)
        if not spots:
            break
        location = draw(st.sampled_from(spots))
        parent = parent_of(document, location)
        step = location[-1]
        action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "case"]))
        if action == "replace":
            parent[step] = draw(st.one_of(documents, st.sampled_from(INTERESTING_TEXT)))
        elif action == "delete":
            del parent[step]
        elif action == "duplicate":
            lists = [spot for spot in spots if isinstance(parent_of(document, spot), list)]
            if lists:
                location = draw(st.sampled_from(lists))
                items = parent_of(document, location)
                items.insert(draw(st.integers(0, len(items))), copy.deepcopy(items[location[-1]]))
        elif isinstance(parent, dict) and isinstance(step, str):
            new_key = change_case(step, draw(st.sampled_from(["lower", "upper", "swap"])))
            if new_key != step:
                parent[new_key] = parent.pop(step)
    return document


def test_the_unmutated_specs_are_valid() -> None:
    for document in VALID_SPECS:
        job = check_document(copy.deepcopy(document))
        assert job is not None, document
        assert_round_trips(job)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs(), st.sampled_from(["document", "yaml", "json"]))
def test_mutated_specs(document: dict[str, Any], how: str) -> None:
    if how == "document":
        job = check_document(document)
    elif how == "yaml":
        job = check(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
    else:
        job = check(json.dumps(document))
    if job is not None:
        assert_round_trips(job)


YAML_SENSITIVE = " \t\r\n\x85\u2028\u2029\ufeff\x1b\x7f'\"#:-?{}[],&*!|>%@`\\ab1.é🙂"
tricky_text = st.one_of(
    st.text(alphabet=st.sampled_from(list(YAML_SENSITIVE)), max_size=12),
    st.sampled_from(INTERESTING_TEXT),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(tricky_text, tricky_text, tricky_text, tricky_text)
def test_accepted_strings_round_trip(name: str, key: str, value: str, parameter: str) -> None:
    document = {
        "Name": name,
        "Type": "ops",
        "Meta": {key: value},
        "Tasks": [
            {
                "Engine": {
                    "Type": "docker",
                    "Params": {"Image": value + "x", "Parameters": [parameter]},
                }
            }
        ],
    }
    job = check_document(document)
    if job is not None:
        assert job.name == name
        assert_round_trips(job)


# --- hostile documents ---------------------------------------------------------------------------


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _wrap(text: str, field: str) -> str:
    return text + f"{field}: *l9\n"


def assert_fast_spec_error(data: str, seconds: float = 5.0) -> SpecError:
    started = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        load_job(data)
    elapsed = time.perf_counter() - started
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert_good_error(caught.value)
    return caught.value


HOSTILE: dict[str, Callable[[], str]] = {
    "billion-laughs": billion_laughs,
    "billion-laughs-in-tasks": lambda: _wrap(billion_laughs(), "Tasks"),
    "billion-laughs-in-constraints": lambda: _wrap(billion_laughs(), "Constraints"),
    "billion-laughs-in-meta": lambda: _wrap(billion_laughs(), "Meta"),
    "billion-laughs-as-a-task": lambda: (
        billion_laughs() + "Type: batch\nTasks:\n  - Engine:\n      Type: docker\n      Params:\n"
        "        Image: x\n        Parameters: *l9\n"
    ),
    "self-reference": lambda: "a: &a [*a]\n",
    "self-reference-as-tasks": lambda: "Type: batch\nTasks: &a [*a]\n",
    "self-reference-envelope": lambda: "&a {Job: *a}\n",
    "self-reference-mapping": lambda: "Type: batch\nTasks:\n  - &t\n    Engine: *t\n",
    "10000-brackets": lambda: "[" * 10_000,
    "10000-brackets-closed": lambda: "[" * 10_000 + "]" * 10_000,
    "10000-braces": lambda: "{a: " * 10_000,
    "10000-brackets-in-a-field": lambda: "Type: batch\nTasks: " + "[" * 10_000,
    "json-10000-brackets": lambda: '{"Tasks": ' + "[" * 10_000,
    "json-10000-brackets-closed": lambda: '{"Tasks": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "json-10000-objects": lambda: '{"a": ' * 10_000 + "1" + "}" * 10_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_documents_give_a_spec_error_quickly(name: str) -> None:
    assert_fast_spec_error(HOSTILE[name]())


def _input_sources(count: int) -> str:
    return json.dumps(
        {
            "Type": "batch",
            "Tasks": [
                {
                    "Engine": {"Type": "docker", "Params": {"Image": "x"}},
                    "InputSources": [{}] * count,
                }
            ],
        }
    )


@pytest.mark.timeout(60)
def test_problem_count_does_not_make_validation_quadratic() -> None:
    # 20,000 empty input sources (40,000 problems): linear validation takes about a second;
    # the quadratic version took over two minutes for 16,000, so the timeout catches it.
    with pytest.raises(SpecError) as caught:
        load_job(_input_sources(20_000))
    assert len(caught.value.problems) == 40_000
