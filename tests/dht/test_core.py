"""DhtCore driven directly: joins, records, hostile peers, bucket maintenance, timers.

Cores talk through :class:`sim.dhtmesh.SimNetwork` (instant delivery, virtual time),
or are fed hand-made messages to play a hostile peer.
"""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest

from dht.config import DhtConfig
from dht.core import DhtCore, refresh_period
from dht.hooks import FakeSigner, FakeVerifier
from dht.ids import random_id
from dht.messages import (
    FindNode,
    FindNodeReply,
    FindValue,
    FindValueReply,
    PeerInfo,
    Ping,
    Pong,
    Store,
    StoreReply,
    ValueKind,
)
from dht.outputs import LookupFinished, LookupStarted, PeerFound, Purpose, Send
from dht.records import make_peer_record
from sim.dhtmesh import SimNetwork

CONFIG = DhtConfig.local()


def joined(n: int, seed: int = 1, config: DhtConfig = CONFIG) -> SimNetwork:
    """n cores, joined one by one through real bootstrap lookups."""
    net = SimNetwork(n, seed=seed, config=config)
    net.build_by_joining()
    return net


def finished(net: SimNetwork, i: int) -> list[LookupFinished]:
    return [out for j, out in net.log if j == i and type(out) is LookupFinished]


def run_command(net: SimNetwork, i: int, outputs) -> LookupFinished:
    net.log = []
    lookup_id = outputs[0].lookup_id
    net.feed(i, outputs)
    net.run(lambda: any(o.lookup_id == lookup_id for o in finished(net, i)))
    return next(o for o in finished(net, i) if o.lookup_id == lookup_id)


def lone_core(seed: int = 1, config: DhtConfig = CONFIG, node_id: bytes | None = None):
    node_id = node_id or random_id(random.Random(seed))
    return DhtCore(FakeSigner(node_id), FakeVerifier(), config, rng=random.Random(seed),
                   addresses=("sim://me",))


def sends(outputs) -> list[Send]:
    return [o for o in outputs if type(o) is Send]


# --- joining and finding ----------------------------------------------------------------


def test_joining_nodes_learn_each_other():
    net = joined(40)
    for core in net.cores:
        assert len(core.table) >= 15  # k = 20 > 39 others / 2: most are known
        assert core.statistics().lookups_active == 0
    started = net.cores[5].statistics().lookups_started
    assert started > 1  # the own-id lookup and the join refresh of farther buckets


def test_find_node_returns_the_k_closest():
    net = joined(60)
    target = random_id(random.Random(9))
    result = run_command(net, 3, net.cores[3].find_node(target, net.now))
    assert result.succeeded and result.purpose is Purpose.FIND_NODE
    assert {p.node_id for p in result.closest} == net.true_closest(target, 20, 3)
    assert result.rounds >= 1 and result.queries >= 3


def test_find_peer_without_records_succeeds_when_the_node_answers():
    net = joined(30)
    target = net.ids[17]
    result = run_command(net, 2, net.cores[2].find_peer(target, net.now))
    assert result.succeeded and result.addresses == ("sim://17",)
    assert any(type(o) is PeerFound and o.node_id == target for _, o in net.log)


def test_published_record_is_found_after_the_node_moves_and_is_gone():
    net = joined(30)
    phone = 11
    first = run_command(net, phone, net.cores[phone].publish_self(["sim://home"], net.now))
    assert first.stored == 20 and first.succeeded
    first_seq = net.cores[phone].own_record.seq
    second = run_command(net, phone, net.cores[phone].publish_self(["sim://4g"], net.now))
    assert second.stored == 20
    assert net.cores[phone].own_record.seq > first_seq
    net.alive[phone] = False  # now asleep: only the records answer for it
    result = run_command(net, 4, net.cores[4].find_peer(net.ids[phone], net.now))
    assert result.succeeded and result.addresses == ("sim://4g",)
    assert result.peer_record.seq == net.cores[phone].own_record.seq
    assert net.cores[4].table.get(net.ids[phone]).addresses == ("sim://4g",)


