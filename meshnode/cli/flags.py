"""Command-line values parsed into meaning: key=value lists, inputs, paths and quantities, and
`meshnode start`'s flags mapped onto `NodeConfig`.

Rules of this module:
- Pure functions of their arguments (the working directory and home folder are arguments
  too), so every syntax is unit-tested without a process. One exception: `read_swarm_key`
  reads the file it is given (a flag that names a secret file is checked before starting).
- A malformed value raises `FlagError` naming the flag and the value; the CLI turns it into
  a usage error (exit code 2). Nothing here imports click.
- Syntax of `-i/--input` (the one documented in `--help`):
    SRC:TARGET[:rw|:ro]   a local path → localDirectory (read-only unless `:rw`)
    URL:TARGET            an http(s) URL → urlDownload
  TARGET is the absolute path inside the task. The last `:/` separates it, so a URL may have
  a port (`http://host:8080/a.csv:/inputs/a.csv`).
- Syntax of `--peers`: multiaddrs of other nodes, comma-separated and repeatable, each
  `/ip4/ADDR/tcp/PORT/p2p/PEER-ID` (or /ip6, /dns, /dns4, /dns6), as `meshnode agent node`
  prints them. Only TCP: it is the one transport meshnode's libp2p host listens on.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final, Literal

from meshnode.errors import MeshnodeError

if TYPE_CHECKING:
    from meshnode.runtime.config import NodeConfig

__all__ = [
    "FlagError",
    "InputFlag",
    "node_config_from_flags",
    "parse_allowed_paths",
    "parse_env",
    "parse_input",
    "parse_key_values",
    "parse_peers",
    "parse_quantity",
    "parse_result_path",
    "read_swarm_key",
]

_NAME_RE: Final = re.compile(r"[^=\s,]+")
_ENV_NAME_RE: Final = re.compile(r"[^=\s]+")
_URL_SCHEMES: Final = ("http://", "https://")
_MODES: Final = {"rw": True, "ro": False}
_HOST_PROTOCOLS: Final = ("ip4", "ip6", "dns", "dns4", "dns6")
_DNS_NAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_BASE58_RE: Final = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,128}")
_PEERS_EXAMPLE: Final = "/ip4/192.168.1.10/tcp/1235/p2p/12D3KooW…"
MIN_REPLICAS: Final = 1
MAX_REPLICAS: Final = 7
MAX_SWARM_KEY_BYTES: Final = 4096  # a swarm.key is ~100 bytes


class FlagError(MeshnodeError):
    """A command-line value is malformed."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        self.message = message
        super().__init__(f"{flag}: {message}")


def parse_key_values(values: Iterable[str], flag: str) -> dict[str, str]:
    """`k=v,k2=v2`, repeatable. As with Bacalhau's `--labels`, a piece without `=` continues
    the previous value (`list=a,b` keeps its comma); a later key wins."""
    result: dict[str, str] = {}
    for value in values:
        last_key: str | None = None
        for piece in value.split(","):
            key, equals, text = piece.partition("=")
            if equals and _NAME_RE.fullmatch(key.strip()):
                last_key = key.strip()
                result[last_key] = text.strip()
            elif not piece.strip():
                continue  # "a=1," or an empty flag value: nothing to add
            elif last_key is not None and not equals:
                result[last_key] += "," + piece.strip()
            else:
                raise FlagError(flag, f"{piece!r} is not KEY=VALUE (e.g. region=eu,tier=edge)")
    return result


def parse_env(values: Iterable[str], flag: str = "--env") -> dict[str, str]:
    """`K=V` per flag (not comma-split: a value may hold commas); a later K wins."""
    result: dict[str, str] = {}
    for value in values:
        name, equals, text = value.partition("=")
        if not equals or not _ENV_NAME_RE.fullmatch(name):
            raise FlagError(flag, f"{value!r} is not NAME=value (e.g. -e LOG_LEVEL=debug)")
        result[name] = text
    return result


@dataclass(frozen=True, slots=True)
class InputFlag:
    """One `-i/--input` value, understood."""

    kind: Literal["localDirectory", "urlDownload"]
    source: str  # an absolute local path, or the URL
    target: str
    read_write: bool = False


def parse_input(text: str, *, cwd: PurePath, flag: str = "--input") -> InputFlag:
    """See the module header for the syntax. Relative local paths are made absolute against
    `cwd` (they name a folder of the node, usually this machine)."""
    usage = "expected SRC:TARGET[:rw] (a local path) or URL:TARGET, e.g. ./data:/inputs"
    is_url = text.startswith(_URL_SCHEMES)
    body, read_write = text, False
    mode = text.rpartition(":")[2]
    if mode in _MODES:
        if is_url:
            raise FlagError(flag, f"{text!r}: a URL input is always read-only")
        body, read_write = text[: -len(mode) - 1], _MODES[mode]
    source, separator, target = body.rpartition(":")
    if not separator or not target.startswith("/") or not source:
        raise FlagError(flag, f"{text!r}: {usage}")
    if ".." in target.split("/") or (
        target != "/" and posixpath.normpath(target) != target.rstrip("/")
    ):
        raise FlagError(flag, f"{text!r}: TARGET {target!r} must be a plain absolute path")
    if is_url:
        return InputFlag("urlDownload", source, target)
    if source.startswith(("file://", "ipfs://", "s3://")) or "://" in source:
        raise FlagError(flag, f"{text!r}: only local paths and http(s) URLs are supported")
    absolute = posixpath.normpath(str(cwd / source))
    return InputFlag("localDirectory", absolute, target, read_write)


