"""The multiplexer core without sockets: two MuxCores wired back to back (h11's
ConnectionPair), time passed by hand."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcloud.errors import LocalProtocolError
from meshcloud.transport.mux import (
    INITIAL_WINDOW,
    ConnectionDead,
    DatagramReceived,
    GoAwayReceived,
    MessageReceived,
    MuxConfig,
    MuxCore,
    MuxError,
    MuxState,
    StreamAborted,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
)
from meshcloud.transport.muxframes import HEADER, MAX_CHUNK, Flag, FrameType
from meshcloud.transport.noise import MAX_PLAINTEXT


class Pair:
    """Two cores back to back; ``transfer`` moves one side's bytes to the other."""

    def __init__(self, config: MuxConfig | None = None, now: float = 0.0) -> None:
        self.a = MuxCore(config, initiator=True, now=now)
        self.b = MuxCore(config, initiator=False, now=now)
        self.now = now

    def transfer(self, src: MuxCore, now: float | None = None) -> list:
        dst = self.b if src is self.a else self.a
        events = []
        for packet in src.data_to_send():
            assert len(packet) <= MAX_PLAINTEXT
            events += dst.receive_data(bytes(packet), self.now if now is None else now)
        return events

    def settle(self) -> tuple[list, list]:
        """Shuttle until both are quiet; returns (events at a, events at b)."""
        at_a, at_b = [], []
        while self.a.backlog or self.b.backlog:
            at_b += self.transfer(self.a)
            at_a += self.transfer(self.b)
        return at_a, at_b


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, flags, len(payload), stream_id) + payload


def frames_of(packets) -> list[tuple[int, int, int, bytes]]:
    out, data, pos = [], b"".join(packets), 0
    while pos < len(data):
        ftype, flags, length, sid = HEADER.unpack_from(data, pos)
        out.append((ftype, flags, sid, data[pos + 8:pos + 8 + length]))
        pos += 8 + length
    return out


def messages(events, stream_id=None):
    return [e.data for e in events if isinstance(e, MessageReceived)
            and (stream_id is None or e.stream_id == stream_id)]


# --- streams ------------------------------------------------------------------------------


def test_request_goes_out_in_one_frame_with_the_open():
    pair = Pair()
    sid = pair.a.open_stream("/test/echo/1")
    assert pair.a.backlog == 0  # optimistic: nothing on the wire until there is something
    assert pair.a.send_message(sid, b"ping") == 4
    pair.a.end_stream(sid)
    packets = pair.a.data_to_send()
    assert len(packets) == 1
    ftype, flags, _length, stream_id = HEADER.unpack_from(packets[0])
    assert (ftype, flags, stream_id) == (FrameType.OPEN, Flag.MSG, 1)
    events = pair.b.receive_data(bytes(packets[0]), 0.0)
    assert events == [StreamOpened(1, "/test/echo/1"), MessageReceived(1, b"ping"),
                      StreamEnded(1)]
    pair.b.acknowledge(1)
    assert pair.b.backlog == 0  # a short stream costs no WINDOW_UPDATE


def test_bulk_stream_widens_its_window_to_the_configured_size():
    pair = Pair()
    sid = pair.a.open_stream("/bulk/1")
    for _ in range(2):  # unread one-frame messages: no credit comes back yet
        pair.a.send_message(sid, bytes(60_000))
    pair.transfer(pair.a)
    assert pair.b.backlog == 0
    pair.a.send_message(sid, bytes(60_000))  # past half the initial window
    pair.transfer(pair.a)
    assert pair.transfer(pair.b) == [WindowUpdated(sid)]
    assert pair.a.send_window(sid) == MuxConfig().stream_window - 180_000


