"""The simulator's transport connections: pool cap and idle close, set-up cost,
keepalives only while streams are open, sealed datagrams between proven pairs; and their
share of a run's load figure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.connections import ConnectionModel, PoolConfig
from sim.runner import Run
from sim.scenario import parse

A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))


def model(**config) -> tuple[ConnectionModel, dict[bytes, list[int]]]:
    sent: dict[bytes, list[int]] = {}

    def count(node: bytes, messages: int, size: int) -> None:
        totals = sent.setdefault(node, [0, 0])
        totals[0] += messages
        totals[1] += size

    return ConnectionModel(PoolConfig(**config), count), sent


def test_first_message_dials_and_waits_the_handshake_later_ones_do_not():
    conns, sent = model()
    cfg = conns.config
    assert conns.send(A, B, 10.0, 0.004, can_connect=True) == pytest.approx(
        cfg.handshake_rtts * 0.004)
    assert conns.connected(A, B) and conns.connected(B, A)
    assert sent[A][0] + sent[B][0] == cfg.handshake_messages
    assert sent[A][1] + sent[B][1] == cfg.handshake_bytes + cfg.frame_overhead
    assert conns.send(B, A, 11.0, 0.004, can_connect=True) == 0.0  # one per pair
    assert conns.stats.dials == 1 and conns.stats.handshake_messages == cfg.handshake_messages
    assert 600 < cfg.handshake_bytes < 1200


def test_a_dial_that_cannot_connect_loses_the_message():
    conns, sent = model()
    assert conns.send(A, B, 0.0, 0.004, can_connect=False) is None
    assert not conns.connected(A, B) and conns.stats.dials_failed == 1 and not sent


def test_the_pool_evicts_the_least_recently_used_past_its_cap():
    conns, _ = model(max_connections=3)
    for t, peer in enumerate((B, C, D)):
        conns.send(A, peer, float(t), 0.004, can_connect=True)
    conns.send(A, B, 5.0, 0.004, can_connect=True)  # B used again: C is now the oldest
    conns.send(A, E, 6.0, 0.004, can_connect=True)
    assert set(conns.peers(A)) == {B, D, E} and not conns.connected(C, A)
    assert conns.stats.evictions == 1 and conns.stats.goaway_messages == 2
    busy, _ = model(max_connections=1)
    busy.send(A, B, 0.0, 0.004, can_connect=True)
    busy.pools[A][B].streams = 1  # a connection carrying a stream is never cut
    busy.send(A, C, 1.0, 0.004, can_connect=True)
    assert set(busy.peers(A)) == {B}
    assert busy.connected(C, A) is False and busy.stats.evictions == 1


def test_idle_connections_are_retired_after_the_idle_timeout():
    conns, _ = model(idle_timeout=120.0)
    conns.send(A, B, 0.0, 0.004, can_connect=True)
    conns.send(A, C, 100.0, 0.004, can_connect=True)
    conns.sweep(119.0)
    assert set(conns.peers(A)) == {B, C}
    conns.sweep(130.0)
    assert conns.peers(A) == [C] and conns.peers(B) == [] and conns.stats.idle_closes == 1


def test_keepalives_only_while_a_stream_waits():
    conns, sent = model()
    conns.send(A, B, 0.0, 0.004, can_connect=True)
    before = {n: list(v) for n, v in sent.items()}
    conns.stream(A, B, 0.0, 0.01, answered=True)  # a quick request: no ping
    assert sent == before and conns.stats.keepalive_messages == 0
    conns.stream(A, B, 0.0, 3.5, answered=True)  # a slow one: 3 pings, 3 pongs
    assert conns.stats.keepalive_messages == 6
    assert sent[A][0] - before[A][0] == 3 and sent[B][0] - before[B][0] == 3
    conns.stream(A, B, 0.0, None, answered=False)  # the peer went silent: dead
    assert conns.stats.keepalive_messages == 6 + 4 and conns.stats.dead == 1
    assert not conns.connected(A, B)


def test_a_crash_resets_every_connection_of_the_node():
    conns, _ = model()
    for peer in (B, C):
        conns.send(A, peer, 0.0, 0.004, can_connect=True)
    conns.send(D, B, 0.0, 0.004, can_connect=True)
    assert sorted(conns.crashed(A)) == sorted([B, C])
    assert conns.peers(B) == [D] and conns.peers(C) == [] and conns.crashed(A) == []


def test_datagrams_between_a_proven_pair_need_no_connection():
    conns, sent = model()
    cfg = conns.config
    assert conns.datagram(A, B, 0.0, 0.004, can_connect=True) == pytest.approx(
        cfg.handshake_rtts * 0.004)  # first contact: a connection proves the pair
    assert conns.knows(A, B) and conns.knows(B, A)
    conns.sweep(cfg.idle_timeout + 1.0)  # no stream: the connection closes
    assert not conns.connected(A, B)
    before = {n: list(v) for n, v in sent.items()}
    for t in range(10):
        assert conns.datagram(B, A, 100.0 + t, 0.004, can_connect=False) == 0.0
    assert not conns.connected(A, B) and conns.stats.dials == 1
    assert conns.stats.datagrams == 10
    assert sent[B][0] == before[B][0]  # the datagram is the message itself
    assert sent[B][1] - before[B][1] == 10 * cfg.datagram_overhead
    assert 40 <= cfg.datagram_overhead < cfg.frame_overhead + 20


def test_a_restarted_node_proves_its_senders_again_with_a_connection():
    conns, _ = model()
    conns.datagram(A, B, 0.0, 0.004, can_connect=True)
    conns.sweep(1000.0)
    conns.crashed(B)  # B forgot every key; A still holds B's
    assert conns.knows(A, B) and not conns.knows(B, A)
    assert conns.datagram(A, B, 2000.0, 0.004, can_connect=False) is None  # dead: lost
    assert conns.datagram(A, B, 2001.0, 0.004, can_connect=True) > 0  # B dials A back
    assert conns.knows(B, A) and conns.stats.dials == 2  # no dial to the dead one
    assert conns.datagram(A, B, 2002.0, 0.004, can_connect=True) == 0.0


def test_without_sealed_datagrams_every_datagram_rides_a_connection():
    conns, _ = model(sealed_datagrams=False)
    conns.datagram(A, B, 0.0, 0.004, can_connect=True)
    conns.sweep(1000.0)
    assert conns.datagram(A, B, 1001.0, 0.004, can_connect=True) > 0  # dialled again
    assert conns.stats.dials == 2 and conns.stats.datagrams == 0 and not conns.knows(A, B)


NODES = [bytes([i]) * 32 for i in range(1, 9)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "datagram", "sweep", "crash", "stream"]),
                          st.integers(0, 7), st.integers(0, 7), st.booleans()),
                max_size=80),
       st.integers(1, 5))
def test_pools_stay_symmetric_and_within_their_cap(ops, cap):
    conns, _ = model(max_connections=cap, idle_timeout=5.0)
    now = 0.0
    for op, i, j, flag in ops:
        now += 1.0
        a, b = NODES[i], NODES[j]
        if op == "send" and a != b:
            conns.send(a, b, now, 0.004, can_connect=flag)
        elif op == "datagram" and a != b:
            conns.datagram(a, b, now, 0.004, can_connect=flag)
        elif op == "sweep":
            conns.sweep(now)
        elif op == "crash":
            conns.crashed(a)
        elif op == "stream" and a != b and conns.connected(a, b):
            conns.stream(a, b, now, None if flag else 2.0, answered=not flag)
        for node, pool in conns.pools.items():
            assert len(pool) <= cap
            for peer, conn in pool.items():
                assert conns.pools[peer][node] is conn
                assert {conn.a, conn.b} == {node, peer}


def test_a_run_counts_connections_handshakes_and_keepalives_in_its_load_figure():
    scenario = parse('[scenario]\nduration = "60s"\nnodes = 120\nseed = 2\nmodels = []\n'
                     '[[faults]]\nat = "20s"\naction = "crash"\ncount = 3\n', "t.toml")
    run = Run(scenario, models=[])
    run.run()
    figures = run.figures()
    assert 0 < figures["connections_per_node"] <= 64
    assert figures["connections_per_node_max"] <= 64
    assert figures["dials_per_node_s"] > 0 and figures["evictions"] > 0
    assert figures["msgs_per_node_s"] > figures["protocol_msgs_per_node_s"]
    assert figures["overhead_bytes_per_node_s"] > 0
    assert figures["bytes_per_node_s"] > figures["overhead_bytes_per_node_s"]
    for host in run.cluster.live():
        assert run.cluster.conns.size(host.node_id) <= 64
    assert figures["datagrams_per_node_s"] > 1.0  # probes and acks, sealed over UDP
    # the same run with every datagram on a connection holds more and dials more
    old = Run(scenario, models=[])
    old.cluster.conns.config = PoolConfig(sealed_datagrams=False)
    old.run()
    before = old.figures()
    assert before["datagrams_per_node_s"] == 0
    assert figures["connections_per_node"] < before["connections_per_node"]
    assert figures["dials_per_node_s"] < before["dials_per_node_s"]
    assert figures["overhead_bytes_per_node_s"] < before["overhead_bytes_per_node_s"]
