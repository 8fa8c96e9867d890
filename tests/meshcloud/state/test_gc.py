"""Two-phase tombstone GC: deletes everywhere once every live member has the tombstone,
and never before."""

from __future__ import annotations

import dataclasses

import pytest

from meshcloud.state.config import local
from meshcloud.state.schema import TableSchema
from sim.statemesh import StateMesh

SCHEMA = TableSchema("t", partition=(str,))
CONFIG = dataclasses.replace(local(), sync_interval=3.0)


def mesh(n=4, **kw) -> StateMesh:
    return StateMesh(n, [(SCHEMA, None)], config=CONFIG, **kw)


def entry(m: StateMesh, node: bytes):
    return m.cores[node].table("t").get_entry(SCHEMA.key_bytes("k"))


def test_tombstone_is_collected_on_every_node():
    m = mesh()
    a = m.ids[0]
    m.put(a, "t", "k", "v")
    m.run_for(1)
    m.delete(m.ids[1], "t", "k")
    m.run_for(1)
    assert all(entry(m, n).is_tombstone for n in m.ids)
    m.run_for(CONFIG.gc_delay + 3 * CONFIG.gc_interval)
    assert all(entry(m, n) is None for n in m.ids)
    assert m.converged("t")
    assert sum(c.statistics().gc_rounds_completed for c in m.cores.values()) >= 1


def test_gc_waits_for_a_live_member_that_has_not_seen_the_tombstone():
    m = mesh(views_follow_partitions=False)  # d stays in every view while cut off
    a, b, c, d = m.ids
    m.put(a, "t", "k", "v")
    m.run_for(1)
    m.partition({a, b, c}, {d})
    m.delete(a, "t", "k")
    m.run_for(CONFIG.gc_delay + 6 * CONFIG.gc_interval)
    assert entry(m, d).value() == "v"  # d never saw the deletion...
    for node in (a, b, c):  # ...so nobody may drop the tombstone
        assert entry(m, node) is not None and entry(m, node).is_tombstone
    assert sum(c.statistics().gc_rounds_abandoned for c in m.cores.values()) >= 1
    m.heal()
    m.run_for(CONFIG.gc_delay + 8 * CONFIG.gc_interval)
    assert all(entry(m, n) is None for n in m.ids)  # collected, and "v" never came back


def test_a_newer_write_survives_gc_of_the_older_tombstone():
    m = mesh(views_follow_partitions=False)
    a, b, c, d = m.ids
    m.put(a, "t", "k", "v1")
    m.run_for(1)
    m.delete(a, "t", "k")
    m.run_for(1)
    # d writes again later, but the news is lost: only d has it when GC starts.
    m.partition({a, b, c}, {d})
    m.run_for(CONFIG.gc_delay)
    m.put(d, "t", "k", "v2")
    m.heal()
    m.run_for(CONFIG.gc_delay + 6 * CONFIG.gc_interval)
    assert all(entry(m, n) is not None and entry(m, n).value() == "v2" for n in m.ids)


@pytest.mark.parametrize("seed", range(4))
def test_under_loss_no_tombstone_is_dropped_before_every_live_member_has_it(seed):
    m = mesh(5, seed=seed, loss=0.4, views_follow_partitions=False)
    writer, late = m.ids[0], m.ids[4]
    m.put(writer, "t", "k", "v")
    m.run_for(0.5)
    m.partition(set(m.ids[:4]), {late})
    m.delete(writer, "t", "k")
    seen: set[bytes] = set()
    had: set[bytes] = set()
    deleted_somewhere = False
    for _ in range(int((CONFIG.gc_delay + 30) / 0.05)):
        m.run_for(0.05)
        if m.now > CONFIG.gc_delay + 8:
            m.heal()  # late joins back: only then may the tombstone go
        for node in m.ids:
            current = entry(m, node)
            if current is not None:
                had.add(node)
                if current.is_tombstone:
                    seen.add(node)
            elif node in had:
                deleted_somewhere = True
        if deleted_somewhere:
            assert seen == set(m.ids), "a tombstone was dropped before every member had it"
    assert deleted_somewhere  # loss slows GC down but does not stop it


def test_each_coordinator_works_through_its_own_tombstones():
    """With small batches, a node does not wait behind tombstones other nodes coordinate:
    40 tombstones, batches of 2, 3 nodes: ~7 passes, not 20."""
    config = dataclasses.replace(CONFIG, gc_batch=2)
    m = StateMesh(3, [(SCHEMA, None)], config=config)
    for i in range(40):
        m.put(m.ids[i % 3], "t", f"k{i}", i)
    m.run_for(1)
    for i in range(40):
        m.delete(m.ids[i % 3], "t", f"k{i}")
    m.run_for(config.gc_delay + 10 * config.gc_interval)
    assert all(c.table("t").count() == 0 for c in m.cores.values())
