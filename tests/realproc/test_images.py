"""Images pushed to the mesh: built on one node, a replica starts on another (real podman).

The README's example as a user runs it: `images --build-demo` on one node, then
`run --replicas 2` — the second node holds no image until it loads the pushed archive.
Afterwards the demo's clean-up (:func:`meshcloud.demo.clean_workloads`) must leave no
container, podman service or run dir behind once the agents are stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from apps.runtimes.podman_service import podman_unavailable_reason
from meshcloud.demo import clean_workloads
from sim.agents import Agent, LocalCluster, wait_until

WEB = "localhost/meshcloud/web:1"

_reason = podman_unavailable_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "rootful podman needs root"
pytestmark = [pytest.mark.real, pytest.mark.podman, pytest.mark.slow,
              pytest.mark.skipif(_reason is not None, reason=f"cannot run: {_reason}")]


def podman(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apps.images", "podman", "--data-dir",
                           str(agent.data_dir), "--", *args], capture_output=True, text=True,
                          timeout=120)


def test_pushed_image_runs_a_replica_on_a_node_that_never_built_it(tmp_path):
    cluster = LocalCluster(tmp_path, extra_args=["--profile", "local"])
    try:
        a = cluster.init_first()
        b = cluster.join(through=a)
        out = a.cli("images", "--build-demo", timeout=600).stdout
        assert f"pushed {WEB}" in out
        mesh = b.get("/v1/images")["mesh"]
        assert WEB not in mesh[b.node_id]["images"]  # b's store never had it
        assert WEB in b.get("/v1/images/mesh")
        # b's offer (its runtimes) reaches a by replication, a moment after b joined
        wait_until(lambda: len(a.get("/v1/images")["mesh"]) == 2, 60,
                   message="b's offer known to a")
        a.cli("run", "web", "--image", WEB, "--replicas", "2", "--wait", "240s",
              timeout=300)
        rows = a.get("/v1/replicas?workload=web")["replicas"]
        assert {r["node"] for r in rows if r["state"] == "running"} == {a.node_id, b.node_id}
        assert WEB in podman(b, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout
        listed = a.cli("images", "ls").stdout
        assert "pushed to the mesh" in listed and WEB in listed
    finally:
        for agent in cluster.agents:
            if agent.running:
                agent.stop()
        cluster.close()
        for agent in cluster.agents:
            clean_workloads(agent.data_dir)
    for agent in cluster.agents:
        left = podman(agent, "ps", "-a", "--format", "json")
        clean_workloads(agent.data_dir)  # the check itself made a run dir
        assert json.loads(left.stdout or "[]") == []
