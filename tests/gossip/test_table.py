"""MemberTable: counts, sampling, probe order, lazy removal."""

from __future__ import annotations

import random

from gossip.capacity import Capacity
from gossip.member import Member, MemberState
from gossip.messages import Alive
from gossip.table import SCAN_BELOW, MemberTable

ME = b"\0" * 32


def member(i: int, now: float = 0.0) -> Member:
    return Member(Alive(node=i.to_bytes(32, "big"), incarnation=0, addresses=(),
                        capacity=Capacity(), public_key=b"", signature=b""), now=now)


def table_of(n: int, seed: int = 1) -> MemberTable:
    table = MemberTable(random.Random(seed))
    table.add(Member(Alive(node=ME, incarnation=0, addresses=(), capacity=Capacity(),
                           public_key=b"", signature=b""), now=0.0))
    for i in range(1, n):
        table.add(member(i))
    return table


def test_counts_follow_every_transition():
    table = table_of(5)
    m = table.get((1).to_bytes(32, "big"))
    table.set_state(m, MemberState.SUSPECT, 0, 1.0)
    table.set_state(table.get((2).to_bytes(32, "big")), MemberState.DEAD, 0, 1.0)
    assert table.live_count == 4
    assert table.counts[MemberState.DEAD] == 1
    table.remove((2).to_bytes(32, "big"))
    assert table.counts[MemberState.DEAD] == 0 and len(table) == 4


def test_probe_order_visits_every_live_member_once_per_pass():
    table = table_of(20)
    first = [table.next_probe_target(ME) for _ in range(19)]
    second = [table.next_probe_target(ME) for _ in range(19)]
    assert sorted(first) == sorted(second) and len(set(first)) == 19
    assert ME not in first and first != second  # reshuffled


def test_probe_order_skips_the_dead_and_reaches_newcomers_this_pass():
    table = table_of(10)
    dead = (3).to_bytes(32, "big")
    table.set_state(table.get(dead), MemberState.DEAD, 0, 0.0)
    seen = [table.next_probe_target(ME) for _ in range(4)]
    table.add(member(50))
    seen += [table.next_probe_target(ME) for _ in range(5)]
    assert dead not in seen and (50).to_bytes(32, "big") in seen


def test_random_members_are_distinct_eligible_and_exclude():
    for n in (SCAN_BELOW // 2, SCAN_BELOW * 4):
        table = table_of(n)
        excluded = (1).to_bytes(32, "big")
        for _ in range(50):
            picked = table.random_members(3, (ME, excluded))
            assert len(picked) == 3 and len(set(picked)) == 3
            assert ME not in picked and excluded not in picked


def test_random_members_with_mostly_dead_falls_back_to_a_scan():
    table = table_of(300)
    live = [(i).to_bytes(32, "big") for i in (7, 8)]
    for node_id, m in list(table.members.items()):
        if node_id != ME and node_id not in live:
            table.set_state(m, MemberState.DEAD, 0, 0.0)
    assert sorted(table.random_members(3, (ME,))) == sorted(live)
    assert len(table.random_members(3, (ME,), dead_since=0.0)) == 3
    assert len(table.random_members(3, (ME,), dead_since=1.0)) == 2  # dead too long ago
    assert len(table.random_dead(5)) == 5


def test_reaped_members_are_never_sampled():
    table = table_of(200)
    for i in range(1, 150):
        table.remove(i.to_bytes(32, "big"))
    for _ in range(100):
        for node_id in table.random_members(3, (ME,)):
            assert node_id in table
