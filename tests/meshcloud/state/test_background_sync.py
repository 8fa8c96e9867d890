"""Background sync: commits do not wait for the disk on the event loop; the driver
flushes them in a worker thread (issue 12: an fsync'd commit starved gossip)."""

from __future__ import annotations

import random

import trio

from apps.workloads.tables import REPLICAS, WORKLOADS, WorkloadRecord
from meshcloud.state.config import local
from meshcloud.state.driver import StateDriver
from meshcloud.state.store import LmdbKv
from meshcloud.state.tables import EVENTS, MEMBERSHIP, NODES
from meshcloud.testing import TestMesh, TrioClock
from meshcloud.transport.memory import MemoryNetwork


def test_commits_are_pending_until_flushed_and_survive_a_reopen(tmp_path):
    kv = LmdbKv(tmp_path / "s", background_sync=True)
    kv.ensure("t")  # a commit too
    kv.transact(lambda txn: txn.put("t", b"k", b"v"))
    kv.transact(lambda txn: txn.put("t", b"k2", b"v2"))
    assert kv.pending == 3 and kv.flushes == 0
    kv.flush()
    assert kv.pending == 0 and kv.flushes == 1
    kv.flush()  # nothing pending: no second fdatasync
    assert kv.flushes == 1
    kv.transact(lambda txn: txn.put("t", b"k3", b"v3"))
    kv.close()  # closing flushes what is pending
    again = LmdbKv(tmp_path / "s")
    again.ensure("t")
    assert again.read(lambda txn: [txn.get("t", k) for k in (b"k", b"k2", b"k3")]) == [
        b"v", b"v2", b"v3"]
    again.close()


def test_a_store_that_syncs_each_commit_has_nothing_pending(tmp_path):
    kv = LmdbKv(tmp_path / "s")
    kv.ensure("t")
    kv.transact(lambda txn: txn.put("t", b"k", b"v"))
    assert kv.pending == 0 and not kv.background_sync
    kv.close()


async def start_driver(tmp_path, nursery) -> tuple[LmdbKv, StateDriver]:
    """A one-node state driver over a store with background sync, running."""
    mesh = TestMesh.with_members(1)
    member = mesh.members[0]
    transport = MemoryNetwork().add(member.key, member.authenticator)
    await nursery.start(transport.run)
    kv = LmdbKv(tmp_path / "s", background_sync=True)
    driver = StateDriver(transport, kv, lambda: [], config=local(), rng=random.Random(1),
                         clock=TrioClock())
    for schema in (NODES, WORKLOADS, REPLICAS, EVENTS, MEMBERSHIP):
        driver.open_table(schema)
    await nursery.start(driver.run)
    return kv, driver


async def test_the_driver_flushes_a_put_in_a_worker_thread(tmp_path, nursery):
    kv, driver = await start_driver(tmp_path, nursery)
    before = kv.flushes
    driver.put("workloads", "app", WorkloadRecord(kind="service"))
    assert kv.pending >= 1  # put returned before any fdatasync
    with trio.fail_after(30):
        while kv.pending:
            await trio.sleep(0.01)
    assert kv.flushes > before
    assert driver.get("workloads", "app") == WorkloadRecord(kind="service")


async def test_durable_returns_only_once_every_earlier_commit_is_on_disk(tmp_path, nursery):
    """What a holder awaits before it acknowledges an index write: a write acknowledged to
    another node must survive a power cut of this one."""
    import threading

    kv, driver = await start_driver(tmp_path, nursery)
    gate = threading.Event()
    real_flush = kv.flush

    def slow_flush() -> None:  # a disk that takes its time
        gate.wait(10)
        real_flush()

    kv.flush = slow_flush  # type: ignore[method-assign]
    driver.put("workloads", "app", WorkloadRecord(kind="service"))
    waited = trio.Event()

    async def ack() -> None:
        await driver.durable()
        waited.set()

    nursery.start_soon(ack)
    with trio.move_on_after(0.3):
        await waited.wait()
    assert not waited.is_set() and kv.pending >= 1  # still waiting for the disk
    gate.set()
    with trio.fail_after(10):
        await waited.wait()
    assert kv.pending == 0


async def test_the_flush_loop_sleeps_until_a_commit(tmp_path, nursery, autojump_clock):
    """The store announces its commits: the flush loop does not poll an idle store every
    ``flush_poll`` (once a second), yet a commit no output announced (a direct write to
    the store, as a table's GC does) is flushed at once."""
    kv, driver = await start_driver(tmp_path, nursery)
    assert driver.config.flush_poll == 1.0

    class Steps(trio.abc.Instrument):
        count = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("StateDriver._flush_loop"):
                Steps.count += 1

    await trio.sleep(5)
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    await trio.sleep(300)
    assert Steps.count <= 20  # the rare poll and a stray commit (300 before)
    kv.ensure("direct")  # a commit no driver output announces
    kv.transact(lambda txn: txn.put("direct", b"k", b"v"))
    assert kv.pending
    # from here the clock jumps only after 0.1 s of real idleness, not while the flush
    # runs in its worker thread (a jump then would reach the safety poll's deadline)
    autojump_clock.autojump_threshold = 0.1
    with trio.fail_after(3):  # at once: the loop's next safety poll is ~25 s away
        while kv.pending:
            await trio.sleep(0.25)
    trio.lowlevel.remove_instrument(steps)
