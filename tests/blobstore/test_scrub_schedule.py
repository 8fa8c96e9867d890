"""The scrub schedule survives restarts; the scrub worker is paced (virtual time)."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from blobstore.erasure import Scheme
from blobstore.maintenance import ScrubWorker
from blobstore.scrub import SCHEDULE_NOTE, ScrubConfig, ScrubSchedule, first_schedule
from blobstore.shards import ShardHeader, pack_shard
from blobstore.shardstore import AsyncShardStore, ShardStore, release_file_pages

KIB = 1024
WALL0 = 1_700_000_000.0
INTERVAL = 1000.0
RATE = 64 * KIB


@given(next_wall=st.floats(0, 1e12), cursor=st.sampled_from([b"", bytes(range(32))]))
def test_schedule_round_trips(next_wall, cursor):
    schedule = ScrubSchedule(next_wall, cursor)
    assert ScrubSchedule.decode(schedule.encode()) == schedule


@given(raw=st.binary(max_size=64))
def test_a_malformed_schedule_reads_as_none_or_a_schedule(raw):
    decoded = ScrubSchedule.decode(raw)
    assert decoded is None or decoded.encode() == raw


def test_first_schedule_keeps_a_saved_one_and_spreads_a_new_one():
    config = ScrubConfig(pass_interval=30 * 86400.0)
    rng = random.Random(3)
    saved = ScrubSchedule(WALL0 + 86400.0, b"")
    assert first_schedule(saved, WALL0, config, rng) == saved
    # a clock that went back cannot push the next pass beyond one interval (+ jitter)
    far = ScrubSchedule(WALL0 + 10 * config.pass_interval)
    assert first_schedule(far, WALL0, config, rng).next_wall <= WALL0 + 1.1 * 30 * 86400
    fresh = [first_schedule(None, WALL0, config, rng).next_wall for _ in range(50)]
    assert all(WALL0 <= t <= WALL0 + config.pass_interval for t in fresh)
    assert max(fresh) - min(fresh) > config.pass_interval / 4  # spread, not all at once
    assert first_schedule(None, WALL0, ScrubConfig(pass_interval=60.0), rng).next_wall == WALL0


def shard(i: int, size: int) -> bytes:
    header = ShardHeader(b"obj" + i.to_bytes(4, "big"), i, 0, Scheme.REPLICATION, 1, 0, size)
    return pack_shard(header, os.urandom(size))


class Events:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def emit(self, kind: str, **_facts: object) -> None:
        self.kinds.append(kind)


class InlineShards(AsyncShardStore):
    """The real store, called inline: worker threads and trio's autojump clock do not mix
    (the clock would jump while a thread works)."""

    async def _run(self, fn, *args, **kwargs):
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


def service(store: ShardStore, wall0: float, events: Events) -> SimpleNamespace:
    """What ScrubWorker uses of the blob service: config, shards, the node's wall clock
    (here tied to trio's virtual clock) and its event feed."""
    clock = SimpleNamespace(wall_ms=lambda: int((wall0 + trio.current_time()) * 1000))
    node = SimpleNamespace(clock=clock, events=events, node_id=b"\x01" * 32)
    config = SimpleNamespace(scrub_rate=RATE, scrub_interval=INTERVAL)
    return SimpleNamespace(config=config, shards=InlineShards(store), node=node,
                           client=None)


async def run_worker(store: ShardStore, wall0: float, seconds: float,
                     events: Events) -> ScrubWorker:
    """A scrub worker started on ``store`` as at agent start, run ``seconds`` of virtual
    time, then stopped (the agent going down)."""
    worker = ScrubWorker(service(store, wall0, events), random.Random(5))
    await worker.load()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.loop)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return worker


@pytest.fixture
def store(tmp_path):
    s = ShardStore(tmp_path / "shards", map_size=16 << 20, min_free_bytes=0, sync=False)
    for i in range(40):
        s.put(shard(i, 16 * KIB))
    yield s
    s.close()


@pytest.mark.trio
async def test_restart_after_a_recent_pass_does_not_scrub(store, tmp_path, autojump_clock):
    events = Events()
    first = await run_worker(store, WALL0, 60.0, events)
    assert first.core.passes == 1 and first.core.checked == 40
    saved = ScrubSchedule.decode(store.note(SCHEDULE_NOTE))
    assert saved is not None and saved.cursor == b""
    assert saved.next_wall >= WALL0 + 0.9 * INTERVAL

    # the agent restarts 30 s later (wall clock), with a fresh monotonic clock
    store.close()
    reopened = ShardStore(tmp_path / "shards", map_size=16 << 20, min_free_bytes=0, sync=False)
    try:
        second = await run_worker(reopened, WALL0 + 90.0, 300.0, events)
        assert second.core.passes == 0 and second.core.checked == 0
        assert events.kinds.count("scrub.finished") == 1
        # and it still comes at its time: the pass is due within the interval (+ jitter)
        third = await run_worker(reopened, saved.next_wall + 1.0, 30.0, events)
        assert third.core.passes == 1
    finally:
        reopened.close()


@pytest.mark.trio
async def test_a_pass_stopped_midway_resumes_from_its_cursor(store, tmp_path, autojump_clock):
    events = Events()
    # 40 shards of ~16 KiB in batches of 64 is one batch; make batches smaller instead
    worker = ScrubWorker(service(store, WALL0, events), random.Random(5))
    worker.core = type(worker.core)(ScrubConfig(batch=8, max_rate=RATE,
                                                pass_interval=INTERVAL), random.Random(5))
    await worker.load()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.loop)
        with trio.fail_after(100):
            while worker.core.checked < 16:
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert worker.core.passes == 0
    # paced: the second batch waited for the first's bytes at RATE bytes/s
    assert trio.current_time() >= 8 * 16 * KIB / RATE
    saved = ScrubSchedule.decode(store.note(SCHEDULE_NOTE))
    assert saved is not None and saved.cursor == worker.core.cursor != b""
    resumed = ScrubWorker(service(store, WALL0 + 5.0, events), random.Random(5))
    await resumed.load()
    assert resumed.core.cursor == saved.cursor
    first_batch = await resumed.service.shards.verify_batch(resumed.core.cursor, 64)
    assert len(first_batch[0]) == 40 - worker.core.checked  # only the rest of the pass


def test_verify_batch_leaves_no_store_pages_mapped_in(store):
    results, end = store.verify_batch(b"", 64)
    assert end and len(results) == 40 and all(r.ok for r in results)
    path = os.path.join(os.path.realpath(store.path), "data.mdb")
    assert resident_kib(path) < 64  # the ~640 KiB just read are not left counted in RSS
    assert release_file_pages(path) > 0  # the map is there, and can be released again


def resident_kib(path: str) -> int:
    """Rss of this process's mappings of ``path`` (from /proc/self/smaps), KiB."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = len(fields) == 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total