def test_round_trip_half_close_and_forgetting_finished_streams():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    for i in range(10):
        pair.a.send_message(sid, b"m%d" % i)
    pair.a.end_stream(sid)
    at_b = pair.transfer(pair.a)
    assert messages(at_b) == [b"m%d" % i for i in range(10)]
    assert at_b[-1] == StreamEnded(sid)
    pair.b.send_message(sid, b"reply")
    pair.b.end_stream(sid)
    assert pair.b.stream_count == 0  # both directions closed on b's side
    at_a = pair.transfer(pair.b)
    assert messages(at_a) == [b"reply"] and at_a[-1] == StreamEnded(sid)
    assert pair.a.stream_count == 0
    with pytest.raises(LocalProtocolError):
        pair.a.send_message(sid, b"late")


def test_lazily_opened_streams_reach_the_wire_in_id_order():
    pair = Pair()
    first, second, third = (pair.a.open_stream(f"/p/{i}") for i in range(3))
    pair.a.reset_stream(second)  # never announced: vanishes
    pair.a.send_message(third, b"third speaks first")
    pair.a.send_message(first, b"then the first")
    events = pair.transfer(pair.a)
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert opened == [StreamOpened(first, "/p/0"), StreamOpened(third, "/p/2")]
    assert messages(events) == [b"third speaks first", b"then the first"]


def test_stream_ids_by_side_and_announce_without_data():
    pair = Pair()
    s1, s3 = pair.a.open_stream("/x/1"), pair.a.open_stream("/x/1")
    s2 = pair.b.open_stream("/x/1")
    assert (s1, s3, s2) == (1, 3, 2)
    pair.a.announce(s3)
    pair.a.announce(s3)  # once only
    opened = [e for e in pair.transfer(pair.a) if isinstance(e, StreamOpened)]
    assert opened == [StreamOpened(1, "/x/1"), StreamOpened(3, "/x/1")]


def test_empty_messages_and_large_messages_reassemble():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    big = random.Random(1).randbytes(INITIAL_WINDOW - 10)
    assert pair.a.send_message(sid, b"") == 0
    assert pair.a.send_message(sid, big) == len(big)
    assert messages(pair.transfer(pair.a)) == [b"", big]


def test_reset_is_told_apart_from_close():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.send_message(sid, b"x")
    pair.transfer(pair.a)
    pair.b.reset_stream(sid, "no thanks")
    events = [e for e in pair.transfer(pair.b) if not isinstance(e, WindowUpdated)]
    assert events == [StreamAborted(sid, "no thanks", by_peer=True)]
    assert pair.a.stream_count == 0 and pair.b.stream_count == 0
    pair.a.reset_stream(sid)  # idempotent


def test_unannounced_stream_reset_sends_nothing():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.reset_stream(sid, "changed my mind")
    assert pair.a.backlog == 0 and pair.a.stream_count == 0


def test_late_frames_for_a_reset_stream_are_ignored():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.send_message(sid, b"first")
    pair.transfer(pair.a)
    pair.b.reset_stream(sid, "bye")
    pair.a.send_message(sid, b"in flight")  # a has not heard of the reset yet
    assert pair.transfer(pair.a) == []
    assert isinstance(pair.transfer(pair.b)[-1], StreamAborted)


def test_oversize_message_resets_only_that_stream():
    config = MuxConfig(max_message=100_000)
    pair = Pair(config)
    bad, good = pair.a.open_stream("/p/1"), pair.a.open_stream("/p/1")
    pair.a.send_message(bad, bytes(100_001))
    pair.a.send_message(good, b"fine")
    at_b = pair.transfer(pair.a)
    assert StreamAborted(bad, "message exceeds the 100000 byte limit", by_peer=False) in at_b
    assert messages(at_b, good) == [b"fine"]
    at_a = pair.transfer(pair.b)
    assert any(isinstance(e, StreamAborted) and e.stream_id == bad for e in at_a)
    assert pair.b.state is MuxState.OPEN


