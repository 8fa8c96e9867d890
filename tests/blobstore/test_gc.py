from __future__ import annotations

import pytest

from blobstore.gc import DeleteShard, GcConfig, ShardGc, StoredShard

H = 3600.0
CONFIG = GcConfig(grace_ttl=24 * H, confirm_delay=1 * H)


def shard(i: int, stored_h: float, size: int = 10) -> StoredShard:
    return StoredShard(bytes([i]) * 32, int(stored_h * H * 1000), size)


def test_unreferenced_shard_deleted_only_after_grace_and_confirmation():
    gc = ShardGc(CONFIG)
    s = shard(1, stored_h=0)
    never = lambda sid: False  # noqa: E731
    assert gc.on_scan([s], never, now=23 * H) == []  # within grace: not even marked
    assert gc.marks == {}
    assert gc.on_scan([s], never, now=25 * H) == []  # marked
    assert s.shard_id in gc.marks
    assert gc.on_scan([s], never, now=25.5 * H) == []  # confirm delay not over
    assert gc.on_scan([s], never, now=26 * H) == [DeleteShard(s.shard_id, 10)]
    gc.on_deleted(s.shard_id, 10)
    assert gc.stats.deleted == 1 and gc.stats.deleted_bytes == 10 and not gc.marks


def test_referenced_shards_are_never_deleted():
    gc = ShardGc(CONFIG)
    s = shard(1, stored_h=0)
    always = lambda sid: True  # noqa: E731
    for hour in range(0, 200, 10):
        assert gc.on_scan([s], always, now=hour * H) == []
    assert gc.marks == {}


def test_reference_appearing_between_phases_unmarks():
    gc = ShardGc(CONFIG)
    s = shard(1, stored_h=0)
    refs: set[bytes] = set()
    assert gc.on_scan([s], refs.__contains__, now=30 * H) == []
    refs.add(s.shard_id)  # a late manifest commit arrives
    assert gc.on_scan([s], refs.__contains__, now=32 * H) == []
    assert gc.stats.unmarked == 1
    refs.clear()
    # Unreferenced again: a full new mark + confirm cycle is needed.
    assert gc.on_scan([s], refs.__contains__, now=33 * H) == []
    assert gc.on_scan([s], refs.__contains__, now=34 * H) == [DeleteShard(s.shard_id, 10)]


def test_marks_of_vanished_shards_are_dropped_and_deletes_capped():
    gc = ShardGc(GcConfig(grace_ttl=0, confirm_delay=0, max_deletes_per_scan=2))
    shards = [shard(i, 0) for i in range(5)]
    never = lambda sid: False  # noqa: E731
    gc.on_scan(shards, never, now=1.0)
    assert len(gc.marks) == 5
    assert len(gc.on_scan(shards, never, now=2.0)) == 2
    gc.on_scan(shards[:1], never, now=3.0)
    assert set(gc.marks) == {shards[0].shard_id}


def test_config_is_checked():
    with pytest.raises(ValueError):
        GcConfig(grace_ttl=-1)
