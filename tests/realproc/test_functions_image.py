"""`fn deploy --image` on a real agent with real podman: an image made on the node's own
store (busybox httpd + a CGI shell handler: any language), invoked through the CLI;
warm reuse, scale to zero after the idle period, and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from apps.images import rootfs_tar
from apps.runtimes.podman_service import podman_unavailable_reason
from meshcloud.demo import clean_workloads
from sim.agents import Agent, LocalCluster, wait_until
from tests.apps.functions.test_image_functions import IMAGE, echo_recipe

_reason = podman_unavailable_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "rootful podman needs root"
pytestmark = [pytest.mark.real, pytest.mark.podman, pytest.mark.slow,
              pytest.mark.skipif(_reason is not None, reason=f"cannot run: {_reason}")]


def podman(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apps.images", "podman", "--data-dir",
                           str(agent.data_dir), "--", *args], capture_output=True, text=True,
                          timeout=300)


def fn_containers(agent: Agent) -> list[str]:
    out = podman(agent, "ps", "-a", "--format", "{{.Names}}").stdout.split()
    return [n for n in out if "fn-echo" in n]


def test_image_function_on_a_real_agent(tmp_path):
    cluster = LocalCluster(tmp_path, extra_args=["--profile", "local"])
    try:
        a = cluster.init_first()
        rootfs = tmp_path / "rootfs.tar"
        recipe = echo_recipe()
        rootfs.write_bytes(rootfs_tar(recipe))
        changes = [arg for change in recipe.changes for arg in ("--change", change)]
        made = podman(a, "import", *changes, str(rootfs), IMAGE)
        assert made.returncode == 0, made.stderr
        out = a.cli("fn", "deploy", "echo", "--image", IMAGE, "--env", "GREETING=hi",
                    "--idle", "2s", "--memory", "64M").stdout
        assert "version 1" in out
        listed = json.loads(a.cli("fn", "ls", "--json").stdout)[0]
        assert listed["versions"][0]["image"] == IMAGE
        assert listed["versions"][0]["runtime"] == "image"
        got = json.loads(a.cli("fn", "invoke", "echo", "--data", '{"n": 1}',
                               timeout=300).stdout)
        assert got["echo"] == {"n": 1} and got["greeting"] == "hi"
        assert got["host"] == "fn-echo-0" and got["id"]
        again = json.loads(a.cli("fn", "invoke", "echo", "--data", "[]").stdout)
        assert again["host"] == "fn-echo-0"
        pools = a.get("/v1/status")["functions"]["pools"]
        assert pools["echo@1"]["cold_starts"] == 1 and pools["echo@1"]["image"] == IMAGE
        assert len(fn_containers(a)) == 1
        # idle past 2 s: the container is stopped and removed (scale to zero)
        wait_until(lambda: a.get("/v1/status")["functions"]["pools"]["echo@1"]["instances"]
                   == 0, 60, interval=0.2, message="scaled to zero")
        wait_until(lambda: fn_containers(a) == [], 60, interval=0.5,
                   message="the container removed")
        after = json.loads(a.cli("fn", "invoke", "echo", "--data", '{"n": 2}').stdout)
        assert after["echo"] == {"n": 2}
        assert a.get("/v1/status")["functions"]["pools"]["echo@1"]["cold_starts"] == 2
        a.cli("fn", "rm", "echo")
        wait_until(lambda: fn_containers(a) == [], 60, interval=0.5,
                   message="containers removed with the function")
    finally:
        for agent in cluster.agents:
            if agent.running:
                agent.stop()
        cluster.close()
        for agent in cluster.agents:
            clean_workloads(agent.data_dir)
