"""A built wheel holds the whole source tree: every package and the Lua, HTML and JS files beside the
code that loads them (the Dockerfile's ``pip install .`` ships the wheel, not the checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

SHIPPED = ("shared", "worker", "producer")
DATA = (".lua", ".html", ".js")


def _source_files() -> set[str]:
    """The files a wheel must hold: every module of a package (a directory with an __init__.py), and
    every data file, under the shipped top-level packages."""
    out = set()
    for top in SHIPPED:
        for path in (ROOT / top).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in DATA or (path.suffix == ".py" and (path.parent / "__init__.py").is_file()):
                out.add(path.relative_to(ROOT).as_posix())
    return out


def test_the_wheel_ships_every_package_and_data_file(tmp_path: Path) -> None:
    # A copy: setuptools builds in the source tree, and a stale build/ there would leak into the wheel.
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info", ".fusebox")
    shutil.copytree(ROOT, src, ignore=junk)
    # With build isolation, as `pip install .` does: the venv's own setuptools may predate
    # bdist_wheel, and the `wheel` package is not a dependency of the project.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("fusebox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = _source_files()
    assert {"shared/__init__.py", "shared/gate/__init__.py", "producer/api/__init__.py"} <= expected
    assert any(name.endswith(".lua") for name in expected)
    assert sorted(expected - names) == []
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == set(SHIPPED)  # tests, bench and examples stay out
