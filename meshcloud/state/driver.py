"""The trio driver of replicated state: transport and clock in, :class:`StateCore` out.

Thin on purpose (the simulator drives the core without it):

* datagrams on ``/meshcloud/state/1`` are decoded and fed to ``core.on_datagram``;
* ``/meshcloud/state-sync/1`` streams are served by feeding each request to
  ``core.on_sync_request`` and sending the reply;
* a ``StartSync`` output becomes a task that opens a stream to the peer and runs the
  session (bounded by ``sync_timeout``); at most ``sync_concurrency`` sessions run at
  once, and as many are served at once (the others wait their turn), so a burst of
  newcomers cannot pile dozens of Merkle walks and merges onto the event loop;
* one timer task sleeps until ``core.next_deadline()`` (or until poked by new work) and
  calls ``core.on_timer``; background workers are throttled by CPU time measured with
  ``time.perf_counter`` (tranquility, :mod:`meshcloud.workers`);
* ``Change`` outputs are decoded and fanned out to :meth:`StateDriver.subscribe` channels,
  and set the :class:`TableWatch` flags of :meth:`StateDriver.watch` (a loop with nothing
  to do sleeps on one until a row of its tables changes, instead of polling them).

The node uses the synchronous API (:meth:`get`, :meth:`put`, :meth:`delete`, :meth:`scan`,
...): writes are local and immediate (LMDB commits in microseconds), their news is handed
to the transport without blocking.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import trio

from meshcloud.bulk import run_bulk
from meshcloud.clock import Clock, SystemClock, next_tick
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import CodecError, MeshError, TransportError
from meshcloud.state.config import StateConfig
from meshcloud.state.core import StateCore, StateStatistics, View
from meshcloud.state.keys import Atom, Key
from meshcloud.state.kv import Kv
from meshcloud.state.messages import (
    STATE_PROTOCOL,
    SYNC_PROTOCOL,
    EntryBatch,
    GcAck,
    GcDelete,
    GcPush,
    SyncEntries,
    SyncGet,
    SyncHello,
    SyncHelloReply,
    SyncNodes,
    SyncNodesReply,
    SyncPush,
    SyncPushAck,
    SyncRefused,
)
from meshcloud.state.outputs import Output, SendDatagram, StartSync
from meshcloud.state.replication import Replication
from meshcloud.state.schema import TableSchema
from meshcloud.state.sync import SyncSession, SyncStatistics
from meshcloud.state.table import Change
from meshcloud.state.tables import EVENTS, EventRecord
from meshcloud.transport.base import Stream, Transport, send_message, stream_error

log = logging.getLogger("meshcloud.state")

DATAGRAM_TYPES = (EntryBatch, GcPush, GcDelete, GcAck)
REQUEST_TYPES = (SyncHello, SyncNodes, SyncGet, SyncPush)
REPLY_TYPES = (SyncHelloReply, SyncNodesReply, SyncEntries, SyncPushAck, SyncRefused)

MAX_SYNC_MESSAGE = 4 * 1024 * 1024
"""Decode limit on sync streams: 256 full Merkle nodes are 2.2 MiB."""
MAX_DATAGRAM = 256 * 1024
"""Decode limit on state datagrams (the sender's budget is 60 KB)."""
ANNOUNCED_FLUSH_POLL = 30.0
"""Seconds between the flush loop's checks for pending commits when the store announces
its commits (``LmdbKv.on_commit``): only commits made outside the trio thread wait for
it (an idle agent woke once a second to find nothing pending)."""
SUBSCRIBER_BUFFER = 4096
"""Events a subscriber may fall behind before it is dropped (its channel ends: it should
re-subscribe and rescan)."""


class _BackgroundSyncKv(Protocol):
    """A store whose commits reach the disk later, flushed by a worker thread
    (:mod:`meshcloud.state.store`, ``background_sync=True``)."""

    background_sync: bool
    committed: int
    synced: int
    on_commit: Callable[[], None] | None

    @property
    def pending(self) -> int: ...
    def flush(self) -> None: ...


def _background_sync(kv: Kv) -> TypeGuard[_BackgroundSyncKv]:
    return bool(getattr(kv, "background_sync", False))


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A row changed: ``old``/``new`` are the decoded live values (None: absent/deleted)."""

    table: str
    key: Key
    old: Any
    new: Any


class TableWatch:
    """A flag set whenever a row of some tables changes (local or remote writes, merges,
    deletions): what a periodic loop waits on while it has nothing to do, so an idle
    node does not wake to rescan tables that did not change. Never overflows (unlike a
    :meth:`StateDriver.subscribe` channel): it says *that* something changed, not what."""

    def __init__(self, tables: tuple[str, ...]) -> None:
        self.tables = tables
        self.changes = 0
        """Changes seen since the watch was made (tests, statistics)."""
        self._event = trio.Event()

    @property
    def changed(self) -> bool:
        """A change came since the last :meth:`clear`."""
        return self._event.is_set()

    def set(self) -> None:
        self.changes += 1
        self._event.set()

    def clear(self) -> None:
        """Forget the changes seen so far (call it before reading the tables)."""
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self, deadline: float = math.inf) -> bool:
        """Until a change since the last :meth:`clear` or ``deadline`` (trio time);
        True if a change came."""
        with trio.move_on_at(deadline):
            await self._event.wait()
        return self._event.is_set()


class StateDriver:
    """One node's replicated state service (see the module docstring)."""

    def __init__(self, transport: Transport, kv: Kv, view: View, *,
                 config: StateConfig | None = None, rng: random.Random | None = None,
                 clock: Clock | None = None) -> None:
        self.transport = transport
        self.clock = clock or SystemClock()
        self.config = config or StateConfig()
        self.core = StateCore(transport.local_id, kv, view, config=self.config,
                              rng=rng or random.Random(), cpu_clock=time.perf_counter,
                              connected=lambda: [p.node_id for p in transport.connected_peers()])
        self._subscribers: dict[str, list[trio.MemorySendChannel[StateChanged]]] = {}
        self._watches: dict[str, list[TableWatch]] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._flush_wanted = trio.Event()
        self._flushed = trio.Event()
        """Set (and replaced) after each flush: what :meth:`durable` waits on."""
        self._flush_limiter = trio.CapacityLimiter(1)
        """One flush at a time: it covers every commit before it."""
        self._sessions = trio.CapacityLimiter(self.config.sync_concurrency)
        """Our anti-entropy sessions running at once (StateConfig.sync_concurrency)."""
        self._serving = trio.CapacityLimiter(self.config.sync_concurrency)
        """Peers' sessions served at once."""

    # --- API for the node -----------------------------------------------------------------

    def open_table(self, schema: TableSchema[Any], replication: Replication | None = None) -> None:
        self.core.open_table(schema, replication)

    def get(self, table: str, key: Key | Atom) -> Any:
        return self.core.get(table, key)

    def scan(self, table: str, partition: Key = (), prefix: str | bytes | None = None,
             **kwargs: Any) -> list[tuple[Key, Any]]:
        return self.core.scan(table, partition, prefix, **kwargs)

    def put(self, table: str, key: Key | Atom, value: Any) -> None:
        self._perform(self.core.put(table, key, value, self._now()))

    def patch(self, table: str, key: Key | Atom, fields: Mapping[str, Any]) -> None:
        self._perform(self.core.patch(table, key, fields, self._now()))

    def delete(self, table: str, key: Key | Atom) -> None:
        self._perform(self.core.delete(table, key, self._now()))

    def log_event(self, kind: str, message: str, *, subject: str = "",
                  level: str = "info") -> None:
        """Append to the ``events`` table (key: HLC timestamp, this node's id)."""
        key = (self.core.timestamp(self._now()), self.core.me)
        self.put(EVENTS.name, key, EventRecord(kind=kind, message=message, subject=subject,
                                               level=level))

    def merge_entries(self, peer: bytes, table: str,
                      entries: list[tuple[bytes, bytes]]) -> None:
        """Merge entries received on a request stream; CodecError if one is malformed
        (nothing stored). Committed when this returns."""
        self._perform(self.core.merge_entries(peer, table, entries, self._now()))

    def build_entry(self, table: str, key: Key | Atom, value: Any, *, ts: int | None = None,
                    writer: bytes | None = None) -> tuple[bytes, bytes]:
        """An entry for ``key`` (None: tombstone) built but not stored (see
        :meth:`StateCore.build_entry`)."""
        return self.core.build_entry(table, key, value, self._now(), ts=ts, writer=writer)

    def merkle_root(self, table: str) -> bytes:
        return self.core.merkle_root(table)

    def statistics(self) -> StateStatistics:
        return self.core.statistics()

    def subscribe(self, table: str) -> trio.MemoryReceiveChannel[StateChanged]:
        """Change events of ``table`` from now on (local and remote)."""
        self.core.table(table)  # UnknownTableError if not open
        send, receive = trio.open_memory_channel[StateChanged](SUBSCRIBER_BUFFER)
        self._subscribers.setdefault(table, []).append(send)
        return receive

    def watch(self, *tables: str) -> TableWatch:
        """A :class:`TableWatch` set by every change of a row of ``tables`` from now on
        (UnknownTableError if one is not open)."""
        for table in tables:
            self.core.table(table)
        watch = TableWatch(tuple(tables))
        for table in tables:
            self._watches.setdefault(table, []).append(watch)
        return watch

    async def sync_with(self, peer: bytes) -> SyncStatistics:
        """Run one anti-entropy session with ``peer`` now (tests, ``meshcloud status``)."""
        async with self._sessions:  # the session (and its timeout) starts with its turn
            session = self.core.start_sync(peer, self._now())
            await self._session(session)
        return session.stats

    # --- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Start with ``await nursery.start(driver.run)``."""
        self.core.wall_offset_ms = self.clock.wall_ms() - int(trio.current_time() * 1000)
        self.transport.serve(SYNC_PROTOCOL, self._serve_sync)
        datagrams = self.transport.datagrams(STATE_PROTOCOL)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_datagrams, datagrams)
            nursery.start_soon(self._timer_loop)
            if _background_sync(self.core.kv):
                nursery.start_soon(self._flush_loop)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _now(self) -> float:
        return trio.current_time()

    def _perform(self, outputs: list[Output]) -> None:
        for output in outputs:
            match output:
                case SendDatagram():
                    self.transport.send_datagram(output.peer, STATE_PROTOCOL,
                                                 encode_message(output.msg))
                case StartSync():
                    if self._nursery is None:
                        self.core.on_sync_closed(output.session, self._now(), "not running")
                    else:
                        self._nursery.start_soon(self._run_session, output.session)
                case Change():
                    self._publish(output)
        if outputs:
            self._wake.set()  # new work may move the core's deadline earlier
        if getattr(self.core.kv, "pending", 0):
            self._flush_wanted.set()

    def _on_commit(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # another thread committed: the flush loop's poll finds it
            return
        self._flush_wanted.set()

    async def _flush_loop(self) -> None:
        """Background sync: flush pending commits to disk in a worker thread, so the
        event loop never waits for an fdatasync (see :mod:`meshcloud.state.store`).
        The store announces each commit made on the trio thread, so the loop sleeps
        while nothing is written; a commit made in another thread is found by a poll
        every ``flush_poll`` seconds (``ANNOUNCED_FLUSH_POLL`` when commits announce
        themselves)."""
        kv = self.core.kv
        assert _background_sync(kv)
        poll = self.config.flush_poll
        if hasattr(kv, "on_commit"):
            kv.on_commit = self._on_commit
            poll = max(poll, ANNOUNCED_FLUSH_POLL)
        while True:
            # a commit no output announced: checked on the shared tick
            with trio.move_on_at(next_tick(trio.current_time(), poll)):
                await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            if kv.pending:
                try:
                    await run_bulk(kv.flush, bound=self._flush_limiter, lower=False)
                except MeshError as exc:
                    log.warning("state store flush failed: %s", exc)
            self._flushed.set()
            self._flushed = trio.Event()

    async def durable(self) -> None:
        """Return once every commit made so far is on disk: what a node awaits before it
        *acknowledges* a write to another node (a group commit: one fdatasync in a worker
        thread covers every write waiting, and the event loop never waits for the disk).
        At once when the store syncs each commit itself."""
        kv = self.core.kv
        if not _background_sync(kv) or self._nursery is None:
            return
        target = kv.committed
        while kv.synced < target:
            flushed = self._flushed
            self._flush_wanted.set()
            await flushed.wait()

    def _publish(self, change: Change) -> None:
        for watch in self._watches.get(change.table, ()):
            watch.set()
        channels = self._subscribers.get(change.table)
        if not channels:
            return
        table = self.core.table(change.table)
        try:
            event = StateChanged(change.table, table.schema.key_from_bytes(change.key),
                                 table.value_of_entry(change.old),
                                 table.value_of_entry(change.new))
        except CodecError:
            return
        for channel in list(channels):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.close()
                channels.remove(channel)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            outputs = self.core.on_timer(self._now())
            self._wake = trio.Event()  # what on_timer produced is already accounted for
            self._perform(outputs)
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()

    async def _receive_datagrams(
            self, datagrams: trio.MemoryReceiveChannel[tuple[bytes, bytes]]) -> None:
        async for peer, data in datagrams:
            try:
                msg = decode_message(data, DATAGRAM_TYPES, max_size=MAX_DATAGRAM)
            except CodecError:
                self.core.on_datagram(peer, None, self._now())  # counted as rejected
                continue
            self._perform(self.core.on_datagram(peer, msg, self._now()))

    async def _run_session(self, session: SyncSession) -> None:
        async with self._sessions:
            if session.session_id in self.core.sessions:  # not timed out while it waited
                await self._session(session)

    async def _session(self, session: SyncSession) -> None:
        error: str | None = None
        try:
            with trio.fail_after(self.config.sync_timeout):
                stream = await self.transport.open_stream(session.peer, SYNC_PROTOCOL)
                try:
                    while (request := session.next_request()) is not None:
                        await send_message(stream, request)
                        data = await stream.receive()
                        reply = decode_message(data, REPLY_TYPES, max_size=MAX_SYNC_MESSAGE)
                        self._perform(self.core.on_sync_reply(session, reply, self._now()))
                    await stream.close()
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.abort("sync abandoned")
                    raise
        except (MeshError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            error = stream_error(exc) if not isinstance(exc, trio.TooSlowError) else "timeout"
            log.debug("sync with %s failed: %s", session.peer.hex()[:12], error)
        finally:
            self._perform(self.core.on_sync_closed(session, self._now(), error))

    async def _serve_sync(self, stream: Stream) -> None:
        async with self._serving:
            await self._serve_session(stream)

    async def _serve_session(self, stream: Stream) -> None:
        peer = stream.peer.node_id
        served = 0
        with trio.move_on_after(self.config.sync_timeout):
            while served <= self.config.sync_max_requests:
                try:
                    data = await stream.receive()
                except trio.EndOfChannel:
                    await stream.close()
                    return
                except TransportError:
                    return
                try:
                    request = decode_message(data, REQUEST_TYPES, max_size=MAX_SYNC_MESSAGE)
                except CodecError as exc:
                    await stream.abort(f"malformed sync request: {exc}")
                    return
                served += 1
                reply, outputs = self.core.on_sync_request(peer, request, self._now())
                self._perform(outputs)
                await send_message(stream, reply)
        await stream.abort("sync session too long")
