"""The shard store on real LMDB in a temp dir."""

from __future__ import annotations

import os

import lmdb
import pytest
import trio

from blobstore.erasure import Scheme
from blobstore.errors import IntegrityError, ShardFormatError, ShardNotFound, StoreFullError
from blobstore.shards import ShardHeader, pack_shard, shard_id
from blobstore.shardstore import AsyncShardStore, ShardStore
from meshcloud.clock import ManualClock
from meshcloud.errors import LocalProtocolError


def blob(n: int, tag: int = 0) -> bytes:
    """A valid replicated shard of n payload bytes, distinct per tag."""
    h = ShardHeader(b"obj" + tag.to_bytes(4, "big"), tag, 0, Scheme.REPLICATION, 1, 0, n)
    return pack_shard(h, os.urandom(n))


@pytest.fixture
def store(tmp_path):
    s = ShardStore(tmp_path / "shards", map_size=4 << 20, min_free_bytes=0,
                   clock=ManualClock(epoch_ms=1_000_000))
    yield s
    s.close()


def test_put_get_list_delete_stats(store):
    blobs = [blob(100, i) for i in range(5)]
    ids = [store.put(b)[0] for b in blobs]
    assert ids == [shard_id(b) for b in blobs]
    for sid, b in zip(ids, blobs, strict=True):
        assert store.get(sid) == b
        assert store.contains(sid)
        assert store.info(sid).stored_at_ms == 1_000_000
    listed = [i.shard_id for i in store.list()]
    assert listed == sorted(ids)
    assert [i.shard_id for i in store.list(after=listed[1], limit=2)] == listed[2:4]
    assert list(store.iter_ids(page=2)) == listed
    stats = store.stats()
    assert (stats.count, stats.bytes) == (5, sum(len(b) for b in blobs))
    assert store.delete(ids[0]) is True
    assert store.delete(ids[0]) is False
    with pytest.raises(ShardNotFound):
        store.get(ids[0])
    assert store.stats().count == 4


def test_put_is_idempotent(store):
    b = blob(50)
    assert store.put(b) == (shard_id(b), True)
    assert store.put(b) == (shard_id(b), False)
    assert store.stats().count == 1
    assert store.stats().bytes == len(b)


def test_bad_shards_are_refused_and_change_nothing(store):
    b = blob(50)
    with pytest.raises(IntegrityError):
        store.put(b, expect_id=bytes(32))
    with pytest.raises(ShardFormatError):
        store.put(b"not a shard at all")
    with pytest.raises(ShardFormatError):
        store.put(b[:-1])
    assert store.stats().count == 0
    assert store.list() == []


def test_reopen_keeps_shards_and_totals(tmp_path):
    path = tmp_path / "s"
    with ShardStore(path, map_size=1 << 20, min_free_bytes=0) as s:
        sid, _ = s.put(blob(10))
    with ShardStore(path, map_size=1 << 20, min_free_bytes=0) as s:
        assert s.verify(sid)
        assert s.stats().count == 1


def test_opening_one_store_twice_in_a_process_is_refused(store):
    with pytest.raises(LocalProtocolError):
        ShardStore(store.path)


def test_verify_detects_rot(tmp_path):
    path = tmp_path / "s"
    good, bad = blob(64, 1), blob(64, 2)
    with ShardStore(path, map_size=1 << 20, min_free_bytes=0) as s:
        good_id, _ = s.put(good)
        bad_id, _ = s.put(bad)
    # Flip one bit of the stored bytes underneath the store, as a failing disk would.
    env = lmdb.open(str(path), max_dbs=4)
    db = env.open_db(b"shards")
    with env.begin(write=True) as txn:
        rotten = bytearray(txn.get(bad_id, db=db))
        rotten[-5] ^= 0x10
        txn.put(bad_id, bytes(rotten), db=db)
    env.close()
    with ShardStore(path, map_size=1 << 20, min_free_bytes=0) as s:
        assert s.verify(good_id) is True
        assert s.verify(bad_id) is False
        results, exhausted = s.verify_batch()
        assert exhausted
        assert {r.shard_id: r.ok for r in results} == {good_id: True, bad_id: False}
        with pytest.raises(ShardNotFound):
            s.verify(bytes(32))


