"""Probes and acks do not wait behind bulk stream data (issue 12 §1).

The mux keeps datagrams, pings and pongs apart from stream frames and hands them over
first; a writer still sending stream data it took earlier asks for them between two
slices (``urgent_to_send``). Bulk encryption runs in low-priority worker threads
(:mod:`meshcloud.bulk`)."""

from __future__ import annotations

import os
import threading

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from meshcloud import bulk
from meshcloud.transport.mux import DatagramReceived, MessageReceived, MuxCore
from meshcloud.transport.muxframes import FrameType
from tests.meshcloud.transport.test_mux import Pair, frames_of


def test_a_datagram_queued_after_bulk_data_leaves_first():
    pair = Pair()
    sid = pair.a.open_stream("/blob/1")
    pair.a.send_message(sid, bytes(200_000))
    assert pair.a.send_datagram("/gossip/1", b"ack")
    frames = frames_of(pair.a.data_to_send())
    assert frames[0][0] == FrameType.DATAGRAM  # ahead of the OPEN and the data
    assert pair.a.backlog == 0


def test_urgent_frames_alone_can_be_taken_while_stream_data_waits():
    a = MuxCore(initiator=True, now=0.0)
    sid = a.open_stream("/blob/1")
    a.send_message(sid, bytes(100_000))
    before = a.backlog
    assert a.urgent_to_send() == []
    assert a.send_datagram("/gossip/1", b"ping")
    urgent = a.urgent_to_send()
    assert [f[0] for f in frames_of(urgent)] == [FrameType.DATAGRAM]
    assert a.backlog == before  # only the datagram's bytes were taken
    rest = frames_of(a.data_to_send())
    assert rest[0][0] == FrameType.OPEN and all(f[0] != FrameType.DATAGRAM for f in rest)


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=20_000),
                          st.booleans()), max_size=12))
def test_overtaking_keeps_every_message_and_datagram_in_its_own_order(ops):
    """Whatever mix of stream messages and datagrams is queued, and whenever the urgent
    frames are taken early, the peer gets each stream's messages in order and every
    datagram in order (the messages fit the initial window: no credit needed)."""
    pair = Pair()
    sid = pair.a.open_stream("/s/1")
    sent_msgs, sent_grams, events = [], [], []
    for i, (is_gram, size, early) in enumerate(ops):
        body = i.to_bytes(2, "big") + bytes(size % 1000 if is_gram else size)
        if is_gram:
            if pair.a.send_datagram("/g/1", body):
                sent_grams.append(body)
        else:
            assert pair.a.send_message(sid, body) == len(body)
            sent_msgs.append(body)
        if early:  # a writer between two slices: only the urgent frames leave now
            for packet in pair.a.urgent_to_send():
                events += pair.b.receive_data(bytes(packet), 0.0)
    events += pair.transfer(pair.a)
    assert [e.data for e in events if isinstance(e, MessageReceived)] == sent_msgs
    assert [e.data for e in events if isinstance(e, DatagramReceived)] == sent_grams
    assert pair.a.backlog == 0