def test_open_beyond_max_streams_is_reset():
    pair = Pair(MuxConfig(max_streams=2))
    ids = [pair.a.open_stream("/p/1") for _ in range(3)]
    for sid in ids:
        pair.a.announce(sid)
    opened = [e for e in pair.transfer(pair.a) if isinstance(e, StreamOpened)]
    assert [e.stream_id for e in opened] == ids[:2]
    aborted = pair.transfer(pair.b)
    assert StreamAborted(ids[2], "too many streams (limit 2)") in aborted


# --- flow control -------------------------------------------------------------------------


def test_slow_reader_bounds_what_the_sender_can_queue():
    config = MuxConfig(stream_window=INITIAL_WINDOW * 2)
    pair = Pair(config)
    sid = pair.a.open_stream("/p/1")
    chunk = bytes(10_000)
    sent = 0
    pair.a.announce(sid)
    pair.settle()  # the receiver's initial grant arrives
    delivered = []
    while pair.a.send_message(sid, chunk) == len(chunk):
        sent += len(chunk)
        delivered += messages(pair.settle()[1])
    assert config.stream_window - len(chunk) < sent <= config.stream_window
    assert pair.a.send_window(sid) < len(chunk)
    assert len(delivered) == sent // len(chunk)
    for _ in delivered:  # the reader catches up: credit comes back
        pair.b.acknowledge(sid)
    assert any(isinstance(e, WindowUpdated) for e in pair.transfer(pair.b))
    assert pair.a.send_window(sid) >= len(chunk)


def test_message_larger_than_the_window_flows_as_it_is_read():
    pair = Pair()  # 1 MiB window
    sid = pair.a.open_stream("/p/1")
    payload = random.Random(2).randbytes(5 * 1024 * 1024 + 3)
    remaining = memoryview(payload)
    received: list[bytes] = []
    rounds = 0
    while remaining or not received:
        n = pair.a.send_message(sid, remaining)
        remaining = remaining[n:]
        received += messages(pair.transfer(pair.a))
        pair.transfer(pair.b)
        rounds += 1
        assert rounds < 100
    assert received == [payload]


def test_partial_message_behind_unread_ones_is_not_credited():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.send_message(sid, bytes(1000))
    sent = pair.a.send_message(sid, bytes(3 * 1024 * 1024))
    pair.transfer(pair.a)
    pair.transfer(pair.b)
    # nothing acknowledged: the 1000-byte message holds the partial back
    while True:
        more = pair.a.send_message(sid, bytes(3 * 1024 * 1024 - sent))
        if not more:
            break
        sent += more
        pair.transfer(pair.a)
        pair.transfer(pair.b)
    assert sent + 1000 <= MuxConfig().stream_window
    pair.b.acknowledge(sid)
    pair.transfer(pair.b)
    assert pair.a.send_window(sid) > 0