def test_full_map_is_one_clear_error_and_nothing_half_written(tmp_path):
    path = tmp_path / "tiny"
    small = blob(1000, 1)
    with ShardStore(path, map_size=256 << 10, max_map_size=256 << 10, min_free_bytes=0) as s:
        s.put(small)
        before = s.stats()
        big = blob(512 << 10, 2)
        with pytest.raises(StoreFullError, match="full"):
            s.put(big)
        after = s.stats()
        assert (after.count, after.bytes) == (before.count, before.bytes)
        assert not s.contains(shard_id(big))
        assert [i.shard_id for i in s.list()] == [shard_id(small)]
        # Still usable for what fits.
        s.put(blob(1000, 3))
    with ShardStore(path, map_size=256 << 10, max_map_size=256 << 10, min_free_bytes=0) as s:
        assert s.stats().count == 2
        assert all(s.verify(i.shard_id) for i in s.list())


def test_map_grows_up_to_its_limit(tmp_path):
    with ShardStore(tmp_path / "g", map_size=256 << 10, max_map_size=64 << 20,
                    min_free_bytes=0) as s:
        ids = [s.put(blob(1 << 20, i))[0] for i in range(6)]
        assert s.stats().map_size > 6 << 20
        assert all(s.verify(i) for i in ids)


def test_low_disk_refuses_before_writing(tmp_path):
    with ShardStore(tmp_path / "d", map_size=1 << 20, min_free_bytes=1 << 62) as s:
        with pytest.raises(StoreFullError, match="reserve"):
            s.put(blob(10))
        assert s.stats().count == 0


def test_closed_store_refuses_calls(tmp_path):
    s = ShardStore(tmp_path / "c", map_size=1 << 20, min_free_bytes=0)
    s.close()
    with pytest.raises(LocalProtocolError):
        s.get(bytes(32))
    # Closing released the path: it can be opened again.
    ShardStore(tmp_path / "c", map_size=1 << 20, min_free_bytes=0).close()


async def test_concurrent_async_puts_and_gets_while_the_map_grows(tmp_path):
    store = ShardStore(tmp_path / "a", map_size=128 << 10, max_map_size=256 << 20,
                       min_free_bytes=0)
    astore = AsyncShardStore(store, threads=4)
    blobs = [blob(200_000, i) for i in range(24)]
    got: dict[bytes, bytes] = {}

    async def writer_then_reader(b: bytes) -> None:
        sid, new = await astore.put(b)
        assert new
        got[sid] = await astore.get(sid)

    try:
        async with trio.open_nursery() as nursery:
            for b in blobs:
                nursery.start_soon(writer_then_reader, b)
        assert got == {shard_id(b): b for b in blobs}
        stats = await astore.stats()
        assert stats.count == len(blobs)
        assert stats.map_size > 128 << 10
        results, _ = await astore.verify_batch(limit=100)
        assert all(r.ok for r in results) and len(results) == len(blobs)
    finally:
        store.close()


def test_deletes_work_when_the_reopened_map_has_no_free_page(tmp_path):
    # Found by the stateful test: after growing, a reopen maps just the file's size, so
    # the first write finds no free page; a delete (copy-on-write) must grow the map too.
    def open_store():
        return ShardStore(tmp_path / "f", map_size=128 << 10, max_map_size=512 << 10,
                          min_free_bytes=0, sync=False)

    with open_store() as s:
        a, _ = s.put(blob(30_000, 2))
        s.put(blob(70_000, 3))
    with open_store() as s:
        assert s.stats().map_size == s.stats().used_bytes  # not one spare page
        assert s.delete(a)
        assert s.stats().count == 1


def test_head_reads_the_header_without_the_payload(tmp_path):
    from blobstore.erasure import Scheme
    from blobstore.errors import ShardNotFound
    from blobstore.shards import ShardHeader, pack_shard, parse_header
    from blobstore.shardstore import ShardStore

    header = ShardHeader(b"object-id-123456", 7, 1, Scheme.ZFEC, 4, 2, 4000)
    blob = pack_shard(header, bytes(header.payload_size))
    with ShardStore(tmp_path / "s", map_size=8 << 20, min_free_bytes=0, sync=False) as store:
        sid, _ = store.put(blob)
        head = store.head(sid)
        assert len(head) == 128 and blob.startswith(head)
        assert parse_header(head) == header
        import pytest

        with pytest.raises(ShardNotFound):
            store.head(bytes(32))