def test_provide_and_find_providers_through_cores():
    net = joined(30)
    key = random_id(random.Random(3))
    assert run_command(net, 6, net.cores[6].provide(key, net.now)).stored > 0
    assert run_command(net, 9, net.cores[9].provide(key, net.now)).stored > 0
    result = run_command(net, 20, net.cores[20].find_providers(key, net.now))
    assert result.succeeded
    assert {r.provider for r in result.providers} == {net.ids[6], net.ids[9]}
    nobody = run_command(net, 20, net.cores[20].find_providers(bytes(32), net.now))
    assert not nobody.succeeded and nobody.providers == ()


def test_bootstrap_with_dead_seeds_fails_cleanly():
    core = lone_core()
    seed = PeerInfo(node_id=random_id(random.Random(5)), addresses=("sim://gone",))
    out = core.bootstrap([seed], 0.0)
    assert type(out[0]) is LookupStarted
    (request,) = sends(out)
    assert request.to == seed.node_id and request.addresses == ("sim://gone",)
    assert core.next_deadline() == CONFIG.request_timeout
    out = core.on_timer(CONFIG.request_timeout)
    (result,) = [o for o in out if type(o) is LookupFinished]
    assert not result.succeeded and result.failures == 1
    assert core.statistics().timeouts == 1


def test_driver_reported_failure_ends_the_request_at_once():
    core = lone_core()
    seed = PeerInfo(node_id=random_id(random.Random(5)), addresses=("sim://gone",))
    (request,) = sends(core.bootstrap([seed], 0.0))
    assert core.on_request_failed(random_id(random.Random(6)), request.msg.rid, 0.1) == []
    out = core.on_request_failed(seed.node_id, request.msg.rid, 0.1)
    assert next(o for o in out if type(o) is LookupFinished).succeeded is False


def test_same_seed_same_run():
    def run() -> list:
        net = joined(25, seed=4)
        net.log = []
        result = run_command(net, 1, net.cores[1].find_node(bytes(32), net.now))
        return [result.closest, result.rounds, result.queries, len(net.log)]

    assert run() == run()


# --- serving requests ------------------------------------------------------------------


def test_requests_are_answered_and_teach_the_table():
    core = lone_core()
    peer = random_id(random.Random(7))
    out = core.on_message(peer, Ping(rid=5, sender_addresses=("sim://p",)), 1.0)
    assert out == [Send(peer, Pong(rid=5, sender_addresses=("sim://me",)))]
    assert core.table.get(peer).addresses == ("sim://p",)
    (reply,) = sends(core.on_message(peer, FindNode(rid=6, target=bytes(32), count=20), 1.0))
    assert reply.msg.peers == ()  # the requester is never sent back to itself
    other = random_id(random.Random(8))
    core.on_message(other, Ping(rid=1), 1.0)
    (reply,) = sends(core.on_message(peer, FindNode(rid=7, target=bytes(32), count=99), 1.0))
    assert [p.node_id for p in reply.msg.peers] == [other]


def test_client_mode_requests_do_not_enter_tables():
    core = lone_core()
    phone = random_id(random.Random(7))
    core.on_message(phone, FindNode(rid=1, target=bytes(32), count=5, serving=False), 1.0)
    assert len(core.table) == 0


