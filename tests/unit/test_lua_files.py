"""Each Lua script sits beside the module that loads it, and its includes resolve (no server needed)."""

from __future__ import annotations

import ast
from pathlib import Path

from shared import scripts
from tests.conftest import ROOT

LUA = sorted(p for top in ("shared", "worker") for p in (ROOT / top).rglob("*.lua"))


def _loads() -> list[tuple[Path, str]]:
    """(module, script name) of every ``scripts.load(redis, "NAME", __file__)`` in the code."""
    out = []
    for module in sorted(p for top in ("shared", "worker", "producer") for p in (ROOT / top).rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "scripts.load":
                name, beside = node.args[1], node.args[2]
                assert isinstance(name, ast.Constant) and ast.unparse(beside) == "__file__", module
                out.append((module, name.value))
    return out


def test_every_loaded_script_is_beside_its_loader_and_every_script_is_loaded() -> None:
    loads = _loads()
    assert len(loads) >= 15
    for module, name in loads:
        assert (module.parent / f"{name}.lua").is_file(), (module, name)
    loaded = {module.parent / f"{name}.lua" for module, name in loads}
    # the rest are helpers, named with a leading underscore and only included
    assert {p for p in LUA if not p.name.startswith("_")} == loaded


def test_includes_resolve_beside_the_script_or_from_the_project_root() -> None:
    for path in LUA:
        text = scripts.source(path.stem, str(path.with_suffix(".py")))
        assert "--#include" not in text, path
    reconcile = scripts.source("reconcile", str(ROOT / "worker" / "reconcile.py"))
    assert "local function finish(" in reconcile  # worker/ includes shared/jobs/_finish.lua by its path
