"""Battery simulation (issue 20): a node whose ``termux-battery-status`` (a fake on its
PATH, its output a file the test writes) drops below the threshold while unplugged hands
its replica off to another node, and takes work again once plugged in.

Three real agents, local profile (capacity sampled every second, reconcile passes every
0.5 s), process runtime. The ground truth is each node's runtime inventory (what really
runs there, ``GET /v1/nodes/ID/drain``), not the claims table.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from apps.workloads.messages import NodeOffer
from apps.workloads.planner import PlanItem, place
from apps.workloads.view import build_view
from meshcloud.placement import Constraints
from sim.agents import Agent, LocalCluster, wait_until
from tests.workload_python import WORKLOAD_PYTHON

pytestmark = [pytest.mark.real, pytest.mark.slow]

ADDRESSES = ["127.0.0.81", "127.0.0.82", "127.0.0.83"]
HANDOFF_BOUND = 15.0
"""Seconds from the battery reading to the replica running elsewhere and gone here: one
capacity sample (1 s) + gossip + one reconcile pass (0.5 s) + a process start, with room
for a busy machine."""

FAKE = "#!/bin/sh\ncat {state}\n"


def battery(path, percentage: int, plugged: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"health": "GOOD", "percentage": percentage,
                               "plugged": plugged, "status": "DISCHARGING"
                               if plugged == "UNPLUGGED" else "CHARGING",
                               "temperature": 30.0}))
    tmp.replace(path)


def running_on(agent: Agent, node: Agent) -> list[str]:
    return [r["name"] for r in agent.get(f"/v1/nodes/{node.node_id}/drain")["running"]]


def name_placed_on(phone: Agent, agents: list[Agent], taken: tuple[str, ...] = ()) -> str:
    """A workload name whose single replica rendezvous hashing gives to ``phone``."""
    offer = NodeOffer(runtimes=("process",), images=(), arch="", cpus=1.0, ram_mb=1,
                      labels=(), metered=False, updated_ms=0)
    ids = [bytes.fromhex(a.node_id) for a in agents]
    view = build_view(ids, dict.fromkeys(ids, offer), {})
    for i in range(200):
        name = f"app{i}"
        if name in taken:
            continue
        item = PlanItem(name, 1, Constraints(runtime="process"))
        if place(view, [item])[name] == [bytes.fromhex(phone.node_id)]:
            return name
    raise AssertionError("no name ranks the phone first")


def test_a_phone_going_low_hands_its_replica_off(tmp_path):
    state = tmp_path / "battery.json"
    battery(state, 80, "PLUGGED_AC")
    bin_dir = tmp_path / "phone-bin"
    bin_dir.mkdir()
    script = bin_dir / "termux-battery-status"
    script.write_text(FAKE.format(state=state))
    script.chmod(0o755)
    cluster = LocalCluster(tmp_path / "mesh", extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
        phone = cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[2]}:0", env={
            "MESHCLOUD_RUNTIMES": "process",
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
        a, b = cluster.agents[0], cluster.agents[1]
        wait_until(lambda: all(sum(m["state"] == "alive" for m in x.get("/v1/members")) == 3
                               and len(x.get("/v1/images")["mesh"]) == 3
                               for x in cluster.agents), 60,
                   message="three nodes alive, their offers known")
        seen = {m["id"]: m["capacity"] for m in a.get("/v1/members")}[phone.node_id]
        assert seen["battery"] == 80 and seen["on_ac"] is True and not seen["low_power"]

        name = name_placed_on(phone, cluster.agents)
        a.cli("run", name, "--command",
              f"{WORKLOAD_PYTHON} -c 'import time; time.sleep(3600)'", "--allow-battery")
        wait_until(lambda: running_on(a, phone) == [f"{name}-0"], 60,
                   message="the replica runs on the phone")

        # on battery, above the threshold: it stays (the workload allows battery nodes;
        # under the threshold nothing does)
        battery(state, 50, "UNPLUGGED")
        wait_until(lambda: {m["id"]: m["capacity"] for m in a.get("/v1/members")}[
            phone.node_id]["on_ac"] is False, 20, message="the phone seen on battery")
        assert running_on(a, phone) == [f"{name}-0"]

        low_at = time.monotonic()
        battery(state, 25, "UNPLUGGED")
        wait_until(lambda: not running_on(a, phone) and (
            running_on(a, a) + running_on(a, b)) == [f"{name}-0"], HANDOFF_BOUND,
            interval=0.1, message="the replica handed off to a mains-powered node")
        took = time.monotonic() - low_at
        print(f"\nhandoff {took:.2f} s after the battery dropped under 30 %")
        members = {m["id"]: m["capacity"] for m in b.get("/v1/members")}
        assert members[phone.node_id]["low_power"] is True

        # a second workload is not placed on the low phone even when it would rank first
        other = name_placed_on(phone, cluster.agents, taken=(name,))
        a.cli("run", other, "--command",
              f"{WORKLOAD_PYTHON} -c 'import time; time.sleep(3600)'", "--allow-battery")
        wait_until(lambda: f"{other}-0" in running_on(a, a) + running_on(a, b), 30,
                   message="the new workload runs on a mains-powered node")
        assert running_on(a, phone) == []

        battery(state, 26, "PLUGGED_USB")  # charging: it takes work again
        wait_until(lambda: not {m["id"]: m["capacity"] for m in a.get("/v1/members")}[
            phone.node_id]["low_power"], 20, message="the phone no longer low")
        a.cli("rm", name)
        a.cli("rm", other)
    finally:
        cluster.close()
