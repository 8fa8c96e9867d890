"""The Python plane's driver refuses what it cannot do with one clear error, and leaves
nothing behind (run in a network namespace, through the helper process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio

from vnet.plane import PlaneError
from vnet.pyplane.driver import PyPlane, open_tun
from vnet.pyplane.lab import ROOT, PlaneLab, wait_output

pytestmark = [pytest.mark.netns]

HOLD_PORT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("holding", flush=True)
sys.stdin.read()
"""


def helper(lab: PlaneLab, line: str) -> subprocess.CompletedProcess[str]:
    side = lab.sides[0]
    return subprocess.run(side.exec(sys.executable, "-m", "vnet.pyplane"), input=line + "\n",
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_bad_configs_and_a_taken_port_are_one_clear_error() -> None:
    with PlaneLab() as lab:
        a, b = lab.sides
        result = helper(lab, "{not json")
        assert (result.returncode, result.stdout.split()[:3]) == (2, ["error", "bad",
                                                                      "config:"])
        config = lab.config(a, b)
        result = helper(lab, json.dumps({**config, "interface": "x" * 16}))
        assert result.returncode == 1 and "1 to 15 characters" in result.stdout

        holder = subprocess.Popen(a.exec(sys.executable, "-c", HOLD_PORT, "51820"),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            wait_output(holder, "holding", 30)
            result = helper(lab, json.dumps(config))
        finally:
            holder.communicate("", timeout=30)
        assert result.returncode == 1 and "UDP port 51820" in result.stdout, result.stdout
        left = subprocess.run(a.exec("ip", "link", "show", lab.interface),
                              capture_output=True, text=True)
        assert left.returncode != 0, "the interface outlived the failed apply"


async def test_unapplied_plane_has_no_port_and_no_stats(nursery: trio.Nursery) -> None:
    plane = PyPlane(nursery)
    with pytest.raises(PlaneError):
        plane.listen_port()
    assert plane.stats() == []
    await plane.close()  # closing what never opened is harmless


def test_open_tun_checks_the_name_before_touching_the_host() -> None:
    for name in ("", "a" * 16):
        with pytest.raises(PlaneError):
            open_tun(name)
