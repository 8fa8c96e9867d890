"""The routing table: k-buckets, ping-before-evict, replacement cache, closest queries."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dht.ids import bucket_index, distance, random_id
from dht.messages import PeerInfo
from dht.routing import RoutingTable

LOCAL = bytes(32)


def node(first: int, rest: int = 0) -> bytes:
    """An id whose bucket (seen from LOCAL) is set by its first byte."""
    return bytes([first]) + rest.to_bytes(31, "big")


def info(node_id: bytes, *addresses: str) -> PeerInfo:
    return PeerInfo(node_id=node_id, addresses=addresses)


def test_new_contacts_fill_a_bucket_in_order():
    table = RoutingTable(LOCAL, k=3)
    for i in range(3):
        assert table.observe(info(node(0x80, i))) is None
    bucket = table.bucket(255)
    assert list(bucket.contacts) == [node(0x80, i) for i in range(3)]
    assert len(table) == 3 and node(0x80, 1) in table
    table.observe(info(node(0x80, 0)))  # heard again: now the most recently seen
    assert list(bucket.contacts) == [node(0x80, 1), node(0x80, 2), node(0x80, 0)]


def test_full_bucket_pings_its_oldest_and_keeps_it_if_it_answers():
    table = RoutingTable(LOCAL, k=2)
    table.observe(info(node(0x80, 1)))
    table.observe(info(node(0x80, 2)))
    assert table.observe(info(node(0x80, 3))) == node(0x80, 1)  # ping the oldest
    assert node(0x80, 3) not in table and node(0x80, 3) in table.bucket(255).replacements
    assert table.observe(info(node(0x80, 4))) is None  # one ping at a time
    table.observe(info(node(0x80, 1)))  # the pong
    assert list(table.bucket(255).contacts) == [node(0x80, 2), node(0x80, 1)]
    assert table.bucket(255).pinging is None


def test_full_bucket_evicts_its_oldest_only_when_the_ping_fails():
    table = RoutingTable(LOCAL, k=2)
    table.observe(info(node(0x80, 1)))
    table.observe(info(node(0x80, 2)))
    oldest = table.observe(info(node(0x80, 3), "tcp://new"))
    table.observe(info(node(0x80, 4)))
    assert table.failed(oldest) is True
    # The newest waiting node takes the slot; the other stays in the cache.
    assert list(table.bucket(255).contacts) == [node(0x80, 2), node(0x80, 4)]
    assert list(table.bucket(255).replacements) == [node(0x80, 3)]


def test_a_contact_without_replacement_survives_until_it_failed_three_times():
    table = RoutingTable(LOCAL, k=2, stale_after_failures=3)
    table.observe(info(node(0x80, 1)))
    assert table.failed(node(0x80, 1)) is False
    assert table.failed(node(0x80, 1)) is False
    table.observe(info(node(0x80, 1)))  # it answered: the count starts again
    assert table.get(node(0x80, 1)).failures == 0
    for _ in range(2):
        assert table.failed(node(0x80, 1)) is False
    assert table.failed(node(0x80, 1)) is True
    assert len(table) == 0


def test_replacement_cache_is_bounded_and_keeps_the_newest():
    table = RoutingTable(LOCAL, k=1, replacement_cache_size=2)
    table.observe(info(node(0x80, 0)))
    for i in range(1, 5):
        table.observe(info(node(0x80, i)))
    assert list(table.bucket(255).replacements) == [node(0x80, 3), node(0x80, 4)]


def test_addresses_follow_the_latest_message_and_records():
    table = RoutingTable(LOCAL, k=2)
    table.observe(info(node(0x80, 1), "tcp://home"))
    table.observe(info(node(0x80, 1)))  # a message without addresses changes nothing
    assert table.get(node(0x80, 1)).addresses == ("tcp://home",)
    table.observe(info(node(0x80, 1), "tcp://cafe"))
    assert table.get(node(0x80, 1)).addresses == ("tcp://cafe",)
    table.update_addresses(node(0x80, 1), ("tcp://office",))
    assert table.get(node(0x80, 1)).addresses == ("tcp://office",)


def test_the_local_node_is_never_a_contact():
    table = RoutingTable(LOCAL, k=2)
    assert table.observe(info(LOCAL)) is None
    assert len(table) == 0 and LOCAL not in table
    assert table.failed(LOCAL) is False and table.remove(LOCAL) is False


def test_remove():
    table = RoutingTable(LOCAL, k=2)
    table.observe(info(node(0x80, 1)))
    assert table.remove(node(0x80, 1)) is True
    assert table.remove(node(0x80, 1)) is False
    assert len(table) == 0


@pytest.mark.parametrize("seed", range(5))
def test_closest_matches_a_full_sort_on_a_large_table(seed):
    rng = random.Random(seed)
    local = random_id(rng)
    table = RoutingTable(local, k=20)
    for _ in range(3000):
        table.observe(info(random_id(rng)))
    contacts = list(table)
    assert 100 < len(contacts) < 400
    for target in [random_id(rng) for _ in range(30)] + [local, contacts[0].node_id]:
        expected = sorted(contacts, key=lambda c: distance(c.node_id, target))
        for count in (1, 20, 40, 1000):
            assert table.closest(target, count) == expected[:count]
        excluded = expected[0].node_id
        assert table.closest(target, 20, exclude=excluded) == [
            c for c in expected if c.node_id != excluded][:20]


POOL = [node(0x80 | i, i) for i in range(12)] + [node(0x40 | i, i) for i in range(6)] + [
    node(0x20, i) for i in range(3)] + [node(0, 1), node(0, 3)]


class RoutingTableMachine(RuleBasedStateMachine):
    """Random observe / fail / pong / remove sequences on small buckets (k = 3)."""

    @initialize()
    def setup(self):
        self.table = RoutingTable(LOCAL, k=3, replacement_cache_size=2, stale_after_failures=2)
        self.failed_since_heard: set[bytes] = set()
        self.removed: set[bytes] = set()
        self.before = self.members()

    def members(self) -> set[bytes]:
        return {c.node_id for c in self.table}

    @rule(node_id=st.sampled_from(POOL))
    def observe(self, node_id):
        bucket_before = self.table.bucket(bucket_index(LOCAL, node_id))
        was_full = bucket_before is not None and bucket_before.full
        oldest = bucket_before.oldest().node_id if was_full else None
        known = node_id in self.table
        ping = self.table.observe(info(node_id))
        self.failed_since_heard.discard(node_id)
        self.removed.discard(node_id)
        if ping is not None:
            assert was_full and not known and ping == oldest
            assert node_id not in self.table
        if known or not was_full:
            assert node_id in self.table

    @rule(node_id=st.sampled_from(POOL))
    def fail(self, node_id):
        self.failed_since_heard.add(node_id)
        bucket = self.table.bucket(bucket_index(LOCAL, node_id))
        newest = next(reversed(bucket.replacements)) if bucket and bucket.replacements else None
        was_member = node_id in self.table
        evicted = self.table.failed(node_id)
        if evicted:
            assert was_member and node_id not in self.table
            if newest is not None:
                assert newest in self.table  # the newest waiting node took the slot

    @precondition(lambda self: any(self.table.bucket(i) and self.table.bucket(i).pinging
                                   for i in (253, 254, 255)))
    @rule(data=st.data())
    def pong(self, data):
        pinged = [self.table.bucket(i).pinging for i in (253, 254, 255)
                  if self.table.bucket(i) and self.table.bucket(i).pinging]
        node_id = data.draw(st.sampled_from(pinged))
        self.table.observe(info(node_id))
        self.failed_since_heard.discard(node_id)
        assert node_id in self.table

    @rule(node_id=st.sampled_from(POOL))
    def remove(self, node_id):
        self.table.remove(node_id)
        self.removed.add(node_id)

    @invariant()
    def buckets_hold_at_most_k_and_only_their_own_range(self):
        total = 0
        for index in self.table.bucket_indices():
            bucket = self.table.bucket(index)
            assert len(bucket) <= 3
            assert len(bucket.replacements) <= 2
            assert not set(bucket.contacts) & set(bucket.replacements)
            for node_id in list(bucket.contacts) + list(bucket.replacements):
                assert bucket_index(LOCAL, node_id) == index
            if bucket.pinging is not None:
                assert bucket.pinging in bucket.contacts
            total += len(bucket)
        assert total == len(self.table)

    @invariant()
    def contacts_leave_only_after_failing(self):
        now = self.members()
        for gone in self.before - now:
            assert gone in self.failed_since_heard or gone in self.removed, gone.hex()
        self.before = now

    @invariant()
    def closest_is_sorted_by_distance(self):
        target = node(0x81, 7)
        expected = sorted(self.members(), key=lambda n: distance(n, target))
        assert [c.node_id for c in self.table.closest(target, 5)] == expected[:5]


TestRoutingTableMachine = RoutingTableMachine.TestCase
TestRoutingTableMachine.settings = settings(max_examples=150, stateful_step_count=40,
                                            deadline=None)