def test_overrunning_the_window_is_a_protocol_error():
    core = MuxCore(initiator=False, now=0.0)
    # whole messages the application has not read yet: their credit is not returned
    data = frame(FrameType.OPEN, Flag.MSG, 1, b"\x02/p" + bytes(60_000))
    for _ in range(MuxConfig().stream_window // 60_000):
        data += frame(FrameType.DATA, Flag.MSG, 1, bytes(60_000))
    with pytest.raises(MuxError, match="overran the flow-control window"):
        core.receive_data(data, 0.0)


def test_acknowledging_nothing_is_local_misuse():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.announce(sid)
    pair.transfer(pair.a)
    with pytest.raises(LocalProtocolError):
        pair.b.acknowledge(sid)


# --- datagrams, keepalive, goaway ---------------------------------------------------------


def test_datagrams_are_delivered_and_dropped_when_backlogged_or_too_big():
    pair = Pair(MuxConfig(datagram_backlog=1000))
    assert pair.a.send_datagram("/gossip/1", b"hello")
    assert not pair.a.send_datagram("/gossip/1", bytes(MAX_CHUNK))
    assert not pair.a.send_datagram("", b"no name")
    sent = sum(pair.a.send_datagram("/gossip/1", bytes(100)) for _ in range(50))
    assert sent < 50  # the backlog limit kicked in
    events = pair.transfer(pair.a)
    assert events[0] == DatagramReceived("/gossip/1", b"hello")
    assert len(events) == sent + 1


def test_frozen_peer_is_dead_after_dead_timeout_of_silence():
    config = MuxConfig(keepalive_interval=1.0, dead_timeout=4.0)
    pair = Pair(config, now=100.0)
    pair.a.open_stream("/p/1")  # the keepalive watches connections with streams
    pair.a.activate(100.0)
    assert pair.a.next_deadline() == 101.0
    assert pair.a.on_timer(100.5) == [] and pair.a.backlog == 0
    assert pair.a.on_timer(101.0) == []
    ping = pair.a.data_to_send()
    assert HEADER.unpack_from(ping[0])[0] == FrameType.PING
    pair.b.receive_data(bytes(ping[0]), 101.0)
    pair.a.receive_data(bytes(pair.b.data_to_send()[0]), 101.002)  # the PONG
    assert pair.a.rtt == pytest.approx(0.002)
    # now b freezes: no byte after 101.002
    now = 101.002
    while (deadline := pair.a.next_deadline()) is not None:
        now = deadline
        events = pair.a.on_timer(now)
        if events:
            break
    assert events == [ConnectionDead("peer silent for 4.0 s (keepalive timeout)")]
    assert now == pytest.approx(105.002)
    assert pair.a.state is MuxState.DEAD and pair.a.next_deadline() is None
    assert len(pair.a.data_to_send()) >= 1  # it kept pinging meanwhile


def test_idle_connection_sends_no_keepalive_and_is_never_declared_dead():
    pair = Pair(MuxConfig(keepalive_interval=1.0, dead_timeout=4.0), now=0.0)
    assert pair.a.next_deadline() is None and not pair.a.watching
    for second in range(1, 3600, 7):  # an hour with a datagram now and then, no stream
        assert pair.a.on_timer(float(second)) == []
        pair.a.send_datagram("/gossip/1", b"ping")
        pair.transfer(pair.a, float(second))
    assert pair.a.state is MuxState.OPEN and pair.b.state is MuxState.OPEN
    assert pair.a.next_deadline() is None and pair.b.next_deadline() is None
    assert pair.b.data_to_send() == []  # nothing to answer: no PING ever left a


def test_keepalive_runs_while_streams_are_open_and_counts_silence_from_then():
    config = MuxConfig(keepalive_interval=1.0, dead_timeout=4.0)
    pair = Pair(config, now=0.0)
    sid = pair.a.open_stream("/p/1")
    pair.a.activate(1000.0)  # a long idle time before: silence counts from here
    assert pair.a.on_timer(1000.0) == [] and pair.a.next_deadline() == 1001.0
    pair.a.send_message(sid, b"request")
    pair.transfer(pair.a, 1000.0)
    assert pair.b.watching  # the peer's stream makes it watch too
    pair.b.end_stream(sid)
    pair.transfer(pair.b, 1000.1)
    pair.a.end_stream(sid)
    pair.transfer(pair.a, 1000.2)
    assert pair.a.stream_count == 0 and not pair.a.watching
    assert pair.a.next_deadline() is None
    # going away watches until the peer answers (so a frozen peer cannot hold it)
    pair.a.go_away("idle")
    pair.a.activate(2000.0)
    events: list = []
    now = 2000.0
    while not events and (deadline := pair.a.next_deadline()) is not None:
        now = deadline
        events = pair.a.on_timer(now)
    assert isinstance(events[0], ConnectionDead) and now == pytest.approx(2004.0)


def test_busy_peer_is_never_declared_dead_even_without_pongs():
    pair = Pair(MuxConfig(keepalive_interval=1.0, dead_timeout=4.0))
    sid = pair.b.open_stream("/bulk/1")
    now = 0.0
    for _ in range(120):  # a minute of data every half second, PONGs never read
        now += 0.5
        assert pair.a.on_timer(now) == []
        pair.b.send_message(sid, bytes(1000))
        pair.transfer(pair.b, now)
        pair.a.data_to_send()  # a's pings, pongs and credit are lost on the way
    assert pair.a.state is MuxState.OPEN


def test_goaway_stops_new_streams_both_ways():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.a.send_message(sid, b"before")
    pair.transfer(pair.a)
    pair.b.go_away("shutting down")
    with pytest.raises(LocalProtocolError):
        pair.b.open_stream("/p/1")
    events = pair.transfer(pair.b)
    assert GoAwayReceived("shutting down") in events
    with pytest.raises(LocalProtocolError, match="going away"):
        pair.a.open_stream("/p/1")
    pair.a.send_message(sid, b"existing streams still work")
    assert messages(pair.transfer(pair.a)) == [b"existing streams still work"]


def test_open_racing_our_goaway_is_served_and_the_pair_drains():
    pair = Pair()
    sid = pair.a.open_stream("/p/1")
    pair.b.go_away("duplicate connection")
    in_flight = pair.b.data_to_send()  # b's GOAWAY still on its way when a opens
    pair.a.send_message(sid, b"x")
    pair.a.end_stream(sid)
    events = pair.transfer(pair.a)
    assert StreamOpened(sid, "/p/1") in events and messages(events) == [b"x"]
    assert not pair.b.drained
    for packet in in_flight:
        assert pair.a.receive_data(bytes(packet), 0.0) == [GoAwayReceived("duplicate connection")]
    with pytest.raises(LocalProtocolError):
        pair.a.open_stream("/p/1")
    pair.a.go_away("duplicate connection")
    pair.transfer(pair.a)
    pair.b.end_stream(sid)
    assert pair.b.drained  # both said GOAWAY, no stream left
    pair.transfer(pair.b)
    assert pair.a.drained


def test_open_after_the_peers_own_goaway_is_a_protocol_error():
    core = MuxCore(initiator=False, now=0.0)
    with pytest.raises(MuxError, match="after its GOAWAY"):
        core.receive_data(frame(FrameType.GOAWAY, 0, 0, b"bye")
                          + frame(FrameType.OPEN, 0, 1, b"\x02/p"), 0.0)


# --- protocol errors ----------------------------------------------------------------------

ILLEGAL = {
    "data on stream 0": frame(FrameType.DATA, Flag.MSG, 0, b"x"),
    "data before open": frame(FrameType.DATA, Flag.MSG, 1, b"x"),
    "data on our unopened stream": frame(FrameType.DATA, Flag.MSG, 2, b"x"),
    "open with our parity": frame(FrameType.OPEN, 0, 2, b"\x02/p"),
    "open without name": frame(FrameType.OPEN, 0, 1, b""),
    "open with empty name": frame(FrameType.OPEN, 0, 1, b"\x00"),
    "open name too long": frame(FrameType.OPEN, 0, 1, b"\x09/p"),
    "open name not utf8": frame(FrameType.OPEN, 0, 1, b"\x02\xff\xfe"),
    "more and fin": frame(FrameType.OPEN, Flag.MSG | Flag.MORE | Flag.FIN, 1, b"\x02/px"),
    "bytes without msg": frame(FrameType.OPEN, Flag.FIN, 1, b"\x02/px"),
    "reopen same id": frame(FrameType.OPEN, 0, 1, b"\x02/p") * 2,
    "open lower id": frame(FrameType.OPEN, 0, 3, b"\x02/p")
    + frame(FrameType.OPEN, 0, 1, b"\x02/p"),
    "data after fin": frame(FrameType.OPEN, Flag.FIN, 1, b"\x02/p")
    + frame(FrameType.DATA, Flag.MSG, 1, b"x"),
    "fin mid message": frame(FrameType.OPEN, Flag.MSG | Flag.MORE, 1, b"\x02/px")
    + frame(FrameType.DATA, Flag.FIN, 1),
    "zero window update": frame(FrameType.OPEN, 0, 1, b"\x02/p")
    + frame(FrameType.WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)),
    "short window update": frame(FrameType.OPEN, 0, 1, b"\x02/p")
    + frame(FrameType.WINDOW_UPDATE, 0, 1, b"\x01"),
    "window overflow": frame(FrameType.OPEN, 0, 1, b"\x02/p")
    + frame(FrameType.WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31)),
    "ping on a stream": frame(FrameType.PING, 0, 1, bytes(8)),
    "short ping": frame(FrameType.PING, 0, 0, bytes(7)),
    "reset on stream 0": frame(FrameType.RESET, 0, 0, b""),
    "goaway on a stream": frame(FrameType.GOAWAY, 0, 5, b""),
    "datagram without name": frame(FrameType.DATAGRAM, 0, 0, b""),
}


