"""CRDT laws (commutative, associative, idempotent) for every entry type and whole tables."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.codec import cbor
from meshcloud.errors import CodecError
from meshcloud.state.crdt import LwwMap, LwwRegister, entry_bytes
from meshcloud.state.kv import MemoryKv
from meshcloud.state.schema import TableSchema
from meshcloud.state.table import TableCore

writers = st.sampled_from([b"\x01" * 32, b"\x02" * 32, b"\x03" * 32])
plain_values = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3),
                         st.lists(st.integers(0, 3), max_size=2))
# Few timestamps so that ties (same ts, and same ts + writer) are common.
registers = st.builds(
    lambda ts, writer, value, dead: (LwwRegister.tombstone(ts, writer) if dead
                                     else LwwRegister.write(ts, writer, value)),
    st.integers(0, 3), writers, plain_values, st.booleans())
maps = st.dictionaries(st.sampled_from(["a", "b", "c"]), registers, max_size=3).map(LwwMap.of)

LAWS = settings(max_examples=150, deadline=None)


def same(a, b) -> bool:
    return entry_bytes(a) == entry_bytes(b)


@pytest.mark.parametrize("strategy", [registers, maps], ids=["LwwRegister", "LwwMap"])
def test_merge_laws(strategy):
    @LAWS
    @given(strategy, strategy, strategy)
    def check(a, b, c):
        assert same(a.merge(b), b.merge(a)), "commutative"
        assert same(a.merge(b).merge(c), a.merge(b.merge(c))), "associative"
        assert same(a.merge(a), a), "idempotent"
        merged = a.merge(b)
        assert same(merged.merge(a), merged), "the join is an upper bound"
        assert same(merged.merge(b), merged), "the join is an upper bound"

    check()


@given(registers, registers)
def test_register_newer_timestamp_always_wins(a, b):
    if a.ts != b.ts:
        newer = a if a.ts > b.ts else b
        assert a.merge(b) == newer


def test_tie_broken_by_writer_then_value_the_same_on_every_node():
    a = LwwRegister.write(5, b"\x01" * 32, "x")
    b = LwwRegister.write(5, b"\x02" * 32, "a")
    assert a.merge(b) == b.merge(a) == b  # higher writer id wins
    c = LwwRegister.write(5, b"\x01" * 32, "z")
    assert a.merge(c) == c.merge(a) == c  # same writer and ts: larger value bytes win
    dead = LwwRegister.tombstone(5, b"\x01" * 32)
    assert dead.merge(a) == a  # a tombstone with the very same stamp loses to a value


def test_tombstone_beats_older_write_and_knows_it_is_one():
    put = LwwRegister.write(1, b"\x01" * 32, {"image": "nginx"})
    dead = LwwRegister.tombstone(2, b"\x02" * 32)
    assert put.merge(dead).is_tombstone and dead.merge(put).is_tombstone
    later = LwwRegister.write(3, b"\x01" * 32, {"image": "caddy"})
    assert not dead.merge(later).is_tombstone


def test_lww_map_merges_fields_independently():
    admin = LwwMap.of({"drain": LwwRegister.write(10, b"\x01" * 32, True)})
    node = LwwMap.of({"addresses": LwwRegister.write(11, b"\x02" * 32, ["tcp://a"]),
                      "drain": LwwRegister.write(3, b"\x02" * 32, False)})
    merged = admin.merge(node)
    assert merged.values() == {"drain": True, "addresses": ["tcp://a"]}
    gone = LwwMap.of({"drain": LwwRegister.tombstone(20, b"\x01" * 32),
                      "addresses": LwwRegister.tombstone(20, b"\x01" * 32)})
    assert merged.merge(gone).is_tombstone
    assert not merged.merge(gone).merge(
        LwwMap.of({"drain": LwwRegister.write(21, b"\x01" * 32, False)})).is_tombstone


@pytest.mark.parametrize("plain", [
    [1, b"w", b"\xff"],  # data is not CBOR
    [1, b"w", cbor.encode({"b": 1, "a": 2})],  # not canonical (keys unsorted)
    [-1, b"w", None],
    [1, "w", None],
    [1, b"w"],
    {"a": [1, b"w", None], 3: [1, b"w", None]},
])
def test_malformed_plain_entries_raise_codec_error(plain):
    kind = LwwMap if isinstance(plain, dict) else LwwRegister
    with pytest.raises(CodecError):
        kind.from_plain(plain)


SCHEMA = TableSchema("t", partition=(str,))
keys = st.sampled_from(["a", "b", "c", "d"])
updates = st.lists(st.tuples(keys, registers), max_size=12)


def table_after(batches) -> tuple[dict[bytes, bytes], bytes]:
    table = TableCore(SCHEMA, MemoryKv())
    for batch in batches:
        table.merge([(SCHEMA.key_bytes(k), e) for k, e in batch], now_ms=0)
    table.flush_merkle(10_000)
    contents = dict(table.kv.read(lambda txn: list(txn.range("t/e"))))
    return contents, table.merkle_root()


@settings(max_examples=60, deadline=None)
@given(updates, updates, updates)
def test_whole_table_merge_is_commutative_associative_idempotent(a, b, c):
    """A table is a map of CRDTs: merging update sets in any order, grouping or
    repetition gives the same stored bytes and the same Merkle root."""
    reference = table_after([a, b, c])
    for order in itertools.permutations([a, b, c]):
        assert table_after(order) == reference
    assert table_after([a + b, c]) == reference
    assert table_after([a, b + c]) == reference
    assert table_after([a, a, b, c, c, b]) == reference
