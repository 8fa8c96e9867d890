"""One authenticated TCP connection, driven by trio: socket → SecureChannel → MuxCore and back.

A :class:`Connection` owns a non-blocking stdlib socket and three tasks:

* the **reader** receives bytes, decrypts them, feeds the mux core and dispatches its
  events to streams (waking their readers and writers), to the transport (new streams,
  datagrams, GOAWAY);
* the **writer** sleeps until something was queued, then takes *everything* the core has
  (so small writes made meanwhile coalesce into one encrypted write), encrypts it and
  sends it, in slices with a turn for other tasks between two; while the socket is full,
  new frames wait in the core (and datagrams beyond its backlog are dropped). Encryption
  runs on the event loop, as decryption does: a slice costs well under a millisecond, and
  a worker thread (lowered priority, :mod:`meshcloud.bulk`) halved bulk throughput on a
  loaded machine, where the writer waited for a thread the kernel ran last;
* the **timer** sleeps until the core's keepalive deadline and runs ``on_timer``; on a
  connection without streams (no keepalive) it sleeps until the idle deadline instead:
  no stream and no traffic for ``idle_timeout`` seconds, and the connection is retired
  gracefully (GOAWAY both ways, then closed; see :meth:`TcpTransport._on_idle`).

The socket is driven with ``trio.lowlevel.wait_readable``/``wait_writable`` and direct
``recv``/``send`` calls: one syscall per read or write, no extra buffering layer.

:class:`TcpStream` is the :class:`~meshcloud.transport.base.Stream` handed to services.
When the connection dies every stream fails with :class:`ConnectionLost` (after the
messages that had already arrived); a peer's RESET gives :class:`StreamReset`; a FIN gives
``trio.EndOfChannel``.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from typing import TYPE_CHECKING

import trio

from meshcloud.errors import (
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
    StreamReset,
    TransportError,
)
from meshcloud.identity.keys import short_id
from meshcloud.transport.channel import SecureChannel
from meshcloud.transport.mux import (
    ConnectionDead,
    DatagramReceived,
    GoAwayReceived,
    MessageReceived,
    MuxConfig,
    MuxCore,
    MuxEvent,
    MuxState,
    StreamAborted,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
)
from meshcloud.transport.peers import JOIN_PROTOCOLS, PeerAuth

if TYPE_CHECKING:
    from meshcloud.transport.tcp import TcpTransport

logger = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
"""Bytes asked of one ``recv``: four full Noise messages, so bulk data costs few syscalls."""

READS_BEFORE_YIELD = 8
"""Reads in a row (data always ready) before the reader lets other tasks run."""

BYTES_BEFORE_YIELD = 512 * 1024
"""Received bytes the reader decrypts and dispatches in one task step at most (data
always ready) before it lets other tasks run: the same bound as the writer's
:data:`WRITE_SLICE`. Eight full reads (2 MiB: ~40 AEAD and socket calls, each a GIL
hand-over) made one step of 2-4 ms of CPU and, with worker threads running, up to
350 ms of wall time on a loaded machine; a small request is one read and unaffected."""

WRITE_SLICE = 512 * 1024
"""Plaintext bytes the writer encrypts and sends at a time; other tasks run between two
slices, and datagrams and pings queued meanwhile go out before the next slice (a probe's
ack waits behind at most this much)."""


def _has_data(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


async def _send_all(sock: socket.socket, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


class TcpStream:
    """A message stream on a :class:`Connection` (see :class:`~meshcloud.transport.base.Stream`)."""

    def __init__(self, conn: Connection, stream_id: int, protocol: str, peer: PeerAuth, *,
                 announced: bool) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.protocol = protocol
        self.peer = peer
        self._announced = announced
        self._inbox: deque[bytes] = deque()
        self._eof = False
        self._send_closed = False
        self._sending = False
        self._failure: TransportError | None = None
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._usage = conn.usage.of(protocol)
        """This protocol's row of the usage table, looked up once (counted per message)."""

    def __repr__(self) -> str:
        return f"<TcpStream {self.protocol} #{self.stream_id} to {short_id(self.peer.node_id)}>"

    # --- the Stream interface -----------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_sendable()
        conn = self._conn
        if len(data) > conn.max_message:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds the {conn.max_message} byte limit")
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        usage = self._usage
        usage.messages_sent += 1
        usage.bytes_sent += len(data)
        try:
            view = memoryview(data)
            mux = conn.mux
            started = False
            while True:
                sent = mux.send_message(self.stream_id, view)
                if sent or not view:
                    started = self._announced = True
                    conn.schedule_flush()
                if sent == len(view):
                    break
                view = view[sent:]
                try:
                    await self._writable.park()
                except BaseException:
                    if started:  # cancelled mid-message: the stream cannot go on
                        self._abort_nowait("send cancelled in the middle of a message")
                    raise
                self._check_sendable()
        finally:
            self._sending = False
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._inbox:
                data = self._inbox.popleft()
                conn = self._conn
                conn.mux.acknowledge(self.stream_id, len(data))
                if conn.transport._buffer_lot:  # a reader waits for buffer room
                    conn.transport._buffers_freed()
                if conn.mux.backlog:
                    conn.schedule_flush()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            if self._eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise trio.EndOfChannel
            if self._failure is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise self._failure
            conn = self._conn
            if not self._announced and not self._send_closed:
                self._announced = True
                conn.mux.announce(self.stream_id)
                conn.schedule_flush()
            conn.mux.reader_waiting(self.stream_id, True)  # may earn withheld credit
            if conn.mux.backlog:
                conn.schedule_flush()
            try:
                await self._readable.park()
            finally:
                conn.mux.reader_waiting(self.stream_id, False)

    async def close(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._send_closed or self._failure is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_closed = True
        self._announced = True
        conn = self._conn
        conn.mux.end_stream(self.stream_id)
        conn.schedule_flush()
        conn.release_if_done(self)
        await trio.lowlevel.cancel_shielded_checkpoint()  # after queueing: FIN joins the data

    async def abort(self, reason: str = "") -> None:
        self._abort_nowait(reason)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> TcpStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.close()
        else:
            await self.abort("error in handler")

    # --- driven by the connection ---------------------------------------------------------

    def _check_sendable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")

    def _abort_nowait(self, reason: str) -> None:
        if self._failure is not None:
            return
        self._failure = StreamReset(f"stream aborted here: {reason}")
        self._send_closed = True
        conn = self._conn
        dropped = sum(len(message) for message in self._inbox)
        self._inbox.clear()
        if dropped:
            conn.mux.discard(dropped)
            conn.transport._buffers_freed()
        if not conn.lost:
            conn.mux.reset_stream(self.stream_id, reason)
            conn.schedule_flush()
        conn.release(self)
        self._wake()

    def _wake(self) -> None:
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _on_message(self, data: bytes) -> None:
        usage = self._usage
        usage.messages_received += 1
        usage.bytes_received += len(data)
        self._inbox.append(data)
        self._readable.unpark_all()

    def _on_end(self) -> None:
        self._eof = True
        self._readable.unpark_all()

    def _on_failure(self, error: TransportError) -> None:
        if self._failure is None:
            self._failure = error
        self._send_closed = True
        self._wake()


class Connection:
    """A live, authenticated connection to one peer. Started with :meth:`run`."""

    def __init__(self, transport: TcpTransport, sock: socket.socket, channel: SecureChannel,
                 peer: PeerAuth, *, we_dialed: bool, address: str, config: MuxConfig,
                 serial: int, first: bytes = b"") -> None:
        self.transport = transport
        self.counters = transport.counters
        self.usage = transport.usage
        self.sock = sock
        self.channel = channel
        self.peer = peer
        self.we_dialed = we_dialed
        self.address = address
        self.serial = serial
        self.relayed = False
        """The bytes go through a relay (a spliced stream, not a direct socket)."""
        self.punched = False
        """A direct connection made by a hole punch (simultaneous open)."""
        self.max_message = config.max_message
        self.mux = MuxCore(config, initiator=we_dialed, now=trio.current_time(),
                           budget=transport.buffer_budget)
        self.paused = False
        """The socket is not being read: the connection or the node holds its buffer limit."""
        self.streams: dict[int, TcpStream] = {}
        self.lost = False
        self.lost_reason = ""
        self.retiring = False  # a duplicate being drained: no new streams from us
        self._retire_reason = ""
        self._goaway_reason: str | None = None
        self._flush_scheduled = False
        self._writing = False  # the writer holds bytes not yet fully sent
        # Bytes that must precede everything else on the wire: the listener's verdict,
        # encrypted with the channel's first nonce. Whatever path writes first (run, or a
        # close/retire before run started) sends them first.
        self._first = first
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._timer_scope: trio.CancelScope | None = None
        """The timer's sleep; its deadline is moved earlier when there is more to watch."""
        self.last_used = trio.current_time()
        """When a stream was opened, or a datagram or any byte went either way (trio time)."""
        self._cancel = trio.CancelScope()
        self.closed = trio.Event()
        """Set once the connection is gone (for whoever must wait for that)."""

    def __repr__(self) -> str:
        way = "to" if self.we_dialed else "from"
        return f"<Connection {way} {short_id(self.peer.node_id)} at {self.address}>"

    @property
    def dialer_id(self) -> bytes:
        return self.transport.local_id if self.we_dialed else self.peer.node_id

    @property
    def usable(self) -> bool:
        return not self.lost and not self.retiring and self.mux.can_open_streams()

    # --- commands from the transport ----------------------------------------------------

    @property
    def idle(self) -> bool:
        """No stream is open: the connection may be closed without cutting anything."""
        return not self.streams and self.mux.stream_count == 0

    def open_stream(self, protocol: str) -> TcpStream:
        stream_id = self.mux.open_stream(protocol)
        stream = TcpStream(self, stream_id, protocol, self.peer, announced=False)
        self.streams[stream_id] = stream
        stream._usage.streams_opened += 1
        self._activate()
        return stream

    def send_datagram(self, protocol: str, data: bytes | bytearray | memoryview) -> bool:
        if self.lost or not self.mux.send_datagram(protocol, data):
            return False
        self.usage.sent(protocol, len(data))
        self.last_used = trio.current_time()
        self.schedule_flush()
        return True

    def _activate(self) -> None:
        """A stream opened (or we go away): the keepalive runs from now on."""
        now = trio.current_time()
        self.last_used = now
        if not self.mux.watching:
            self.mux.activate(now)
            self._timer_by(self.mux.next_deadline())

    def retire(self, reason: str) -> None:
        """Stop opening streams here and close once both sides are done (duplicates)."""
        if self.lost or self.retiring:
            return
        self.retiring = True
        self._retire_reason = reason
        self.mux.go_away(reason)
        self._activate()  # a silent peer must not keep a retiring connection forever
        self.schedule_flush()
        self._close_if_drained()

    def close(self, reason: str) -> None:
        """Say GOAWAY (best effort, without blocking) and drop the connection now."""
        if self.lost:
            return
        self.mux.go_away(reason)
        self._send_nowait()
        self.lose(f"closed here: {reason}" if reason else "closed here")

    def lose(self, reason: str) -> None:
        """The connection is gone: fail every stream, stop the tasks, tell the transport."""
        if self.lost:
            return
        self.lost = True
        self.lost_reason = reason
        error = ConnectionLost(reason)
        for stream in list(self.streams.values()):
            stream._on_failure(error)
        self.streams.clear()
        self.mux.detach_budget()
        self.transport._buffers_freed()
        self._cancel.cancel()
        self.closed.set()
        self.transport._forget(self, reason)

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._writer_lot.unpark()

    def release(self, stream: TcpStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            self._timer_by(self._idle_deadline())  # idle now: the idle deadline counts
        self._close_if_drained()

    def release_if_done(self, stream: TcpStream) -> None:
        if stream._send_closed and stream._eof:
            self.release(stream)

    def _close_if_drained(self) -> None:
        if self.retiring and self.mux.drained and not self.lost:
            self._send_nowait()
            if self._goaway_reason is not None:
                self.lose(f"peer is going away: {self._goaway_reason}")
            else:
                self.lose(self._retire_reason)

    # --- tasks --------------------------------------------------------------------------

    async def run(self, early: list[bytes | bytearray]) -> None:
        """Serve the connection until it is lost. ``early``: transport data that came with
        the handshake. The ``first`` bytes given at construction (the verdict) leave before
        anything else."""
        try:
            with self._cancel:
                if self._first:
                    first, self._first = self._first, b""
                    self.counters.packets_sent += 1
                    self.counters.bytes_sent += len(first)
                    self._writing = True
                    await _send_all(self.sock, first)
                    self._writing = False
                if early:
                    self._feed(early)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._timer)
                    await self._reader()
        except Exception as exc:  # a bug here must end this connection, never the transport
            self.transport.counters.connection_errors += 1
            logger.exception("connection %r failed", self)
            self.lose(f"internal error: {exc!r}")
        finally:
            self.lose("transport shut down")
            self.sock.close()

    async def _reader(self) -> None:
        streak = taken = 0
        while not self.lost:
            allowance = self._read_allowance()
            if allowance <= 0:  # back-pressure: leave the bytes in TCP
                self.paused = True
                with trio.move_on_after(self.mux.config.keepalive_interval) as waited:
                    await self.transport._buffer_lot.park()
                if waited.cancelled_caught:  # nothing was read anywhere meanwhile
                    self._relieve()
                continue
            self.paused = False
            before = self.counters.bytes_received
            got = self._receive_once(allowance)
            if got is None:
                return
            if not got:
                streak = taken = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            streak += 1
            taken += self.counters.bytes_received - before
            if streak >= READS_BEFORE_YIELD or taken >= BYTES_BEFORE_YIELD:
                streak = taken = 0
                await trio.lowlevel.checkpoint()

    def _receive_once(self, allowance: int | None = None) -> bool | None:
        """One non-blocking read, fed to the core: True if data came, False if none was
        waiting (or no room to read), None if the connection ended. ``allowance``: the
        read allowance if the caller just computed it."""
        if allowance is None:
            allowance = self._read_allowance()
        if allowance <= 0:
            return False
        try:
            data = self.sock.recv(min(READ_SIZE, allowance))
        except BlockingIOError:
            return False
        except OSError as exc:
            self.lose(f"connection reset ({exc.strerror or exc})")
            return None
        if not data:
            if self._goaway_reason is not None:
                self.lose(f"peer shut down: {self._goaway_reason}")
            else:
                self.lose("peer closed the connection")
            return None
        counters = self.counters
        counters.bytes_received += len(data)
        try:
            plaintexts = self.channel.decrypt(data)
            counters.packets_received += len(plaintexts)
            self._feed(plaintexts)
        except RemoteProtocolError as exc:
            self.transport.counters.connection_errors += 1
            logger.warning("protocol error from %s: %s", short_id(self.peer.node_id), exc)
            self._send_nowait()  # the core queued a GOAWAY naming the error
            self.lose(f"protocol error: {exc}")
            return None
        if self.mux.backlog:
            self.schedule_flush()
        return not self.lost

    def _read_allowance(self) -> int:
        # the channel may hold the start of a message read earlier: it counts too
        return self.mux.read_allowance() - self.channel.pending

    def _relieve(self) -> None:
        stream_id = self.mux.relieve()
        if stream_id is None:
            return
        self.transport.counters.buffer_resets += 1
        logger.warning("%r: out of buffer space while a reader waits: resetting stream %d",
                       self, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._on_failure(StreamReset("stream reset here: out of buffer space"))
            self.release(stream)
        self.schedule_flush()

    def _feed(self, plaintexts: list[bytes | bytearray]) -> None:
        now = trio.current_time()
        if plaintexts:
            self.last_used = now
        receive = self.mux.receive_data
        for plaintext in plaintexts:
            self._dispatch(receive(plaintext, now))

    def _dispatch(self, events: list[MuxEvent]) -> None:
        streams = self.streams
        for event in events:
            match event:
                case MessageReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._on_message(event.data)
                case WindowUpdated():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._writable.unpark_all()
                case StreamOpened():
                    self._accept(event.stream_id, event.protocol)
                case StreamEnded():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._on_end()
                        self.release_if_done(stream)
                case StreamAborted():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        who = "peer aborted the stream" if event.by_peer else "stream reset"
                        stream._on_failure(StreamReset(f"{who}: {event.reason}"))
                        self.release(stream)
                case DatagramReceived():
                    if self.peer.joining and event.protocol not in JOIN_PROTOCOLS:
                        continue
                    self.usage.received(event.protocol, len(event.data))
                    self.transport.registry.deliver_datagram(self.peer.node_id,
                                                             event.protocol, event.data)
                case GoAwayReceived():
                    self._goaway_reason = event.reason
                    self.transport._on_goaway(self, event.reason)
                    self._close_if_drained()

    def _accept(self, stream_id: int, protocol: str) -> None:
        transport = self.transport
        if self.peer.joining and protocol not in JOIN_PROTOCOLS:
            self.mux.reset_stream(stream_id, "a joining node may only open join protocols")
            return
        handler = transport.registry.handlers.get(protocol)
        if handler is None or not transport.running:
            self.mux.reset_stream(stream_id, f"protocol {protocol} is not served")
            return
        stream = TcpStream(self, stream_id, protocol, self.peer, announced=True)
        self.streams[stream_id] = stream
        stream._usage.streams_opened += 1
        self._timer_by(self.mux.next_deadline())  # the core watches now
        transport._spawn_handler(handler, stream)

    async def _writer(self) -> None:
        mux = self.mux
        while True:
            while not self._flush_scheduled:
                await self._writer_lot.park()
            # Let the tasks that woke us finish their step first: a request's OPEN, data
            # and FIN then leave in one write (and reach the peer in one read).
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._flush_scheduled = False
            packets = mux.data_to_send()
            if not packets:
                continue
            self._writing = True
            # In slices: datagrams (probes, acks) and pings queued meanwhile go out
            # between two slices instead of behind all of them.
            start = 0
            while start < len(packets):
                end, size = start + 1, len(packets[start])
                while end < len(packets) and size + len(packets[end]) <= WRITE_SLICE:
                    size += len(packets[end])
                    end += 1
                batch = packets[start:end]
                if start:
                    await trio.lowlevel.cancel_shielded_checkpoint()  # the loop's turn
                    batch = mux.urgent_to_send() + batch
                start = end
                if not await self._write(batch):
                    return
            self._writing = False

    async def _write(self, packets: list[bytearray]) -> bool:
        """Encrypt ``packets`` and send them all. False if the connection was lost."""
        data = self.channel.encrypt_packets(packets)
        self.counters.packets_sent += len(packets)
        self.counters.bytes_sent += len(data)
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                self.lose(f"connection reset ({exc.strerror or exc})")
                return False
            view = view[sent:]
        return True

    def _send_nowait(self) -> None:
        """Push what the core holds without blocking (a GOAWAY before closing)."""
        if self._writing:  # the writer is mid-message: never interleave bytes
            return
        packets = self.mux.data_to_send()
        self.counters.packets_sent += len(packets) + bool(self._first)
        data = self._first + (self.channel.encrypt_packets(packets) if packets else b"")
        self._first = b""
        if data:
            self.counters.bytes_sent += len(data)
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _idle_deadline(self) -> float | None:
        timeout = self.transport.config.idle_timeout
        if timeout is None or self.retiring or self.lost or not self.idle:
            return None
        return self.last_used + timeout

    def _timer_by(self, at: float | None) -> None:
        """The timer must look again at ``at`` at the latest (None: nothing new to watch).

        Moves the deadline of the timer's sleep earlier instead of waking it: a request on
        a fresh stream (a stream opened and released on an idle connection) costs the
        timer no task step; it wakes once at the earliest deadline and looks at all."""
        scope = self._timer_scope
        if at is not None and scope is not None and at < scope.deadline:
            scope.deadline = at

    async def _timer(self) -> None:
        mux = self.mux
        while True:
            if mux.state in (MuxState.DEAD, MuxState.ERROR):
                return
            deadline = mux.next_deadline()
            idle_at = self._idle_deadline()
            wake = min(math.inf if deadline is None else deadline,
                       math.inf if idle_at is None else idle_at)
            with trio.CancelScope(deadline=wake) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            idle_at = self._idle_deadline()  # traffic may have moved it meanwhile
            if idle_at is not None and now >= idle_at:
                self.transport._on_idle(self)
                continue
            deadline = mux.next_deadline()
            if deadline is None or now < deadline:
                continue  # woken early (the deadline moved): look again
            # If this process stalled (a long computation, a suspended phone), the peer's
            # bytes may be waiting unread in the socket: read them before judging silence.
            for _ in range(READS_BEFORE_YIELD):
                if not self._receive_once():
                    break
            if self.lost:
                return
            if self.paused and _has_data(self.sock):
                mux.peer_alive(trio.current_time())  # it sent; we are the ones not reading
            for event in mux.on_timer(trio.current_time()):
                if isinstance(event, ConnectionDead):
                    logger.info("%s is unresponsive: %s", short_id(self.peer.node_id),
                                event.reason)
                    self.lose(event.reason)
                    return
            if mux.backlog:
                self.schedule_flush()
