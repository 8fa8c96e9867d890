"""LMDB store: survives reopen, rolls back failed transactions, grows, and a full store
gives one clear error with stored data unchanged."""

from __future__ import annotations

import os
import stat

import pytest

from meshcloud.state.crdt import LwwRegister
from meshcloud.state.errors import StoreFullError
from meshcloud.state.kv import MemoryKv
from meshcloud.state.schema import TableSchema
from meshcloud.state.store import LmdbKv
from meshcloud.state.table import TableCore

SCHEMA = TableSchema("t", partition=(str,), sort=(int,))
W = b"w" * 32


def fill(table: TableCore, n: int, start: int = 0, size: int = 10) -> None:
    table.merge([(SCHEMA.key_bytes(("p", i)), LwwRegister.write(1, W, "x" * size))
                 for i in range(start, start + n)], now_ms=0)


def test_table_survives_reopen_with_entries_merkle_and_to_dos(tmp_path):
    with LmdbKv(tmp_path / "state") as kv:
        table = TableCore(SCHEMA, kv)
        fill(table, 100)
        table.flush_merkle(60)  # leave 40 to-do items pending across the restart
        table.merge([(SCHEMA.key_bytes(("p", 1)), LwwRegister.tombstone(2, W))], now_ms=0)
    with LmdbKv(tmp_path / "state") as kv:
        table = TableCore(SCHEMA, kv)
        assert table.count() == 100 and table.get(("p", 2)) == "x" * 10
        assert table.get(("p", 1)) is None and table.gc_todo_count() == 1
        assert table.merkle.todo_count() == 41
        table.flush_merkle(1000)
        root = table.merkle_root()
    memory = TableCore(SCHEMA, MemoryKv())
    fill(memory, 100)
    memory.merge([(SCHEMA.key_bytes(("p", 1)), LwwRegister.tombstone(2, W))], now_ms=0)
    memory.flush_merkle(1000)
    assert root == memory.merkle_root()  # same tree whatever the store


def test_failed_transaction_rolls_back_everything(tmp_path):
    with LmdbKv(tmp_path / "s") as kv:
        table = TableCore(SCHEMA, kv)
        fill(table, 3)
        before = kv.read(lambda txn: (list(txn.range("t/e")), list(txn.range("t/todo"))))

        def half_then_fail(txn):
            txn.put("t/e", SCHEMA.key_bytes(("p", 99)), b"partial")
            txn.delete("t/e", SCHEMA.key_bytes(("p", 0)))
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            kv.transact(half_then_fail)
        after = kv.read(lambda txn: (list(txn.range("t/e")), list(txn.range("t/todo"))))
        assert after == before


def test_memory_kv_rolls_back_too():
    kv = MemoryKv()
    kv.ensure("x")
    kv.transact(lambda txn: txn.put("x", b"a", b"1"))

    def fail(txn):
        txn.put("x", b"a", b"2")
        txn.put("x", b"b", b"3")
        raise ValueError

    with pytest.raises(ValueError):
        kv.transact(fail)
    assert kv.snapshot() == {"x": {b"a": b"1"}}


def test_map_grows_on_demand(tmp_path):
    with LmdbKv(tmp_path / "s", map_size=1 << 20, max_map_size=64 << 20) as kv:
        table = TableCore(SCHEMA, kv)
        fill(table, 300, size=10_000)  # ~3 MB into a 1 MiB map, one transaction
        assert kv.grown >= 2 and kv.map_size > 1 << 20
        assert table.count() == 300


def test_full_store_raises_one_clear_error_and_keeps_stored_data(tmp_path):
    with LmdbKv(tmp_path / "s", map_size=1 << 20, max_map_size=2 << 20) as kv:
        table = TableCore(SCHEMA, kv)
        fill(table, 50, size=1000)
        table.flush_merkle(1000)
        before = kv.read(lambda txn: [list(txn.range(t)) for t in
                                      ("t/e", "t/m", "t/todo", "t/gc")])
        with pytest.raises(StoreFullError, match="full"):
            for i in range(100):
                fill(table, 40, start=1000 + 40 * i, size=20_000)
        # Whole batches that fit stayed; the one that did not fit left no trace.
        stored = table.count()
        assert (stored - 50) % 40 == 0
        assert table.get(("p", 3)) == "x" * 1000
        after = kv.read(lambda txn: list(txn.range("t/e")))
        assert set(before[0]) <= set(after)
        assert kv.read(lambda txn: txn.count("t/todo")) == stored - 50


def test_files_are_private(tmp_path):
    with LmdbKv(tmp_path / "s"):
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "s" / "data.mdb").st_mode) == 0o600


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs), so the disk itself fills up (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=2m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        os.system(f"umount {mount}")


def test_real_full_disk_is_a_clear_error_and_the_store_stays_readable(tiny_disk):
    with LmdbKv(tiny_disk / "s") as kv:
        table = TableCore(SCHEMA, kv)
        batches = 0
        with pytest.raises(StoreFullError, match="no space left"):
            for batches in range(1000):
                fill(table, 10, start=10 * batches, size=5000)
        assert table.count() == 10 * batches  # the failed batch left nothing
        assert table.get(("p", 5)) == "x" * 5000
    with LmdbKv(tiny_disk / "s") as kv:  # and it reopens intact
        assert TableCore(SCHEMA, kv).count() == 10 * batches
