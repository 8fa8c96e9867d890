"""Giving memory back after transfers: the release decision and the store's map pages."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobstore import shardstore
from blobstore.erasure import Scheme
from blobstore.memory import MemoryReleaser, malloc_trim, tune_malloc
from blobstore.shards import ShardHeader, pack_shard
from blobstore.shardstore import ShardStore
from tests.blobstore.test_scrub_schedule import resident_kib

MIB = 1 << 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def releaser(threshold: int = 10) -> MemoryReleaser:
    return MemoryReleaser(lambda: 0, lambda: None, threshold=threshold)


def test_release_waits_for_transfers_to_settle_and_for_enough_bytes():
    r = releaser()
    assert not r.on_tick(5)  # moving
    assert not r.on_tick(5)  # settled, but only 5 bytes
    assert not r.on_tick(30)  # moving again
    assert r.on_tick(30)  # settled with 30 >= 10 moved
    assert not r.on_tick(30)  # nothing new since the release
    assert not r.on_tick(35) and not r.on_tick(35)  # 5 more: below the threshold
    assert not r.on_tick(45) and r.on_tick(45)


@given(steps=st.lists(st.integers(0, 50), max_size=40))
def test_never_releases_while_bytes_move_nor_twice_for_the_same_bytes(steps):
    r = releaser()
    moved, previous, released_at = 0, 0, 0
    for step in steps:
        moved += step
        due = r.on_tick(moved)
        if due:
            assert moved == previous  # settled
            assert moved - released_at >= 10
            released_at = moved
        previous = moved


@linux
def test_malloc_tuning_and_trim_apply_on_linux():
    assert tune_malloc() is True
    assert isinstance(malloc_trim(), bool)


def shard(i: int, size: int) -> bytes:
    header = ShardHeader(b"mem" + i.to_bytes(4, "big"), i, 0, Scheme.REPLICATION, 1, 0, size)
    return pack_shard(header, os.urandom(size))


@linux
def test_reading_through_the_store_keeps_its_pages_out_of_rss(tmp_path, monkeypatch):
    monkeypatch.setattr(shardstore, "RELEASE_READ_BYTES", 4 * MIB)
    store = ShardStore(tmp_path / "s", map_size=64 << 20, min_free_bytes=0, sync=False)
    try:
        ids = [store.put(shard(i, MIB))[0] for i in range(24)]
        path = os.path.join(os.path.realpath(store.path), "data.mdb")
        for sid in ids:
            store.get(sid)
        # 24 MiB read; at most one release interval (4 MiB) of it may still be mapped in
        assert resident_kib(path) <= 5 * 1024
        assert store.bytes_moved == 2 * 24 * (MIB + len(shard(0, 0)))
    finally:
        store.close()


@pytest.mark.trio
async def test_run_collects_cycles_and_releases_once_transfers_settle(autojump_clock):
    import gc
    import weakref

    import trio

    moved = [0]
    released: list[bool] = []

    class Buffer:
        pass

    gc.disable()  # only the releaser may collect the cycle below
    try:
        held = Buffer()
        held.cycle = held  # a reference cycle, as a traceback holding a frame makes
        alive = weakref.ref(held)
        del held
        r = MemoryReleaser(lambda: moved[0], lambda: released.append(True),
                           threshold=10, freeze_after=None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.run)
            await trio.sleep(0.5)
            for _ in range(5):  # transfers under way: 5 ticks of progress
                moved[0] += 8
                await trio.sleep(1.0)
            assert released == [] and alive() is not None
            for _ in range(10):  # virtual seconds; the release runs in a worker thread
                if alive() is None:
                    break
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()  # waits for the worker thread to finish
        assert alive() is None and released == [True]
    finally:
        gc.enable()


def test_freeze_is_due_once_after_start_up():
    r = MemoryReleaser(lambda: 0, lambda: None, freeze_after=10.0)
    assert not r.freeze_due(9.9) and r.freeze_due(10.0)
    r.frozen = 1
    assert not r.freeze_due(20.0)
    assert not MemoryReleaser(lambda: 0, lambda: None, freeze_after=None).freeze_due(1e9)


@pytest.mark.trio
async def test_start_up_objects_are_frozen_out_of_later_collections(autojump_clock):
    import gc
    import weakref

    import trio

    class Node:
        pass

    gc.unfreeze()  # in-process agents of earlier tests may have frozen their own objects
    long_lived = Node()  # alive at start-up: frozen, never walked again
    garbage = Node()
    garbage.cycle = garbage  # start-up garbage: collected, not frozen for good
    dead = weakref.ref(garbage)
    del garbage
    r = MemoryReleaser(lambda: 0, lambda: None, freeze_after=3.0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.run)
            await trio.sleep(2.5)
            assert r.frozen == 0 and gc.get_freeze_count() == 0
            await trio.sleep(1.0)
            assert r.frozen > 0 and gc.get_freeze_count() > 0
            nursery.cancel_scope.cancel()
        assert dead() is None
        assert not any(obj is long_lived for obj in gc.get_objects())
        fresh = Node()  # allocated later: still the collector's
        assert any(obj is fresh for obj in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_release_collects_cycles_and_says_what_the_collection_cost():
    r = releaser()

    class Holder:
        pass

    a, b = Holder(), Holder()
    a.other, b.other = b, a
    a.buffer = bytearray(4 * MIB)  # a chunk buffer only a cycle keeps alive
    del a, b
    assert r.collect() >= 2
    assert r.last_collection["freed"] >= 2
    assert r.last_collection["cpu_ms"] >= 0.0 and r.last_collection["wall_ms"] >= 0.0
    assert r.slowest_collection_ms == pytest.approx(r.last_collection["wall_ms"], abs=0.06)
