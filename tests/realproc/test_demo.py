"""`meshcloud demo` as a user runs it: unplug a node, the others keep serving."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from meshcloud.agent.daemon import agent_running
from meshcloud.datadir import DataDir
from meshcloud.demo import _free
from sim.agents import meshcloud_cmd, wait_until

REPO = Path(__file__).resolve().parents[2]
"""The checkout, for subprocesses' PYTHONPATH."""

TIMEOUT = 120.0


def _base_port(nodes: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 29000)
        if all(_free(base + off + i) for i in range(nodes) for off in (0, 100, 200)):
            return base
    raise RuntimeError("no free ports")


class Output:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream],
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if text in line:
                return line


def node_short(data_dir: Path) -> str:
    return DataDir(data_dir).node_key().id.hex()[:12]


def test_demo_survives_kill_9_and_restarts_the_node(tmp_path: Path) -> None:
    base = _base_port(2)
    demo = subprocess.Popen(
        [sys.executable, "-m", "meshcloud", "demo", "--nodes", "2", "--dir", str(tmp_path),
         "--base-port", str(base)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    node1, node2 = DataDir(tmp_path / "node1"), DataDir(tmp_path / "node2")
    demos = [demo]
    try:
        out = Output(demo)
        out.wait_for("Kill an agent")
        assert any(f"S3 http://127.0.0.1:{base + 200}" in line for line in out.seen)
        victim = node2.runtime_info()
        assert victim is not None
        os.kill(victim["pid"], signal.SIGKILL)
        line = out.wait_for("node2 (")
        assert "killed by SIGKILL" in line and "1 other node(s) keep serving" in line
        assert demo.poll() is None
        status = meshcloud_cmd(node1.path, "status", "--json", timeout=60)
        assert '"mesh_name": "demo"' in status.stdout
        assert demo.stdin is not None
        demo.stdin.write("\n")
        demo.stdin.flush()
        out.wait_for("node2 is back")
        assert agent_running(node2)
        info = node2.runtime_info()
        assert info is not None and info["pid"] != victim["pid"]
        # killed again: a second `meshcloud demo` restarts only the missing node
        os.kill(info["pid"], signal.SIGKILL)
        out.wait_for("node2 (")
        second = subprocess.Popen(
            [sys.executable, "-m", "meshcloud", "demo", "--nodes", "2", "--dir",
             str(tmp_path), "--base-port", str(base)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        demos.append(second)
        out2 = Output(second)
        out2.wait_for("node1 is already running")
        out2.wait_for("Kill an agent")
        out.wait_for("node2 is running again")
        os.kill(second.pid, signal.SIGINT)
        assert second.wait(timeout=TIMEOUT) == 0
        assert agent_running(node1) and not agent_running(node2)  # it stopped only its own
        os.kill(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=TIMEOUT) == 0
        assert not agent_running(node1) and not agent_running(node2)
    finally:
        for process in demos:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for d in (node1, node2):
            info = d.runtime_info()
            if info and agent_running(d):
                os.kill(info["pid"], signal.SIGKILL)


def test_demo_ctrl_c_leaves_no_container_mount_or_run_dir(tmp_path: Path) -> None:
    import json

    import pytest

    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman_service import (
        PodmanService,
        podman_unavailable_reason,
        release_store,
        store_mounts,
    )

    reason = podman_unavailable_reason() or (None if os.geteuid() == 0 else "needs root")
    if reason:
        pytest.skip(f"cannot run podman: {reason}")
    base = _base_port(2)
    demo = subprocess.Popen(
        [sys.executable, "-m", "meshcloud", "demo", "--nodes", "2", "--dir", str(tmp_path),
         "--base-port", str(base)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    dirs = [tmp_path / "node1", tmp_path / "node2"]
    try:
        Output(demo).wait_for("Kill an agent")
        meshcloud_cmd(dirs[0], "images", "--build-demo", timeout=600)
        # node2's offer (its runtimes) reaches node1 by replication, a moment after it joined
        wait_until(lambda: node_short(dirs[1]) in meshcloud_cmd(dirs[0], "images", "ls").stdout,
                   60, message="node2's offer known to node1")
        meshcloud_cmd(dirs[0], "run", "web", "--image", "localhost/meshcloud/web:1",
                      "--replicas", "2", "--wait", "240s", timeout=300)
        os.kill(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=TIMEOUT) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    for data_dir in dirs:
        service = PodmanService(PodmanConfig(data_dir=data_dir, node_id="check"))
        assert not service.run_root.exists()
        assert store_mounts(service.graph_root) == []
        left = subprocess.run([*service.cli_args(), "ps", "-a", "--format", "json"],
                              env=service.env(), capture_output=True, text=True, timeout=60)
        from meshcloud.demo import clean_workloads

        clean_workloads(data_dir)  # the check itself made a run dir
        release_store(service.graph_root)  # and mounted the store again
        assert json.loads(left.stdout or "[]") == []
