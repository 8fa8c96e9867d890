"""Issue 4 acceptance: membership between real agent processes on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest

from sim.agents import wait_until

pytestmark = [pytest.mark.real, pytest.mark.slow]


def states(agent) -> dict[str, dict]:
    return {m["id"]: m for m in agent.get("/v1/members")}


def test_five_agents_detect_a_kill_a_leave_and_a_restart(cluster_factory):
    started = time.monotonic()
    cluster = cluster_factory(5, chain=True)  # each joins through the node before it
    agents = cluster.agents
    ids = {a.node_id for a in agents}

    def all_see_five() -> bool:
        return all({i for i, m in states(a).items() if m["state"] == "alive"} == ids
                   for a in agents)

    wait_until(all_see_five, 10, message="every node lists 5 alive")
    first = states(agents[0])[agents[0].node_id]
    assert first["capacity"]["cpu_cores"] >= 1 and first["capacity"]["ram_total"] > 0
    assert first["addresses"] and first["last_change"] > 0

    # kill -9 one: every survivor marks it dead within 6 s
    victim, survivors = agents[4], agents[:4]
    old_incarnation = states(agents[0])[victim.node_id]["incarnation"]
    killed_at = time.monotonic()
    victim.kill()
    wait_until(lambda: all(states(a)[victim.node_id]["state"] == "dead" for a in survivors),
               6, message="survivors mark the killed node dead")
    detected = time.monotonic() - killed_at
    assert detected < 6.0

    # a graceful leave: survivors show "left" within 2 s
    leaver, rest = agents[3], agents[:3]
    result = leaver.cli("leave")
    assert "left the mesh" in result.stdout
    left_at = time.monotonic()
    wait_until(lambda: all(states(a)[leaver.node_id]["state"] == "left" for a in rest), 2,
               message="survivors show the leaver as left")
    assert time.monotonic() - left_at < 2.0
    assert leaver.process.wait(timeout=15) == 0  # the agent stops after leaving

    # restart the killed node on its data dir: alive again, with a higher incarnation
    victim.start()
    wait_until(lambda: all(states(a)[victim.node_id]["state"] == "alive" for a in rest), 10,
               message="the restarted node is alive again")
    assert all(states(a)[victim.node_id]["incarnation"] > old_incarnation for a in rest)

    # the CLI shows the members with state, addresses and capacity
    status = json.loads(agents[0].cli("status", "--json").stdout)
    by_id = {m["id"]: m for m in status["members"]}
    assert by_id[leaver.node_id]["state"] == "left"
    assert by_id[victim.node_id]["state"] == "alive"
    table = agents[0].cli("status").stdout
    assert "alive" in table and "left" in table
    events = [e["kind"] for e in agents[0].get("/v1/events?limit=500&kind=member")]
    assert {"member.joined", "member.failed", "member.left"} <= set(events)
    print(f"detection of kill -9: {detected:.2f} s; total {time.monotonic() - started:.0f} s")
