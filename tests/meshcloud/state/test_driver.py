"""The trio driver on the in-memory transport under a virtual clock."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from apps.workloads.tables import REPLICAS, WORKLOADS, WorkloadRecord
from meshcloud.state.config import local
from meshcloud.state.driver import StateChanged, StateDriver
from meshcloud.state.kv import MemoryKv
from meshcloud.state.tables import EVENTS, MEMBERSHIP, NODES, TableMembershipRecords
from meshcloud.testing import TestMesh, TrioClock
from meshcloud.transport.memory import MemoryNetwork


async def start_cluster(nursery, n, *, loss=0.0, seed=0):
    mesh = TestMesh.with_members(n)
    network = MemoryNetwork(seed=seed, latency=0.005, jitter=0.005, loss=loss)
    transports = [network.add(m.key, m.authenticator) for m in mesh.members]
    ids = [t.local_id for t in transports]
    for t in transports:
        for other in transports:
            if other is not t:
                t.set_addresses(other.local_id, other.listen_addresses)
        await nursery.start(t.run)
    drivers = []
    for i, t in enumerate(transports):
        def view(me=t.local_id):  # what membership gossip would say: the reachable peers
            return [j for j in ids if network.reachable(me, j)]

        driver = StateDriver(t, MemoryKv(), view, config=local(),
                             rng=random.Random(seed * 100 + i), clock=TrioClock())
        for schema in (NODES, WORKLOADS, REPLICAS, EVENTS, MEMBERSHIP):
            driver.open_table(schema)
        await nursery.start(driver.run)
        drivers.append(driver)
    return network, ids, drivers


def roots(drivers, table="workloads"):
    return [d.merkle_root(table) for d in drivers]


async def test_five_nodes_partition_then_heal_converge(nursery, autojump_clock):
    network, ids, drivers = await start_cluster(nursery, 5, loss=0.05, seed=1)
    for i, driver in enumerate(drivers):
        driver.put("workloads", f"app{i}", WorkloadRecord(kind="service", spec={"i": i}))
    await trio.sleep(5)
    assert len(set(roots(drivers))) == 1
    network.partition(set(ids[:2]), set(ids[2:]))
    await trio.sleep(5)
    drivers[0].put("workloads", "shared", WorkloadRecord(kind="service", spec={"side": "a"}))
    await trio.sleep(0.5)  # on the virtual clock: side b writes strictly later
    drivers[4].put("workloads", "shared", WorkloadRecord(kind="site", spec={"side": "b"}))
    drivers[3].delete("workloads", "app1")
    drivers[1].put("workloads", "left-only", WorkloadRecord(kind="function"))
    with trio.fail_after(30):
        while len(set(roots(drivers[:2]))) != 1 or len(set(roots(drivers[2:]))) != 1:
            await trio.sleep(1)
    assert roots(drivers)[0] != roots(drivers)[4]
    network.heal()
    with trio.fail_after(60):
        while len(set(roots(drivers))) != 1:
            await trio.sleep(1)
    rows = [d.scan("workloads") for d in drivers]
    assert all(r == rows[0] for r in rows)
    names = [key[0] for key, _ in rows[0]]
    assert names == ["app0", "app2", "app3", "app4", "left-only", "shared"]
    assert drivers[2].get("workloads", "shared").spec == {"side": "b"}  # later write won
    stats = drivers[0].statistics()
    assert stats.syncs_completed > 0 and stats.datagrams_received > 0


async def test_subscribers_see_local_and_remote_changes(nursery, autojump_clock):
    _, _, drivers = await start_cluster(nursery, 2)
    events = drivers[1].subscribe("workloads")
    drivers[0].put("workloads", "web", WorkloadRecord(kind="service"))
    with trio.fail_after(5):
        event = await events.receive()
    assert event == StateChanged("workloads", ("web",), None, WorkloadRecord(kind="service"))
    drivers[1].delete("workloads", "web")
    with trio.fail_after(5):
        event = await events.receive()
    assert event.old == WorkloadRecord(kind="service") and event.new is None


async def test_a_watch_wakes_on_local_and_remote_changes_of_its_tables(nursery,
                                                                      autojump_clock):
    from meshcloud.state.errors import UnknownTableError

    _, _, drivers = await start_cluster(nursery, 2)
    watch = drivers[1].watch("workloads", "replicas")
    assert not watch.changed
    start = trio.current_time()
    assert not await watch.wait(start + 30)  # nothing changed: waits until the deadline
    assert trio.current_time() == pytest.approx(start + 30)
    drivers[1].log_event("test", "a row of a table it does not watch")
    assert not watch.changed
    drivers[0].put("workloads", "web", WorkloadRecord(kind="service"))  # remote news
    with trio.fail_after(5):
        assert await watch.wait()
    assert watch.changed and watch.changes == 1
    watch.clear()
    assert not watch.changed
    for i in range(SUBSCRIBER_OVERFLOW):  # never overflows, unlike a subscription
        drivers[1].put("workloads", f"w{i}", WorkloadRecord(kind="service"))
    assert watch.changed and watch.changes == 1 + SUBSCRIBER_OVERFLOW
    watch.clear()
    drivers[1].delete("workloads", "web")
    assert watch.changed
    with pytest.raises(UnknownTableError):
        drivers[1].watch("buckets")


SUBSCRIBER_OVERFLOW = 5000


async def test_sync_with_a_peer_on_demand(nursery, autojump_clock):
    network, ids, drivers = await start_cluster(nursery, 2)
    network.loss = 1.0  # news is lost: only anti-entropy can carry the write
    drivers[0].put("workloads", "web", WorkloadRecord(kind="service"))
    stats = await drivers[1].sync_with(ids[0])
    assert stats.pulled == 1
    assert drivers[1].get("workloads", "web") == WorkloadRecord(kind="service")


async def test_membership_records_are_replicated(nursery, autojump_clock):
    _, ids, drivers = await start_cluster(nursery, 3)
    from meshcloud.identity.keys import SigningKey
    from meshcloud.revocation import sign_revocation
    from meshcloud.state.tables import MembershipRecord

    root = SigningKey.generate()
    records = [TableMembershipRecords(d, root.public) for d in drivers]
    records[0].record_redemption(b"invite", ids[1], 1000)
    records[2].add_revocation("node", b"evil" * 8, 2000,
                              sign_revocation(root, "node", b"evil" * 8, 2000))
    # a member writing a revocation row without the root key's signature revokes nothing
    drivers[1].put("membership", ("revoked_node", ids[0], b""), MembershipRecord(at_ms=1))
    drivers[1].put("membership", ("revoked_node", ids[2], b""),
                   MembershipRecord(at_ms=1, signature=sign_revocation(root, "node", ids[2], 2)))
    await trio.sleep(3)
    for r in records:
        assert r.redeemed_by(b"invite") == {ids[1]}
        assert r.is_revoked(b"evil" * 8, b"other")
        assert not r.is_revoked(ids[1], b"invite")
        assert not r.is_revoked(ids[0], b"")
        assert not r.is_revoked(ids[2], b"")
        assert r.revocations() == [("node", b"evil" * 8, 2000)]


async def test_unknown_table_is_a_clear_error(nursery, autojump_clock):
    from meshcloud.state.errors import UnknownTableError

    _, _, drivers = await start_cluster(nursery, 1)
    with pytest.raises(UnknownTableError):
        drivers[0].put("buckets", "b", {})
    assert WORKLOADS.name in {t.name for t in drivers[0].statistics().tables}


async def test_events_are_time_ordered_and_replicated(nursery, autojump_clock):
    _, ids, drivers = await start_cluster(nursery, 2)
    drivers[0].log_event("node", "joined")
    await trio.sleep(1)
    drivers[1].log_event("workload", "web started", subject="web")
    await trio.sleep(1)
    newest_first = drivers[0].scan("events", reverse=True)
    assert [e.message for _, e in newest_first] == ["web started", "joined"]
    assert [key[1] for key, _ in newest_first] == [ids[1], ids[0]]


async def test_sessions_served_at_once_are_bounded(nursery, autojump_clock):
    """A burst of peers syncing with one node: it serves ``sync_concurrency`` sessions at
    a time, the others wait their turn (and all complete)."""
    _network, ids, drivers = await start_cluster(nursery, 6, seed=3)
    busy = drivers[0]
    limit = busy.config.sync_concurrency
    assert limit < 5
    peak = 0
    serve = busy._serve_session

    async def watched(stream):
        nonlocal peak
        peak = max(peak, busy._serving.borrowed_tokens)
        await trio.sleep(0.5)  # a slow session: the others pile up meanwhile
        await serve(stream)

    busy._serve_session = watched
    results = []

    async def sync(driver):
        results.append(await driver.sync_with(ids[0]))

    async with trio.open_nursery() as inner:
        for driver in drivers[1:]:
            inner.start_soon(sync, driver)
        await trio.sleep(0.25)
        assert busy._serving.borrowed_tokens == limit
        assert busy._serving.statistics().tasks_waiting == 5 - limit
    assert peak == limit and len(results) == 5
    assert busy.statistics().sync_requests_served >= 5


async def test_sessions_started_at_once_are_bounded(nursery, autojump_clock):
    _network, ids, drivers = await start_cluster(nursery, 6, seed=4)
    me = drivers[0]
    limit = me.config.sync_concurrency
    async with trio.open_nursery() as inner:
        for peer in ids[1:]:
            inner.start_soon(me.sync_with, peer)
        await trio.testing.wait_all_tasks_blocked()  # every session waits on the network
        assert me._sessions.borrowed_tokens == limit
        assert len(me.core.sessions) == limit  # the others have not started yet
    assert me._sessions.borrowed_tokens == 0 and not me.core.sessions
