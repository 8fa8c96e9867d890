"""Entries built by one node and merged by another on a request stream (quorum writes)."""

from __future__ import annotations

import pytest

from meshcloud.errors import CodecError
from meshcloud.state.core import StateCore
from meshcloud.state.keys import encode_key
from meshcloud.state.kv import MemoryKv
from meshcloud.state.replication import Sharded
from meshcloud.state.schema import TableSchema
from meshcloud.state.table import Change

T = TableSchema("idx", partition=(str,), sort=(str,))
A, B = b"a" * 32, b"b" * 32


def core(me: bytes) -> StateCore:
    c = StateCore(me, MemoryKv(), lambda: {A, B}, wall_offset_ms=1_700_000_000_000)
    c.open_table(T, Sharded(rf=2, read_quorum=1, write_quorum=2))
    return c


def test_built_entry_is_not_stored_until_merged_by_a_holder():
    a, b = core(A), core(B)
    key, data = a.build_entry("idx", ("bkt", "k"), {"v": 1}, 1.0)
    assert a.get("idx", ("bkt", "k")) is None
    out = b.merge_entries(A, "idx", [(key, data)], 1.0)
    assert b.get("idx", ("bkt", "k")) == {"v": 1}
    assert any(isinstance(o, Change) for o in out)
    assert b.hlc.last >= a.hlc.last  # the holder observed the writer's clock


def test_given_stamp_and_writer_are_kept():
    a, b = core(A), core(B)
    key, first = a.build_entry("idx", ("bkt", "k"), [0, "x"], 1.0)
    b.merge_entries(A, "idx", [(key, first)], 1.0)
    stored = b.table("idx").get_entry(key)
    # a rewrite at the same stamp by the same writer wins only by its bytes
    _, second = b.build_entry("idx", ("bkt", "k"), [1, "x"], 2.0, ts=stored.ts, writer=A)
    b.merge_entries(A, "idx", [(key, second)], 2.0)
    assert b.get("idx", ("bkt", "k")) == [1, "x"]
    _, older = b.build_entry("idx", ("bkt", "k"), [0, "y"], 2.0, ts=stored.ts, writer=A)
    b.merge_entries(A, "idx", [(key, older)], 2.0)
    assert b.get("idx", ("bkt", "k")) == [1, "x"]


def test_tombstone_entry_and_raw_scan_keep_tombstones():
    a, b = core(A), core(B)
    for name in ("k1", "k2"):
        b.merge_entries(A, "idx", [a.build_entry("idx", ("bkt", name), "v", 1.0)], 1.0)
    b.merge_entries(A, "idx", [a.build_entry("idx", ("bkt", "k1"), None, 2.0)], 2.0)
    raw = b.table("idx").scan_entries(encode_key(("bkt",)), None)
    assert [k for k, _ in raw] == [encode_key(("bkt", "k1")), encode_key(("bkt", "k2"))]
    assert b.get("idx", ("bkt", "k1")) is None
    assert len(b.table("idx").scan_entries(b"", None, limit=1)) == 1


def test_malformed_entry_raises_and_stores_nothing():
    b = core(B)
    good = core(A).build_entry("idx", ("bkt", "ok"), "v", 1.0)
    with pytest.raises(CodecError):
        b.merge_entries(A, "idx", [good, (encode_key(("bkt", "bad")), b"\xff\x00")], 1.0)
    assert b.get("idx", ("bkt", "ok")) is None
