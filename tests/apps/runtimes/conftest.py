"""Helpers shared by the runtime tests: waiting on conditions with deadlines, free ports,
and where a root agent's process replicas keep their homes."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

T = TypeVar("T")

POLL = 0.02
"""Seconds between checks while waiting for a real process or container to change."""


async def wait_for(check: Callable[[], Awaitable[T]], *, within: float = 10.0,
                   what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    with trio.move_on_after(within):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(POLL)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROOT = os.geteuid() == 0
"""A root agent runs replicas as workload users, in homes outside the data dir."""
PY = "/usr/bin/python3" if ROOT and os.path.exists("/usr/bin/python3") else sys.executable
"""Python for replicas: a workload user cannot reach a virtualenv under /root."""


def homes_for(data_dir: Path) -> Path:
    """Replicas' homes of a test (pytest's tmp dirs are 0700: workload users can't pass)."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"meshcloud-test-homes-{digest}"


def home(data_dir: Path, name: str) -> Path:
    return homes_for(data_dir) / name if ROOT else data_dir / "runtimes/process" / name / "work"


def volume(data_dir: Path, name: str) -> Path:
    return homes_for(data_dir) / "volumes" / name if ROOT else data_dir / "volumes" / name


@pytest.fixture(autouse=True)
def _remove_homes(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(homes_for(tmp_path), ignore_errors=True)
