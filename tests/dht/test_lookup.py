"""Lookups: the iterative search state machine (Kademlia §2.3), alone and against a model
network where hypothesis picks the order of every reply and timeout."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dht.ids import ID_BITS, id_to_int, random_id
from dht.lookup import Lookup, Phase, QueryState
from dht.messages import PeerInfo

K = 4
ALPHA = 2
MAX_COUNT = 8


def peer(node_id: bytes) -> PeerInfo:
    return PeerInfo(node_id=node_id, addresses=())


class ModelNetwork:
    """Nodes whose contacts are consistent Kademlia tables over the live nodes (each bucket
    holds min(k, m) of the m live nodes in its range, at random), plus some dead contacts."""

    def __init__(self, seed: int, n: int, dead_fraction: float, k: int = K) -> None:
        rng = random.Random(seed)
        self.ids = [random_id(rng) for _ in range(n)]
        self.dead = set(rng.sample(self.ids, int(n * dead_fraction)))
        self.live = [i for i in self.ids if i not in self.dead]
        self.contacts: dict[bytes, list[bytes]] = {}
        for u in self.ids:
            ku = id_to_int(u)
            buckets: dict[int, list[bytes]] = {}
            for v in self.ids:
                if v != u:
                    buckets.setdefault((id_to_int(v) ^ ku).bit_length() - 1, []).append(v)
            known = []
            for members in buckets.values():
                live = [v for v in members if v not in self.dead]
                dead = [v for v in members if v in self.dead]
                known += rng.sample(live, min(k, len(live)))
                known += rng.sample(dead, min(k // 2, len(dead)))
            self.contacts[u] = known

    def reply(self, responder: bytes, requester: bytes, target: bytes,
              count: int) -> list[PeerInfo]:
        t = id_to_int(target)
        known = [v for v in self.contacts[responder] if v != requester]
        known.sort(key=lambda v: id_to_int(v) ^ t)
        return [peer(v) for v in known[:count]]

    def true_closest(self, target: bytes, exclude: bytes, k: int = K) -> set[bytes]:
        t = id_to_int(target)
        live = sorted((v for v in self.live if v != exclude), key=lambda v: id_to_int(v) ^ t)
        return set(live[:k])


class LookupMachine(RuleBasedStateMachine):
    """One lookup; hypothesis decides which in-flight query ends next. Live nodes answer,
    dead ones time out."""

    @initialize(seed=st.integers(0, 2**32), n=st.integers(8, 50),
                dead_fraction=st.sampled_from([0.0, 0.0, 0.2, 0.4]),
                target_is_node=st.booleans())
    def setup(self, seed, n, dead_fraction, target_is_node):
        self.net = ModelNetwork(seed, n, dead_fraction)
        rng = random.Random(seed + 1)
        self.initiator = rng.choice(self.net.live)
        self.target = rng.choice(self.net.ids) if target_is_node else random_id(rng)
        self.lookup = Lookup(self.target, local_id=self.initiator, k=K, alpha=ALPHA,
                             max_count=MAX_COUNT)
        t = id_to_int(self.target)
        # Seeded like DhtCore: the 2k closest contacts of the table (k are queried first).
        seeds = sorted(self.net.contacts[self.initiator], key=lambda v: id_to_int(v) ^ t)
        seeds = seeds[:MAX_COUNT]
        assume(any(v not in self.net.dead for v in seeds))  # else nothing can be found
        self.in_flight: dict[bytes, int] = {}
        self.asked: dict[bytes, int] = {}
        self.last_rounds = 0
        self.send(self.lookup.start(peer(v) for v in seeds))

    def send(self, queries):
        for query in queries:
            node_id = query.node.node_id
            assert node_id not in self.in_flight, "one query per node at a time"
            assert node_id != self.initiator
            assert K <= query.count <= MAX_COUNT
            if node_id in self.asked:  # only a top-up asks again, and for more
                assert self.lookup.state_of(node_id) is QueryState.ANSWERED
                assert query.count > self.asked[node_id]
            self.asked[node_id] = query.count
            self.in_flight[node_id] = query.count

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def one_query_ends(self, data):
        node_id = data.draw(st.sampled_from(sorted(self.in_flight)))
        count = self.in_flight.pop(node_id)
        if node_id in self.net.dead:
            self.send(self.lookup.on_failure(node_id))
        else:
            self.send(self.lookup.on_reply(
                node_id, self.net.reply(node_id, self.initiator, self.target, count)))

    @precondition(lambda self: not self.in_flight)
    @rule()
    def nothing_left_in_flight(self):
        assert self.lookup.finished

    @invariant()
    def in_flight_is_bounded_and_counted(self):
        if self.lookup.finished:
            return
        assert self.lookup.in_flight == len(self.in_flight)
        if self.lookup.phase is Phase.NARROW:
            assert len(self.in_flight) <= ALPHA + K  # alpha, plus top-ups of answered nodes
        assert len(self.in_flight) <= 2 * K
        assert self.lookup.rounds >= self.last_rounds
        self.last_rounds = self.lookup.rounds

    @invariant()
    def a_lookup_with_nothing_in_flight_has_finished(self):
        if not self.in_flight:
            assert self.lookup.finished

    @invariant()
    def a_finished_lookup_found_exactly_the_k_closest_live_nodes(self):
        if not self.lookup.finished:
            return
        found = [p.node_id for p in self.lookup.closest()]
        assert not set(found) & self.net.dead
        assert set(found) == self.net.true_closest(self.target, self.initiator)
        t = id_to_int(self.target)
        assert found == sorted(found, key=lambda v: id_to_int(v) ^ t)


TestLookupMachine = LookupMachine.TestCase
TestLookupMachine.settings = settings(max_examples=200, stateful_step_count=120,
                                      deadline=None)


# --- scripted cases -----------------------------------------------------------------------


def ids_at(*distances: int, target: bytes = bytes(32)) -> list[bytes]:
    t = id_to_int(target)
    return [(t ^ d).to_bytes(32, "big") for d in distances]


def test_rounds_count_sequential_waves():
    target = bytes(32)
    a, b, c, d = ids_at(1 << 200, 1 << 150, 1 << 100, 1 << 50, target=target)
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=2, alpha=1, max_count=4)
    first = lookup.start([peer(a)])
    assert [(q.node.node_id, q.round) for q in first] == [(a, 1)]
    second = lookup.on_reply(a, [peer(b)])
    assert [(q.node.node_id, q.round) for q in second] == [(b, 2)]
    third = lookup.on_reply(b, [peer(c)])
    assert [(q.node.node_id, q.round) for q in third] == [(c, 3)]
    fourth = lookup.on_reply(c, [peer(d)])
    assert [(q.node.node_id, q.round) for q in fourth] == [(d, 4)]
    assert lookup.on_reply(d, []) == []
    assert lookup.finished and lookup.rounds == 4 and lookup.queries == 4
    assert [p.node_id for p in lookup.closest()] == [d, c]


def test_a_reply_that_brings_nothing_closer_widens_to_k_in_flight():
    target = bytes(32)
    near = ids_at(*(1 << i for i in range(10, 20)), target=target)
    far = ids_at(1 << 250, 1 << 251, target=target)
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=6, alpha=2, max_count=12)
    assert len(lookup.start([peer(f) for f in far])) == 2
    # The nearer seed answers with nothing new: no progress on the closest seen.
    assert lookup.phase is Phase.NARROW
    assert lookup.on_reply(far[0], []) == []  # far[1] is still in flight
    assert lookup.phase is Phase.WIDE
    queries = lookup.on_reply(far[1], [peer(n) for n in near])
    assert len(queries) == 6  # all of the k closest at once, no longer alpha
    assert all(q.round == 2 for q in queries)


def test_failures_are_routed_around_and_counted():
    target = bytes(32)
    a, b, c = ids_at(1 << 10, 1 << 20, 1 << 30, target=target)
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=2, alpha=3, max_count=4)
    lookup.start([peer(a), peer(b), peer(c)])
    lookup.on_failure(a)
    lookup.on_reply(b, [])
    lookup.on_reply(c, [])
    assert lookup.finished and lookup.failures == 1 and lookup.replies == 2
    assert [p.node_id for p in lookup.closest()] == [b, c]
    assert lookup.state_of(a) is QueryState.FAILED


def test_dead_nodes_near_the_target_make_the_lookup_ask_for_more():
    target = bytes(32)
    near = ids_at(*range(1, 9), target=target)  # 8 nodes nearest the target
    live_far = ids_at(1 << 40, target=target)[0]
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=2, alpha=1, max_count=6)
    lookup.start([peer(live_far)])
    # live_far knows the 8 nearest; 0 and 1 (the two nearest) are dead.
    first = lookup.on_reply(live_far, [peer(n) for n in near[:2]])
    assert [q.node.node_id for q in first] == [near[0]]
    assert [q.node.node_id for q in lookup.on_failure(near[0])] == [near[1]]
    after = lookup.on_failure(near[1])
    # Both failed: live_far's reply stopped short of them, so it is asked again, for 2 + 2.
    assert [(q.node.node_id, q.count) for q in after] == [(live_far, 4)]
    more = lookup.on_reply(live_far, [peer(n) for n in near[:4]])
    assert [q.node.node_id for q in more] == [near[2]]
    last = lookup.on_reply(near[2], [])  # nothing nearer: widen, ask near[3] at once
    assert [q.node.node_id for q in last] == [near[3]] and lookup.phase is Phase.WIDE
    assert lookup.on_reply(near[3], []) == [] and lookup.finished
    assert [p.node_id for p in lookup.closest()] == near[2:4]
    assert lookup.failures == 2 and lookup.queries == 6


def test_stop_at_target_ends_when_the_target_answers():
    target = ids_at(5)[0]
    other = ids_at(1 << 30, target=target)[0]
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=3, alpha=3, stop_at_target=True)
    lookup.start([peer(target), peer(other)])
    assert lookup.on_reply(target, [peer(ids_at(7)[0])]) == []
    assert lookup.finished


def test_an_empty_lookup_finishes_at_once():
    lookup = Lookup(bytes(32), local_id=ids_at(1)[0])
    assert lookup.start([]) == [] and lookup.finished and lookup.closest() == []


def test_unexpected_outcomes_change_nothing():
    target = bytes(32)
    a, b = ids_at(1 << 10, 1 << 20, target=target)
    lookup = Lookup(target, local_id=ids_at(1 << 255)[0], k=2, alpha=1)
    lookup.start([peer(a), peer(b)])  # only a is asked (alpha = 1)
    assert lookup.on_reply(b, [peer(ids_at(1)[0])]) == []  # b was never asked
    assert lookup.on_failure(b) == []
    assert lookup.on_reply(ids_at(3)[0], []) == []  # a stranger
    assert lookup.state_of(b) is QueryState.WAITING and lookup.in_flight == 1


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        Lookup(bytes(32), local_id=bytes(32), k=20, max_count=10)
    assert ID_BITS == 256


def test_queries_ask_for_ask_peers_from_the_start():
    target = bytes(32)
    a = ids_at(1 << 10, target=target)[0]
    local = ids_at(1 << 255)[0]
    plain = Lookup(target, local_id=local, k=2, alpha=1, max_count=6)
    assert [q.count for q in plain.start([peer(a)])] == [2]
    wide = Lookup(target, local_id=local, k=2, alpha=1, max_count=6, ask=6)
    assert [q.count for q in wide.start([peer(a)])] == [6]
    with pytest.raises(ValueError):
        Lookup(target, local_id=local, k=2, max_count=6, ask=7)


def test_after_failures_the_wide_phase_also_asks_spares_past_the_kth():
    target = bytes(32)
    dead, seed = ids_at(1 << 100, 1 << 200, target=target)
    n1, n2, n3, n4 = ids_at(1, 2, 3, 4, target=target)
    local = ids_at(1 << 255)[0]
    lookup = Lookup(target, local_id=local, k=2, alpha=1, max_count=4)
    assert [q.node.node_id for q in lookup.start([peer(dead), peer(seed)])] == [dead]
    assert [q.node.node_id for q in lookup.on_failure(dead)] == [seed]
    assert [q.node.node_id for q in lookup.on_reply(seed, [peer(n) for n in
                                                          (n1, n2, n3, n4)])] == [n1]
    # n1 brings nothing nearer: WIDE. One failure in three outcomes: one spare past the
    # 2nd closest (n2) is asked at once, n3, not a round later if n2 turned out dead.
    wide = lookup.on_reply(n1, [])
    assert lookup.phase is Phase.WIDE
    assert [q.node.node_id for q in wide] == [n2, n3]
    assert lookup.on_reply(n2, []) == [] and lookup.finished  # n3 is not waited for
    assert [p.node_id for p in lookup.closest()] == [n1, n2]