def parse_result_path(text: str, flag: str = "--result-path") -> tuple[str, str]:
    """`NAME:PATH` → (name, absolute path inside the task)."""
    name, separator, path = text.partition(":")
    if not separator or not _NAME_RE.fullmatch(name) or not path.startswith("/"):
        raise FlagError(flag, f"{text!r} is not NAME:PATH (e.g. outputs:/outputs)")
    return name, path


def parse_allowed_paths(
    values: Iterable[str], *, cwd: PurePath, flag: str = "--allow-listed-local-paths"
) -> tuple[tuple[str, bool], ...]:
    """`PATH[:rw|:ro]`, comma-separated and repeatable → (absolute path, read-write) pairs."""
    result: list[tuple[str, bool]] = []
    for value in values:
        for piece in value.split(","):
            item = piece.strip()
            if not item:
                continue
            path, read_write = item, False
            head, separator, mode = item.rpartition(":")
            if separator and mode in _MODES:
                path, read_write = head, _MODES[mode]
            elif separator and "/" not in mode:
                raise FlagError(flag, f"{item!r}: the mode after ':' is rw or ro")
            if not path:
                raise FlagError(flag, f"{item!r}: a path is required (PATH[:rw])")
            result.append((posixpath.normpath(str(cwd / path)), read_write))
    return tuple(result)


def parse_quantity(text: str | None, parse: Callable[[str], int], flag: str) -> int | None:
    """A resource quantity through one of `meshnode.spec`'s parsers; None when not given."""
    if text is None:
        return None
    from meshnode.spec import QuantityError  # the spec package is heavy

    try:
        return parse(text)
    except QuantityError as error:
        raise FlagError(flag, str(error)) from None


def parse_peers(values: Iterable[str], flag: str = "--peers") -> tuple[str, ...]:
    """Bootstrap multiaddrs, comma-separated and repeatable; duplicates dropped, order kept."""
    peers: list[str] = []
    for value in values:
        for piece in value.split(","):
            text = piece.strip()
            if text:
                _check_peer_multiaddr(text, flag)
                if text not in peers:
                    peers.append(text)
    return tuple(peers)


def _check_peer_multiaddr(text: str, flag: str) -> None:
    """`/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT/p2p/PEER-ID`, exactly."""
    usage = f"{text!r} is not a peer's multiaddr (expected e.g. {_PEERS_EXAMPLE}; "
    usage += "`meshnode agent node` on that node prints its own)"
    parts = text.split("/")
    if parts[0] != "" or len(parts) % 2 == 0 or "" in parts[1:]:
        raise FlagError(flag, usage)
    pairs = list(zip(parts[1::2], parts[2::2], strict=True))
    if pairs[-1][0] != "p2p":
        raise FlagError(flag, f"{text!r} must end in /p2p/<peer id> (e.g. {_PEERS_EXAMPLE})")
    if [name for name, _ in pairs[:-1]][1:] != ["tcp"] or pairs[0][0] not in _HOST_PROTOCOLS:
        raise FlagError(flag, usage)
    (family, host), (_, port), (_, peer_id) = pairs
    try:
        if family == "ip4":
            ipaddress.IPv4Address(host)
        elif family == "ip6":
            ipaddress.IPv6Address(host)
        elif not _DNS_NAME_RE.fullmatch(host):
            raise ValueError(host)
    except ValueError:
        raise FlagError(flag, f"{text!r}: {host!r} is not an {family} address") from None
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise FlagError(flag, f"{text!r}: {port!r} is not a TCP port (1-65535)")
    if not _is_peer_id(peer_id):
        raise FlagError(flag, f"{text!r}: {peer_id!r} is not a libp2p peer id (12D3KooW…)")


def _is_peer_id(text: str) -> bool:
    """base58btc of a multihash: identity (0x00, ed25519 keys: 12D3KooW…) or sha2-256 (Qm…)."""
    if not _BASE58_RE.fullmatch(text):
        return False
    import base58  # small and pure; only `start` and `devstack` check peer ids

    raw = base58.b58decode(text)
    return len(raw) >= 2 and raw[0] in (0x00, 0x12) and raw[1] == len(raw) - 2


