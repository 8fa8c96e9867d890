"""Anti-entropy core: divergent replicas converge to the same contents and roots."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import RemoteProtocolError
from meshcloud.state.config import StateConfig
from meshcloud.state.crdt import LwwRegister
from meshcloud.state.kv import MemoryKv
from meshcloud.state.merkle import LEAF
from meshcloud.state.messages import (
    SyncEntries,
    SyncHello,
    SyncHelloReply,
    SyncNodes,
    SyncNodesReply,
    SyncRefused,
)
from meshcloud.state.schema import TableSchema
from meshcloud.state.sync import SyncSession, SyncState, respond
from meshcloud.state.table import TableCore

SCHEMA = TableSchema("t", partition=(str,), sort=(int,))
# Tiny batches so that one session needs many requests of every kind.
SMALL = StateConfig(sync_nodes_per_request=3, sync_keys_per_request=2,
                    sync_batch_bytes=200)

writers = st.sampled_from([b"a" * 32, b"b" * 32])
writes = st.lists(
    st.tuples(st.tuples(st.sampled_from(["x", "y", "z", "w"]), st.integers(0, 30)),
              st.integers(1, 20), writers, st.one_of(st.none(), st.integers(0, 9))),
    max_size=40)


def replica(ops) -> TableCore:
    table = TableCore(SCHEMA, MemoryKv())
    for key, ts, writer, value in ops:
        entry = (LwwRegister.tombstone(ts, writer) if value is None
                 else LwwRegister.write(ts, writer, value))
        table.merge([(SCHEMA.key_bytes(key), entry)], now_ms=0)
    table.flush_merkle(100_000)
    return table


def contents(table: TableCore) -> list[tuple[bytes, bytes]]:
    return table.kv.read(lambda txn: list(txn.range("t/e")))


def sync(a: TableCore, b: TableCore, config: StateConfig = SMALL,
         max_message: list[int] | None = None) -> SyncSession:
    """One complete session from a to b, every message through the real codec."""
    session = SyncSession(b"peer", {"t": a}, {"t": [b""]}, config)
    while (request := session.next_request()) is not None:
        data = encode_message(request)
        reply, _ = respond({"t": b}, decode_message(data), 0, config)
        back = encode_message(reply)
        if max_message is not None:
            max_message.append(max(len(data), len(back)))
        session.on_reply(decode_message(back), 0)
        a.flush_merkle(100_000)
        b.flush_merkle(100_000)
    return session


@settings(max_examples=60, deadline=None)
@given(writes, writes, writes)
def test_one_session_makes_two_replicas_equal(common, only_a, only_b):
    a, b = replica(common + only_a), replica(common + only_b)
    expected = replica(common + only_a + only_b)
    session = sync(a, b)
    assert session.state is SyncState.DONE and not session.stats.truncated
    assert contents(a) == contents(b) == contents(expected)
    assert a.merkle_root() == b.merkle_root() == expected.merkle_root()


@settings(max_examples=30, deadline=None)
@given(writes, writes, writes)
def test_three_replicas_converge_pairwise(wa, wb, wc):
    a, b, c = replica(wa), replica(wb), replica(wc)
    sync(a, b)
    sync(c, b)  # b now holds everything
    sync(a, b)
    expected = replica(wa + wb + wc)
    assert a.merkle_root() == b.merkle_root() == c.merkle_root() == expected.merkle_root()
    assert contents(a) == contents(b) == contents(c) == contents(expected)


def test_equal_replicas_cost_one_round_trip():
    ops = [(("x", i), 1, b"a" * 32, i) for i in range(50)]
    a, b = replica(ops), replica(ops)
    session = sync(a, b)
    assert session.stats.requests == 1 and session.stats.nodes_compared == 0


def test_work_is_proportional_to_the_difference():
    common = [(("x", i), 1, b"a" * 32, i) for i in range(2000)]
    a, b = replica([*common, (("y", 1), 2, b"a" * 32, 1)]), replica(common)
    session = sync(a, b, StateConfig())
    assert session.stats.pushed == 1 and session.stats.pulled == 0
    assert session.stats.requests <= 6  # hello, a few node levels, one push
    assert a.merkle_root() == b.merkle_root()


def test_messages_stay_bounded():
    """A new replica against 3,000 entries: every message under the configured budgets."""
    big = replica([((f"p{i % 7}", i), 1, b"a" * 32, "v" * 50) for i in range(3000)])
    empty = replica([])
    sizes: list[int] = []
    config = StateConfig(sync_batch_bytes=16 * 1024)
    session = sync(empty, big, config, sizes)
    assert contents(empty) == contents(big)
    assert session.stats.pulled == 3000
    # A nodes reply holds at most 64 nodes of <= 8.4 KiB; entry batches the byte budget.
    assert max(sizes) < 64 * (1 + 256 * 33) + 1024


def test_session_stops_after_its_request_budget_and_the_next_one_finishes():
    big = replica([(("x", i), 1, b"a" * 32, i) for i in range(300)])
    empty = replica([])
    config = dataclasses.replace(SMALL, sync_max_requests=20)
    first = sync(empty, big, config)
    assert first.stats.truncated and contents(empty) != contents(big)
    for _ in range(200):
        if contents(empty) == contents(big):
            break
        sync(empty, big, config)
    assert empty.merkle_root() == big.merkle_root()


def test_a_reply_that_does_not_match_the_request_fails_the_session():
    a = replica([(("x", 1), 1, b"a" * 32, 1)])
    session = SyncSession(b"peer", {"t": a}, {"t": [b""]}, SMALL)
    assert isinstance(session.next_request(), SyncHello)
    session.on_reply(SyncHelloReply(differ={"t": (b"",)}), 0)
    request = session.next_request()
    assert isinstance(request, SyncNodes)
    with pytest.raises(RemoteProtocolError):
        session.on_reply(SyncNodesReply(nodes=(bytes([LEAF]) + b"\x00" * 3,)), 0)
    assert session.state is SyncState.FAILED and session.next_request() is None


def test_unasked_entries_are_refused_and_not_stored():
    a = replica([])
    b = replica([(("x", 1), 1, b"a" * 32, 1)])
    session = SyncSession(b"peer", {"t": a}, {"t": [b""]}, SMALL)
    session.next_request()
    session.on_reply(SyncHelloReply(differ={"t": (b"",)}), 0)
    nodes_request = session.next_request()
    session.on_reply(respond({"t": b}, nodes_request, 0, SMALL)[0], 0)
    get = session.next_request()
    forged = SyncEntries(table="t", entries=((SCHEMA.key_bytes(("evil", 1)),
                                              b"\xf6"),), processed=len(get.keys))
    with pytest.raises(RemoteProtocolError):
        session.on_reply(forged, 0)
    assert contents(a) == []


def test_responder_refuses_unknown_tables_and_malformed_pushes():
    from meshcloud.state.messages import SyncGet, SyncPush

    b = replica([])
    reply, changes = respond({"t": b}, SyncGet(table="nope", keys=()), 0, SMALL)
    assert isinstance(reply, SyncRefused)
    reply, changes = respond({"t": b}, SyncPush(table="t", entries=((b"\x02x\x00\x03", b"\x00"),)),
                             0, SMALL)
    assert isinstance(reply, SyncRefused) and changes == [] and contents(b) == []
