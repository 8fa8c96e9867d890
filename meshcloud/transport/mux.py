"""The stream multiplexer, sans-IO: many message streams, datagrams and keepalives on one
encrypted connection.

Boundary (h11/aioquic style): :meth:`MuxCore.receive_data` takes the decrypted bytes of
the connection and ``now`` and returns :data:`MuxEvent` s; commands (:meth:`~MuxCore.open_stream`,
:meth:`~MuxCore.send_message`, :meth:`~MuxCore.end_stream`, :meth:`~MuxCore.reset_stream`,
:meth:`~MuxCore.acknowledge`, :meth:`~MuxCore.send_datagram`, :meth:`~MuxCore.go_away`) queue
frames; :meth:`~MuxCore.data_to_send` hands them over as packets of whole frames, each at
most one Noise plaintext; :meth:`~MuxCore.on_timer` runs the keepalive at
:meth:`~MuxCore.next_deadline`. Frame layout: :mod:`meshcloud.transport.muxframes`.

**Streams** are opened by name and *optimistically*: :meth:`~MuxCore.open_stream` only
allocates an id; the OPEN frame goes out with the first message (or the FIN, or
:meth:`~MuxCore.announce`), so a request costs no extra round trip. Streams are
message-oriented: a message larger than a frame is cut into frames flagged MORE and
reassembled, up to ``max_message`` bytes (a larger one resets the stream).

**Flow control** is per stream and counts message bytes (HTTP/2 §5.2 in spirit). Both
sides start every stream with :data:`INITIAL_WINDOW` of credit; once a stream has carried
half of that (a bulk stream) the receiver raises it to its configured ``stream_window``,
so a short request stream costs no WINDOW_UPDATE at all. Credit comes back as the
application :meth:`~MuxCore.acknowledge` s messages, in updates of at least a quarter
window. A message being reassembled is credited as it arrives once it is the next
one the application will read (else a message larger than the window would deadlock), so a
stream buffers at most ``stream_window + max_message`` bytes. A sender exceeding the
window is a protocol error.

**Bounded buffers**: :attr:`MuxCore.buffered` counts message bytes received and not yet
taken by the application (the driver reports what it takes with
:meth:`~MuxCore.acknowledge` and :meth:`~MuxCore.discard`), also summed node-wide in a
:class:`~meshcloud.transport.buffers.BufferBudget`. Credit is granted only while buffered
bytes plus the credit the peer holds stay within ``config.credit_budget``; an OPEN beyond
``config.open_budget`` is reset as busy; one stream at a time whose reader waits
(:meth:`~MuxCore.reader_waiting`) may be granted beyond (the *lane*), so any reading order
finishes. The driver reads at most :meth:`~MuxCore.read_allowance` bytes (0 at
``max_buffered``), and :meth:`~MuxCore.relieve` resets a partial message if a waiting
reader is ever stuck behind that limit.

**Closing**: FIN (:meth:`~MuxCore.end_stream`) half-closes one direction and the peer sees
:class:`StreamEnded` after the last message; RESET (:meth:`~MuxCore.reset_stream`) aborts
both directions with a reason (:class:`StreamAborted`). GOAWAY says "I open no more
streams here": the receiver stops opening streams too, but streams the peer opened before
it heard are still served (its OPENs precede its GOAWAY on the wire, so nothing is lost).
Once both sides have sent GOAWAY and no stream is left, the connection is :attr:`drained`
and can be closed without cutting anything (used to retire a duplicate connection).

**Keepalive**: any bytes from the peer prove it alive. While a stream is open (or the
connection is going away) and after ``keepalive_interval`` of silence we send a PING (and
again every interval); after ``dead_timeout`` of silence the connection is dead
(:class:`ConnectionDead`). A connection with no stream is not watched and costs nothing
when idle (the membership probes are the failure detector); the driver calls
:meth:`~MuxCore.activate` when it opens a stream, so silence counts from then. A busy
peer that keeps sending is never declared dead, however long its PONGs queue behind
data; a frozen one (SIGSTOP, Wi-Fi gone, no FIN) is noticed ``dead_timeout`` after its
last byte.

**Errors**: an illegal frame raises :class:`MuxError` (a
:class:`~meshcloud.errors.RemoteProtocolError`), queues a GOAWAY naming the error, and puts the
core in ERROR: every later input raises the same error. Misuse by the caller is a
:class:`~meshcloud.errors.LocalProtocolError` and changes nothing.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from meshcloud.errors import LocalProtocolError, RemoteProtocolError
from meshcloud.transport.buffers import BufferBudget
from meshcloud.transport.muxconfig import INITIAL_WINDOW, MAX_WINDOW, MuxConfig
from meshcloud.transport.muxevents import (
    ConnectionDead,
    DatagramReceived,
    GoAwayReceived,
    MessageReceived,
    MuxEvent,
    StreamAborted,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
)
from meshcloud.transport.muxframes import (
    HEADER,
    HEADER_SIZE,
    MAX_CHUNK,
    MAX_STREAM_ID,
    U32,
    Flag,
    FrameType,
    decode_text,
    encode_name,
    encode_reason,
)
from meshcloud.transport.noise import MAX_PLAINTEXT

# plain ints on the hot path (IntEnum comparisons are slower)
_DATA, _OPEN, _WINDOW_UPDATE, _RESET = (int(FrameType.DATA), int(FrameType.OPEN),
                                        int(FrameType.WINDOW_UPDATE), int(FrameType.RESET))
_DATAGRAM, _PING, _PONG, _GOAWAY = (int(FrameType.DATAGRAM), int(FrameType.PING),
                                    int(FrameType.PONG), int(FrameType.GOAWAY))
_URGENT = frozenset((_DATAGRAM, _PING, _PONG))
_MSG, _MORE, _FIN = Flag.MSG, Flag.MORE, Flag.FIN


__all__ = [
    "INITIAL_WINDOW",
    "ConnectionDead",
    "DatagramReceived",
    "GoAwayReceived",
    "MessageReceived",
    "MuxConfig",
    "MuxCore",
    "MuxError",
    "MuxEvent",
    "MuxState",
    "StreamAborted",
    "StreamEnded",
    "StreamOpened",
    "WindowUpdated",
]


class MuxError(RemoteProtocolError):
    """The peer sent a frame the multiplexer protocol forbids."""

    code = "mux_protocol_error"


class MuxState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # GOAWAY sent or received: no new local streams
    DEAD = "dead"  # keepalive timeout
    ERROR = "error"  # protocol error; refuses further input


class _Stream:
    __slots__ = ("id", "local", "name", "owed", "partial", "partial_size", "partial_uncredited",
                 "pending_credit", "pending_open", "protocol", "recv_open", "recv_window",
                 "send_open", "send_window", "sending_partial", "sizes", "window")

    def __init__(self, stream_id: int, protocol: str, name: bytes, *, local: bool) -> None:
        self.id = stream_id
        self.protocol = protocol
        self.name = name
        self.local = local
        self.pending_open = local
        self.send_open = True
        self.recv_open = True
        self.send_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW
        self.window = INITIAL_WINDOW  # the receive window we aim to keep open
        self.sending_partial = False
        self.pending_credit = 0
        self.owed: deque[int] = deque()
        self.sizes: deque[int] = deque()  # delivered messages the application has not taken
        self.partial: list[bytes | memoryview] | None = None
        self.partial_size = 0
        self.partial_uncredited = 0


class MuxCore:
    """One side of a multiplexed connection. ``initiator`` is the side that dialled."""

    def __init__(self, config: MuxConfig | None = None, *, initiator: bool, now: float,
                 budget: BufferBudget | None = None) -> None:
        self.config = config or MuxConfig()
        self.budget = budget
        self.buffered = 0
        """Message bytes received and not yet taken by the application (reassembled or
        delivered): never above ``config.max_buffered`` if the driver reads at most
        :meth:`read_allowance` bytes at a time."""
        self.peak_buffered = 0
        self._outstanding = 0  # credit the peer holds on our open receive directions
        self._waiting: dict[int, int] = {}  # stream id -> order in which its reader parked
        self._wait_serial = 0
        self._starved: dict[int, None] = {}  # streams whose credit is withheld, in order
        self._lane: int | None = None  # the one stream granted credit beyond the budget
        self.initiator = initiator
        self.state = MuxState.OPEN
        self.peer_going_away = False
        self.going_away = False
        self.rtt: float | None = None
        self._error: MuxError | None = None
        self._streams: dict[int, _Stream] = {}
        self._next_local_id = 1 if initiator else 2
        self._unannounced: deque[int] = deque()  # local ids allocated, OPEN not yet sent
        self._last_remote_id = 0
        self._inbound = 0
        self._in = bytearray()
        self._packets: list[bytearray] = []
        self._urgent: list[bytearray] = []  # datagrams, pings, pongs: they may overtake
        self._backlog = 0
        self._last_received = now
        self._next_ping = now + self.config.keepalive_interval
        self._ping_sent: tuple[bytes, float] | None = None
        self._ping_count = 0
        self._watching = False  # keepalive running: a stream is open, or going away

    # --- introspection ------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def backlog(self) -> int:
        """Bytes of frames queued and not yet taken by :meth:`data_to_send`."""
        return self._backlog

    def read_allowance(self) -> int:
        """Bytes the driver may read from the socket now (each yields at most as many
        message bytes): 0 while the connection, or the node, holds its hard limit."""
        room = self.config.max_buffered - self.buffered
        if self.budget is not None:
            room = min(room, self.budget.room)
        return max(0, room)

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def can_open_streams(self) -> bool:
        return self.state is MuxState.OPEN and not self.peer_going_away

    @property
    def drained(self) -> bool:
        """Both sides said GOAWAY and no stream is left: closing now cuts nothing."""
        return self.going_away and self.peer_going_away and not self._streams

    # --- output -------------------------------------------------------------------------

    def data_to_send(self) -> list[bytearray]:
        """Queued frames as packets of whole frames, each at most one Noise plaintext.
        Datagrams, pings and pongs come first: they belong to no stream, so they may
        overtake stream data (a probe's ack does not wait behind megabytes of it)."""
        packets = self._urgent + self._packets if self._urgent else self._packets
        self._packets = []
        self._urgent = []
        self._backlog = 0
        return packets

    def urgent_to_send(self) -> list[bytearray]:
        """Only the queued datagrams, pings and pongs (see :meth:`data_to_send`): what a
        driver still writing stream data taken earlier may send ahead of the rest."""
        packets = self._urgent
        if packets:
            self._urgent = []
            self._backlog -= sum(len(packet) for packet in packets)
        return packets

    def _emit(self, frame_type: int, flags: int, stream_id: int,
              payload: bytes | memoryview = b"",
              extra: bytes | bytearray | memoryview = b"") -> None:
        length = len(payload) + len(extra)
        size = HEADER_SIZE + length
        packets = self._urgent if frame_type in _URGENT else self._packets
        if packets and len(packets[-1]) + size <= MAX_PLAINTEXT:
            packet = packets[-1]
            packet += HEADER.pack(frame_type, flags, length, stream_id)
        else:
            packet = bytearray(HEADER.pack(frame_type, flags, length, stream_id))
            packets.append(packet)
        if payload:
            packet += payload
        if extra:
            packet += extra
        self._backlog += size

    # --- commands -----------------------------------------------------------------------

    def open_stream(self, protocol: str) -> int:
        """Allocate a stream for ``protocol``; its OPEN frame leaves with the first message."""
        if not self.can_open_streams():
            state = "going away" if self.peer_going_away else self.state.value
            raise LocalProtocolError(f"cannot open streams on a connection that is {state}")
        try:
            name = encode_name(protocol)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        stream_id = self._next_local_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted on this connection; reconnect")
        self._next_local_id += 2
        self._streams[stream_id] = _Stream(stream_id, protocol, name, local=True)
        self._outstanding += INITIAL_WINDOW
        self._unannounced.append(stream_id)
        return stream_id

    def announce(self, stream_id: int) -> None:
        """Send a stream's OPEN now if no message has carried it yet (a reader waits)."""
        stream = self._sendable(stream_id)
        if stream.pending_open:
            self._emit_open(stream, 0)

    def _emit_open(self, stream: _Stream, flags: int,
                   first: bytes | memoryview = b"") -> None:
        # Stream ids must appear on the wire in increasing order: announce any stream
        # allocated earlier and still silent first (a bare OPEN, 8 bytes + name).
        unannounced = self._unannounced
        while unannounced and unannounced[0] <= stream.id:
            earlier = self._streams.get(unannounced.popleft())
            if earlier is not None and earlier.pending_open and earlier is not stream:
                earlier.pending_open = False
                self._emit(_OPEN, 0, earlier.id, earlier.name)
        stream.pending_open = False
        self._emit(_OPEN, flags, stream.id, stream.name, first)

    def send_message(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Send as much of the current message as the window allows.

        ``data`` is what remains of the message. Returns the bytes sent: the message is
        complete when that is ``len(data)``; otherwise call again with the rest after a
        :class:`WindowUpdated`. An empty message is always sent.
        """
        stream = self._sendable(stream_id)
        view = data if type(data) is memoryview else memoryview(data)
        total = len(view)
        window = stream.send_window
        sent = 0
        if stream.pending_open:
            name = stream.name
            chunk = min(total, window, MAX_CHUNK - len(name))
            more = chunk < total
            self._emit_open(stream, _MSG | (_MORE if more else 0), view[:chunk])
            sent, window = chunk, window - chunk
            if not more:
                stream.send_window = window
                stream.sending_partial = False
                return sent
        while True:
            remaining = total - sent
            chunk = min(remaining, window, MAX_CHUNK)
            if chunk == 0 and remaining:
                break
            more = chunk < remaining
            self._emit(_DATA, _MSG | (_MORE if more else 0), stream_id,
                       view[sent:sent + chunk])
            sent += chunk
            window -= chunk
            if not more:
                break
        stream.send_window = window
        if sent:  # nothing sent leaves the stream as it was (mid-message or not)
            stream.sending_partial = sent < total
        return sent

    def end_stream(self, stream_id: int) -> None:
        """Half-close: we send nothing more on this stream (FIN)."""
        stream = self._sendable(stream_id)
        if stream.sending_partial:
            raise LocalProtocolError("cannot close a stream in the middle of a message")
        if stream.pending_open:
            self._emit_open(stream, _FIN)
        else:
            self._emit(_DATA, _FIN, stream_id)
        stream.send_open = False
        self._maybe_forget(stream)

    def reset_stream(self, stream_id: int, reason: str = "") -> None:
        """Abort both directions. Idempotent; an unannounced stream vanishes silently."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not stream.pending_open and self.state in (MuxState.OPEN, MuxState.CLOSING):
            self._emit(_RESET, 0, stream_id, encode_reason(reason))
        self._forget(stream)

    def acknowledge(self, stream_id: int, size: int | None = None) -> None:
        """The application took the oldest undelivered message of this stream (``size``
        bytes: needed only once the stream is gone here): return credit and buffer room."""
        stream = self._streams.get(stream_id)
        if stream is None:
            self.discard(size or 0)
            return
        if not stream.owed:
            raise LocalProtocolError("no received message to acknowledge on this stream")
        self.discard(stream.sizes.popleft())
        stream.pending_credit += stream.owed.popleft()
        if not stream.owed and stream.partial_uncredited:
            stream.pending_credit += stream.partial_uncredited  # the partial is next in line
            stream.partial_uncredited = 0
        self._maybe_grant(stream)
        self._retry_starved()

    def discard(self, size: int) -> None:
        """The application dropped ``size`` delivered bytes unread (an aborted stream's)."""
        if size:
            self._buffer(-size)
            self._retry_starved()

    def reader_waiting(self, stream_id: int, waiting: bool) -> None:
        """A reader parked on this stream with nothing to read (True), or stopped waiting.
        The stream whose reader has waited longest may get credit beyond the budget."""
        if not waiting:
            self._waiting.pop(stream_id, None)
            if self._lane == stream_id:  # its message arrived: the lane is free again
                self._lane = None
                self._retry_starved()
            return
        if stream_id not in self._waiting and stream_id in self._streams:
            self._wait_serial += 1
            self._waiting[stream_id] = self._wait_serial
            self._retry_starved()

    def relieve(self) -> int | None:
        """The connection is wedged: it may not read (buffer limit) while a reader waits
        for data still in the socket, behind messages half reassembled on other streams
        (only possible when very many streams each sent their initial window unasked).
        Reset the stream with the largest partial message, sparing the longest-waiting
        reader's stream if it can; return its id (None if there is nothing to free)."""
        if not self._waiting:
            return None
        lane = min(self._waiting, key=self._waiting.__getitem__)
        partial = [s for s in self._streams.values() if s.partial is not None]
        if not partial:
            return None
        victim = max(partial, key=lambda s: (s.id != lane, s.partial_size))
        reason = "receiver out of buffer space: try again later"
        self.reset_stream(victim.id, reason)
        return victim.id

    def detach_budget(self) -> None:
        """The connection is gone: hand its bytes back to the node-wide budget."""
        if self.budget is not None:
            self.budget.add(-self.buffered)
            self.budget = None

    def _buffer(self, size: int) -> None:
        self.buffered += size
        if self.buffered > self.peak_buffered:
            self.peak_buffered = self.buffered
        if self.budget is not None:
            self.budget.add(size)

    def send_datagram(self, protocol: str, data: bytes | bytearray | memoryview) -> bool:
        """Queue a datagram; False (dropped) if too large, backlogged, or closing down."""
        if self.state not in (MuxState.OPEN, MuxState.CLOSING):
            return False
        try:
            name = encode_name(protocol)
        except ValueError:
            return False
        if len(name) + len(data) > MAX_CHUNK or self._backlog > self.config.datagram_backlog:
            return False
        self._emit(_DATAGRAM, 0, 0, name, data)
        return True

    def go_away(self, reason: str = "") -> None:
        """We open no more streams here (clean shutdown or retiring a duplicate)."""
        if not self.going_away and self.state in (MuxState.OPEN, MuxState.CLOSING):
            self.going_away = True
            self._emit(_GOAWAY, 0, 0, encode_reason(reason))
            self.state = MuxState.CLOSING

    def _sendable(self, stream_id: int) -> _Stream:
        if self.state not in (MuxState.OPEN, MuxState.CLOSING):
            raise LocalProtocolError(f"connection is {self.state.value}")
        stream = self._streams.get(stream_id)
        if stream is None or not stream.send_open:
            raise LocalProtocolError(f"stream {stream_id} is closed for sending")
        return stream

    def _maybe_grant(self, stream: _Stream) -> None:
        credit = stream.pending_credit
        widen = 0
        if stream.recv_window <= stream.window // 2 < self.config.stream_window // 2:
            widen = self.config.stream_window - stream.window  # a bulk stream: widen
        if credit + widen < (stream.window + widen) // 4 or not stream.recv_open:
            return
        if not self._may_grant(stream, credit + widen):
            self._starved[stream.id] = None
            return
        self._starved.pop(stream.id, None)
        credit += widen
        stream.window += widen
        stream.pending_credit = 0
        stream.recv_window += credit
        self._outstanding += credit
        self._emit(_WINDOW_UPDATE, 0, stream.id, U32.pack(credit))

    def _may_grant(self, stream: _Stream, credit: int) -> bool:
        """Within the budgets; or the *lane*: one stream at a time whose reader waits for
        a message that cannot arrive without more credit, granted beyond the budget
        (the room for it is kept below ``max_buffered``), so that whatever order the
        application reads in, its next message can always finish: no deadlock."""
        committed = self.buffered + self._outstanding + credit
        budget = self.budget
        if committed <= self.config.credit_budget and (
                budget is None or budget.used + credit <= budget.credit_limit):
            return True
        if self._lane is None and stream.id in self._waiting and (
                stream.partial is not None or stream.recv_window < MAX_CHUNK):
            self._lane = stream.id
        return self._lane == stream.id

    def _retry_starved(self) -> None:
        if not self._starved:
            return
        for stream_id in list(self._starved):
            stream = self._streams.get(stream_id)
            if stream is None or not stream.recv_open:
                self._starved.pop(stream_id, None)
            else:
                self._maybe_grant(stream)

    def _maybe_forget(self, stream: _Stream) -> None:
        if not stream.send_open and not stream.recv_open:
            self._forget(stream)

    def _close_receiving(self, stream: _Stream) -> None:
        if stream.recv_open:
            stream.recv_open = False
            self._outstanding -= stream.recv_window
            stream.recv_window = 0
        self._starved.pop(stream.id, None)
        if stream.partial is not None:
            self._buffer(-stream.partial_size)
            stream.partial = None
            stream.partial_size = stream.partial_uncredited = 0

    def _forget(self, stream: _Stream) -> None:
        self._close_receiving(stream)
        self._waiting.pop(stream.id, None)
        if self._lane == stream.id:
            self._lane = None
        if self._streams.pop(stream.id, None) is not None and not stream.local:
            self._inbound -= 1
        if not self._streams and not self.going_away:
            self._watching = False  # idle: nothing to watch until the next stream

    # --- timers -------------------------------------------------------------------------

    @property
    def watching(self) -> bool:
        """The keepalive runs: a stream is open, or the connection is going away."""
        return self._watching

    def activate(self, now: float) -> None:
        """Start the keepalive (a stream was opened here, or we are going away): the
        peer's silence counts from ``now``. Does nothing if it already runs."""
        if self._watching or self.state in (MuxState.DEAD, MuxState.ERROR):
            return
        self._watching = True
        self._last_received = max(self._last_received, now)
        self._next_ping = now + self.config.keepalive_interval

    def peer_alive(self, now: float) -> None:
        """The peer's bytes are waiting unread (we stopped reading: back-pressure): it is
        not silent, whatever the keepalive would conclude."""
        self._last_received = now

    def next_deadline(self) -> float | None:
        if self.state in (MuxState.DEAD, MuxState.ERROR) or not self._watching:
            return None
        return min(self._next_ping, self._last_received + self.config.dead_timeout)

    def on_timer(self, now: float) -> list[MuxEvent]:
        if self.state in (MuxState.DEAD, MuxState.ERROR) or not self._watching:
            return []
        silence = now - self._last_received
        if silence >= self.config.dead_timeout:
            self.state = MuxState.DEAD
            return [ConnectionDead(f"peer silent for {silence:.1f} s (keepalive timeout)")]
        if now >= self._next_ping:
            self._ping_count += 1
            token = U32.pack(self._ping_count) * 2
            self._ping_sent = (token, now)
            self._emit(_PING, 0, 0, token)
            self._next_ping = now + self.config.keepalive_interval
        return []

    # --- input --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray, now: float) -> list[MuxEvent]:
        """Feed decrypted bytes from the peer; returns what happened.

        Messages are cut from ``data`` without copying it first, so the caller must not
        change ``data`` afterwards (the channel hands over a fresh buffer per message).
        """
        if self._error is not None:
            raise self._error
        if self.state is MuxState.DEAD:
            return []
        self._last_received = now
        self._next_ping = now + self.config.keepalive_interval
        events: list[MuxEvent] = []
        try:
            if self._in:
                buffer = self._in
                buffer += data
                consumed = self._parse(buffer, events, now, zero_copy=False)
                del buffer[:consumed]
            else:
                consumed = self._parse(data, events, now, zero_copy=True)
                if consumed < len(data):
                    self._in = bytearray(memoryview(data)[consumed:])
        except MuxError as exc:
            self._fail(exc)
            raise
        return events

    def _fail(self, exc: MuxError) -> None:
        if self.state in (MuxState.OPEN, MuxState.CLOSING):
            self._emit(_GOAWAY, 0, 0, encode_reason(f"protocol error: {exc}"))
        self._error = exc
        self.state = MuxState.ERROR
        self._in = bytearray()

    def _parse(self, buf: bytes | bytearray, events: list[MuxEvent], now: float, *,
               zero_copy: bool) -> int:
        view = memoryview(buf) if zero_copy else None
        unpack = HEADER.unpack_from
        pos, end = 0, len(buf)
        while end - pos >= HEADER_SIZE:
            frame_type, flags, length, stream_id = unpack(buf, pos)
            start = pos + HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            payload = view[start:stop] if view is not None else bytes(buf[start:stop])
            pos = stop
            if frame_type == _DATA:
                self._on_data(flags, stream_id, payload, events)
            elif frame_type == _OPEN:
                self._on_open(flags, stream_id, payload, events)
            elif frame_type == _WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, events)
            elif frame_type == _RESET:
                stream = self._known(stream_id)
                if stream is not None:
                    self._forget(stream)
                    events.append(StreamAborted(stream_id, decode_text(payload)))
            elif frame_type == _DATAGRAM:
                self._need_connection_frame(stream_id, "DATAGRAM")
                protocol, body = self._split_name(payload)
                events.append(DatagramReceived(protocol, bytes(body)))
            elif frame_type == _PING:
                self._need_connection_frame(stream_id, "PING", payload, 8)
                if self.state in (MuxState.OPEN, MuxState.CLOSING):
                    self._emit(_PONG, 0, 0, bytes(payload))
            elif frame_type == _PONG:
                self._need_connection_frame(stream_id, "PONG", payload, 8)
                if self._ping_sent is not None and bytes(payload) == self._ping_sent[0]:
                    self.rtt = now - self._ping_sent[1]
                    self._ping_sent = None
            elif frame_type == _GOAWAY:
                self._need_connection_frame(stream_id, "GOAWAY")
                if not self.peer_going_away:
                    self.peer_going_away = True
                    if self.state is MuxState.OPEN:
                        self.state = MuxState.CLOSING
                    events.append(GoAwayReceived(decode_text(payload)))
            # unknown frame types are skipped: newer peers may add frames (HTTP/2 §4.1)
        return pos

    @staticmethod
    def _need_connection_frame(stream_id: int, name: str, payload: bytes | memoryview = b"",
                               size: int | None = None) -> None:
        if stream_id != 0:
            raise MuxError(f"{name} frame on stream {stream_id} (must be 0)")
        if size is not None and len(payload) != size:
            raise MuxError(f"{name} payload of {len(payload)} bytes (must be {size})")

    @staticmethod
    def _split_name(payload: bytes | memoryview) -> tuple[str, bytes | memoryview]:
        if not payload or payload[0] == 0 or 1 + payload[0] > len(payload):
            raise MuxError("frame has a malformed protocol name")
        size = payload[0]
        try:
            name = bytes(payload[1:1 + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise MuxError("protocol name is not UTF-8") from None
        return name, payload[1 + size:]

    def _known(self, stream_id: int) -> _Stream | None:
        """The stream a frame is for; None if it existed and is gone (late frame: ignore)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            if stream.pending_open:
                raise MuxError(f"frame for stream {stream_id} before it was opened")
            return stream
        if stream_id == 0:
            raise MuxError("stream frame on stream 0")
        ours = (stream_id % 2 == 1) == self.initiator
        if (ours and stream_id < self._next_local_id) or (
                not ours and stream_id <= self._last_remote_id):
            return None
        raise MuxError(f"frame for stream {stream_id}, which was never opened")

    def _on_open(self, flags: int, stream_id: int, payload: bytes | memoryview,
                 events: list[MuxEvent]) -> None:
        theirs = (stream_id % 2 == 1) != self.initiator
        if stream_id == 0 or not theirs or stream_id <= self._last_remote_id:
            raise MuxError(f"OPEN of stream {stream_id} is out of order or of the wrong side")
        self._last_remote_id = stream_id
        protocol, rest = self._split_name(payload)
        if self.peer_going_away:
            raise MuxError("peer opened a stream after its GOAWAY")
        if self._inbound >= self.config.max_streams:
            self._emit(_RESET, 0, stream_id, encode_reason(
                f"too many streams (limit {self.config.max_streams})"))
            return
        if self.buffered + self._outstanding + INITIAL_WINDOW > self.config.open_budget:
            self._emit(_RESET, 0, stream_id, encode_reason(
                "receiver busy: too much data in flight on this connection; try again"))
            return
        stream = _Stream(stream_id, protocol, b"", local=False)
        self._streams[stream_id] = stream
        self._outstanding += INITIAL_WINDOW
        self._inbound += 1
        self._watching = True  # receive_data just reset the silence clock
        events.append(StreamOpened(stream_id, protocol))
        if flags & (_MSG | _FIN | _MORE) or rest:
            self._on_data(flags, stream_id, rest, events)

    def _on_data(self, flags: int, stream_id: int, payload: bytes | memoryview,
                 events: list[MuxEvent]) -> None:
        stream = self._known(stream_id)
        if stream is None:
            return
        if not stream.recv_open:
            raise MuxError(f"data on stream {stream_id} after its FIN")
        fin = flags & _FIN
        if flags & _MSG:
            more = flags & _MORE
            if more and fin:
                raise MuxError("a frame cannot both continue a message and end the stream")
            size = len(payload)
            stream.recv_window -= size
            self._outstanding -= size
            if stream.recv_window < 0:
                raise MuxError(f"peer overran the flow-control window of stream {stream_id}")
            if stream.partial is None and not more and size <= self.config.max_message:
                # the common case: a one-frame message
                stream.owed.append(size)
                stream.sizes.append(size)
                self._buffer(size)
                events.append(MessageReceived(stream_id, bytes(payload)))
            elif not self._on_part(stream, payload, bool(more), events):
                return
        elif flags & _MORE or len(payload) or not fin:
            raise MuxError("a frame without a message must be an empty FIN")
        if fin:
            if stream.partial is not None:
                raise MuxError(f"stream {stream_id} ended in the middle of a message")
            self._close_receiving(stream)
            events.append(StreamEnded(stream_id))
            self._maybe_forget(stream)
        else:
            self._maybe_grant(stream)

    def _on_part(self, stream: _Stream, payload: bytes | memoryview, more: bool,
                 events: list[MuxEvent]) -> bool:
        """One frame of a multi-frame message. False if the stream was reset for it."""
        size = len(payload)
        if stream.partial is None:
            stream.partial = []
            stream.partial_size = 0
            stream.partial_uncredited = 0
        total = stream.partial_size + size
        if total > self.config.max_message:
            reason = f"message exceeds the {self.config.max_message} byte limit"
            self._emit(_RESET, 0, stream.id, encode_reason(reason))
            self._forget(stream)
            events.append(StreamAborted(stream.id, reason, by_peer=False))
            return False
        stream.partial.append(payload)
        stream.partial_size = total
        self._buffer(size)
        if stream.owed:
            stream.partial_uncredited += size
        else:
            stream.pending_credit += size  # next in line for the reader: credit as it comes
        if not more:
            data = b"".join(stream.partial)
            stream.owed.append(stream.partial_uncredited)
            stream.sizes.append(total)
            stream.partial = None
            stream.partial_size = stream.partial_uncredited = 0
            events.append(MessageReceived(stream.id, data))
        return True

    def _on_window_update(self, stream_id: int, payload: bytes | memoryview,
                          events: list[MuxEvent]) -> None:
        if len(payload) != 4:
            raise MuxError("WINDOW_UPDATE payload must be 4 bytes")
        (increment,) = U32.unpack(payload)
        if increment == 0:
            raise MuxError("WINDOW_UPDATE of zero")
        stream = self._known(stream_id)
        if stream is None:
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise MuxError(f"peer raised the window of stream {stream_id} above {MAX_WINDOW}")
        if stream.send_open:
            events.append(WindowUpdated(stream_id))
