"""Real `meshnode start` nodes, each in a network namespace of its own, joined by a Linux
bridge in one more namespace: a mesh on a private subnet whose links a test can cut and heal.

Network rule: nothing here touches the host's interfaces. The namespaces (`mnt-<tag>-a`, …,
and `mnt-<tag>-br` for the bridge) and both ends of every veth pair are created inside them;
nodes run with `--no-mdns`; their APIs listen on 127.0.0.1 inside their own namespace, and
the test reaches them from a thread that entered that namespace (`setns`), so a request never
leaves it. `close` stops the nodes (SIGTERM, then SIGKILL, by PID), deletes the namespaces
and says what, if anything, was left behind. Needs root and `ip netns`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from tests.integration.nodeproc import meshnode_executable

API_PORT: Final = 19201  # every node has a namespace of its own: the same ports for all
SWARM_PORT: Final = 4001
STOP_TIMEOUT_S: Final = 15.0
API_TIMEOUT_S: Final = 30.0
_CLONE_NEWNET: Final = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates network namespaces)"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2) for network namespaces"
    listed = ip("netns", "list", check=False)
    if listed.returncode != 0:
        return f"`ip netns` is unavailable: {listed.stderr.strip()}"
    return None


def _enter_namespace(namespace: str) -> None:
    """Moves the calling thread (only it) into `namespace`'s network stack."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetnsNode:
    """One node: its namespace, its process, and its API reached from inside the namespace."""

    def __init__(self, name: str, namespace: str, address: str, root: Path) -> None:
        self.name = name
        self.namespace = namespace
        self.address = address  # on the bridge's subnet
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.node_id = ""
        self.slow_calls: list[tuple[str, float]] = []  # (path, seconds) of answers > 2 s
        self._thread = ThreadPoolExecutor(
            max_workers=1, initializer=_enter_namespace, initargs=(namespace,)
        )

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.address}/tcp/{SWARM_PORT}/p2p/{self.node_id}"

    def start(self, *extra: str) -> None:
        self.data_dir.mkdir()
        command = [
            "ip", "netns", "exec", self.namespace, meshnode_executable(), "start",
            "--api-port", str(API_PORT), "--data-dir", str(self.data_dir), "--no-docker",
            "--no-mdns", "--swarm-host", "0.0.0.0", "--swarm-port", str(SWARM_PORT), *extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # `ip netns exec` execs the command: this PID is the node's.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + API_TIMEOUT_S
        while True:
            try:
                self.node_id = str(self.get("/api/v1/agent/mesh")["NodeID"])
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"node {self.name} exited with {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    ) from error
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {self.name}'s API did not answer") from error
                time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        def request() -> Any:
            asked = time.monotonic()
            try:
                return ask()
            finally:
                took = time.monotonic() - asked
                if took > 2.0:
                    self.slow_calls.append((f"{method} {path}", round(took, 1)))

        def ask() -> Any:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{API_PORT}{path}", data=data, method=method
            )
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                text = response.read().decode()
            try:
                return json.loads(text)
            except json.JSONDecodeError:  # NDJSON (logs)
                return [json.loads(line) for line in text.splitlines() if line.strip()]

        return self._thread.submit(request).result(timeout=timeout_s + 5)

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`meshnode ARGS` run inside this node's namespace, against its API."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, meshnode_executable(), *args,
             "--api-port", str(API_PORT)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()  # by its PID
                process.wait(timeout=10)
        self._thread.shutdown(wait=True)


class BridgedMesh:
    """Namespaces `mnt-<tag>-<name>` for the nodes, `mnt-<tag>-br` holding bridge `br0`; each
    node's `veth0` (10.232.S.i/24) is plugged into the bridge as port `p-<name>`."""

    def __init__(self, root: Path, names: tuple[str, ...]) -> None:
        self.root = root
        self.tag = secrets.token_hex(3)
        self.subnet = f"10.232.{secrets.randbelow(256)}"
        self.bridge_ns = f"mnt-{self.tag}-br"
        self.nodes = {
            name: NetnsNode(name, f"mnt-{self.tag}-{name}", f"{self.subnet}.{i + 1}", root)
            for i, name in enumerate(names)
        }
        self._created: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(n.namespace for n in self.nodes.values())]

    def create(self) -> None:
        for namespace in self.namespaces:
            ip("netns", "add", namespace)
            self._created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for node in self.nodes.values():
            port = f"p-{node.name}"
            ip("-n", node.namespace, "link", "add", "veth0", "type", "veth",
               "peer", "name", port, "netns", self.bridge_ns)  # fmt: skip
            ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "veth0")
            ip("-n", node.namespace, "link", "set", "veth0", "up")
            ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            ip("-n", self.bridge_ns, "link", "set", port, "up")

    def cut(self, name: str) -> None:
        ip("-n", self.nodes[name].namespace, "link", "set", "veth0", "down")

    def heal(self, name: str) -> None:
        node = self.nodes[name]
        ip("-n", node.namespace, "link", "set", "veth0", "up")
        # Down took the subnet's route with it; up brings it back (with the address).
        deadline = time.monotonic() + 10
        while self.subnet not in ip("-n", node.namespace, "route").stdout:
            assert time.monotonic() < deadline, "the subnet's route did not come back"
            time.sleep(0.05)

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {node.name} ({node.node_id}) {node.log_path}\n{node.log_tail(chars)}"
            for node in self.nodes.values()
        )

    def close(self) -> list[str]:
        """Stops everything; returns what was left behind (nothing, normally)."""
        left: list[str] = []
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            node.stop()
        for namespace in self._created:
            pids = ip("netns", "pids", namespace, check=False).stdout.split()
            if pids:  # only processes started in a namespace this test made
                left.append(f"processes {pids} in {namespace}")
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", namespace, check=False)
        listed = set(ip("netns", "list", check=False).stdout.split())
        left += sorted(listed & set(self._created))
        return left