@pytest.mark.parametrize("data", ILLEGAL.values(), ids=ILLEGAL.keys())
def test_illegal_frames_put_the_connection_in_error(data):
    core = MuxCore(initiator=False, now=0.0)
    with pytest.raises(MuxError):
        core.receive_data(data, 0.0)
    assert core.state is MuxState.ERROR
    last = frames_of(core.data_to_send())[-1]
    assert last[0] == FrameType.GOAWAY and last[3].startswith(b"protocol error")
    with pytest.raises(MuxError):
        core.receive_data(frame(FrameType.PING, 0, 0, bytes(8)), 0.0)
    assert core.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        core.open_stream("/p/1")


def test_unknown_frame_types_are_skipped():
    core = MuxCore(initiator=False, now=0.0)
    events = core.receive_data(frame(200, 0, 7, b"future") + frame(FrameType.OPEN, 0, 1, b"\x02/p"),
                               0.0)
    assert events == [StreamOpened(1, "/p")]


def test_local_misuse_changes_nothing():
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.a.open_stream("")
    with pytest.raises(LocalProtocolError):
        pair.a.open_stream("x" * 300)
    sid = pair.a.open_stream("/p/1")
    assert pair.a.send_message(sid, bytes(3 * 1024 * 1024)) < 3 * 1024 * 1024
    with pytest.raises(LocalProtocolError, match="middle of a message"):
        pair.a.end_stream(sid)
    with pytest.raises(LocalProtocolError):
        pair.a.send_message(99, b"x")
    assert pair.a.state is MuxState.OPEN