def test_forged_store_is_refused_and_changes_nothing():
    core = lone_core()
    victim, mallory = random_id(random.Random(101)), random_id(random.Random(102))
    good = make_peer_record(FakeSigner(victim), ("sim://v",), seq=1,
                            expires_ms=core.wall_ms(1.0) + 60_000)
    out = core.on_message(victim, Store(rid=1, peer_record=good), 1.0)
    assert sends(out)[0].msg.accepted
    assert any(type(o) is PeerFound and o.addresses == ("sim://v",) for o in out)
    forged = dataclasses.replace(good, addresses=("sim://mallory",), seq=2)
    (reply,) = sends(core.on_message(mallory, Store(rid=2, peer_record=forged), 1.0))
    assert reply.msg == StoreReply(rid=2, accepted=False, reason="forged",
                                   sender_addresses=("sim://me",))
    signed_by_mallory = make_peer_record(FakeSigner(mallory), ("sim://mallory",), seq=3,
                                         expires_ms=core.wall_ms(1.0) + 60_000)
    claim = dataclasses.replace(signed_by_mallory, node_id=victim)
    (reply,) = sends(core.on_message(mallory, Store(rid=3, peer_record=claim), 1.0))
    assert reply.msg.reason == "forged"
    assert core.store.peer(victim, core.wall_ms(1.0)) == good
    assert core.statistics().dropped == {"store_forged": 2}
    (reply,) = sends(core.on_message(mallory, Store(rid=4), 1.0))
    assert reply.msg.reason == "bad_request"


def test_find_value_serves_our_record_and_stored_ones():
    core = lone_core()
    peer = random_id(random.Random(3))
    core.publish_self(["sim://me"], 1.0)
    (reply,) = sends(core.on_message(
        peer, FindValue(rid=9, key=core.local_id, kind=ValueKind.PEER, count=20), 1.0))
    assert reply.msg.peer_record == core.own_record
    (reply,) = sends(core.on_message(
        peer, FindValue(rid=10, key=bytes(32), kind=ValueKind.PROVIDERS, count=20), 1.0))
    assert reply.msg.providers == ()


# --- hostile replies -------------------------------------------------------------------


def lookup_in_progress():
    """A core with one lookup in flight to one peer; returns (core, peer, request)."""
    core = lone_core()
    peer = random_id(random.Random(11))
    core.on_message(peer, Ping(rid=1, sender_addresses=("sim://p",)), 0.0)
    out = core.find_node(bytes(32), 0.0)
    (request,) = sends(out)
    return core, peer, request


def test_reply_with_too_many_peers_is_dropped_and_the_query_fails():
    core, peer, request = lookup_in_progress()
    asked = request.msg.count
    flood = tuple(PeerInfo(node_id=random_id(random.Random(i))) for i in range(asked + 1))
    out = core.on_message(peer, FindNodeReply(rid=request.msg.rid, peers=flood), 0.1)
    (result,) = [o for o in out if type(o) is LookupFinished]
    assert result.failures == 1 and result.closest == ()
    assert core.statistics().dropped == {"too_many_peers": 1}


@pytest.mark.parametrize(("peers", "reason"), [
    ((PeerInfo(node_id=b"short"),), "garbage_peer"),
    ((PeerInfo(node_id=bytes(32), addresses=("a",) * 9),), "too_many_addresses"),
    ((PeerInfo(node_id=bytes(32), addresses=("x" * 201,)),), "address_too_long"),
])
def test_reply_with_garbage_peers_is_dropped(peers, reason):
    core, peer, request = lookup_in_progress()
    core.on_message(peer, FindNodeReply(rid=request.msg.rid, peers=peers), 0.1)
    assert core.statistics().dropped == {reason: 1}
    assert all(len(c.node_id) == 32 for c in core.table)


def test_replies_nobody_asked_for_are_dropped():
    core, peer, request = lookup_in_progress()
    stranger = random_id(random.Random(12))
    assert core.on_message(stranger, FindNodeReply(rid=request.msg.rid, peers=()), 0.1) == []
    assert core.on_message(peer, FindNodeReply(rid=request.msg.rid + 1, peers=()), 0.1) == []
    assert core.on_message(peer, Pong(rid=request.msg.rid), 0.1) == []  # wrong type
    assert core.on_message(peer, "hello", 0.1) == []
    assert core.statistics().dropped == {"unexpected_reply": 3, "unexpected_message": 1}
    assert stranger not in core.table
    # The real reply still counts.
    out = core.on_message(peer, FindNodeReply(rid=request.msg.rid, peers=()), 0.1)
    assert next(o for o in out if type(o) is LookupFinished).succeeded


