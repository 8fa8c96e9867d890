"""Type checking of the sans-IO cores: mypy --strict runs, on the right files, and passes.

pyproject.toml's [tool.mypy] lists the checked files; `./dev test` runs mypy before pytest,
and this module runs it again so that a bare `pytest` cannot skip it. Every module of the
core packages that does no I/O (the rule of tests/test_sans_io.py) must be on the list or
in NOT_CHECKED below, with the reason, so that a new core module is checked from day one.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE_PACKAGES = ["gossip", "dht", "meshcloud/codec", "meshcloud/transport", "meshcloud/state",
                 "apps/workloads"]
IO_MODULES = {"trio", "anyio", "asyncio", "socket", "select", "selectors", "threading",
              "subprocess", "lmdb", "time", "os", "pathlib", "logging", "starlette", "urllib"}
"""Imports that make a module a driver (or a tool), not a core."""

NOT_CHECKED = {
    "meshcloud/state/tables.py": "the apps' schemas, being moved out of the core (issue 14.1)",
    "meshcloud/state/background.py": "being rewritten to return its outputs (issue 14.3)",
}
"""Sans-IO modules of the core packages that mypy does not check yet. An entry whose file
has gone is harmless (mypy itself fails on a listed file that does not exist)."""

MAX_TYPE_IGNORES = 9
"""`# type: ignore` comments allowed in the checked files (issue 14.6: under 10)."""


def mypy_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["mypy"]


def checked_files() -> set[str]:
    out: set[str] = set()
    for entry in mypy_config()["files"]:
        path = ROOT / entry
        if path.is_dir():
            out.update(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))
        else:
            out.add(entry)
    return out


def imported_tops(path: Path) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


def test_mypy_is_strict_and_names_existing_files() -> None:
    config = mypy_config()
    assert config.get("strict") is True
    missing = [entry for entry in config["files"] if not (ROOT / entry).exists()]
    assert not missing, f"[tool.mypy] files names files that do not exist: {missing}"


def test_every_sans_io_core_module_is_checked() -> None:
    checked = checked_files()
    unchecked = []
    for package in CORE_PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in checked or rel in NOT_CHECKED:
                continue
            if not imported_tops(path) & IO_MODULES:
                unchecked.append(rel)
    assert not unchecked, (
        f"sans-IO core modules missing from pyproject.toml [tool.mypy] files: {unchecked}")


def test_type_ignores_stay_under_the_budget() -> None:
    pattern = re.compile(r"#\s*type:\s*ignore")
    counts = {rel: len(pattern.findall((ROOT / rel).read_text()))
              for rel in sorted(checked_files())}
    total = sum(counts.values())
    assert total <= MAX_TYPE_IGNORES, (
        f"{total} `# type: ignore` in the checked cores (at most {MAX_TYPE_IGNORES}): "
        f"{ {rel: n for rel, n in counts.items() if n} }")


def test_dev_test_runs_mypy_before_pytest() -> None:
    script = (ROOT / "dev").read_text()
    verb = script[script.index("\n  test)"):]
    verb = verb[:verb.index(";;")]
    assert "-m mypy" in verb, "./dev test must run mypy"
    assert verb.index("-m mypy") < verb.index("-m pytest"), "./dev test runs mypy first"
    with open(ROOT / "pyproject.toml", "rb") as f:
        dev_deps = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    assert any(re.match(r"mypy\b", dep) for dep in dev_deps), "mypy is a dev dependency"


def test_mypy_strict_passes_on_the_cores() -> None:
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy failed:\n{report}"
    assert re.search(r"Success: no issues found in \d+ source files", report), report