def test_config_presets_are_valid_and_checked():
    assert MuxConfig.lan() == MuxConfig()
    phone = MuxConfig.phone()
    assert phone.stream_window < MuxConfig().stream_window
    assert phone.dead_timeout > phone.keepalive_interval
    with pytest.raises(ValueError):
        MuxConfig(stream_window=1000)
    with pytest.raises(ValueError):
        MuxConfig(keepalive_interval=5, dead_timeout=4)


# --- properties ---------------------------------------------------------------------------

SIZES = st.one_of(st.integers(0, 64), st.integers(0, 70_000),
                  st.sampled_from([65_511, 65_512, 131_022, 200_000, 262_144, 400_000]))
"""Message sizes: small, around one frame (65511), and beyond the 256 KiB window."""

KINDS = ["open", "open"] + ["send"] * 8 + ["close", "reset"] + ["deliver"] * 4 + [
    "consume"] * 3 + ["datagram", "tick"]
OPS = st.tuples(st.sampled_from(KINDS), st.booleans(), st.integers(0, 7), SIZES)
"""(kind, side, index, number): each kind reads the index and number it needs."""
OPEN_OPS = st.tuples(st.just("open"), st.booleans(), st.integers(0, 7), st.just(0))


class Side:
    def __init__(self, core: MuxCore) -> None:
        self.core = core
        self.wire = bytearray()  # produced, not yet delivered
        self.streams: list[int] = []
        self.sent: dict[int, list[bytes]] = {}
        self.pending: dict[int, list[memoryview]] = {}  # messages not yet fully sent
        self.closing: set[int] = set()  # close requested after pending messages
        self.fin_sent: set[int] = set()
        self.received: dict[int, list[bytes]] = {}
        self.unacked: dict[int, int] = {}
        self.ended: set[int] = set()
        self.aborted: set[int] = set()
        self.datagrams: list[bytes] = []

    def pump(self) -> None:
        """Send whatever pending data the windows allow; close when drained."""
        for sid, queue in self.pending.items():
            if sid in self.aborted:
                queue.clear()
            while queue:
                n = self.core.send_message(sid, queue[0])
                if n == len(queue[0]):
                    queue.pop(0)
                else:
                    queue[0] = queue[0][n:]
                    break
            if not queue and sid in self.closing and sid not in self.aborted:
                self.closing.discard(sid)
                self.fin_sent.add(sid)
                self.core.end_stream(sid)
        for packet in self.core.data_to_send():
            self.wire += packet


def apply(event, side: Side) -> None:
    if isinstance(event, StreamOpened):
        side.streams.append(event.stream_id)
    elif isinstance(event, MessageReceived):
        side.received.setdefault(event.stream_id, []).append(event.data)
        side.unacked[event.stream_id] = side.unacked.get(event.stream_id, 0) + 1
    elif isinstance(event, StreamEnded):
        side.ended.add(event.stream_id)
    elif isinstance(event, StreamAborted):
        side.aborted.add(event.stream_id)
    elif isinstance(event, DatagramReceived):
        side.datagrams.append(event.data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPEN_OPS, min_size=1, max_size=4), st.lists(OPS, min_size=10, max_size=80),
       st.integers(0, 2**32))
def test_random_interleavings_deliver_exactly_what_was_sent(opens, ops, seed):
    # payload bytes come from a seeded generator: drawing 400 KB from hypothesis would
    # overrun its buffer and silently discard every example with a large message
    rnd = random.Random(seed)
    ops = opens + ops
    config = MuxConfig(stream_window=INITIAL_WINDOW)  # messages up to 400 KB overrun it
    a = Side(MuxCore(config, initiator=True, now=0.0))
    b = Side(MuxCore(config, initiator=False, now=0.0))
    sides = {True: (a, b), False: (b, a)}
    now = 0.0
    datagrams_sent: dict[int, list[bytes]] = {id(a): [], id(b): []}

    def deliver(src: Side, dst: Side, count: int) -> None:
        chunk = bytes(src.wire[:count])
        del src.wire[:count]
        if chunk:
            for event in dst.core.receive_data(chunk, now):
                apply(event, dst)

    for op in ops:
        me, other = sides[op[1]]
        if op[0] in ("send", "close", "reset") and not me.streams:
            me, other = other, me  # act on the side that has streams
        if op[0] == "open":
            sid = me.core.open_stream(f"/proto/{op[2] % 3}")
            me.streams.append(sid)
            me.sent[sid] = []
            me.pending[sid] = []
        elif op[0] in ("send", "close", "reset") and me.streams:
            sid = me.streams[op[2] % len(me.streams)]
            usable = sid not in me.aborted | me.closing | me.fin_sent
            if op[0] == "send" and usable:
                data = rnd.randbytes(op[3])
                me.sent.setdefault(sid, []).append(data)
                me.pending.setdefault(sid, []).append(memoryview(data))
            elif op[0] == "close" and usable:
                me.closing.add(sid)
            elif op[0] == "reset" and sid not in me.aborted:
                me.core.reset_stream(sid, "test")
                me.aborted.add(sid)
            me.pump()
        elif op[0] == "deliver":
            deliver(me, other, op[3] + 1)
        elif op[0] == "consume":
            for sid in list(me.unacked)[: op[2] + 1]:
                for _ in range(min(op[3] % 5 + 1, me.unacked[sid])):
                    me.core.acknowledge(sid)
                    me.unacked[sid] -= 1
            me.pump()
        elif op[0] == "datagram":
            data = rnd.randbytes(op[3] % 2000)
            if me.core.send_datagram("/dgram/1", data):
                datagrams_sent[id(me)].append(data)
            me.pump()
        elif op[0] == "tick":
            now += (op[3] % 900) / 1000
            me.core.on_timer(now)
            me.pump()
    # drain: read everything, keep sending, until quiet
    for _ in range(500):
        for me, other in ((a, b), (b, a)):
            for sid in list(me.unacked):
                for _ in range(me.unacked[sid]):
                    me.core.acknowledge(sid)
                me.unacked[sid] = 0
            me.pump()
            deliver(me, other, len(me.wire))
        if not a.wire and not b.wire and not any(a.pending.values()) and not any(
                b.pending.values()):
            break
    else:
        pytest.fail("did not drain")
    for me, other in ((a, b), (b, a)):
        for sid, sent in me.sent.items():
            got = other.received.get(sid, [])
            if sid in me.aborted or sid in other.aborted:
                assert got == sent[: len(got)]
            else:
                assert got == sent
                assert (sid in other.ended) == (sid in me.fin_sent)
        assert other.datagrams == datagrams_sent[id(me)]
    assert a.core.state is b.core.state is MuxState.OPEN