def read_swarm_key(path: str, *, cwd: PurePath, flag: str = "--swarm-key") -> bytes:
    """The 32-byte key of a `swarm.key` file (IPFS's format), read and checked now, so a
    wrong file is a usage error rather than a node that starts and never finds its mesh."""
    # The parser lives with the transport, which imports libp2p: only `start` pays for it.
    from meshnode.runtime.transport import parse_swarm_key

    file = Path(cwd, Path(path).expanduser())
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_SWARM_KEY_BYTES + 1)
    except OSError as error:
        raise FlagError(flag, f"cannot read {str(file)!r}: {error.strerror or error}") from None
    hint = "make one with: meshnode swarm-key generate > swarm.key"
    if len(data) > MAX_SWARM_KEY_BYTES:
        raise FlagError(flag, f"{str(file)!r} is too large for a swarm key ({hint})")
    try:
        return parse_swarm_key(data.decode("utf-8"))
    except (UnicodeDecodeError, MeshnodeError) as error:
        reason = "it is not text" if isinstance(error, UnicodeDecodeError) else str(error)
        raise FlagError(flag, f"{str(file)!r} is not a swarm key: {reason} ({hint})") from None


def node_config_from_flags(
    *,
    data_dir: str | None,
    api_host: str,
    api_port: int,
    labels: Sequence[str],
    limit_cpu: str | None,
    limit_memory: str | None,
    limit_disk: str | None,
    limit_gpu: str | None,
    allow_listed_local_paths: Sequence[str],
    default_queue_timeout_s: float | None,
    no_docker: bool,
    cwd: PurePath,
    swarm_host: str | None = None,
    swarm_port: int | None = None,
    peers: Sequence[str] = (),
    swarm_key_file: str | None = None,
    no_mdns: bool = False,
    require_approval: bool = False,
    bid_probe_exec: str | None = None,
    deny_networked_jobs: bool = False,
    replicas: int | None = None,
) -> NodeConfig:
    """`meshnode start`'s flags → `NodeConfig`; unset flags (None) keep NodeConfig's
    defaults."""
    from meshnode.core.policy import Policy  # only `start` needs these
    from meshnode.runtime.config import NodeConfig
    from meshnode.spec import (
        parse_cpu_millicores,
        parse_gpu_count,
        parse_size_bytes,
    )

    limits = {
        "limit_cpu_millicores": parse_quantity(limit_cpu, parse_cpu_millicores, "--limit-cpu"),
        "limit_memory_bytes": parse_quantity(limit_memory, parse_size_bytes, "--limit-memory"),
        "limit_disk_bytes": parse_quantity(limit_disk, parse_size_bytes, "--limit-disk"),
        "limit_gpu_count": parse_quantity(limit_gpu, parse_gpu_count, "--limit-gpu"),
    }
    if default_queue_timeout_s is not None and default_queue_timeout_s < 0:
        raise FlagError("--default-queue-timeout", "must be ≥ 0 seconds")
    extra: dict[str, object] = {}
    if data_dir is not None:
        extra["data_dir"] = Path(cwd, Path(data_dir).expanduser())
    if default_queue_timeout_s is not None:
        extra["policy"] = Policy(default_queue_timeout_s=float(default_queue_timeout_s))
    if swarm_host is not None:
        if not swarm_host.strip():
            raise FlagError("--swarm-host", "an address is required, e.g. 0.0.0.0 or 127.0.0.1")
        extra["swarm_host"] = swarm_host.strip()
    if swarm_port is not None:
        if not 0 <= swarm_port <= 65535:
            raise FlagError("--swarm-port", f"{swarm_port} is not a port (0-65535; 0: any free)")
        extra["swarm_port"] = swarm_port
    if replicas is not None:
        if not MIN_REPLICAS <= replicas <= MAX_REPLICAS:
            raise FlagError(
                "--replicas", f"{replicas} is not between {MIN_REPLICAS} and {MAX_REPLICAS}"
            )
        extra["replicas"] = replicas
    if bid_probe_exec is not None:
        try:
            words = shlex.split(bid_probe_exec)
        except ValueError as error:
            raise FlagError("--bid-probe-exec", f"{bid_probe_exec!r}: {error}") from None
        if not words:
            raise FlagError("--bid-probe-exec", "a command is required, e.g. ./may-bid.sh")
        extra["bid_probe_exec"] = bid_probe_exec
    peer_addrs = parse_peers(peers)
    if swarm_key_file is not None:
        extra["swarm_key"] = read_swarm_key(swarm_key_file, cwd=cwd)
    return NodeConfig(
        api_host=api_host,
        api_port=api_port,
        labels=parse_key_values(labels, "--labels"),
        allowed_local_paths=parse_allowed_paths(allow_listed_local_paths, cwd=cwd),
        enable_docker=not no_docker,
        peers=peer_addrs,
        enable_mdns=not no_mdns,
        require_approval=require_approval,
        accept_networked_jobs=not deny_networked_jobs,
        **limits,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )
