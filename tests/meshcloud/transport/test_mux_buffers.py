"""The multiplexer's bound on received bytes: credit is withheld beyond the budget, the
driver may read only :meth:`MuxCore.read_allowance` bytes, and whatever order the
application reads its streams in, everything still arrives (no deadlock)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.transport.buffers import BufferBudget
from meshcloud.transport.mux import (
    INITIAL_WINDOW,
    MessageReceived,
    MuxConfig,
    MuxCore,
    StreamAborted,
    StreamEnded,
)

KiB, MiB = 1024, 1024 * 1024
SMALL = MuxConfig(stream_window=INITIAL_WINDOW, max_message=512 * KiB,
                  max_buffered=3 * MiB)


def test_the_budget_leaves_room_for_one_message_and_is_checked():
    assert SMALL.open_budget == 3 * MiB - 512 * KiB - 2 * INITIAL_WINDOW
    assert SMALL.credit_budget == SMALL.open_budget // 2
    with pytest.raises(ValueError):
        MuxConfig(max_buffered=MuxConfig().max_message)


def test_buffered_bytes_are_counted_until_the_application_takes_them():
    budget = BufferBudget(8 * MiB)
    a = MuxCore(SMALL, initiator=True, now=0.0)
    b = MuxCore(SMALL, initiator=False, now=0.0, budget=budget)
    sid = a.open_stream("/test/1")
    assert a.send_message(sid, b"x" * 100_000) == 100_000  # several frames: reassembled
    assert a.send_message(sid, b"y" * 10) == 10
    events = []
    for packet in a.data_to_send():
        events += b.receive_data(bytes(packet), 0.0)
    assert [len(e.data) for e in events if isinstance(e, MessageReceived)] == [100_000, 10]
    assert b.buffered == budget.used == 100_010 == b.peak_buffered
    b.acknowledge(sid)
    assert b.buffered == 10
    a.send_message(sid, b"z" * 70_000)
    packets = a.data_to_send()
    b.receive_data(bytes(packets[0]), 0.0)  # the first frame only: a partial message
    assert b.buffered > 10
    b.reset_stream(sid, "done")  # the partial goes with the stream
    assert b.buffered == 10
    b.acknowledge(sid, 10)  # the application read the last message after the reset
    assert b.buffered == 0 == budget.used
    b.detach_budget()
    assert budget.used == 0


def test_the_read_allowance_stops_at_the_connection_and_the_node_limits():
    budget = BufferBudget(SMALL.max_buffered + MiB)
    core = MuxCore(SMALL, initiator=False, now=0.0, budget=budget)
    assert core.read_allowance() == SMALL.max_buffered
    budget.add(budget.limit - 1000)  # other connections hold nearly everything
    assert core.read_allowance() == 1000
    budget.add(2000)
    assert core.read_allowance() == 0


class Sim:
    """A sender core and a receiver core; the receiver's driver reads only what its
    allowance permits, and its application reads streams one after another in ``order``."""

    def __init__(self, sizes: list[list[int]], order: list[int]) -> None:
        self.a = MuxCore(SMALL, initiator=True, now=0.0)
        self.b = MuxCore(SMALL, initiator=False, now=0.0)
        self.ids = [self.a.open_stream(f"/test/{i}") for i in range(len(sizes))]
        self.outgoing = {sid: [os.urandom(n) for n in ns]
                         for sid, ns in zip(self.ids, sizes, strict=True)}
        self.expected = {sid: list(msgs) for sid, msgs in self.outgoing.items()}
        self.sending: dict[int, memoryview | None] = {sid: None for sid in self.ids}
        self.wire: list[bytes] = []
        self.inbox: dict[int, list[bytes]] = {sid: [] for sid in self.ids}
        self.ended: set[int] = set()
        self.got: dict[int, list[bytes]] = {sid: [] for sid in self.ids}
        self.order = [self.ids[i] for i in order]
        self.peak = 0

    def send(self) -> None:
        for sid in self.ids:
            while True:
                rest = self.sending[sid]
                if rest is None:
                    if not self.outgoing[sid]:
                        if sid not in self.ended and sid not in self.done_sending:
                            self.a.end_stream(sid)
                            self.done_sending.add(sid)
                        break
                    rest = memoryview(self.outgoing[sid].pop(0))
                sent = self.a.send_message(sid, rest)
                if sent < len(rest):
                    self.sending[sid] = rest[sent:]
                    break
                self.sending[sid] = None
        self.wire += [bytes(p) for p in self.a.data_to_send()]

    def deliver(self) -> bool:
        moved = False
        while self.wire and self.b.read_allowance() >= len(self.wire[0]):
            for event in self.b.receive_data(self.wire.pop(0), 0.0):
                if isinstance(event, MessageReceived):
                    self.inbox[event.stream_id].append(event.data)
                elif isinstance(event, StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, StreamAborted):
                    raise AssertionError(f"stream aborted: {event}")
            self.peak = max(self.peak, self.b.buffered)
            assert self.b.buffered <= SMALL.max_buffered
            moved = True
        for packet in self.b.data_to_send():  # window updates back to the sender
            self.a.receive_data(bytes(packet), 0.0)
        return moved

    def read(self) -> bool:
        """The application: reads the current stream of ``order`` until it ends."""
        moved = False
        while self.order:
            sid = self.order[0]
            if self.inbox[sid]:
                data = self.inbox[sid].pop(0)
                self.b.acknowledge(sid, len(data))
                self.b.reader_waiting(sid, False)
                self.got[sid].append(data)
                moved = True
            elif sid in self.ended:
                self.order.pop(0)
                moved = True
            else:
                self.b.reader_waiting(sid, True)
                return moved
        return moved

    def run(self) -> None:
        self.done_sending: set[int] = set()
        for _ in range(100_000):
            self.send()
            moved = self.deliver()
            moved = self.read() or moved
            if not self.order:
                return
            if not moved and not self.wire:
                self.send()
                if not self.wire:
                    raise AssertionError("deadlock: nothing can move")
        raise AssertionError("did not finish")


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_reading_order_gets_everything_within_the_bound(data):
    streams = data.draw(st.integers(
        1, (SMALL.open_budget - SMALL.credit_budget) // INITIAL_WINDOW))
    sizes = data.draw(st.lists(
        st.lists(st.integers(0, SMALL.max_message), min_size=1, max_size=3),
        min_size=streams, max_size=streams))
    order = data.draw(st.permutations(range(streams)))
    sim = Sim(sizes, list(order))
    sim.run()
    assert sim.got == sim.expected
    assert sim.peak <= SMALL.max_buffered
    assert sim.b.buffered == 0


def test_credit_is_withheld_and_new_streams_refused_beyond_the_budget():
    sim = Sim([[SMALL.max_message] * 4 for _ in range(12)], order=[])
    sim.done_sending = set()
    aborted = []
    for _ in range(50):
        sim.send()
        while sim.wire:  # nobody reads; the driver reads all it may
            for event in sim.b.receive_data(sim.wire.pop(0), 0.0):
                if isinstance(event, StreamAborted):
                    aborted.append(event)
            assert sim.b.buffered <= SMALL.open_budget
        for packet in sim.b.data_to_send():
            for event in sim.a.receive_data(bytes(packet), 0.0):
                if isinstance(event, StreamAborted):
                    aborted.append(event)
                    sim.outgoing[event.stream_id], sim.sending[event.stream_id] = [], None
                    sim.done_sending.add(event.stream_id)
    # the late streams were refused as busy (the sender sees why), the rest hold credit
    # only within the budgets
    assert aborted and all("receiver busy" in e.reason for e in aborted)
    assert sim.b.buffered + sim.b._outstanding <= SMALL.open_budget


def test_relief_resets_the_largest_partial_but_spares_the_waiting_reader():
    b = MuxCore(SMALL, initiator=False, now=0.0)
    a = MuxCore(SMALL, initiator=True, now=0.0)
    ids = [a.open_stream(f"/test/{i}") for i in range(3)]
    for sid, packets in zip(ids, (1, 3, 2), strict=True):
        a.send_message(sid, bytes(SMALL.max_message))  # more than the window: partial
        for packet in a.data_to_send()[:packets]:  # the rest is still in the socket
            b.receive_data(bytes(packet), 0.0)
    assert b.relieve() is None  # nobody waits: a full buffer is the application's choice
    b.reader_waiting(ids[1], True)  # the reader of the largest partial waits
    before = b.buffered
    victim = b.relieve()
    assert victim == ids[2] and b.buffered < before  # the largest of the others
    assert b.relieve() == ids[0]
    assert b.relieve() == ids[1]  # only the waiting one is left
    assert b.buffered == 0
