"""StateCore: one node's replicated state, sans-IO.

It owns the node's :class:`~.table.TableCore` objects and everything that keeps replicas
equal, and is driven by three kinds of input, each returning a list of outputs
(:mod:`.outputs`):

* **commands**: :meth:`put`, :meth:`patch`, :meth:`delete` (local writes, stamped by the
  node's HLC), :meth:`start_sync` (tests);
* **messages**: :meth:`on_datagram` (news and GC), :meth:`on_sync_request` (we answer a
  peer's anti-entropy session), :meth:`on_sync_reply` / :meth:`on_sync_closed` (our own
  session, run by the driver or the simulator);
* **time**: :meth:`on_timer` runs due background workers; :meth:`next_deadline` says when.

**Spreading news** (push epidemic, "infect and die"): every entry that changes here, by a
local write or learnt from a peer, is pushed exactly once, in ``EntryBatch`` datagrams,
to ``fanout(n) = clamp(ceil(ln(n + 1)), 3, 8)`` random live peers (not back to the peer
it came from). A node that learns nothing new forwards nothing, so each update costs
about ``fanout * N`` datagrams and dies out. Push-once reaches ~1 - e^-fanout of the
nodes; **anti-entropy** (:mod:`.sync`, a random live peer every ``sync_interval``)
catches the rest and heals partitions, and what a sync teaches is news again, so a healed
partition floods back in O(log N) hops. Sharded tables push to the partition's holders
instead of random peers, and only holders store.

**Background workers** (:mod:`.background`): Merkle to-do draining, anti-entropy
scheduling, GC passes and expiry purges, throttled by tranquility.

Time: ``now`` is seconds (monotonic, for deadlines); HLC physical time is
``wall_offset_ms + now * 1000`` (the driver sets the offset from its wall clock; the
simulator uses its epoch). Randomness: the injected ``random.Random``.

**Driving it without trio** (the simulator): create one core per node with a
:class:`~.kv.MemoryKv`, a ``view`` callable and a seeded ``random.Random``; deliver every
``SendDatagram`` (or drop it) to ``peer_core.on_datagram(sender, msg, now)``; for each
``StartSync`` run the session: ``req = session.next_request()``, deliver it to
``peer_core.on_sync_request(sender, req, now)``, hand the reply back with
``core.on_sync_reply(session, reply, now)``, repeat until ``next_request()`` is None,
then ``core.on_sync_closed(session, now)`` (``error=`` if the path broke); call
``on_timer(now)`` at ``next_deadline()``. Compare ``merkle_root(table)`` across nodes.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gossip.partners import RecentPartners
from meshcloud.clock import Hlc, hlc_pack, hlc_physical
from meshcloud.errors import CodecError, LocalProtocolError, RemoteProtocolError
from meshcloud.state.background import background_workers
from meshcloud.state.config import StateConfig
from meshcloud.state.crdt import entry_bytes
from meshcloud.state.errors import UnknownTableError
from meshcloud.state.gc import GcCore
from meshcloud.state.keys import Atom, Key
from meshcloud.state.kv import Kv
from meshcloud.state.messages import EntryBatch, GcAck, GcDelete, GcPush, SyncHello
from meshcloud.state.outputs import Output, SendDatagram, StartSync
from meshcloud.state.replication import FullCopy, Replication, shared_partitions
from meshcloud.state.schema import TableSchema
from meshcloud.state.sync import SyncSession, SyncState, respond
from meshcloud.state.table import Change, TableCore, TableStatistics
from meshcloud.workers import WorkerSet, WorkerStatus

NodeId = bytes
View = Callable[[], Collection[NodeId]]
"""What the node provides: the ids of the live members (gossip, later); may include us."""


@dataclass(frozen=True, slots=True)
class StateStatistics:
    tables: tuple[TableStatistics, ...]
    datagrams_sent: int
    datagrams_received: int
    datagrams_rejected: int
    news_sent: int
    news_received: int
    syncs_started: int
    syncs_completed: int
    syncs_failed: int
    sync_requests_served: int
    entries_pushed: int
    entries_pulled: int
    gc_rounds_completed: int
    gc_rounds_abandoned: int
    gc_deleted: int
    expired: int
    workers: tuple[WorkerStatus, ...]

CLOCK_TREE = "state.clock"
CLOCK_CEILING_KEY = b"hlc-ceiling"
CLOCK_LEASE_MS = 10_000
"""The persisted HLC ceiling runs this far ahead of the clock: after a restart the node's
timestamps start there (well inside peers' 60 s drift allowance)."""


class StateCore:
    """One node's replicated tables and their anti-entropy, GC and news spreading."""

    def __init__(self, me: NodeId, kv: Kv, view: View, *, config: StateConfig | None = None,
                 rng: random.Random | None = None, wall_offset_ms: int = 0,
                 cpu_clock: Callable[[], float] = lambda: 0.0,
                 connected: Callable[[], Iterable[NodeId]] | None = None) -> None:
        self.me = me
        self.connected = connected
        """The peers the transport holds a connection to (anti-entropy prefers them)."""
        self.synced = RecentPartners()
        """Whom we ran an anti-entropy session with lately, either side starting."""
        self.kv = kv
        self.view = view
        self.config = config or StateConfig()
        self.rng = rng or random.Random(0)
        self.wall_offset_ms = wall_offset_ms
        self.hlc = Hlc()
        self._hlc_ceiling_ms = 0
        self._restore_clock()
        self.tables: dict[str, TableCore[Any]] = {}
        self.replications: dict[str, Replication] = {}
        self.gc = GcCore(me, self.tables, self.replications, self.config)
        self.sessions: dict[int, SyncSession] = {}
        self._session_ids = itertools.count(1)
        self._outputs: list[Output] = []
        self._view_seen: object = None
        self._peers: frozenset[NodeId] = frozenset()
        self._peers_sorted: list[NodeId] = []
        self._counters = dict.fromkeys(
            ("datagrams_sent", "datagrams_received", "datagrams_rejected", "news_sent",
             "news_received", "syncs_started", "syncs_completed", "syncs_failed",
             "sync_requests_served", "entries_pushed", "entries_pulled", "expired"), 0)
        self.workers = WorkerSet(cpu_clock)
        for worker in background_workers(self, self._queue):
            self.workers.add(worker, self.config.tranquility)

    # --- tables ---------------------------------------------------------------------------

    def open_table(self, schema: TableSchema[Any],
                   replication: Replication | None = None) -> TableCore[Any]:
        if schema.name in self.tables:
            raise LocalProtocolError(f"table {schema.name} is already open")
        table: TableCore[Any] = TableCore(schema, self.kv)
        self.tables[schema.name] = table
        self.replications[schema.name] = replication or FullCopy()
        return table

    def table(self, name: str) -> TableCore[Any]:
        table = self.tables.get(name)
        if table is None:
            raise UnknownTableError(f"no table named {name!r} is open")
        return table

    def physical_ms(self, now: float) -> int:
        return self.wall_offset_ms + int(now * 1000)

    def timestamp(self, now: float) -> int:
        """A fresh HLC timestamp (e.g. for the key of an ``events`` row)."""
        return self._stamp(now)

    # --- the clock across restarts --------------------------------------------------------

    def _restore_clock(self) -> None:
        """Start past every timestamp the last run could have issued: a node whose wall
        clock went back while it was down (no RTC on a Raspberry Pi, a phone's clock set by
        hand) must not stamp its new writes older than its old ones, or they would lose."""
        self.kv.ensure(CLOCK_TREE)
        stored = self.kv.read(lambda txn: txn.get(CLOCK_TREE, CLOCK_CEILING_KEY))
        if stored is not None and len(stored) == 8:
            self._hlc_ceiling_ms = int.from_bytes(stored, "big")
            self.hlc = Hlc(hlc_pack(self._hlc_ceiling_ms, 0))

    def _keep_ceiling(self, ts: int) -> None:
        """Persist a ceiling a little ahead of the clock whenever the clock reaches it (one
        small write every ``CLOCK_LEASE_MS`` of writing, not one per write)."""
        if hlc_physical(ts) < self._hlc_ceiling_ms:
            return
        wanted = hlc_physical(ts) + CLOCK_LEASE_MS

        def raise_ceiling(txn: Any) -> int:  # never lower it (cores may share a store)
            stored = txn.get(CLOCK_TREE, CLOCK_CEILING_KEY)
            ceiling = max(wanted, int.from_bytes(stored, "big") if stored else 0)
            txn.put(CLOCK_TREE, CLOCK_CEILING_KEY, ceiling.to_bytes(8, "big"))
            return ceiling

        self._hlc_ceiling_ms = self.kv.transact(raise_ceiling)

    def _stamp(self, now: float) -> int:
        ts = self.hlc.now(self.physical_ms(now))
        self._keep_ceiling(ts)
        return ts

    def alive_peers(self) -> frozenset[NodeId]:
        view = self.view()
        if view is not self._view_seen:  # the simulator hands the same object back
            self._view_seen = view
            self._peers = frozenset(view) - {self.me}
            self._peers_sorted = sorted(self._peers)
        return self._peers

    def _sorted_peers(self) -> list[NodeId]:
        self.alive_peers()
        return self._peers_sorted

    # --- local writes ---------------------------------------------------------------------

    def put(self, table: str, key: Key | Atom, value: Any, now: float) -> list[Output]:
        """Write ``value`` at ``key`` (last writer wins, stamped by our HLC)."""
        core = self.table(table)
        key_bytes = core.schema.key_bytes(key)
        ts = self._stamp(now)
        return self._write(core, key_bytes, core.build(value, ts, self.me), now)

    def patch(self, table: str, key: Key | Atom, fields: Mapping[str, Any],
              now: float) -> list[Output]:
        """Set some fields of an LwwMap row (plain values; None removes a field)."""
        core = self.table(table)
        key_bytes = core.schema.key_bytes(key)
        ts = self._stamp(now)
        return self._write(core, key_bytes, core.build_patch(fields, ts, self.me), now)

    def delete(self, table: str, key: Key | Atom, now: float) -> list[Output]:
        """Delete ``key``: a tombstone that beats every older write, GC'd later."""
        core = self.table(table)
        key_bytes = core.schema.key_bytes(key)
        ts = self._stamp(now)
        return self._write(core, key_bytes, core.build_tombstone(key_bytes, ts, self.me), now)

    def _write(self, core: TableCore[Any], key: bytes, entry: Any, now: float) -> list[Output]:
        replication = self.replications[core.name]
        if not replication.full_copy:
            partition = core.schema.partition_of_key_bytes(key)
            holders = replication.storage_nodes(partition, self.alive_peers() | {self.me})
            if self.me not in holders:  # not ours to store: hand it to the holders
                data = entry_bytes(entry)
                return [SendDatagram(peer, EntryBatch(table=core.name, entries=((key, data),)))
                        for peer in holders]
        changes = core.merge([(key, entry)], self.physical_ms(now))
        return self._finish(changes, now)

    # --- reads ----------------------------------------------------------------------------

    def get(self, table: str, key: Key | Atom) -> Any:
        return self.table(table).get(key)

    def scan(self, table: str, partition: Key = (), prefix: str | bytes | None = None,
             **kwargs: Any) -> list[tuple[Key, Any]]:
        return self.table(table).scan(partition, prefix, **kwargs)

    def merkle_root(self, table: str) -> bytes:
        """The table's Merkle root after applying pending to-do items."""
        core = self.table(table)
        while core.flush_merkle(self.config.merkle_batch):
            pass
        return core.merkle_root()

    # --- datagrams ------------------------------------------------------------------------

    def on_datagram(self, peer: NodeId, msg: Any, now: float) -> list[Output]:
        """A decoded datagram from ``peer``. Malformed or unknown ones are dropped and
        counted; they change nothing."""
        self._counters["datagrams_received"] += 1
        try:
            match msg:
                case EntryBatch():
                    core = self.table(msg.table)
                    self._counters["news_received"] += len(msg.entries)
                    changes = core.merge_encoded(msg.entries, self.physical_ms(now))
                    self._observe(changes, now)
                    return self._finish(changes, now, exclude=peer)
                case GcPush():
                    ack, changes = self.gc.on_push(peer, msg, self.physical_ms(now))
                    self._observe(changes, now)
                    return [SendDatagram(peer, ack), *self._finish(changes, now, exclude=peer)]
                case GcDelete():
                    return [SendDatagram(peer, self.gc.on_delete(peer, msg))]
                case GcAck():
                    return self._sent(self.gc.on_ack(peer, msg, now))
        except (CodecError, RemoteProtocolError, UnknownTableError):
            pass
        self._counters["datagrams_rejected"] += 1
        return []

    def merge_entries(self, peer: NodeId, table: str, entries: list[tuple[bytes, bytes]],
                      now: float) -> list[Output]:
        """Merge entries a peer sent on a request stream (a quorum write, e.g. the
        blobstore's object index): like an ``EntryBatch`` datagram, but a malformed entry
        raises CodecError (nothing stored) so the caller can answer with an error, and the
        merge is committed when this returns (the caller may then acknowledge it)."""
        core = self.table(table)
        changes = core.merge_encoded(entries, self.physical_ms(now))
        self._observe(changes, now)
        return self._finish(changes, now, exclude=peer)

    def build_entry(self, table: str, key: Key | Atom, value: Any, now: float, *,
                    ts: int | None = None, writer: NodeId | None = None) -> tuple[bytes, bytes]:
        """(key bytes, entry bytes) of a write of ``value`` (None: a tombstone), stamped by
        our HLC unless ``ts``/``writer`` are given, *without* storing it: for callers that
        send the entry to a quorum of holders themselves (:meth:`merge_entries`)."""
        core = self.table(table)
        key_bytes = core.schema.key_bytes(key)
        if ts is None:
            ts = self._stamp(now)
        who = self.me if writer is None else writer
        if value is None:
            entry = core.build_tombstone(key_bytes, ts, who)
        else:
            entry = core.build(value, ts, who)
        return key_bytes, entry_bytes(entry)

    # --- anti-entropy ---------------------------------------------------------------------

    def plan_for(self, peer: NodeId) -> dict[str, list[bytes]]:
        """What to compare with ``peer``: whole full-copy tables, shared partitions."""
        plan: dict[str, list[bytes]] = {}
        view = self.alive_peers()
        for name, replication in self.replications.items():
            if replication.full_copy:
                plan[name] = [b""]
            else:
                shared = shared_partitions(replication, self.me, peer, view)
                if shared:
                    plan[name] = [bytes([p]) for p in sorted(shared)]
        return plan

    def shard_partners(self) -> list[NodeId]:
        """Live peers that store a partition we store, in some sharded table."""
        view = self.alive_peers() | {self.me}
        partners: set[NodeId] = set()
        for replication in self.replications.values():
            if replication.full_copy:
                continue
            for partition in replication.partitions_of(self.me, view):
                partners.update(replication.storage_nodes(partition, view))
        partners.discard(self.me)
        return sorted(partners)

    def start_sync(self, peer: NodeId, now: float) -> SyncSession:
        """A new anti-entropy session with ``peer`` (the driver runs it)."""
        self.synced.note(peer, now)
        for core in self.tables.values():
            while core.flush_merkle(self.config.merkle_batch):
                pass
        session = SyncSession(peer, self.tables, self.plan_for(peer), self.config,
                              started=now, session_id=next(self._session_ids))
        self.sessions[session.session_id] = session
        self._counters["syncs_started"] += 1
        return session

    def on_sync_reply(self, session: SyncSession, reply: Any, now: float) -> list[Output]:
        """Feed a reply of our session; a misbehaving peer fails the session."""
        try:
            changes = session.on_reply(reply, self.physical_ms(now))
        except (CodecError, RemoteProtocolError):
            return self.on_sync_closed(session, now, error=session.error or "bad reply")
        self._observe(changes, now)
        return self._finish(changes, now, exclude=session.peer)

    def on_sync_closed(self, session: SyncSession, now: float,
                       error: str | None = None) -> list[Output]:
        """Our session ended (``error``: the stream broke or timed out)."""
        if self.sessions.pop(session.session_id, None) is None:
            return []
        if error is not None:
            session.fail(error)
        if session.state is SyncState.FAILED:
            self._counters["syncs_failed"] += 1
        else:
            self._counters["syncs_completed"] += 1
        self._counters["entries_pushed"] += session.stats.pushed
        self._counters["entries_pulled"] += session.stats.pulled
        return []

    def on_sync_request(self, peer: NodeId, request: Any, now: float) -> tuple[Any, list[Output]]:
        """Answer one request of ``peer``'s session: (reply, outputs)."""
        self._counters["sync_requests_served"] += 1
        view = self.alive_peers() | {peer}

        def holds(table: str, prefix: bytes) -> bool:
            replication = self.replications.get(table)
            if replication is None or replication.full_copy or not prefix:
                return True
            return prefix[0] in replication.partitions_of(self.me, view | {self.me})

        if isinstance(request, SyncHello):
            self.synced.note(peer, now)
            for core in self.tables.values():
                while core.flush_merkle(self.config.merkle_batch):
                    pass
        reply, changes = respond(self.tables, request, self.physical_ms(now), self.config,
                                 holds)
        self._observe(changes, now)
        return reply, self._finish(changes, now, exclude=peer)

    # --- time -----------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[Output]:
        self.workers.run_due(now)
        for session in list(self.sessions.values()):
            if now - session.started > self.config.sync_timeout:
                self.on_sync_closed(session, now, error="sync session timed out")
        self._outputs.extend(self._sent(self.gc.on_timer(now)))
        return self._take()

    def next_deadline(self) -> float | None:
        times = [t for t in (self.workers.next_deadline(), self.gc.next_deadline()) if
                 t is not None]
        times.extend(s.started + self.config.sync_timeout for s in self.sessions.values())
        return min(times) if times else None

    # --- spreading ------------------------------------------------------------------------

    def _observe(self, changes: list[Change], now: float) -> None:
        """Follow the HLC of what we learnt, so our next write is newer (causality)."""
        newest = max((c.new.timestamp for c in changes if c.new is not None), default=0)
        if newest > self.hlc.last:
            self._keep_ceiling(self.hlc.observe(newest, self.physical_ms(now)))

    def _finish(self, changes: list[Change], now: float,
                exclude: NodeId | None = None) -> list[Output]:
        """Outputs after a mutation: change reports, then news for peers."""
        out: list[Output] = list(changes)
        for core in self.tables.values():
            if core.outbox:
                out.extend(self._spread(core, core.take_outbox(), exclude))
        if changes:
            self.workers.poke("merkle", now + self.config.merkle_delay)
        out.extend(self._take())
        return out

    def _spread(self, core: TableCore[Any], items: list[tuple[bytes, bytes]],
                exclude: NodeId | None) -> list[Output]:
        alive = self.alive_peers()
        replication = self.replications[core.name]
        if replication.full_copy:
            fanout = self.config.fanout(len(alive))
            candidates = self._sorted_peers()
            if len(candidates) > fanout:
                # One extra pick in case the sender is among them; order stays seeded.
                picked = self.rng.sample(candidates, min(len(candidates), fanout + 1))
                targets = [p for p in picked if p != exclude][:fanout]
            else:
                targets = [p for p in candidates if p != exclude]
            batches = _batches(items, self.config.datagram_budget)
            self._counters["news_sent"] += len(items) * len(targets)
            return self._sent([SendDatagram(peer, EntryBatch(table=core.name, entries=b))
                               for b in batches for peer in targets])
        view = alive | {self.me}
        by_peer: dict[NodeId, list[tuple[bytes, bytes]]] = {}
        for key, data in items:
            partition = core.schema.partition_of_key_bytes(key)
            for peer in replication.storage_nodes(partition, view):
                if peer != self.me and peer != exclude:
                    by_peer.setdefault(peer, []).append((key, data))
        out = []
        for peer, entries in sorted(by_peer.items()):
            for batch in _batches(entries, self.config.datagram_budget):
                out.append(SendDatagram(peer, EntryBatch(table=core.name, entries=batch)))
        self._counters["news_sent"] += sum(len(e) for e in by_peer.values())
        return self._sent(out)

    # --- background work (the workers of state/background.py call these) ------------------

    def sorted_peers(self) -> list[NodeId]:
        """The live peers, sorted (a stable order for seeded choices)."""
        return self._sorted_peers()

    def begin_sync(self, peer: NodeId, now: float) -> list[Output]:
        """Start one anti-entropy session with ``peer``: its ``StartSync`` output."""
        return [StartSync(self.start_sync(peer, now))]

    def start_gc_rounds(self, now: float) -> list[Output]:
        """GC rounds for the due tombstones we coordinate: their datagrams."""
        return self._sent(self.gc.start_rounds(now, self.physical_ms(now), self.alive_peers()))

    def purge_expired(self, now: float, limit: int) -> int:
        """Purge up to ``limit`` expired rows per table; how many went."""
        removed = sum(t.purge_expired(self.physical_ms(now), limit)
                      for t in self.tables.values() if t.schema.expires_after_ms)
        self._counters["expired"] += removed
        return removed

    def _queue(self, outputs: list[Output]) -> None:
        """Outputs of a background step, returned by the next call into the core."""
        self._outputs.extend(outputs)

    def _sent(self, outputs: list[SendDatagram]) -> list[Output]:
        self._counters["datagrams_sent"] += len(outputs)
        return list(outputs)

    def _take(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    # --- statistics -----------------------------------------------------------------------

    def statistics(self) -> StateStatistics:
        c = self._counters
        return StateStatistics(
            tables=tuple(t.statistics() for _, t in sorted(self.tables.items())),
            datagrams_sent=c["datagrams_sent"], datagrams_received=c["datagrams_received"],
            datagrams_rejected=c["datagrams_rejected"], news_sent=c["news_sent"],
            news_received=c["news_received"], syncs_started=c["syncs_started"],
            syncs_completed=c["syncs_completed"], syncs_failed=c["syncs_failed"],
            sync_requests_served=c["sync_requests_served"],
            entries_pushed=c["entries_pushed"], entries_pulled=c["entries_pulled"],
            gc_rounds_completed=self.gc.stats.rounds_completed,
            gc_rounds_abandoned=self.gc.stats.rounds_abandoned,
            gc_deleted=self.gc.stats.deleted_here + self.gc.stats.deleted_on_request,
            expired=c["expired"], workers=tuple(self.workers.statuses()),
        )


def _batches(items: list[tuple[bytes, bytes]],
             budget: int) -> list[tuple[tuple[bytes, bytes], ...]]:
    """Split entries into datagram-sized batches; an entry larger than the budget is left
    to anti-entropy."""
    out: list[tuple[tuple[bytes, bytes], ...]] = []
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for key, data in items:
        cost = len(key) + len(data) + 8
        if cost > budget:
            continue
        if batch and size + cost > budget:
            out.append(tuple(batch))
            batch, size = [], 0
        batch.append((key, data))
        size += cost
    if batch:
        out.append(tuple(batch))
    return out