async def test_bulk_work_runs_in_a_lowered_thread_and_is_bounded():
    running = 0
    peak = 0
    lock = threading.Lock()
    main = threading.get_native_id()
    gate = threading.Event()
    full = threading.Event()

    def work(i: int) -> tuple[int, int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == bulk.BULK_THREADS:
                full.set()
        gate.wait(10)
        with lock:
            running -= 1
        me = threading.get_native_id()
        return me, os.getpriority(os.PRIO_PROCESS, me)

    results = []

    async def one(i):
        results.append(await bulk.run_bulk(work, i))

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
        # the bound is reached (not a moment: the worker threads start when the kernel
        # runs them), then the rest stay queued behind it
        assert await trio.to_thread.run_sync(full.wait, 30)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert peak == bulk.BULK_THREADS
    loop_priority = os.getpriority(os.PRIO_PROCESS, main)
    assert all(tid != main and prio == min(19, loop_priority + bulk.BULK_NICENESS)
               for tid, prio in results)
    assert os.getpriority(os.PRIO_PROCESS, main) == loop_priority  # the loop is untouched


class _BytesPerStep(trio.abc.Instrument):
    """Bytes a connection's channel decrypted during each step of its reader task."""

    def __init__(self) -> None:
        self.conn = None
        self.before = 0
        self.steps: list[int] = []

    def before_task_step(self, task) -> None:
        if self.conn is not None and task.name.endswith("Connection.run"):
            self.before = self.conn.channel.bytes_received

    def after_task_step(self, task) -> None:
        if self.conn is not None and task.name.endswith("Connection.run"):
            self.steps.append(self.conn.channel.bytes_received - self.before)


async def test_the_reader_decrypts_a_bounded_amount_per_task_step(nursery, monkeypatch):
    """Bulk data always ready in the socket: the reader lets the loop run every
    BYTES_BEFORE_YIELD bytes (plus the one read that crossed it), not every 8 reads."""
    from meshcloud.testing import TestMesh
    from meshcloud.transport import connection
    from meshcloud.transport.mux import MuxConfig
    from meshcloud.transport.tcp import TcpConfig, TcpTransport

    # the sender writes 8 MiB per step, so the receiver finds MiBs waiting at each wake
    monkeypatch.setattr(connection, "WRITE_SLICE", 8 << 20)
    mux = MuxConfig(stream_window=16 << 20, max_message=2 << 20, max_buffered=64 << 20)
    config = TcpConfig(mux=mux, max_buffered=64 << 20)
    mesh = TestMesh.with_members(2)
    got: list[bytes] = []
    done = trio.Event()

    async def sink(stream) -> None:
        for _ in range(16):
            got.append(await stream.receive())
        done.set()

    receiver = TcpTransport(mesh.members[0].key, mesh.members[0].authenticator, config=config)
    receiver.serve("/test/sink/1", sink)
    await nursery.start(receiver.run)
    sender = TcpTransport(mesh.members[1].key, mesh.members[1].authenticator, config=config)
    await nursery.start(sender.run)
    await sender.dial(receiver.listen_addresses[0])
    (conn,) = receiver.connections_to(sender.local_id)
    watch = _BytesPerStep()
    watch.conn = conn
    trio.lowlevel.add_instrument(watch)
    try:
        payloads = [os.urandom((1 << 20) - i) for i in range(16)]
        stream = await sender.open_stream(receiver.local_id, "/test/sink/1")
        for payload in payloads:
            await stream.send(payload)
        with trio.fail_after(60):
            await done.wait()
    finally:
        trio.lowlevel.remove_instrument(watch)
    assert got == payloads
    assert sum(watch.steps) >= 16 << 20
    bound = 512 * 1024 + connection.READ_SIZE  # the budget, and the read that crossed it
    assert max(watch.steps) <= bound, sorted(watch.steps)[-5:]


def test_favour_loop_shortens_the_gil_switch_interval_and_never_lengthens_it():
    import sys

    old = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default
        assert bulk.favour_loop() == pytest.approx(bulk.SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(bulk.SWITCH_INTERVAL)
        sys.setswitchinterval(0.0001)  # someone wants it shorter still: left alone
        assert bulk.favour_loop() == pytest.approx(0.0001)
    finally:
        sys.setswitchinterval(old)


async def test_the_first_bulk_work_of_a_run_favours_the_loop():
    import sys

    old = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert await bulk.run_bulk(lambda: 7) == 7
        assert sys.getswitchinterval() <= bulk.SWITCH_INTERVAL
    finally:
        sys.setswitchinterval(old)


async def test_short_python_work_off_the_loop_is_not_lowered(monkeypatch):
    """``lower=False`` (the state store's flush, the capacity sample): the item runs at
    the worker's priority; a bulk item is lowered."""
    import contextlib

    lowered: list[int] = []

    @contextlib.contextmanager
    def record(steps):
        lowered.append(steps)
        yield True

    monkeypatch.setattr(bulk.priority, "lowered", record)
    assert await bulk.run_bulk(lambda: 1, lower=False) == 1
    assert lowered == []
    assert await bulk.run_bulk(lambda: 2) == 2
    assert lowered == [bulk.BULK_NICENESS]
    with pytest.raises(ZeroDivisionError):  # an item's error reaches the caller
        await bulk.run_bulk(lambda: 1 / 0, lower=False)
