"""The direction of imports is the design (DESIGN.md §2): a red test here is a design review.

`meshnode.core` and `meshnode.spec` are pure: no I/O, no clock, no global randomness, no
process state. They may import each other only downwards (core → spec, never spec → core),
the error tree, and a list of harmless standard-library and pure third-party modules. The
check walks the source with `ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

PACKAGE_ROOT: Final = Path(__file__).resolve().parents[1] / "meshnode"

# Anything that touches the world, the clock or randomness, or a layer above the core.
FORBIDDEN: Final = frozenset(
    {
        # concurrency and networking
        "trio", "anyio", "asyncio", "libp2p", "socket", "ssl", "select", "selectors",
        "threading", "multiprocessing", "concurrent", "subprocess", "signal",
        "http", "urllib.request", "httpx", "requests", "ipfshttpclient", "boto3", "botocore",
        # engines and storage
        "docker", "wasmtime", "sqlite3", "shelve", "dbm",
        # process state, files, clock, randomness, logging handlers
        "os", "sys", "pathlib", "shutil", "tempfile", "glob", "io", "builtins", "importlib",
        "time", "datetime", "random", "secrets", "uuid", "logging",
        # the layers above
        "meshnode.runtime", "meshnode.engines", "meshnode.storage", "meshnode.cli",
    }
)  # fmt: skip

PURE_PACKAGES: Final = {
    "core": FORBIDDEN,
    "spec": FORBIDDEN | {"meshnode.core"},
}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module) for every import in `source`, relative imports resolved."""
    found: list[tuple[int, str]] = []
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append((node.lineno, "builtins.__import__"))
    return found


def violations(source: str, module: str, forbidden: frozenset[str]) -> list[str]:
    bad = []
    for line, name in imported_modules(source, module):
        if any(name == banned or name.startswith(banned + ".") for banned in forbidden):
            bad.append(f"{module}:{line} imports {name}")
    return bad


def _modules_of(subpackage: str) -> list[tuple[str, Path]]:
    root = PACKAGE_ROOT / subpackage
    return [
        (".".join(("meshnode", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)), path)
        for path in sorted(root.rglob("*.py"))
    ]


@pytest.mark.parametrize("subpackage", sorted(PURE_PACKAGES))
def test_pure_packages_import_nothing_impure(subpackage: str) -> None:
    modules = _modules_of(subpackage)
    assert modules, f"meshnode/{subpackage} has no modules"
    bad = [
        problem
        for module, path in modules
        for problem in violations(path.read_text(), module, PURE_PACKAGES[subpackage])
    ]
    assert bad == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time", "time"),
        ("from datetime import datetime", "datetime"),
        ("import trio.lowlevel", "trio.lowlevel"),
        ("def f():\n    import sqlite3", "sqlite3"),
        ("from ..runtime import node", "meshnode.runtime"),
        ("from meshnode.cli.main import main", "meshnode.cli.main"),
        ("x = __import__('socket')", "builtins.__import__"),
        ("from random import Random", "random"),
    ],
)
def test_the_check_catches_forbidden_imports(source: str, expected: str) -> None:
    found = violations(source, "meshnode.core.example", FORBIDDEN)
    assert found, f"{source!r} was not caught"
    assert expected in found[0]


def test_the_check_allows_pure_imports() -> None:
    source = "import re\nfrom msgspec import Struct\nfrom meshnode.spec import Job\n"
    assert violations(source, "meshnode.core.example", FORBIDDEN) == []


def test_cli_does_not_load_heavy_runtime_modules() -> None:
    """The CLI must start fast: importing it loads no libp2p, wasmtime, trio or docker."""
    probe = (
        "import sys, meshnode.cli.main\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'libp2p', 'wasmtime', 'trio', 'docker', 'rich'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
