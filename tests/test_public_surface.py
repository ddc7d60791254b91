"""Each package's public surface is explicit: `__all__` lists exactly what it exports."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["meshnode", "meshnode.errors", "meshnode.spec"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    missing = sorted(item for item in exported if not hasattr(module, item))
    assert missing == []
    public = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name).startswith("meshnode")
        and item not in {"annotations"}
    }
    assert sorted(public - exported) == []
