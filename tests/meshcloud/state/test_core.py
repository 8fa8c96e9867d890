"""StateCore on an in-memory event queue: news, anti-entropy, partitions, sharding, HLC."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from apps.workloads.tables import REPLICAS, WORKLOADS, WorkloadRecord
from meshcloud.clock import hlc_physical
from meshcloud.state.config import StateConfig, local
from meshcloud.state.core import StateCore
from meshcloud.state.kv import MemoryKv
from meshcloud.state.messages import EntryBatch
from meshcloud.state.outputs import SendDatagram
from meshcloud.state.replication import Sharded
from meshcloud.state.schema import TableSchema
from meshcloud.state.table import Change
from meshcloud.state.tables import EVENTS, MEMBERSHIP, NODES
from sim.statemesh import StateMesh

KV = TableSchema("kv", partition=(str,))
NO_SYNC = StateConfig(sync_interval=1e9)  # news only: anti-entropy never runs


def test_news_reaches_every_node_without_anti_entropy():
    m = StateMesh(5, [(KV, None)], seed=1, config=NO_SYNC)
    for i in range(20):
        m.put(m.ids[i % 5], "kv", f"k{i}", i)
    m.run_for(1)
    assert m.converged("kv")
    assert all(len(c.scan("kv")) == 20 for c in m.cores.values())
    assert sum(c.statistics().syncs_started for c in m.cores.values()) == 0


def test_each_node_forwards_news_once():
    outputs = []
    m = StateMesh(30, [(KV, None)], seed=2, config=NO_SYNC,
                  on_output=lambda node, out: outputs.append((node, out)))
    m.put(m.ids[0], "kv", "k", "v")
    m.run_for(1)
    sends = [(node, out) for node, out in outputs if isinstance(out, SendDatagram)]
    senders = [node for node, _ in sends]
    fanout = NO_SYNC.fanout(29)
    assert fanout == 4
    assert all(senders.count(node) <= fanout for node in set(senders))
    assert len(sends) <= 30 * fanout  # dies out: about fanout x N datagrams in all


def test_anti_entropy_heals_a_partition_under_loss():
    config = dataclasses.replace(StateConfig(), sync_interval=5.0)
    m = StateMesh(60, [(KV, None)], seed=3, loss=0.1, config=config)
    left, right = set(m.ids[:30]), set(m.ids[30:])
    m.run_for(1)
    m.partition(left, right)
    rnd = random.Random(3)
    for i in range(150):
        m.put(rnd.choice(m.ids), "kv", f"k{i % 100}", i)  # conflicting writes across the cut
        m.run_for(0.05)
    m.run_for(20)
    assert m.converged("kv", left) and m.converged("kv", right)
    assert not m.converged("kv")
    m.heal()
    took = m.run_until_converged(["kv"], step=1.0, limit=120)
    assert took is not None and took <= 60
    values = {tuple(c.scan("kv")) for c in m.cores.values()}
    assert len(values) == 1 and len(next(iter(values))) == 100


def test_concurrent_writes_resolve_to_the_same_winner_everywhere():
    m = StateMesh(4, [(KV, None)], seed=4, config=dataclasses.replace(local()))
    a, b, c, d = m.ids
    m.partition({a, b}, {c, d})
    m.put(a, "kv", "x", "from-a")
    m.run_for(0.5)
    m.put(c, "kv", "x", "from-c")  # later in HLC order
    m.run_for(5)
    m.heal()
    assert m.run_until_converged(["kv"], limit=60) is not None
    assert {core.get("kv", "x") for core in m.cores.values()} == {"from-c"}


def test_a_write_after_reading_wins_even_with_a_slow_clock():
    """HLC: B's clock is 10 s behind, but B's write after seeing A's is newer."""
    ids = [b"a" * 32, b"b" * 32]
    a = StateCore(ids[0], MemoryKv(), lambda: ids, wall_offset_ms=1_000_000)
    b = StateCore(ids[1], MemoryKv(), lambda: ids, wall_offset_ms=990_000)
    for core in (a, b):
        core.open_table(KV)
    sent = [o for o in a.put("kv", "x", "old", now=1.0) if isinstance(o, SendDatagram)]
    b.on_datagram(ids[0], sent[0].msg, now=1.0)
    outputs = b.put("kv", "x", "new", now=1.0)
    for out in outputs:
        if isinstance(out, SendDatagram):
            a.on_datagram(ids[1], out.msg, now=1.0)
    assert a.get("kv", "x") == b.get("kv", "x") == "new"


def test_changes_are_reported_and_bad_datagrams_change_nothing():
    ids = [b"a" * 32, b"b" * 32]
    core = StateCore(ids[0], MemoryKv(), lambda: ids)
    core.open_table(WORKLOADS)
    outputs = core.put("workloads", "web", WorkloadRecord(kind="service"), now=0.0)
    changes = [o for o in outputs if isinstance(o, Change)]
    assert len(changes) == 1 and changes[0].table == "workloads"
    root = core.merkle_root("workloads")
    for bad in (EntryBatch(table="workloads", entries=((b"\x02web\x00", b"\xf6"),)),
                EntryBatch(table="nope", entries=()),
                "not a message"):
        assert core.on_datagram(ids[1], bad, now=1.0) == []
    assert core.merkle_root("workloads") == root
    assert core.statistics().datagrams_rejected == 3


