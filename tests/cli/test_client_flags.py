"""The syntax of the CLI's flag values (`meshnode.cli.flags`): inputs, env, key=value lists,
allow-listed paths, and `meshnode start`'s flags mapped onto NodeConfig."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Final

import pytest

from meshnode.cli.flags import (
    FlagError,
    InputFlag,
    node_config_from_flags,
    parse_allowed_paths,
    parse_env,
    parse_input,
    parse_key_values,
    parse_result_path,
)

CWD: Final = PurePosixPath("/home/ana/project")


# --- -i/--input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data:/inputs", InputFlag("localDirectory", "/data", "/inputs")),
        ("/data:/inputs:rw", InputFlag("localDirectory", "/data", "/inputs", read_write=True)),
        ("/data:/inputs:ro", InputFlag("localDirectory", "/data", "/inputs")),
        ("./data:/in", InputFlag("localDirectory", "/home/ana/project/data", "/in")),
        ("../shared/x:/in/x", InputFlag("localDirectory", "/home/ana/shared/x", "/in/x")),
        (
            "https://example.com/a.csv:/inputs/a.csv",
            InputFlag("urlDownload", "https://example.com/a.csv", "/inputs/a.csv"),
        ),
        (
            "http://host:8080/data?x=1:/inputs",
            InputFlag("urlDownload", "http://host:8080/data?x=1", "/inputs"),
        ),
    ],
)
def test_input_syntax(text: str, expected: InputFlag) -> None:
    assert parse_input(text, cwd=CWD) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("/data", "SRC:TARGET"),
        ("/data:inputs", "SRC:TARGET"),
        (":/inputs", "SRC:TARGET"),
        ("https://example.com:8080/a.csv", "SRC:TARGET"),
        ("/data:/inputs/../etc", "plain absolute path"),
        ("/data:/inputs//x", "plain absolute path"),
        ("https://example.com/a:/inputs:rw", "read-only"),
        ("ipfs://Qm123:/inputs", "only local paths and http(s) URLs"),
    ],
)
def test_input_errors_name_the_flag_and_the_syntax(text: str, complaint: str) -> None:
    with pytest.raises(FlagError) as caught:
        parse_input(text, cwd=CWD)
    assert caught.value.flag == "--input"
    assert complaint in caught.value.message
    assert repr(text) in caught.value.message


# --- -e/--env, --labels, --result-path ---------------------------------------------------------


def test_env_takes_one_assignment_per_flag_and_keeps_commas_and_equals() -> None:
    assert parse_env(["A=1", "B=x,y", "C=k=v", "EMPTY=", "A=2"]) == {
        "A": "2",
        "B": "x,y",
        "C": "k=v",
        "EMPTY": "",
    }


@pytest.mark.parametrize("text", ["NOVALUE", "=1", "TWO WORDS=1"])
def test_env_rejects_what_is_not_name_equals_value(text: str) -> None:
    with pytest.raises(FlagError, match=r"--env: .* is not NAME=value"):
        parse_env([text])


def test_key_values_are_comma_separated_and_repeatable() -> None:
    assert parse_key_values(["region=eu,tier=edge", "gpu=no", ""], "--labels") == {
        "region": "eu",
        "tier": "edge",
        "gpu": "no",
    }


def test_a_piece_without_equals_continues_the_previous_value() -> None:
    assert parse_key_values(["zones=a,b,c,owner=ops"], "--labels") == {
        "zones": "a,b,c",
        "owner": "ops",
    }


def test_a_key_value_list_must_start_with_a_key() -> None:
    with pytest.raises(FlagError) as caught:
        parse_key_values(["justtext"], "--labels")
    assert str(caught.value).startswith("--labels: 'justtext' is not KEY=VALUE")


def test_result_paths() -> None:
    assert parse_result_path("outputs:/outputs") == ("outputs", "/outputs")
    with pytest.raises(FlagError, match="NAME:PATH"):
        parse_result_path("outputs")
    with pytest.raises(FlagError, match="NAME:PATH"):
        parse_result_path("outputs:relative")


# --- --allow-listed-local-paths ----------------------------------------------------------------


def test_allow_listed_paths_are_comma_separated_with_an_optional_mode() -> None:
    assert parse_allowed_paths(["/data,/scratch:rw", "./local:ro"], cwd=CWD) == (
        ("/data", False),
        ("/scratch", True),
        ("/home/ana/project/local", False),
    )


def test_allow_listed_paths_reject_an_unknown_mode() -> None:
    with pytest.raises(FlagError, match="rw or ro"):
        parse_allowed_paths(["/data:rwx"], cwd=CWD)


# --- meshnode start → NodeConfig ---------------------------------------------------------------


def _config(**overrides: object):  # type: ignore[no-untyped-def]
    flags: dict[str, object] = {
        "data_dir": None,
        "api_host": "127.0.0.1",
        "api_port": 1234,
        "labels": (),
        "limit_cpu": None,
        "limit_memory": None,
        "limit_disk": None,
        "limit_gpu": None,
        "allow_listed_local_paths": (),
        "default_queue_timeout_s": None,
        "no_docker": False,
        "cwd": Path("/srv"),
    }
    return node_config_from_flags(**{**flags, **overrides})  # type: ignore[arg-type]


def test_start_flags_map_onto_node_config() -> None:
    config = _config(
        data_dir="state",
        api_host="0.0.0.0",
        api_port=0,
        labels=("zone=a,rack=3", "gpu=none"),
        limit_cpu="500m",
        limit_memory="4Gb",
        limit_disk="1.5GB",
        limit_gpu="1",
        allow_listed_local_paths=("/data:rw,/models",),
        default_queue_timeout_s=30,
        no_docker=True,
    )
    assert config.data_dir == Path("/srv/state")
    assert (config.api_host, config.api_port) == ("0.0.0.0", 0)
    assert config.labels == {"zone": "a", "rack": "3", "gpu": "none"}
    assert config.limit_cpu_millicores == 500
    assert config.limit_memory_bytes == 4 * 1024**3
    assert config.limit_disk_bytes == 3 * 1024**3 // 2
    assert config.limit_gpu_count == 1
    assert config.allowed_local_paths == (("/data", True), ("/models", False))
    assert config.policy.default_queue_timeout_s == 30.0
    assert config.enable_docker is False


def test_unset_start_flags_keep_the_defaults() -> None:
    from meshnode.runtime.config import NodeConfig

    default = NodeConfig()
    config = _config()
    assert config.data_dir == default.data_dir
    assert config.limit_cpu_millicores is None
    assert config.policy == default.policy
    assert config.enable_docker is True


@pytest.mark.parametrize(
    ("flag", "value", "complaint"),
    [
        ("limit_cpu", "2 cores", '--limit-cpu: "2 cores" is not a CPU quantity'),
        ("limit_memory", "4 Gigs", '--limit-memory: "4 Gigs" is not a size'),
        ("limit_disk", "-1Gb", "--limit-disk: "),
        ("limit_gpu", "0.5", '--limit-gpu: "0.5" is not a whole number of GPUs'),
    ],
)
def test_bad_limits_name_the_flag(flag: str, value: str, complaint: str) -> None:
    with pytest.raises(FlagError) as caught:
        _config(**{flag: value})
    assert str(caught.value).startswith(complaint)


def test_start_rejects_a_malformed_flag_as_a_usage_error(tmp_path: Path) -> None:
    """Through the real command: exit code 2 and the flag's name, no traceback."""
    from click.testing import CliRunner

    from meshnode.cli.main import cli

    result = CliRunner().invoke(
        cli, ["start", "--data-dir", str(tmp_path), "--limit-memory", "lots"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--limit-memory'" in result.output
    assert '"lots" is not a size' in result.output
    assert not (tmp_path / "state.db").exists()