def scenario_bytes(seed: int) -> bytes:
    """A realistic byte stream from a dialer: opens, messages of all sizes, datagrams,
    window updates, resets, closes, pings."""
    rnd = random.Random(seed)
    core = MuxCore(initiator=True, now=0.0)
    out = bytearray()
    streams = []
    for step in range(30):
        choice = rnd.random()
        if choice < 0.3 or not streams:
            streams.append(core.open_stream(f"/p/{rnd.randrange(3)}"))
        sid = rnd.choice(streams)
        try:
            if choice < 0.7:
                core.send_message(sid, rnd.randbytes(rnd.choice([0, 10, 1000, 70_000])))
            elif choice < 0.8:
                core.end_stream(sid)
            elif choice < 0.85:
                core.reset_stream(sid, "because")
            elif choice < 0.9:
                core.send_datagram("/d/1", rnd.randbytes(50))
            else:
                core.on_timer(step * 0.1)
        except LocalProtocolError:
            pass
        for packet in core.data_to_send():
            out += packet
    return bytes(out)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 5000), min_size=1, max_size=50))
def test_split_feeding_equals_whole_feeding(seed, cuts):
    data = scenario_bytes(seed)
    whole = MuxCore(initiator=False, now=0.0)
    expected = whole.receive_data(data, 0.0)
    expected_out = b"".join(whole.data_to_send())
    split = MuxCore(initiator=False, now=0.0)
    events, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        events += split.receive_data(data[pos:pos + step], 0.0)
        pos += step
        i += 1
    assert events == expected
    assert b"".join(split.data_to_send()) == expected_out


def test_byte_by_byte_feeding_equals_whole_feeding():
    data = scenario_bytes(7)
    whole = MuxCore(initiator=False, now=0.0)
    expected = whole.receive_data(data, 0.0)
    one = MuxCore(initiator=False, now=0.0)
    events = []
    for i in range(len(data)):
        events += one.receive_data(data[i:i + 1], 0.0)
    assert events == expected and len(expected) > 10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_raise_only_mux_errors(junk, initiator):
    core = MuxCore(initiator=initiator, now=0.0)
    try:
        core.receive_data(junk, 0.0)
    except MuxError:
        assert core.state is MuxState.ERROR


FRAMES = st.builds(
    lambda t, f, s, p: frame(t, f, s, p),
    st.integers(0, 9), st.integers(0, 7), st.integers(0, 6), st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAMES, max_size=12), st.booleans())
def test_random_frames_raise_only_mux_errors(frames, initiator):
    core = MuxCore(initiator=initiator, now=0.0)
    try:
        for data in frames:
            core.receive_data(data, 0.0)
    except MuxError:
        assert core.state is MuxState.ERROR
