"""What this machine offers Spark: Java 17, the pyspark package (Spark's jars and scripts)
and a Python that its workload users can run it with.

Replicas run as unprivileged users, which may not read the agent's virtualenv (under
/root, or a 0700 checkout). So the service lays out a *dist* directory once per machine
and pyspark version, that everyone may read: ``pyspark``, ``py4j``, ``pyarrow`` and
``numpy`` (the Python data source of Spark 4 needs Arrow) — links to the installed
packages when others can read them, else a copy — ``pyspark_meshcloud.py`` (the
bucket data source, :mod:`apps.spark.source`) and ``meshcloud_spark_recovery.py`` (the
master's state in a bucket, :mod:`apps.spark.recovery`). Drivers and executors run the
system's Python (same minor version as the packages) with ``PYTHONPATH`` set to it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from meshcloud import priority

PACKAGES = ("pyspark", "py4j", "pyarrow", "pyarrow.libs", "numpy", "numpy.libs")
REQUIRED = ("pyspark", "py4j", "pyarrow")
JAVA_ENV = "MESHCLOUD_JAVA"
"""Path of the java binary (default: ``java`` on PATH); a test sets it to a missing file to
play a node without Java."""
SHARED_ROOT = Path("/var/lib/meshcloud/spark")


@dataclass(frozen=True, slots=True)
class Toolchain:
    capable: bool
    reason: str
    java: str = ""
    python: str = ""
    site: str = ""
    """The site-packages holding pyspark."""
    version: str = ""


def java_path() -> str | None:
    configured = os.environ.get(JAVA_ENV)
    if configured is not None:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("java")


@lru_cache(maxsize=4)
def _java_major(java: str) -> int:
    try:
        out = priority.run([java, "-version"], capture_output=True, text=True,
                             timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def workload_python() -> str:
    """The Python of drivers and executors: the system's when the agent is root (its
    workload users cannot run a Python under /root), else this one."""
    if os.geteuid() == 0 and os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return sys.executable


def detect() -> Toolchain:
    java = java_path()
    if java is None:
        return Toolchain(False, "no java (install openjdk-17-jre-headless)")
    major = _java_major(java)
    if major < 17:
        return Toolchain(False, f"java {major or '?'} found; Spark 4 needs 17 or newer")
    specs = {p: _spec(p) for p in REQUIRED}
    missing = [p for p, spec in specs.items() if spec is None]
    if missing:
        return Toolchain(False, f"no {', '.join(missing)} (pip install 'meshcloud[spark]')")
    # Found, not imported: pyspark and pyarrow cost every agent tens of MiB if imported here.
    origin = specs["pyspark"].origin  # type: ignore[union-attr]
    try:
        version = importlib.metadata.version("pyspark")
    except importlib.metadata.PackageNotFoundError:
        return Toolchain(False, "no pyspark distribution (pip install 'meshcloud[spark]')")
    site = str(Path(origin or "").resolve().parent.parent)
    return Toolchain(True, f"java {major}, pyspark {version}", java=java,
                     python=workload_python(), site=site, version=version)


def _spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """Where ``module`` would be imported from, or None (also for a package a core install
    blocks, which has no distribution metadata)."""
    try:
        spec = importlib.util.find_spec(module)
        importlib.metadata.distribution(module)
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    return spec


def readable_by_others(path: Path) -> bool:
    """Can any user read ``path`` (every ancestor searchable, the path readable)?"""
    try:
        path = path.resolve()
        for p in (path, *path.parents):
            mode = p.stat().st_mode
            if not mode & stat.S_IXOTH:
                return False
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def dist_root(data_dir: Path) -> Path:
    return SHARED_ROOT if os.geteuid() == 0 else Path(data_dir) / "spark-dist"


def prepare(tools: Toolchain, data_dir: Path, source_file: Path) -> Path:
    """The dist directory for ``tools`` (made once; safe against a racing agent)."""
    root = dist_root(data_dir)
    recovery_file = source_file.with_name("recovery.py")
    stamp = max(int(source_file.stat().st_mtime), int(recovery_file.stat().st_mtime))
    digest = f"{tools.version}-{stamp}"
    target = root / digest
    if (target / "pyspark_meshcloud.py").exists() \
            and (target / "meshcloud_spark_recovery.py").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    if root == SHARED_ROOT:
        os.chmod(root.parent, 0o755)
    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    os.chmod(tmp, 0o755)
    site = Path(tools.site)
    for name in PACKAGES:
        src = site / name
        if not src.exists():
            continue
        if readable_by_others(src):
            os.symlink(src, tmp / name)
        else:
            shutil.copytree(src, tmp / name, symlinks=True)
            for dirpath, _dirnames, filenames in os.walk(tmp / name):
                os.chmod(dirpath, 0o755)
                for f in filenames:
                    p = Path(dirpath) / f
                    if not p.is_symlink():
                        os.chmod(p, p.stat().st_mode | 0o444)
    for src, name in ((source_file, "pyspark_meshcloud.py"),
                      (recovery_file, "meshcloud_spark_recovery.py")):
        shutil.copyfile(src, tmp / name)
        os.chmod(tmp / name, 0o644)
    try:
        os.rename(tmp, target)
    except OSError:  # another agent made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@lru_cache(maxsize=1)
def capable_cached() -> bool:
    return detect().capable
