"""requirements.txt in a bundle: installed once per node into a cached virtual
environment (real pip, a real small package from the package index this machine
reaches), the fork server runs with it; an unreachable index or a missing package is
one clear error, remembered for a while, and nothing half-built is ever used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from apps.functions.bundle import pack
from apps.functions.core import build_version
from apps.functions.executor import Executor, InvokeFailed

pytestmark = [pytest.mark.real]

HANDLER = '''
import six
def handle(event, context):
    print("six from", six.__file__)
    return {"six": six.__version__, "file": six.__file__}
'''
UID = (1 << 30) + 4343


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="fn-req-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def version(src: Path, requirements: str, number: int = 1):
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.py").write_text(HANDLER)
    (src / "requirements.txt").write_text(requirements)
    data = pack(src)
    spec = build_version({"sha256": hashlib.sha256(data).hexdigest(), "timeout": "10s"},
                         version=number, size=len(data), now_ms=0)
    return spec, data


def executor(root: Path, bundles: dict[str, bytes]) -> Executor:
    async def read(key: str) -> bytes:
        return bundles[key]

    as_root = os.geteuid() == 0
    return Executor(root / "run", read, lambda name: (UID, UID) if as_root else None)


async def test_requirements_installed_once_and_used_by_the_fork_server(root):
    spec, data = version(root / "a", "six\n")
    other, other_data = version(root / "b", "six\n", number=1)
    ex = executor(root, {spec.bundle_key: data, other.bundle_key: other_data})
    try:
        result = await ex.invoke("f", spec, b"{}", "req-1")
        body = json.loads(result.body)
        venv = root / "run" / "venvs" / hashlib.sha256(b"six\n").hexdigest()
        assert body["file"].startswith(str(venv)) and body["six"]
        assert ex.venv_builds == 1 and ex.preparing[("f", 1)] == ("ready", "")
        assert (venv / ".ready").exists()
        assert not venv.with_name(venv.name + ".tmp").exists()
        if os.geteuid() == 0:
            assert venv.stat().st_uid == 0  # the function reads it, cannot change it
        # the same requirements for another function (same file): no second install
        again = json.loads((await ex.invoke("g", other, b"{}", "req-2")).body)
        assert again["six"] == body["six"] and ex.venv_builds == 1
        log = ex.log_tail("f", 200)
        assert "requirements | installing requirements.txt" in log
        assert "requirements | requirements.txt installed" in log
        assert "req-1 | six from " + str(venv) in log
    finally:
        ex.close()


async def test_unreachable_index_and_missing_package_are_clear_errors(root):
    spec, data = version(root / "a", "six\n")
    ex = executor(root, {spec.bundle_key: data})
    ex.pip_options = ("--isolated", "--retries", "1", "--timeout", "5",
                      "--index-url", "http://127.0.0.1:9/simple")
    try:
        with pytest.raises(InvokeFailed, match="index is unreachable") as info:
            await ex.invoke("f", spec, b"{}", "r")
        assert info.value.code == "requirements_failed"
        assert ex.preparing[("f", 1)][0] == "failed"
        assert ex.pools == {} and ex.venv_builds == 1
        assert not list((root / "run" / "venvs").glob("*/.ready"))
        assert not list((root / "run" / "venvs").glob("*.tmp"))
        # remembered: the next call fails at once, with no second pip run
        with pytest.raises(InvokeFailed, match="index is unreachable"):
            await ex.invoke("f", spec, b"{}", "r")
        assert ex.venv_builds == 1
        assert "requirements | " in ex.log_tail("f", 50)
    finally:
        ex.close()

    missing, missing_data = version(root / "m", "meshcloud-no-such-package-4242\n")
    ex = executor(root, {missing.bundle_key: missing_data})
    try:
        with pytest.raises(InvokeFailed, match="not on the package index") as info:
            await ex.invoke("m", missing, b"{}", "r")
        assert "meshcloud-no-such-package-4242" in str(info.value)
    finally:
        ex.close()
