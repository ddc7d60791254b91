"""`meshnode job validate` and `meshnode job run --dry-run`, as a user runs them: a real
process on real files, checking exit codes, standard output and standard error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest
import yaml

REPO: Final = Path(__file__).resolve().parents[2]
EXAMPLES: Final = sorted((REPO / "examples").glob("*.yaml"))

VALID: Final = """\
Type: batch
Tasks:
  - Engine:
      Type: docker
      Params:
        Image: busybox
"""

INVALID: Final = """\
Type: batch
Count: -2
Tasks:
  - Name: main
    Engine:
      Type: docker
      Params:
        Image: busybox
    Resources:
      Memory: 1 Gigs
    Network:
      Type: HTTP
    ResultPaths:
      - Name: out
        Path: /outputs
"""

TEMPLATE: Final = """\
Type: ops
Tasks:
  - Engine:
      Type: docker
      Params:
        Image: {{.image}}
        Parameters: ["{{or (index . "greeting") "hi"}}"]
"""


def meshnode(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("meshnode", path=str(Path(sys.executable).parent))
    assert executable, "the meshnode console script is not installed next to this Python"
    return subprocess.run(
        [executable, *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


WriteSpec = Callable[..., str]


@pytest.fixture
def spec_file(tmp_path: Path) -> WriteSpec:
    def write(text: str, name: str = "job.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_examples_exist_for_every_job_type_and_engine() -> None:
    kinds = set()
    for path in EXAMPLES:
        document = yaml.safe_load(path.read_text().replace("{{", "").replace("}}", ""))
        kinds.add((document["Type"], document["Tasks"][0]["Engine"]["Type"]))
    for job_type in ("batch", "ops", "daemon", "service"):
        for engine in ("docker", "wasm"):
            assert (job_type, engine) in kinds


def test_validate_accepts_every_example() -> None:
    result = meshnode("job", "validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid ") == len(EXAMPLES)


def test_validate_reports_every_problem_with_its_path(spec_file: WriteSpec) -> None:
    path = spec_file(INVALID)
    result = meshnode("job", "validate", path)
    assert result.returncode == 1
    assert f"{path}: 4 problems:" in result.stderr
    assert "Tasks[0].ResultPaths: results need somewhere to go" in result.stderr
    assert 'Count: "-2" must be ≥ 0' in result.stderr
    assert 'Tasks[0].Resources.Memory: "1 Gigs" is not a size (examples: 512Mi, 1Gb' in (
        result.stderr
    )
    assert "Tasks[0].Network.Domains: network type HTTP needs at least one domain" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_validate_checks_all_files_and_fails_if_any_is_invalid(spec_file: WriteSpec) -> None:
    good = spec_file(VALID, "good.yaml")
    bad = spec_file(INVALID, "bad.yaml")
    result = meshnode("job", "validate", good, bad)
    assert result.returncode == 1
    assert f"{good}: valid batch job" in result.stdout
    assert f"{bad}: 4 problems" in result.stderr
    assert "1 of 2 specs invalid" in result.stderr


def test_validate_names_a_missing_file() -> None:
    result = meshnode("job", "validate", "/nonexistent/job.yaml")
    assert result.returncode != 0
    assert "/nonexistent/job.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reads_standard_input() -> None:
    result = meshnode("job", "validate", "-", stdin=VALID)
    assert result.returncode == 0, result.stderr
    assert "-: valid batch job" in result.stdout


def test_validate_reports_yaml_syntax_errors_with_line_and_column(spec_file: WriteSpec) -> None:
    path = spec_file("Type: batch\nTasks: [\n  - a: b\n")
    result = meshnode("job", "validate", path)
    assert result.returncode == 1
    assert f"{path}: not valid YAML: line " in result.stderr
    assert "column" in result.stderr


def test_templates_render_with_template_vars(spec_file: WriteSpec) -> None:
    path = spec_file(TEMPLATE)
    result = meshnode(
        "job", "run", "--dry-run", "--output", "json", path, "--template-vars", "image=busybox:1"
    )
    assert result.returncode == 0, result.stderr
    params = json.loads(result.stdout)["Tasks"][0]["Engine"]["Params"]
    assert params == {"Image": "busybox:1", "Parameters": ["hi"]}


def test_template_vars_are_comma_separated_and_repeatable(spec_file: WriteSpec) -> None:
    path = spec_file(TEMPLATE)
    result = meshnode(
        "job", "run", "--dry-run", "--output", "json", path,
        "--template-vars", "image=busybox,greeting=hello",
        "--template-vars", "unused=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Tasks"][0]["Engine"]["Params"]["Parameters"] == ["hello"]


def test_template_envs_take_matching_environment_variables(spec_file: WriteSpec) -> None:
    path = spec_file(TEMPLATE.replace(".image", ".MESHNODE_TEST_IMAGE"))
    result = meshnode(
        "job", "run", "--dry-run", "--output", "json", path, "--template-envs", "^MESHNODE_TEST_",
        env={"MESHNODE_TEST_IMAGE": "from-env:2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Tasks"][0]["Engine"]["Params"]["Image"] == "from-env:2"


def test_a_missing_template_variable_is_named(spec_file: WriteSpec) -> None:
    path = spec_file(TEMPLATE)
    result = meshnode("job", "validate", path)
    assert result.returncode == 1
    assert "image" in result.stderr
    assert "line 6" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_template_reads_the_text_as_it_is(spec_file: WriteSpec) -> None:
    text = VALID.replace("Image: busybox", "Image: '{{.image}}'")
    path = spec_file(text)
    result = meshnode("job", "run", "--dry-run", "--output", "json", path, "--no-template")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Tasks"][0]["Engine"]["Params"]["Image"] == "{{.image}}"


def test_dry_run_prints_the_normalized_spec_as_yaml(spec_file: WriteSpec) -> None:
    result = meshnode("job", "run", "--dry-run", spec_file(VALID))
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["Namespace"] == "default"
    assert printed["Count"] == 1
    assert printed["Tasks"][0]["Name"] == "main"
    assert printed["Tasks"][0]["Network"] == {"Type": "None"}


def test_dry_run_output_is_a_valid_spec_that_reads_back_the_same(spec_file: WriteSpec) -> None:
    first = meshnode("job", "run", "--dry-run", str(REPO / "examples" / "batch-docker.yaml"))
    assert first.returncode == 0, first.stderr
    again = meshnode("job", "run", "--dry-run", spec_file(first.stdout, "again.yaml"))
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


def test_run_without_dry_run_says_what_is_missing(spec_file: WriteSpec) -> None:
    result = meshnode("job", "run", spec_file(VALID))
    assert result.returncode == 2
    assert "--dry-run" in result.stderr


def test_unknown_output_format_is_a_usage_error(spec_file: WriteSpec) -> None:
    result = meshnode("job", "run", "--dry-run", "--output", "xml", spec_file(VALID))
    assert result.returncode == 2
    assert "xml" in result.stderr


def test_version() -> None:
    result = meshnode("version")
    assert result.returncode == 0
    assert result.stdout.startswith("meshnode ")
