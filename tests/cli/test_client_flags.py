"""The syntax of the CLI's flag values (`meshnode.cli.flags`): inputs, env, key=value lists,
allow-listed paths, peers' multiaddrs and swarm keys, and `meshnode start`'s flags mapped onto
NodeConfig."""

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
    parse_peers,
    parse_result_path,
    read_swarm_key,
)

CWD: Final = PurePosixPath("/home/ana/project")
PEER_ID: Final = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
PEER: Final = f"/ip4/192.168.1.10/tcp/1235/p2p/{PEER_ID}"


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


def test_mesh_flags_map_onto_node_config(tmp_path: Path) -> None:
    from meshnode.runtime.transport import generate_swarm_key

    key_file = tmp_path / "swarm.key"
    key_file.write_text(generate_swarm_key())
    config = _config(
        swarm_host="127.0.0.1",
        swarm_port=0,
        peers=(PEER, f"/dns4/edge-2.lan/tcp/4001/p2p/{PEER_ID[:-1]}o"),
        swarm_key_file=str(key_file),
        no_mdns=True,
        require_approval=True,
        bid_probe_exec="./may-bid.sh --strict",
        deny_networked_jobs=True,
        replicas=5,
    )
    assert (config.swarm_host, config.swarm_port) == ("127.0.0.1", 0)
    assert config.peers == (PEER, f"/dns4/edge-2.lan/tcp/4001/p2p/{PEER_ID[:-1]}o")
    assert config.swarm_key is not None
    assert len(config.swarm_key) == 32
    assert config.enable_mdns is False
    assert config.require_approval is True
    assert config.bid_probe_exec == "./may-bid.sh --strict"
    assert config.accept_networked_jobs is False
    assert config.replicas == 5


def test_unset_mesh_flags_keep_the_defaults() -> None:
    from meshnode.runtime.config import DEFAULT_SWARM_PORT, NodeConfig

    default, config = NodeConfig(), _config()
    assert (config.swarm_host, config.swarm_port) == (default.swarm_host, DEFAULT_SWARM_PORT)
    assert config.peers == ()
    assert config.swarm_key is None
    assert config.enable_mdns is True
    assert config.require_approval is False
    assert config.bid_probe_exec is None
    assert config.accept_networked_jobs is True
    assert config.replicas == default.replicas


def test_peers_are_comma_separated_and_repeatable() -> None:
    ipv6 = f"/ip6/::1/tcp/1235/p2p/{PEER_ID}"
    assert parse_peers([f"{PEER}, {ipv6}", PEER, ""]) == (PEER, ipv6)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("192.168.1.10:1235", "is not a peer's multiaddr"),
        (f"/ip4/192.168.1.10/tcp/1235/{PEER_ID}", "is not a peer's multiaddr"),
        ("/ip4/192.168.1.10/tcp/1235", "must end in /p2p/<peer id>"),
        (f"/ip4/192.168.1.10/udp/1235/quic/p2p/{PEER_ID}", "is not a peer's multiaddr"),
        (f"/ip4/192.168.1.300/tcp/1235/p2p/{PEER_ID}", "'192.168.1.300' is not an ip4 address"),
        (f"/ip4/192.168.1.10/tcp/99999/p2p/{PEER_ID}", "'99999' is not a TCP port"),
        ("/ip4/192.168.1.10/tcp/1235/p2p/12D3KooWnope", "is not a libp2p peer id"),
        (f"/ip4/192.168.1.10/tcp/1235/p2p/{PEER_ID[:-1]}0", "is not a libp2p peer id"),
    ],
)
def test_a_bad_peer_is_named_with_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(FlagError) as caught:
        parse_peers([PEER, text])
    assert caught.value.flag == "--peers"
    assert repr(text) in caught.value.message
    assert complaint in caught.value.message


def test_swarm_key_files_that_are_not_keys(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(FlagError, match=r"--swarm-key: cannot read .*nope.key.*No such file"):
        read_swarm_key(str(missing), cwd=tmp_path)
    with pytest.raises(FlagError, match="cannot read"):
        read_swarm_key(str(tmp_path), cwd=tmp_path)  # a folder
    malformed = tmp_path / "swarm.key"
    malformed.write_text("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n")
    with pytest.raises(FlagError) as caught:
        read_swarm_key("swarm.key", cwd=tmp_path)  # relative to the working directory
    assert "is not a swarm key: swarm key must be 64 hex characters" in caught.value.message
    assert "meshnode swarm-key generate > swarm.key" in caught.value.message
    malformed.write_bytes(b"\xff\xfe")
    with pytest.raises(FlagError, match="it is not text"):
        read_swarm_key(str(malformed), cwd=tmp_path)
    malformed.write_bytes(b"x" * 10_000)
    with pytest.raises(FlagError, match="too large"):
        read_swarm_key(str(malformed), cwd=tmp_path)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        ({"replicas": 0}, "--replicas: 0 is not between 1 and 7"),
        ({"replicas": 8}, "--replicas: 8 is not between 1 and 7"),
        ({"swarm_port": 70000}, "--swarm-port: 70000 is not a port"),
        ({"swarm_host": " "}, "--swarm-host: an address is required"),
        ({"bid_probe_exec": "check 'unclosed"}, "--bid-probe-exec: "),
        ({"bid_probe_exec": "  "}, "--bid-probe-exec: a command is required"),
    ],
)
def test_bad_mesh_flags_name_the_flag(flags: dict[str, object], complaint: str) -> None:
    with pytest.raises(FlagError) as caught:
        _config(**flags)
    assert str(caught.value).startswith(complaint)


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--peers", "/ip4/10.0.0.1/tcp/1235"], "Invalid value for '--peers'"),
        (["--replicas", "9"], "Invalid value for '--replicas'"),
        (["--swarm-key", "/nonexistent/swarm.key"], "Invalid value for '--swarm-key'"),
    ],
)
def test_start_rejects_bad_mesh_flags_as_usage_errors(
    tmp_path: Path, arguments: list[str], complaint: str
) -> None:
    from click.testing import CliRunner

    from meshnode.cli.main import cli

    result = CliRunner().invoke(cli, ["start", "--data-dir", str(tmp_path), *arguments])
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert not (tmp_path / "state.db").exists()


def test_swarm_key_generate_prints_a_key_start_accepts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meshnode.cli.main import cli

    first = CliRunner().invoke(cli, ["swarm-key", "generate"])
    second = CliRunner().invoke(cli, ["swarm-key", "generate"])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines()[:2] == ["/key/swarm/psk/1.0.0/", "/base16/"]
    assert first.output != second.output
    (tmp_path / "swarm.key").write_text(first.output)
    key = read_swarm_key("swarm.key", cwd=tmp_path)
    assert key.hex() == first.output.splitlines()[2]