def test_sharded_table_lives_on_rf_holders_and_moves_when_one_dies():
    sharded = Sharded(rf=3, read_quorum=2, write_quorum=2)
    config = dataclasses.replace(StateConfig(), sync_interval=2.0)
    m = StateMesh(12, [(KV, sharded)], seed=5, config=config)
    for i in range(60):
        m.put(m.ids[i % 12], "kv", f"obj{i}", i)
    m.run_for(20)
    view = frozenset(m.ids)
    table = m.cores[m.ids[0]].table("kv")
    for i in range(60):
        key = KV.key_bytes(f"obj{i}")
        holders = sharded.storage_nodes(table.schema.partition_of_key_bytes(key), view)
        have = {n for n in m.ids if m.cores[n].table("kv").get_entry(key) is not None}
        assert have == set(holders), f"obj{i} should live on exactly its 3 holders"
    victim = m.ids[0]
    m.crash(victim)
    m.run_for(60)
    view = frozenset(m.ids) - {victim}
    for i in range(60):
        key = KV.key_bytes(f"obj{i}")
        holders = sharded.storage_nodes(table.schema.partition_of_key_bytes(key), view)
        assert all(m.cores[n].table("kv").get_entry(key) is not None for n in holders)


def test_sharded_anti_entropy_finds_partners_in_a_large_mesh():
    """60 nodes, rf = 3: each node holds ~13 of 256 partitions, so a random peer rarely
    shares one; anti-entropy must pick partners that do. News is lost (loss = 1 for
    the writes), so only anti-entropy can place the copies."""
    sharded = Sharded(rf=3)
    config = dataclasses.replace(StateConfig(), sync_interval=2.0)
    m = StateMesh(60, [(KV, sharded)], seed=6, config=config)
    m.loss = 1.0
    holders_of = {}
    view = frozenset(m.ids)
    table = m.cores[m.ids[0]].table("kv")
    for i in range(40):
        key = KV.key_bytes(f"obj{i}")
        holders = sharded.storage_nodes(table.schema.partition_of_key_bytes(key), view)
        holders_of[key] = holders
        m.put(holders[0], "kv", f"obj{i}", i)  # only the first holder has it
    m.loss = 0.0
    m.run_for(60)
    for key, holders in holders_of.items():
        assert all(m.cores[n].table("kv").get_entry(key) is not None for n in holders)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MESHCLOUD_SLOW"), reason="set MESHCLOUD_SLOW=1")
def test_thousand_nodes_with_loss_and_a_partition_converge():
    """The simulator's scenario at full size (~15 s of CPU): 1,000 nodes, 10 % loss."""
    config = dataclasses.replace(StateConfig(), sync_interval=10.0)
    m = StateMesh(1000, [(KV, None)], seed=7, loss=0.1, config=config)
    m.run_for(1)
    half, other = m.ids[:500], m.ids[500:]
    m.partition(half, other)
    for k in range(100):
        m.put(m.ids[(k * 7) % 1000], "kv", f"w{k}", {"n": k})
    m.run_for(30)
    assert m.converged("kv", half) and m.converged("kv", other)
    m.heal()
    took = m.run_until_converged(["kv"], step=5, limit=300)
    assert took is not None and took <= 60


def test_a_restarted_node_stamps_past_its_old_writes_even_if_its_clock_went_back():
    store, me, wall = MemoryKv(), b"\x01" * 32, 1_800_000_000_000

    def core(wall_offset_ms: int) -> StateCore:
        node = StateCore(me, store, lambda: frozenset(), wall_offset_ms=wall_offset_ms)
        for schema in (NODES, WORKLOADS, REPLICAS, EVENTS, MEMBERSHIP):
            node.open_table(schema)
        return node

    first = core(wall)
    first.put(WORKLOADS.name, "web", WorkloadRecord(kind="service", spec={"v": 1}), 5.0)
    # it restarts with its wall clock an hour behind (no RTC, a clock set by hand)
    again = core(wall - 3_600_000)
    again.put(WORKLOADS.name, "web", WorkloadRecord(kind="service", spec={"v": 2}), 5.0)
    assert again.table(WORKLOADS.name).get("web").spec == {"v": 2}  # the new write wins
    assert hlc_physical(again.timestamp(6.0)) > wall + 5_000


def test_a_burst_of_writes_shares_one_merkle_transaction():
    """Each Merkle flush is a write transaction (an fsync on disk): writes arriving close
    together wait ``merkle_delay`` and are applied together, not one flush per write."""
    ids = [bytes([i]) * 32 for i in range(2)]
    core = StateCore(ids[0], MemoryKv(), lambda: ids, config=NO_SYNC)
    core.open_table(KV)
    table = core.table("kv")
    flushes = []
    original = table.merkle.flush
    table.merkle.flush = lambda limit=1000: flushes.append(original(limit)) or flushes[-1]
    core.on_timer(0.5)  # the workers' first runs
    for i in range(20):
        core.put("kv", f"k{i}", i, 1.0 + i * 0.01)
        core.on_timer(1.0 + i * 0.01)
    assert table.merkle.todo_count() == 20 and not any(flushes)
    assert core.workers.next_deadline() == pytest.approx(1.0 + NO_SYNC.merkle_delay)
    core.on_timer(1.0 + NO_SYNC.merkle_delay)
    assert table.merkle.todo_count() == 0 and [n for n in flushes if n] == [20]
