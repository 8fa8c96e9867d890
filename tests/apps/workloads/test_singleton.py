"""Singletons under leases, with real nodes in one process (process runtime, real time).

The ground truth is each node's own runtime: a copy "runs" when that node's runtime says
its process is alive.
"""

from __future__ import annotations

import pytest
import trio

from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import SLEEPER, LocalMesh, alive_replicas, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def process_runtime_only(monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")


async def copies(mesh) -> dict[bytes, list]:
    out = {}
    for member in mesh.up():
        alive = await alive_replicas(member, "db")
        if alive:
            out[member.node_id] = alive
    return out


async def test_singleton_never_runs_twice_across_a_partition(tmp_path, nursery):
    network = MemoryNetwork(seed=3, dead_after=2.0, dial_timeout=1.0)
    mesh = await LocalMesh.create(tmp_path, nursery, 5, network)
    try:
        a = mesh.members[0]
        a.service.submit({"name": "db", "command": SLEEPER, "singleton": True},
                         replace_existing=False)
        with trio.fail_after(40):
            while len(found := await copies(mesh)) != 1:
                await trio.sleep(0.05)
        holder_id = next(iter(found))
        status = found[holder_id][0]
        row = a.service.replica_rows("db")[0]
        await wait_for(lambda: a.service.replica_rows("db")[0]["state"] == "running",
                       "claim running")
        row = a.service.replica_rows("db")[0]
        assert bytes.fromhex(row["node"]) == holder_id
        assert status.fencing_token == row["fencing"] >= 1

        others = [m.node_id for m in mesh.members if m.node_id != holder_id]
        minority = {holder_id, others[0]}
        majority = set(others[1:])
        network.partition(minority, majority)
        max_seen = 0
        majority_copy = None
        with trio.fail_after(60):
            while majority_copy is None:
                now = await copies(mesh)
                max_seen = max(max_seen, sum(len(v) for v in now.values()))
                assert max_seen <= 1, f"two copies at once: {now}"
                majority_copy = next((n for n in now if n in majority), None)
                await trio.sleep(0.02)
        assert holder_id not in await copies(mesh)
        network.heal()
        await mesh.wait_all_connected()
        for _ in range(150):  # after healing, still one copy, and it stays where it is
            now = await copies(mesh)
            assert list(now) == [majority_copy], f"after the heal: {now}; " + str(
                [(m.node_id.hex()[:8], [e for e in m.running.events.recent(50)
                                        if "replica" in e["kind"]]) for m in mesh.up()])
            await trio.sleep(0.02)
        new = a.service.replica_rows("db")[0]
        assert new["fencing"] > row["fencing"]
        assert bytes.fromhex(new["node"]) == majority_copy
    finally:
        await mesh.close()


async def test_agent_restart_keeps_the_singleton_and_a_dead_agent_s_watchdog_stops_it(
        tmp_path, nursery):
    """A restarted agent resumes its lease (same process, no restart); an agent that dies
    with its process running leaves the stop to its watchdog, before the lease could be
    granted to anyone else; then another node takes over."""
    from apps.workloads.watchdog import read_watched

    network = MemoryNetwork(seed=4, dead_after=2.0, dial_timeout=1.0)
    mesh = await LocalMesh.create(tmp_path, nursery, 3, network)
    try:
        a = mesh.members[0]
        a.service.submit({"name": "db", "command": SLEEPER, "singleton": True},
                         replace_existing=False)
        with trio.fail_after(40):
            while len(found := await copies(mesh)) != 1:
                await trio.sleep(0.05)
        holder = mesh.member_of(next(iter(found)))
        before = found[holder.node_id][0]
        await wait_for(lambda: read_watched(holder.datadir.path), "watch list written")

        mesh.stop(holder)
        await mesh.start(holder)
        for _ in range(60):  # longer than a lease of the local profile
            now = await copies(mesh)
            assert list(now) == [holder.node_id] and now[holder.node_id][0].id == before.id
            await trio.sleep(0.12)

        pid = int(before.id.split(":")[0])
        await wait_for(lambda: (holder.datadir.path / "workloads" / "watchdog.pid").exists(),
                       "watchdog started")
        mesh.stop(holder)  # the agent dies; its process does not
        others = [m for m in mesh.members if m is not holder]
        with trio.fail_after(40):
            while True:
                alive_here = pid_alive(pid)
                elsewhere = [s for m in others for s in await alive_replicas(m, "db")]
                assert not (alive_here and elsewhere), "two copies: watchdog too late"
                if elsewhere and not alive_here:
                    break
                await trio.sleep(0.02)
    finally:
        await mesh.close()


def pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
