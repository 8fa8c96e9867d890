"""Reconcilers of real nodes (state, transport, API, process runtime) in one process.

Nodes run on the in-memory transport in real time; replicas are real host processes
(``/bin/sh`` then ``sleep``), checked through each node's own runtime. A node stopped with
``mesh.stop`` behaves like a killed agent: its connections die, its processes live on.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

from apps.workloads.errors import SpecError, WorkloadExists
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import SLEEPER, LocalMesh, alive_replicas, wait_for


@pytest.fixture(autouse=True)
def process_runtime_only(monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")


@pytest.fixture
async def mesh3(tmp_path, nursery):
    mesh = await LocalMesh.create(tmp_path, nursery, 3, MemoryNetwork(seed=1))
    yield mesh
    await mesh.close()


def spec(name="svc", replicas=2, **extra):
    return {"name": name, "command": SLEEPER, "replicas": replicas, **extra}


async def placement_of(mesh, workload):
    """{node id: replica names} from every live node's own runtime."""
    out = {}
    for member in mesh.up():
        names = sorted(s.name for s in await alive_replicas(member, workload))
        if names:
            out[member.node_id] = names
    return out


def claims(member, workload):
    return {r["replica"]: r for r in member.service.replica_rows(workload)}


async def wait_running(mesh, workload, count, within=20.0):
    async def check():
        placed = await placement_of(mesh, workload)
        total = sum(len(v) for v in placed.values())
        rows = claims(mesh.up()[0], workload)
        ok = total == count and sum(r["state"] == "running" for r in rows.values()) == count
        return placed if ok else None

    with trio.move_on_after(within):
        while True:
            placed = await check()
            if placed:
                return placed
            await trio.sleep(0.05)
    raise AssertionError(f"{workload}: {count} running replicas not reached; now "
                         f"{await placement_of(mesh, workload)} / "
                         f"{claims(mesh.up()[0], workload)}")


async def test_replicas_run_on_distinct_nodes_and_ps_shows_them_everywhere(mesh3):
    a = mesh3.members[0]
    result = a.service.submit(spec(), replace_existing=False)
    assert result["desired"] == 2 and result["generation"] == 1
    placed = await wait_running(mesh3, "svc", 2)
    assert len(placed) == 2 and all(len(v) == 1 for v in placed.values())
    for member in mesh3.up():  # every node's ps says the same, from its own state
        await wait_for(lambda m=member: all(r["state"] == "running"
                                            for r in claims(m, "svc").values())
                       and len(claims(m, "svc")) == 2, "ps everywhere")
        rows = claims(member, "svc")
        assert {bytes.fromhex(r["node"]) for r in rows.values()} == set(placed)
    with pytest.raises(WorkloadExists):
        a.service.submit(spec(), replace_existing=False)


async def test_crashed_replica_restarts_with_backoff_and_counts_it(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=1), replace_existing=False)
    placed = await wait_running(mesh3, "svc", 1)
    holder = mesh3.member_of(next(iter(placed)))
    status = (await alive_replicas(holder, "svc"))[0]
    os.killpg(int(status.id.split(":")[0]), signal.SIGKILL)
    await wait_for(lambda: claims(a, "svc")[0]["restarts"] == 1
                   and claims(a, "svc")[0]["state"] == "running", "restart reported")
    again = await alive_replicas(holder, "svc")
    assert len(again) == 1 and again[0].id != status.id and again[0].restarts == 1
    assert holder.service.reconciler.core.failures(("svc", 0)) == 1


async def test_dead_node_replica_is_replaced_elsewhere_with_a_higher_fence(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=2), replace_existing=False)
    placed = await wait_running(mesh3, "svc", 2)
    victim_id = next(n for n in placed if n != a.node_id)
    victim = mesh3.member_of(victim_id)
    index = int(placed[victim_id][0].rsplit("-", 1)[1])
    old_fence = claims(a, "svc")[index]["fencing"]
    mesh3.stop(victim)  # the agent dies...
    for path in victim.datadir.path.glob("runtimes/process/*/state.json"):
        from tests.apps.workloads.mesh import kill_recorded
        kill_recorded(path)  # ...and the machine with it
    begun = trio.current_time()
    placed = await wait_running(mesh3, "svc", 2)
    took = trio.current_time() - begun
    assert victim_id not in placed and len(placed) == 2
    row = claims(a, "svc")[index]
    assert row["fencing"] == old_fence + 1 and bytes.fromhex(row["node"]) != victim_id
    assert took < 5.0, f"failover took {took:.1f}s"


async def test_restarted_agent_adopts_its_running_replica(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=3), replace_existing=False)
    await wait_running(mesh3, "svc", 3)
    member = mesh3.members[1]
    before = await alive_replicas(member, "svc")
    mesh3.stop(member)  # agent gone, its process lives on
    await mesh3.start(member)
    await wait_for(lambda: member.service.reconciler.passes > 2, "passes after restart")
    after = await alive_replicas(member, "svc")
    assert [s.id for s in after] == [s.id for s in before], "the replica was not adopted"
    assert after[0].restarts == 0
    await wait_running(mesh3, "svc", 3)