def test_forged_record_in_a_reply_is_dropped():
    core = lone_core()
    target, holder = random_id(random.Random(20)), random_id(random.Random(21))
    core.on_message(holder, Ping(rid=1), 0.0)
    (request,) = sends(core.find_peer(target, 0.0))
    record = make_peer_record(FakeSigner(target), ("sim://t",), seq=1,
                              expires_ms=core.wall_ms(0.0) + 60_000)
    forged = dataclasses.replace(record, addresses=("sim://evil",))
    out = core.on_message(holder, FindValueReply(rid=request.msg.rid, peers=(),
                                                 peer_record=forged), 0.1)
    (result,) = [o for o in out if type(o) is LookupFinished]
    assert not result.succeeded and result.peer_record is None
    assert not any(type(o) is PeerFound for o in out)
    assert core.statistics().dropped == {"forged_record": 1}


def test_a_valid_record_in_a_reply_is_believed():
    core = lone_core()
    target, holder = random_id(random.Random(20)), random_id(random.Random(21))
    core.on_message(holder, Ping(rid=1), 0.0)
    (request,) = sends(core.find_peer(target, 0.0))
    record = make_peer_record(FakeSigner(target), ("sim://t",), seq=1,
                              expires_ms=core.wall_ms(0.0) + 60_000)
    out = core.on_message(holder, FindValueReply(rid=request.msg.rid, peers=(),
                                                 peer_record=record), 0.1)
    (result,) = [o for o in out if type(o) is LookupFinished]
    assert result.succeeded and result.addresses == ("sim://t",)
    assert PeerFound(target, ("sim://t",), record) in out


# --- bucket maintenance and timers -----------------------------------------------------


def bucket_mates(local: bytes, count: int) -> list[bytes]:
    """Ids in local's farthest bucket (first bit flipped)."""
    rng = random.Random(99)
    return [bytes([local[0] ^ 0x80]) + rng.randbytes(31) for _ in range(count)]


def test_full_bucket_pings_the_oldest_and_evicts_it_only_when_silent():
    config = CONFIG.replace(k=2, max_find_count=4, replacement_cache_size=2)
    core = lone_core(config=config)
    a, b, c = bucket_mates(core.local_id, 3)
    core.on_message(a, Ping(rid=1), 0.0)
    core.on_message(b, Ping(rid=2), 0.0)
    out = core.on_message(c, Ping(rid=3, sender_addresses=("sim://c",)), 0.0)
    pings = [o for o in sends(out) if type(o.msg) is Ping]
    assert [p.to for p in pings] == [a]
    assert c not in core.table
    # a answers: it stays, c waits.
    core.on_message(a, Pong(rid=pings[0].msg.rid), 0.5)
    assert a in core.table and c not in core.table
    # Next newcomer: b is now the oldest; it stays silent and is replaced.
    out = core.on_message(bucket_mates(core.local_id, 4)[3], Ping(rid=4), 1.0)
    (ping,) = [o for o in sends(out) if type(o.msg) is Ping]
    assert ping.to == b
    core.on_timer(1.0 + config.request_timeout)
    assert b not in core.table and a in core.table
    assert len(core.table.bucket(255)) == 2


def test_maintenance_republishes_and_refreshes():
    config = CONFIG
    net = joined(20, config=config)
    node = net.cores[7]
    run_command(net, 7, node.publish_self(["sim://7"], net.now))
    seq = node.own_record.seq
    net.log = []
    net.run_for(config.peer_republish_interval + config.maintenance_interval)
    assert node.own_record.seq > seq
    purposes = {o.purpose for i, o in net.log if i == 7 and type(o) is LookupStarted}
    assert Purpose.PUBLISH_PEER in purposes and Purpose.REFRESH in purposes


