"""A fresh virtual environment with only the core install of this checkout (issue 20).

``python -m venv``, then the core dependencies of ``pyproject.toml`` (``[project]
dependencies``, no extra) from the package index pip reaches, then this checkout's
packages (a regular, non-editable install of a copy of the tree). The environment with
its dependencies is cached under ``MESHCLOUD_TEST_CACHE`` (default
``~/.cache/meshcloud-tests``), keyed by the interpreter's version and a hash of the core
dependencies; the checkout itself is reinstalled into it on every use (seconds).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("meshcloud", "dht", "gossip", "blobstore", "vnet", "apps", "sim", "bench")
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
TIMEOUT = 900


def core_dependencies() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    return sorted(project["dependencies"])


def cache_root() -> Path:
    return Path(os.environ.get("MESHCLOUD_TEST_CACHE")
                or Path.home() / ".cache" / "meshcloud-tests")


def _run(cmd: list[str], **kwargs: object) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT,
                          check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")


def _copy_tree(dest: Path) -> None:
    """What a wheel of this checkout holds, without build leftovers in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


def core_venv(work: Path) -> Path:
    """The fresh environment's ``python`` with this checkout installed; ``work``: a
    scratch directory for the copy of the tree."""
    deps = core_dependencies()
    key = hashlib.sha256("\n".join([sys.version, *deps]).encode()).hexdigest()[:16]
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"core-venv-{key}"
    python = venv / "bin" / "python"
    with open(cache / f"core-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(python), *PIP, "install", "setuptools>=68", *deps])
            (venv / "ready").write_text("\n".join(deps) + "\n")
        tree = work / "checkout"
        _copy_tree(tree)
        _run([str(python), *PIP, "install", "--no-deps", "--no-build-isolation",
              "--force-reinstall", str(tree)], cwd=str(work))
    return python


def command_prefix(python: Path) -> list[str]:
    """An :class:`~sim.agents.Agent` prefix that runs ``python -m meshcloud ...`` with the
    fresh environment's interpreter in isolated mode (no ``PYTHONPATH``, no current
    directory on ``sys.path``: only what that environment installed)."""
    return ["sh", "-c", f'shift; exec env -u PYTHONPATH {python} -I "$@"', "sh"]
