"""TableCore: the one mutation path, scans, validation of peer data, GC and expiry to-dos."""

from __future__ import annotations

import pytest

from apps.workloads.tables import REPLICAS, ReplicaClaim
from meshcloud.clock import hlc_pack
from meshcloud.codec import cbor
from meshcloud.errors import CodecError
from meshcloud.state.crdt import LwwMap, LwwRegister, entry_bytes
from meshcloud.state.errors import ValueTooLargeError
from meshcloud.state.kv import MemoryKv
from meshcloud.state.merkle import blake
from meshcloud.state.schema import TableSchema
from meshcloud.state.tables import NODES, NodeRecord

W = b"\x07" * 32
SCHEMA = TableSchema("t", partition=(str,), sort=(int,))


def table(schema=SCHEMA, **kw):
    from meshcloud.state.table import TableCore

    return TableCore(schema, MemoryKv(), **kw)


def write(t, key, value, ts):
    return t.merge([(t.schema.key_bytes(key), t.build(value, ts, W))], now_ms=0)


def test_merge_reports_changes_only_when_something_changed():
    t = table()
    changes = write(t, ("web", 0), {"v": 1}, ts=10)
    assert len(changes) == 1 and changes[0].old is None
    assert write(t, ("web", 0), {"v": 1}, ts=10) == []  # same entry again
    assert write(t, ("web", 0), {"v": 0}, ts=5) == []  # older write loses
    changes = write(t, ("web", 0), {"v": 2}, ts=11)
    assert changes[0].old.value() == {"v": 1} and changes[0].new.value() == {"v": 2}
    assert t.get(("web", 0)) == {"v": 2}
    assert [k for k, _ in t.take_outbox()] == [t.schema.key_bytes(("web", 0))] * 2
    assert t.take_outbox() == []


def test_scan_by_partition_prefix_start_limit_and_reverse():
    t = table()
    for name in ("api", "web", "web2", "worker"):
        for i in range(3):
            write(t, (name, i), f"{name}{i}", ts=1)
    t.merge([(SCHEMA.key_bytes(("web", 1)), LwwRegister.tombstone(2, W))], now_ms=0)
    assert t.scan(("web",)) == [(("web", 0), "web0"), (("web", 2), "web2")]
    assert [k for k, _ in t.scan((), "w")] == [
        ("web", 0), ("web", 2), ("web2", 0), ("web2", 1), ("web2", 2),
        ("worker", 0), ("worker", 1), ("worker", 2)]
    assert [k for k, _ in t.scan((), "web", limit=3)] == [("web", 0), ("web", 2), ("web2", 0)]
    assert [k for k, _ in t.scan(("web2",), start=("web2", 1))] == [("web2", 1), ("web2", 2)]
    assert [k for k, _ in t.scan(("worker",), reverse=True)] == [
        ("worker", 2), ("worker", 1), ("worker", 0)]
    assert len(t.scan(("web",), tombstones=True)) == 3


def test_a_malformed_entry_rejects_its_whole_batch_and_stores_nothing():
    t = table()
    good = (SCHEMA.key_bytes(("a", 1)), entry_bytes(LwwRegister.write(1, W, "ok")))
    bad_cases = [
        (SCHEMA.key_bytes(("a", 2)), b"\xff\xff"),  # not CBOR
        (SCHEMA.key_bytes(("a", 2)), cbor.encode([1, W, cbor.encode({"b": 1, "a": 2})])),
        (b"\x03" + b"\x00" * 8, entry_bytes(LwwRegister.write(1, W, "x"))),  # wrong key shape
        (SCHEMA.key_bytes(("a", 2)), entry_bytes(LwwRegister.write(1, W, "x" * 70_000))),
    ]
    for bad in bad_cases:
        with pytest.raises(CodecError):
            t.merge_encoded([good, bad], now_ms=0)
        assert t.count() == 0 and t.merkle.todo_count() == 0


def test_local_values_are_checked_before_anything_is_stored():
    t = table()
    with pytest.raises(ValueTooLargeError):
        write(t, ("a", 1), "x" * 70_000, ts=1)
    with pytest.raises(CodecError):
        t.schema.key_bytes(("a", "not an int"))
    claims = table(REPLICAS)
    with pytest.raises(CodecError):
        claims.build({"node": b"x"}, 1, W)  # not a ReplicaClaim
    assert t.count() == 0 and claims.count() == 0


def test_records_round_trip_through_their_schema():
    claims = table(REPLICAS)
    claim = ReplicaClaim(node=b"n" * 32, fencing=3, state="running")
    write(claims, ("web", 0), claim, ts=1)
    assert claims.get(("web", 0)) == claim


def test_lww_map_rows_are_patched_per_field():
    nodes = table(NODES)
    key = NODES.key_bytes(b"n1")
    nodes.merge([(key, nodes.build(NodeRecord(name="pi", addresses=("tcp://a",)), 5, W))], 0)
    nodes.merge([(key, nodes.build_patch({"drain": True}, 3, b"\x01" * 32))], 0)
    # The full write at ts=5 also wrote drain=False, later than the patch at ts=3.
    assert nodes.get(b"n1") == NodeRecord(name="pi", addresses=("tcp://a",), drain=False)
    nodes.merge([(key, nodes.build_patch({"drain": True}, 6, b"\x01" * 32))], 0)
    nodes.merge([(key, nodes.build_patch({"addresses": ["tcp://b"]}, 4, W))], 0)
    # drain (ts 6) and the older address write (ts 4 < 5) are judged field by field.
    assert nodes.get(b"n1") == NodeRecord(name="pi", addresses=("tcp://a",), drain=True)
    nodes.merge([(key, nodes.build_tombstone(key, 7, W))], 0)
    assert nodes.get(b"n1") is None