def test_next_deadline_is_the_earliest_of_requests_and_maintenance():
    core = lone_core()
    assert core.next_deadline() == CONFIG.maintenance_interval
    peer = random_id(random.Random(4))
    core.on_message(peer, Ping(rid=1), 0.0)
    core.find_node(bytes(32), 2.0)
    assert core.next_deadline() == 2.0 + CONFIG.request_timeout
    assert core.on_timer(2.5) == []  # nothing due yet


def test_garbage_requests_are_dropped_before_anything_is_learned():
    core = lone_core()
    peer = random_id(random.Random(7))
    assert core.on_message(peer, FindNode(rid=1, target=b"short", count=20), 1.0) == []
    assert core.on_message(peer, FindValue(rid=2, key=b"", kind=ValueKind.PEER,
                                           count=20), 1.0) == []
    assert core.on_message(peer, Ping(rid=3, sender_addresses=("a",) * 9), 1.0) == []
    assert len(core.table) == 0
    assert core.statistics().dropped == {"garbage_request": 3}


def test_refresh_periods_are_fixed_per_bucket_and_spread_across_nodes():
    """Each bucket of each node waits its own period, in [0.5, 1.5) × the interval:
    nodes that joined together do not refresh together one interval later."""
    rng = random.Random(11)
    ids = [random_id(rng) for _ in range(60)]
    periods = [refresh_period(i, 200, 600.0) for i in ids]
    assert all(300.0 <= p < 900.0 for p in periods)
    assert periods == [refresh_period(i, 200, 600.0) for i in ids]  # stable
    assert max(periods) - min(periods) > 300.0
    assert abs(sum(periods) / len(periods) - 600.0) < 60.0  # the mean rate is kept
    assert len({refresh_period(ids[0], index, 600.0) for index in range(200, 256)}) > 50


def test_nodes_joined_together_spread_their_first_refresh():
    config = dataclasses.replace(CONFIG, maintenance_interval=5.0, refresh_interval=600.0)
    net = joined(12, config=config)
    first: dict[int, float] = {}
    elapsed = 0.0
    while elapsed < 1.6 * config.refresh_interval:
        net.log = []
        net.run_for(config.maintenance_interval)
        elapsed += config.maintenance_interval
        for i, out in net.log:
            if type(out) is LookupStarted and out.purpose is Purpose.REFRESH:
                first.setdefault(i, elapsed)
    assert len(first) == 12  # every node refreshed within 1.5 intervals
    assert max(first.values()) - min(first.values()) > 0.2 * config.refresh_interval


def test_an_idle_lan_mesh_refreshes_each_bucket_about_hourly():
    """The lan preset refreshes a bucket no lookup touched for ~an hour (Kademlia §2.3),
    each bucket in 0.5-1.5 h: no refresh in the half hour after the join's, then every
    bucket's within the next hour."""
    config = DhtConfig.lan()
    net = joined(12, config=config)
    refreshed: dict[int, list[float]] = {}
    elapsed = 0.0
    while elapsed < 1.6 * 3600.0:
        net.log = []
        net.run_for(config.maintenance_interval)
        elapsed += config.maintenance_interval
        for i, out in net.log:
            if type(out) is LookupStarted and out.purpose is Purpose.REFRESH:
                refreshed.setdefault(i, []).append(elapsed)
    assert min(min(times) for times in refreshed.values()) >= 1800.0 - 60.0  # none in 30 min
    assert len(refreshed) == 12
    per_node_hour = statistics.fmean(len(t) for t in refreshed.values()) / 1.6
    buckets = statistics.fmean(len(net.cores[i].table.bucket_indices()) for i in range(12))
    assert per_node_hour <= 2 * buckets  # about one lookup per bucket per hour
