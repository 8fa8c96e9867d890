"""`meshcloud up` decides "already running" by the data dir's lock, not by a PID."""

from __future__ import annotations

import os
import subprocess
import sys


def test_up_starts_despite_a_stale_pid_of_another_program(cluster_factory):
    cluster = cluster_factory(1)
    (a,) = cluster.agents
    a.kill()
    a.datadir.write_runtime_info({**a.info, "pid": os.getpid()})  # a live PID, no agent
    with open(a.data_dir / "logs" / "console.log", "ab") as log:
        a.process = subprocess.Popen(
            [sys.executable, "-m", "meshcloud", "--data-dir", str(a.data_dir), "up"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    a.wait_ready()
    assert a.running and a.info["pid"] == a.process.pid
    second = a.cli("up", check=False, timeout=30)
    assert second.returncode == 1
    assert f"already running for {a.data_dir} (pid {a.process.pid})" in second.stderr
