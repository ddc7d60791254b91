"""Closing the host to containers of HTTP-networked jobs, except for the filtering proxy.

Why: Docker's internal network has no route out, but the host itself stays reachable from
it (the bridge's gateway address, docker0, any address a host service listens on). Jobs with
`Network: HTTP` must reach nothing but the node's proxy, so while the proxy serves, the
node inserts two rules at the top of the host's INPUT chain for traffic arriving on the
network's bridge: accept TCP to the proxy's address and port, drop everything else. They
are removed when the proxy stops. Written with the `iptables` command (what Docker itself
uses on this host); no maintained Python library manages iptables rules for trio.

Without root or without iptables the node runs on and says, once, what is left open.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

__all__ = ["bridge_interface", "only_proxy_reachable"]

LOGGER = logging.getLogger(__name__)

COMMENT: Final = "meshnode-http-proxy-only"


def bridge_interface(network_info: dict[str, object]) -> str:
    """The host interface of a Docker bridge network, from `inspect_network`."""
    options = network_info.get("Options") or {}
    if isinstance(options, dict) and options.get("com.docker.network.bridge.name"):
        return str(options["com.docker.network.bridge.name"])
    return "br-" + str(network_info["Id"])[:12]


def _rules(interface: str, gateway: str, port: int) -> list[list[str]]:
    """In the order they are inserted at position 1 (so the ACCEPT ends up first)."""
    tag = ["-m", "comment", "--comment", COMMENT]
    return [
        ["INPUT", "-i", interface, *tag, "-j", "DROP"],
        ["INPUT", "-i", interface, "-p", "tcp", "-d", gateway, "--dport", str(port), *tag,
         "-j", "ACCEPT"],
    ]  # fmt: skip


async def _iptables(*arguments: str) -> bool:
    result = await trio.run_process(
        ["iptables", "-w", "5", *arguments],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0


@asynccontextmanager
async def only_proxy_reachable(interface: str, gateway: str, port: int) -> AsyncIterator[bool]:
    """Yields whether the host is closed (False: rules could not be installed)."""
    if shutil.which("iptables") is None:
        LOGGER.warning("no iptables: containers of HTTP jobs can reach services of this host")
        yield False
        return
    installed: list[list[str]] = []
    try:
        for rule in _rules(interface, gateway, port):
            if not await _iptables("-C", *rule):
                if not await _iptables("-I", rule[0], "1", *rule[1:]):
                    raise subprocess.SubprocessError(f"iptables -I {' '.join(rule)} failed")
                installed.append(rule)
    except (OSError, subprocess.SubprocessError) as error:
        LOGGER.warning(
            "could not close the host to HTTP jobs (%s): they can reach services of this host",
            error,
        )
        await _remove(installed)
        yield False
        return
    try:
        yield True
    finally:
        await _remove(installed)


async def _remove(rules: list[list[str]]) -> None:
    with trio.CancelScope(shield=True):
        for rule in reversed(rules):
            await _iptables("-D", *rule)
