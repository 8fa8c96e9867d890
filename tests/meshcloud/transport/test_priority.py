"""Probes and acks do not wait behind bulk stream data (issue 12 §1).

The mux keeps datagrams, pings and pongs apart from stream frames and hands them over
first; a writer still sending stream data it took earlier asks for them between two
slices (``urgent_to_send``). Bulk encryption runs in low-priority worker threads
(:mod:`meshcloud.bulk`)."""

from __future__ import annotations

import os
import threading

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
