"""The agent lock: one agent per data dir, whatever a stale run/agent.json says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshcloud.agent.daemon import AgentRunning, agent_lock, agent_running, lock_holder
from meshcloud.datadir import DataDir

REPO = Path(__file__).resolve().parents[2]
"""The checkout, for subprocesses' PYTHONPATH."""


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    d = DataDir(tmp_path)
    assert not agent_running(d)
    with agent_lock(d):
        assert agent_running(d)
        assert lock_holder(d) == os.getpid()
        with pytest.raises(AgentRunning, match=f"already running .*pid {os.getpid()}"), \
                agent_lock(d):
            pass
    assert not agent_running(d)
    with agent_lock(d):  # free again once released
        pass


def test_stale_runtime_info_naming_a_live_pid_does_not_block(tmp_path):
    d = DataDir(tmp_path)
    d.write_runtime_info({"pid": os.getpid(), "api": "http://127.0.0.1:1"})
    assert not agent_running(d)
    with agent_lock(d):
        assert agent_running(d)


def test_lock_of_a_killed_process_is_released(tmp_path):
    d = DataDir(tmp_path)
    code = ("import sys; from meshcloud.agent.daemon import agent_lock; "
            "from meshcloud.datadir import DataDir\n"
            "with agent_lock(DataDir(sys.argv[1])):\n print('held', flush=True)\n "
            "sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert agent_running(d) and lock_holder(d) == child.pid
        child.kill()
        child.wait(timeout=30)
        assert not agent_running(d)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
