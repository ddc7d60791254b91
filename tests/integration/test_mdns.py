"""mDNS discovery with real processes: two `meshnode start` nodes in two network namespaces
joined by a veth pair find each other with no `--peers`, and do not with `--no-mdns`.

Network rule: mDNS multicasts, so nothing here runs on the host's interfaces. Each test makes
its own pair of namespaces (`mnt-<random>-a`/`-b`), runs the nodes and the probe that reads
their API (`netns_probe.py`) inside them, and deletes them afterwards. Needs root and
`ip netns`; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

import pytest

from meshnode.runtime.transport import _announced_addrs, _Broadcaster
from tests.integration.nodeproc import meshnode_executable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

API_PORT: Final = 19101  # each node has a namespace of its own: the same ports for both
SWARM_PORT: Final = 4001  # the same port on both, as in the bug report: a node that dials
# the 0.0.0.0 its peer announced reaches itself
PROBE: Final = Path(__file__).with_name("netns_probe.py")
FOUND_WITHIN_S: Final = 5.0  # after the APIs answer; measured 1.1-1.3 s (3.2 s from exec)
NOT_FOUND_FOR_S: Final = 6.0  # several times what finding takes with mDNS on
STOP_TIMEOUT_S: Final = 15.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) for network namespaces"
    listed = _ip("netns", "list", check=False)
    if listed.returncode != 0:
        return f"`ip netns` is unavailable: {listed.stderr.strip()}"
    return None


class NamespacePair:
    """Two namespaces joined by a veth pair, multicast routed onto it, and the processes
    started in them (stopped, then the namespaces deleted, by `close`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        tag = secrets.token_hex(3)
        self.names = (f"mnt-{tag}-a", f"mnt-{tag}-b")
        self.processes: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self._veth = (f"mnt-{tag}a", f"mnt-{tag}b")  # interface names: 15 characters at most

    def create(self) -> None:
        first = _ip("netns", "add", self.names[0], check=False)
        if first.returncode != 0:
            pytest.skip(f"`ip netns add` is unavailable: {first.stderr.strip()}")
        self._created.append(self.names[0])
        _ip("netns", "add", self.names[1])
        self._created.append(self.names[1])
        _ip("link", "add", self._veth[0], "type", "veth", "peer", "name", self._veth[1])
        for index, (namespace, veth) in enumerate(zip(self.names, self._veth, strict=True)):
            _ip("link", "set", veth, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"10.231.0.{index + 1}/24", "dev", veth)
            _ip("-n", namespace, "link", "set", veth, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", veth)

    def start_node(self, namespace: str, *extra: str) -> None:
        data_dir = self.root / namespace
        data_dir.mkdir()
        command = [
            "ip", "netns", "exec", namespace, meshnode_executable(), "start",
            "--api-port", str(API_PORT), "--data-dir", str(data_dir), "--no-docker",
            "--swarm-port", str(SWARM_PORT), *extra,
        ]  # fmt: skip
        with (self.root / f"{namespace}.log").open("ab") as log:
            # `ip netns exec` execs the command: this pid is the node's.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)

    def probe_both(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """What each node sees: `netns_probe.py` in both namespaces at once."""
        probes = [
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    namespace,
                    sys.executable,
                    str(PROBE),
                    str(API_PORT),
                    str(count),
                    str(timeout_s),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for namespace in self.names
        ]
        views = []
        for namespace, probe in zip(self.names, probes, strict=True):
            out, _ = probe.communicate(timeout=timeout_s + 40)
            assert probe.returncode == 0, f"{namespace}: {out.strip()}\n{self.logs()}"
            views.append(json.loads(out))
        return views

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.root.glob("*.log"))
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for namespace in self._created:  # its end of the veth pair goes with it
            _ip("netns", "del", namespace, check=False)


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[NamespacePair]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    pair = NamespacePair(tmp_path)
    try:
        pair.create()
        yield pair
    finally:
        pair.close()
    leftover = set(_ip("netns", "list").stdout.split()) & set(pair.names)
    assert not leftover, f"namespaces left behind: {leftover}"


def test_two_nodes_find_each_other_by_mdns(namespaces: NamespacePair) -> None:
    for namespace in namespaces.names:
        namespaces.start_node(namespace)
    first, second = namespaces.probe_both(count=2, timeout_s=FOUND_WITHIN_S)
    both = sorted([first["node_id"], second["node_id"]])
    assert first["node_id"] != second["node_id"]
    assert first["alive"] == both, f"{first}\n{namespaces.logs()}"
    assert second["alive"] == both, f"{second}\n{namespaces.logs()}"


def test_no_mdns_nodes_do_not_find_each_other(namespaces: NamespacePair) -> None:
    for namespace in namespaces.names:
        namespaces.start_node(namespace, "--no-mdns")
    first, second = namespaces.probe_both(count=2, timeout_s=NOT_FOUND_FOR_S)
    assert first["alive"] == [first["node_id"]], first
    assert second["alive"] == [second["node_id"]], second
    assert first["connected_peers"] == second["connected_peers"] == []


def test_what_is_announced_is_dialable() -> None:
    """No namespaces needed: the TXT records (which peers dial), SRV port and A records."""
    peer = "12D3KooWM9YKLPhMWhjcyjPC8UBYT6rXUpRdst19WZZ3vhwCdFuG"
    addrs = _announced_addrs([f"/ip4/10.231.0.1/tcp/4001/p2p/{peer}"])
    assert _announced_addrs([f"/ip4/0.0.0.0/tcp/4001/p2p/{peer}"]) == [
        f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"
    ], "a wildcard left unexpanded (loopback-only host) is announced as loopback"
    broadcaster = _Broadcaster(
        zeroconf=cast(Any, None),  # only register() uses it
        service_type="_p2p._udp.local.",
        service_name="x._p2p._udp.local.",
        peer_id=peer,
        port=4001,
        listen_addrs=addrs,
    )
    info = broadcaster.service_info
    assert info is not None
    assert info.properties == {b"dnsaddr": addrs[0].encode()}
    assert info.port == 4001
    assert info.parsed_addresses() == ["10.231.0.1"]