async def test_bad_specs_are_refused_and_the_state_is_untouched(mesh3):
    a = mesh3.members[0]
    roots = {t: a.running.state.merkle_root(t) for t in ("workloads", "replicas")}
    cases = {
        "negative memory": {**spec(), "memory": -5},
        "unknown image": {"name": "img", "image": "localhost/nope:1"},
        "impossible constraint": {**spec(), "constraints": {"labels": {"gpu": "yes"}}},
        "too many replicas": {**spec(), "replicas": 4},
        "singleton of two": {**spec(), "singleton": True},
        "bad name": {**spec(), "name": "Bad_Name"},
        "typo": {**spec(), "replcas": 2},
    }
    for what, data in cases.items():
        with pytest.raises(SpecError) as info:
            a.service.submit(data, replace_existing=True)
        assert info.value.problems, what
    problems = {}
    for what, data in cases.items():
        try:
            a.service.submit(data, replace_existing=True)
        except SpecError as exc:
            problems[what] = " ".join(exc.problems)
    assert "negative" in problems["negative memory"]
    assert "not in any node's store" in problems["unknown image"]
    assert "no live node can run it" in problems["impossible constraint"]
    assert "lacks label gpu=yes" in problems["impossible constraint"]
    assert "only 3 live node(s)" in problems["too many replicas"]
    assert "exactly one replica" in problems["singleton of two"]
    assert "did you mean 'replicas'" in problems["typo"]
    assert {t: a.running.state.merkle_root(t) for t in roots} == roots
    assert a.service.list() == []


async def test_deploy_with_a_new_spec_restarts_replicas_and_bumps_generation(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=2), replace_existing=False)
    first = await wait_running(mesh3, "svc", 2)
    ids = {s.id for m in mesh3.up() for s in await alive_replicas(m, "svc")}
    same = a.service.submit(spec(replicas=2), replace_existing=True)
    assert same["generation"] == 1
    changed = a.service.submit(spec(replicas=2, env={"V": "2"}), replace_existing=True)
    assert changed["generation"] == 2

    async def restarted():
        now = [s for m in mesh3.up() for s in await alive_replicas(m, "svc")]
        return len(now) == 2 and not ({s.id for s in now} & ids)

    with trio.fail_after(20):
        while not await restarted():
            await trio.sleep(0.05)
    assert set(await placement_of(mesh3, "svc")) == set(first)
    await wait_for(lambda: all(r["generation"] == 2 for r in claims(a, "svc").values()),
                   "claims of generation 2")


async def test_scale_stop_start_and_remove(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=1), replace_existing=False)
    await wait_running(mesh3, "svc", 1)
    a.service.scale("svc", 3)
    await wait_running(mesh3, "svc", 3)
    a.service.scale("svc", 2)
    await wait_running(mesh3, "svc", 2)
    a.service.stop("svc")
    with trio.fail_after(20):
        while await placement_of(mesh3, "svc"):
            await trio.sleep(0.05)
    assert a.service.describe("svc")["stopped"]
    a.service.start("svc")
    await wait_running(mesh3, "svc", 2)
    a.service.remove("svc")
    with trio.fail_after(20):
        while await placement_of(mesh3, "svc"):
            await trio.sleep(0.05)
    await wait_for(lambda: all(not m.service.replica_rows() for m in mesh3.up())
                   and all(not m.running.state.scan("replicas") for m in mesh3.up()),
                   "claims gone everywhere")


async def test_drain_moves_every_replica_before_it_is_safe(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(name="one", replicas=2), replace_existing=False)
    a.service.submit(spec(name="two", replicas=1), replace_existing=False)
    await wait_running(mesh3, "one", 2)
    await wait_running(mesh3, "two", 1)
    busiest = max(mesh3.up(), key=lambda m: len(m.service.reconciler.last.observed))
    assert not (await a.service.drain_progress(busiest.node_id))["safe"]
    a.service.set_drain(busiest.node_id, True)
    with trio.fail_after(20):
        while not (progress := await a.service.drain_progress(busiest.node_id))["safe"]:
            assert progress["claims"] or progress["running"] or not progress["draining"]
            # make before break: the moving replicas keep running until their new copy runs
            running = [s for m in mesh3.up() for s in await alive_replicas(m, "one")]
            assert len(running) >= 2, "a replica stopped before its replacement ran"
            await trio.sleep(0.02)
    assert await alive_replicas(busiest) == []
    others = await placement_of(mesh3, "one")
    assert busiest.node_id not in others and len(others) == 2
    await wait_running(mesh3, "two", 1)
    a.service.set_drain(busiest.node_id, False)
    assert not (await a.service.drain_progress(busiest.node_id))["draining"]


async def test_logs_of_a_replica_on_another_node(mesh3):
    a = mesh3.members[0]
    a.service.submit(spec(replicas=1, constraints={"min_cpus": 0}), replace_existing=False)
    placed = await wait_running(mesh3, "svc", 1)
    asker = next(m for m in mesh3.up() if m.node_id not in placed)
    targets = asker.service.log_targets("svc", None)

    async def read() -> list[str]:
        send, receive = trio.open_memory_channel(10)
        await asker.service.stream_logs("svc", targets, follow=False, tail=None, send=send)
        return [line async for line in receive]

    with trio.fail_after(10):  # "running" can come before the process printed its line
        while not (lines := await read()):
            await trio.sleep(0.05)
    assert lines == ["started svc-0"]