def test_tombstones_get_a_gc_to_do_that_goes_when_overwritten():
    t = table()
    key = SCHEMA.key_bytes(("a", 1))
    write(t, ("a", 1), "v", ts=hlc_pack(1000, 0))
    t.merge([(key, LwwRegister.tombstone(hlc_pack(2000, 0), W))], now_ms=0)
    assert t.gc_todo_count() == 1
    assert t.gc_candidates(hlc_pack(1500, 0), 10) == []
    (found,) = t.gc_candidates(hlc_pack(3000, 0), 10)
    assert found[0] == key and found[1] == blake(t.get_bytes(key))
    write(t, ("a", 1), "back", ts=hlc_pack(2500, 0))
    assert t.gc_todo_count() == 0
    assert t.get(("a", 1)) == "back"


def test_delete_if_equal_only_removes_the_unchanged_entry():
    t = table()
    key = SCHEMA.key_bytes(("a", 1))
    t.merge([(key, LwwRegister.tombstone(5, W))], now_ms=0)
    seen = blake(t.get_bytes(key))
    write(t, ("a", 1), "newer", ts=6)
    assert not t.delete_if_equal(key, seen)
    assert t.get(("a", 1)) == "newer"
    assert not t.delete_if_equal(key, blake(t.get_bytes(key)), tombstone_only=True)
    assert t.delete_if_equal(key, blake(t.get_bytes(key)))
    assert t.get_entry(key) is None


def test_expired_entries_are_refused_and_purged_without_tombstones():
    schema = TableSchema("ev", partition=(), sort=(int,), expires_after_ms=1000)
    t = table(schema)
    t.merge([(schema.key_bytes((1,)), LwwRegister.write(hlc_pack(10_000, 0), W, "old"))],
            now_ms=10_500)
    t.merge([(schema.key_bytes((2,)), LwwRegister.write(hlc_pack(10_400, 0), W, "new"))],
            now_ms=10_500)
    # A peer that has not purged yet offers the old entry again: refused once expired.
    assert t.merge_encoded([(schema.key_bytes((0,)),
                             entry_bytes(LwwRegister.write(hlc_pack(9_000, 0), W, "x")))],
                           now_ms=10_500) == []
    assert t.purge_expired(now_ms=11_200) == 1
    assert [k for k, _ in t.scan()] == [(2,)]
    assert t.gc_todo_count() == 0


def test_a_purge_with_nothing_expired_commits_nothing(tmp_path):
    """An idle node's purge (every ``expiry_interval``) writes no transaction: with
    background sync each commit costs the flush loop a wake-up and an fdatasync."""
    from meshcloud.state.store import LmdbKv
    from meshcloud.state.table import TableCore

    schema = TableSchema("ev", partition=(), sort=(int,), expires_after_ms=1000)
    kv = LmdbKv(tmp_path / "s", background_sync=True)
    t = TableCore(schema, kv)
    t.merge([(schema.key_bytes((1,)), LwwRegister.write(hlc_pack(10_000, 0), W, "a"))],
            now_ms=10_000)
    committed = kv.committed
    assert t.purge_expired(now_ms=10_500) == 0
    assert kv.committed == committed  # nothing due: no commit
    assert t.purge_expired(now_ms=11_200) == 1
    assert kv.committed == committed + 1
    kv.close()


def test_updated_hook_sees_old_and_new_in_the_transaction():
    seen = []
    schema = TableSchema("h", partition=(str,),
                         updated=lambda key, old, new: seen.append((key, old, new)))
    t = table(schema)
    t.merge([(schema.key_bytes("a"), LwwRegister.write(1, W, 1))], 0)
    t.merge([(schema.key_bytes("a"), LwwRegister.write(2, W, 2))], 0)
    assert [(k, o and o.value(), n.value()) for k, o, n in seen] == [
        (("a",), None, 1), (("a",), 1, 2)]


def test_lww_map_entry_type_is_declared_by_schema():
    assert NODES.entry is LwwMap
    with pytest.raises(ValueError):
        TableSchema("bad/name", partition=(str,))
    with pytest.raises(ValueError):
        TableSchema("x", partition=(float,))


def test_entries_from_a_clock_far_in_the_future_wait_until_time_catches_up():
    t = table()
    now_ms = 1_767_225_600_000
    future = LwwRegister.write(hlc_pack(now_ms + 365 * 86_400_000, 0), W, "from 2027")
    item = [(SCHEMA.key_bytes(("a", 1)), entry_bytes(future))]
    assert t.merge_encoded(item, now_ms=now_ms) == [] and t.count() == 0
    assert t.refused_future == 1
    near = LwwRegister.write(hlc_pack(now_ms + 30_000, 0), W, "30 s ahead: accepted")
    assert len(t.merge_encoded([(SCHEMA.key_bytes(("a", 2)), entry_bytes(near))], now_ms)) == 1
    assert len(t.merge_encoded(item, now_ms=now_ms + 365 * 86_400_000)) == 1
