"""The object index: quorum reads and writes on the blobstore's sharded tables.

The state package stores and spreads entries; the guarantees S3 needs (a PUT that was
acknowledged is seen by the next GET, whichever node serves it) come from quorums, which
live here. Model: Garage ``src/table/table.rs`` (``insert``, ``get``, ``get_range`` with
read repair) over its ``TableShardedReplication``.

**Protocol** ``/meshcloud/blob-index/1``, one request per stream:

* ``IndexWrite(table, entries)`` -> ``IndexWriteReply``: the holder merges the entries
  (CRDT join, :meth:`StateDriver.merge_entries`) and answers only after its LMDB commit.
  Entries are stamped by the *writer* (the node serving the client), so every holder
  stores byte-identical entries and retries are idempotent.
* ``IndexRead(table, keys)`` / ``IndexScan(table, low, high, limit)`` ->
  ``IndexEntries``: raw entries, tombstones included (a tombstone must beat a stale live
  value during the merge below).

**Quorums** (:class:`~blobstore.quorum.QuorumCall`): the holders of a key are the top 3
of its partition's rendezvous ranking over the live view (``Sharded(3, 2, 2)``); a write
returns once 2 acknowledged (the third keeps going in the background); point reads and
scans hear every holder gossip does not suspect (each bounded by the request timeout;
a suspected one is asked and merged if it answers in time) and fail below 2 replies.
Read replies are merged by the CRDT join; replicas that answered something older (or
nothing) get the merged entry back (**read repair**), after the caller already
has its answer. With fewer live nodes the quorum shrinks with the holder list (a one-node
mesh writes to itself); a write then also goes to the holders believed dead
(:meth:`Index._hand_off`).

**Consistency** (read-your-writes across nodes, tests/blobstore/test_read_your_writes.py):

* *Reads hear every holder.* Holders follow each node's own live view, which differs for
  a moment after a join, a restart or a failure. A reader whose view lacks a node the
  writer counted asks one holder the writer did not; that one and a holder whose copy of
  the write was lost (its leg failed, and the news with it) could agree on the older row.
  While the views differ by one node, the writer's acknowledging pair and the reader's
  three holders share at least one node, so hearing all three finds the write; two empty
  new holders (after two of three died) never outvote the old third either.
* *Overwrites are stamped past what they replace* (:meth:`Index.replace`,
  :meth:`Index.entry_after`): a node's HLC only follows the entries it merges, so one
  whose clock is behind the previous writer's (wall clocks differ; a restarted node
  resumes at its persisted HLC ceiling, up to 10 s ahead) would stamp an acknowledged
  overwrite or delete *older* than the row it replaces, and last-writer-wins would keep
  the old row on every node. Writers of object rows, tombstones, parts and the BlobRef
  a multipart completion re-points read the row first (a put reads it while its body
  streams) and stamp past it.

**Scans** merge pages: each replica returns up to ``limit`` entries; when a replica's
page was truncated, the merged page is only complete up to that replica's last key, so it
is cut there and reported truncated; callers resume after the last key returned.

Every reply from a peer is validated (:meth:`TableCore.decode_remote`) before it is used:
a malformed entry makes that reply count as a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from blobstore.concurrency import open_nursery
from blobstore.errors import IndexUnavailable
from blobstore.messages import IndexEntries, IndexRead, IndexScan, IndexWrite, IndexWriteReply
from blobstore.quorum import QuorumCall, QuorumState
from blobstore.records import FULL_COPY_TABLES, INDEX_TABLES
from meshcloud.codec import cbor
from meshcloud.errors import CodecError, MeshError
from meshcloud.state.crdt import LwwRegister, entry_bytes
from meshcloud.state.driver import StateDriver
from meshcloud.state.keys import Key, encode_key, partition_of
from meshcloud.state.replication import Replication
from meshcloud.state.table import TableCore
from meshcloud.transport.base import Stream, Transport, receive_message, request, send_message

log = logging.getLogger(__name__)

INDEX_PROTOCOL = "/meshcloud/blob-index/1"

MAX_SCAN = 1000
"""Entries one scan reply may carry (a listing page of S3 is 1000 keys)."""

REQUEST_TIMEOUT = 5.0
"""Seconds one replica may take; a dead holder costs at most this once per call."""

HAND_OFF_WAIT = 1.0
"""Seconds a write in a shrunk quorum waits for a holder believed dead but still
connected (:meth:`Index._hand_off`)."""

_TRANSIENT = (MeshError, trio.TooSlowError, trio.BrokenResourceError,
              trio.ClosedResourceError, trio.EndOfChannel, OSError)

NodeId = bytes
View = Callable[[], Collection[NodeId]]


class Missing:
    """The type of :data:`MISSING`: "not read yet", unlike None ("read: no row")."""


MISSING = Missing()


@dataclass(frozen=True, slots=True)
class Found:
    """One merged index row: its key, its register (stamp, writer) and decoded value
    (None: a tombstone)."""

    key: bytes
    entry: LwwRegister
    value: Any


class IndexService:
    """Holder side: answers index requests from this node's tables."""

    def __init__(self, state: StateDriver) -> None:
        self.state = state
        self.tables = {schema.name for schema in (*INDEX_TABLES, *FULL_COPY_TABLES)}
        self.writes = 0
        self.reads = 0
        self.refused = 0

    def register(self, transport: Transport) -> None:
        transport.serve(INDEX_PROTOCOL, self.handle)

    async def handle(self, stream: Stream) -> None:
        try:
            msg = await receive_message(stream, (IndexWrite, IndexRead, IndexScan))
        except (MeshError, trio.EndOfChannel):
            return
        reply = self.answer(stream.peer.node_id, msg)
        if isinstance(reply, IndexWriteReply) and reply.ok:
            await self.state.durable()  # acknowledged means on our disk
        try:
            await send_message(stream, reply)
            await stream.close()
        except _TRANSIENT:
            pass

    def answer(self, peer: NodeId, msg: Any) -> IndexWriteReply | IndexEntries:
        """The reply to one request (also used for requests to ourselves)."""
        if msg.table not in self.tables:
            self.refused += 1
            if isinstance(msg, IndexWrite):
                return IndexWriteReply(ok=False, error=f"no index table {msg.table[:40]!r}")
            return IndexEntries(entries=(), error=f"no index table {msg.table[:40]!r}")
        table = self.state.core.table(msg.table)
        if isinstance(msg, IndexWrite):
            try:
                self.state.merge_entries(peer, msg.table, list(msg.entries))
            except (CodecError, MeshError) as exc:
                self.refused += 1
                return IndexWriteReply(ok=False, error=str(exc)[:200])
            self.writes += 1
            return IndexWriteReply(ok=True)
        self.reads += 1
        if isinstance(msg, IndexRead):
            return IndexEntries(entries=tuple(table.entries_for(msg.keys[:MAX_SCAN])))
        limit = max(1, min(msg.limit, MAX_SCAN))
        rows = table.scan_entries(msg.low, msg.high or None, limit=limit + 1)
        return IndexEntries(entries=tuple(rows[:limit]), truncated=len(rows) > limit)


class Index:
    """Client side: quorum calls to a key's holders (see the module docstring)."""

    def __init__(self, transport: Transport, state: StateDriver, service: IndexService,
                 view: View, *, timeout: float = REQUEST_TIMEOUT,
                 suspects: View = frozenset, known: View = frozenset) -> None:
        self.transport = transport
        self.state = state
        self.service = service
        self.view = view
        self.suspects = suspects
        """Live members gossip suspects: asked, but reads do not wait for them."""
        self.known = known
        """Members not known to have left, dead ones included (see :meth:`_hand_off`)."""
        self.handed_off = 0
        self.timeout = timeout
        self.nursery: trio.Nursery | None = None
        """Where stragglers and read repairs finish after a call returned (set by the
        node's blob service; without it calls wait for every replica)."""
        self.read_repairs = 0

    @property
    def me(self) -> NodeId:
        return self.transport.local_id

    def _table(self, name: str) -> TableCore[Any]:
        return self.state.core.table(name)

    def _replication(self, name: str) -> Replication:
        return self.state.core.replications[name]

    def holders(self, table: str, partition: Key) -> list[NodeId]:
        """The live holders of a partition key, best first."""
        view = frozenset(self.view()) | {self.me}
        number = partition_of(encode_key(partition))
        return list(self._replication(table).storage_nodes(number, view))

    # --- writes ---------------------------------------------------------------------------

    async def put(self, table: str, key: Key, value: Any, *, ts: int | None = None,
                  writer: NodeId | None = None) -> None:
        """Write ``value`` (None: delete) at ``key`` on a write quorum of its holders."""
        entry = self.state.build_entry(table, key, value, ts=ts, writer=writer)
        await self.write_entries(table, key[: len(self._table(table).schema.partition)],
                                 [entry])

    def entry_after(self, table: str, key: Key, value: Any, current: Found | None
                    ) -> tuple[bytes, bytes]:
        """An entry for ``value`` (None: a tombstone) that beats ``current``, the row as a
        read quorum returned it: stamped by our HLC, or just past ``current`` when our
        clock is behind the node that wrote it (its clock runs ahead, or it restarted and
        resumed at its persisted HLC ceiling). Without this a write acknowledged *after*
        another could lose to it, and every later read would return the older one."""
        key_bytes, entry = self.state.build_entry(table, key, value)
        if current is not None and _stamp_of(entry) <= current.entry.ts:
            key_bytes, entry = self.state.build_entry(table, key, value,
                                                      ts=current.entry.ts + 1)
        return key_bytes, entry

    async def replace(self, table: str, key: Key, value: Any,
                      current: Found | Missing | None = MISSING) -> None:
        """Write ``value`` (None: delete) at ``key`` so that it supersedes the row a read
        quorum holds now (read first unless ``current`` is that row, read after the
        caller's request began): an overwrite or delete wins over every write that was
        acknowledged before it, whatever the writers' clocks say."""
        if isinstance(current, Missing):
            current = await self.get(table, key)
        entry = self.entry_after(table, key, value, current)
        await self.write_entries(table, key[: len(self._table(table).schema.partition)],
                                 [entry])

    async def write_entries(self, table: str, partition: Key,
                            entries: Sequence[tuple[bytes, bytes]]) -> None:
        msg = IndexWrite(table=table, entries=tuple(entries))
        targets = self.holders(table, partition)
        need = min(self._replication(table).write_quorum, len(targets))

        async def one(node: NodeId) -> bool:
            reply = await self._ask(node, msg, IndexWriteReply)
            if not reply.ok:
                raise IndexUnavailable(f"{node.hex()[:12]} refused: {reply.error}")
            return True

        replication = self._replication(table)
        rf = getattr(replication, "rf", len(targets))
        extra = ([n for n in self._known_holders(table, partition) if n not in targets]
                 if len(targets) < rf else [])
        if not extra:
            await self._quorum(targets, need, one, f"write to {table}")
            return
        # the quorum shrank with the live view: hand the write to the holders believed
        # dead too; to those still connected (busy, not dead) as part of the write
        connected = {p.node_id for p in self.transport.connected_peers()}
        async with open_nursery() as nursery:  # IndexUnavailable, not a group
            for node in extra:
                if node in connected:
                    nursery.start_soon(self._hand_off, node, msg, HAND_OFF_WAIT)
                else:
                    await self._spawn(self._hand_off, node, msg, self.timeout)
            await self._quorum(targets, need, one, f"write to {table}")

    def _known_holders(self, table: str, partition: Key) -> list[NodeId]:
        """The holders of a partition over every known member that has not left."""
        view = frozenset(self.view()) | frozenset(self.known()) | {self.me}
        number = partition_of(encode_key(partition))
        return list(self._replication(table).storage_nodes(number, view))

    async def _hand_off(self, node: NodeId, msg: IndexWrite, wait: float) -> None:
        """A write sent to a holder this node believes dead (best effort, never fatal). In
        a mesh of fewer than 3 live nodes the quorum shrinks with the live view; two
        nodes that each wrongly think the other dead (busy, missing probes) would
        otherwise each keep writes the other never sees until anti-entropy, and serve
        reads from their own copy."""
        try:
            with trio.fail_after(wait):
                await self._ask(node, msg, IndexWriteReply)
            self.handed_off += 1
        except _TRANSIENT as exc:
            log.debug("hand-off of a %s write to %s failed: %s", msg.table, node.hex()[:12],
                      exc)

    async def put_everywhere(self, table: str, key: Key, value: Any) -> None:
        """A full-copy row (bucket, access key): stored here, then pushed to every live
        node before returning, so a bucket created through one node is usable through any
        other at once (nodes that miss it get it from anti-entropy)."""
        entry = self.state.build_entry(table, key, value)
        self.state.merge_entries(self.me, table, [entry])
        msg = IndexWrite(table=table, entries=(entry,))
        peers = [n for n in sorted(set(self.view())) if n != self.me]

        async def one(node: NodeId) -> None:
            try:
                with trio.fail_after(self.timeout):
                    await self._ask(node, msg, IndexWriteReply)
            except _TRANSIENT as exc:
                log.debug("push of %s to %s failed: %s", table, node.hex()[:12], exc)

        async with trio.open_nursery() as nursery:
            for node in peers:
                nursery.start_soon(one, node)

    async def fetch_missing(self, table: str, key: Key, *, peers: int = 3) -> bool:
        """A full-copy row this node lacks (it joined a moment ago, or missed the push):
        ask a few live peers and merge what they have. True if the row is here now."""
        schema = self._table(table).schema
        key_bytes = schema.key_bytes(key)
        msg = IndexRead(table=table, keys=(key_bytes,))
        candidates = [n for n in sorted(set(self.view())) if n != self.me][:peers]
        for node in candidates:
            try:
                with trio.fail_after(self.timeout):
                    reply = await self._ask(node, msg, IndexEntries)
                if reply.entries:
                    self.state.merge_entries(node, table, list(reply.entries))
                    return self._table(table).get_bytes(key_bytes) is not None
            except (*_TRANSIENT, CodecError) as exc:
                log.debug("fetch of %s from %s failed: %s", table, node.hex()[:12], exc)
        return False

    async def gather(self, table: str, key: Key) -> int:
        """A full-copy row as every live peer holds it, merged here: after a
        :meth:`put_everywhere` of a row that another node may have written at the same
        moment, the rows have met on every peer that acknowledged both, so this node then
        holds the row the merge keeps everywhere. Returns the peers that answered."""
        schema = self._table(table).schema
        msg = IndexRead(table=table, keys=(schema.key_bytes(key),))
        answered = 0

        async def one(node: NodeId) -> None:
            nonlocal answered
            try:
                with trio.fail_after(self.timeout):
                    reply = await self._ask(node, msg, IndexEntries)
                if reply.entries:
                    self.state.merge_entries(node, table, list(reply.entries))
                answered += 1
            except (*_TRANSIENT, CodecError) as exc:
                log.debug("gather of %s from %s failed: %s", table, node.hex()[:12], exc)

        async with trio.open_nursery() as nursery:
            for node in sorted(set(self.view())):
                if node != self.me:
                    nursery.start_soon(one, node)
        return answered

    # --- reads ----------------------------------------------------------------------------

    async def get(self, table: str, key: Key) -> Found | None:
        """The merged row at ``key`` from every holder (None: never written)."""
        schema = self._table(table).schema
        found = await self.get_many(table, key[: len(schema.partition)], [key])
        return found.get(schema.key_bytes(key))

    async def get_many(self, table: str, partition: Key, keys: Sequence[Key]
                       ) -> dict[bytes, Found]:
        """Merged rows (tombstones included) of ``keys``, all in ``partition``, by key
        bytes; keys never written are absent. Hears every live holder (or its timeout),
        not just a quorum: holders follow each node's live view, which differs for a
        moment after a join, a restart or a failure, so the two replies a quorum would
        stop at may both come from holders the writer did not count, and agree on an
        older row (module docstring, "Consistency")."""
        schema = self._table(table).schema
        wanted = [schema.key_bytes(key) for key in keys][:MAX_SCAN]
        msg = IndexRead(table=table, keys=tuple(wanted))
        targets = self.holders(table, partition)
        need = min(self._replication(table).read_quorum, len(targets))

        async def one(node: NodeId) -> dict[bytes, bytes]:
            reply = await self._ask(node, msg, IndexEntries)
            if reply.error:
                raise IndexUnavailable(reply.error)
            return self._validated(table, reply.entries)

        async def repair(call: QuorumCall[dict[bytes, bytes]]) -> None:
            await self._repair(table, partition, call.replies, None)

        replies = await self._quorum(targets, need, one, f"read from {table}", repair,
                                     hear_all=True)
        merged = _merge(self._table(table), list(replies.values()))
        return {k: merged[k] for k in wanted if k in merged}

    async def get_value(self, table: str, key: Key) -> Any:
        found = await self.get(table, key)
        return None if found is None else found.value

    async def scan(self, table: str, partition: Key, low: bytes, high: bytes | None,
                   limit: int = MAX_SCAN) -> tuple[list[Found], bool]:
        """Rows with ``low <= key < high`` (key bytes, tombstones included) merged from a
        read quorum, in key order; and whether more rows follow."""
        limit = max(1, min(limit, MAX_SCAN))
        msg = IndexScan(table=table, low=low, high=high or b"", limit=limit)
        targets = self.holders(table, partition)
        need = min(self._replication(table).read_quorum, len(targets))

        async def one(node: NodeId) -> tuple[dict[bytes, bytes], bool]:
            reply = await self._ask(node, msg, IndexEntries)
            if reply.error:
                raise IndexUnavailable(reply.error)
            return self._validated(table, reply.entries), reply.truncated

        replies = await self._quorum(targets, need, one, f"scan of {table}",
                                     hear_all=True)
        pages = list(replies.values())
        horizon: bytes | None = None
        for rows, truncated in pages:
            if truncated and rows:
                last = max(rows)
                horizon = last if horizon is None else min(horizon, last)
        merged = _merge(self._table(table), [rows for rows, _ in pages])
        keys = sorted(k for k in merged if horizon is None or k <= horizon)
        truncated = horizon is not None or len(keys) > limit
        keys = keys[:limit]
        found = [merged[k] for k in keys]
        covered = {node: (rows, truncated) for node, (rows, truncated) in replies.items()}
        await self._spawn(self._repair_scan, table, partition, covered, found)
        return found, truncated

    # --- machinery ------------------------------------------------------------------------

    async def _ask(self, node: NodeId, msg: Any, expect: type) -> Any:
        if node == self.me:
            await trio.lowlevel.checkpoint()
            reply = self.service.answer(self.me, msg)
            if isinstance(reply, IndexWriteReply) and reply.ok:
                await self.state.durable()  # our own copy counts once it is on disk
            return reply
        return await request(self.transport, node, INDEX_PROTOCOL, msg, expect)

    def _validated(self, table: str, entries: Sequence[tuple[bytes, bytes]]
                   ) -> dict[bytes, bytes]:
        core = self._table(table)
        for key, data in entries:
            core.decode_remote(key, data)  # CodecError: this reply counts as a failure
        return dict(entries)

    async def _quorum(self, targets: list[NodeId], need: int,
                      fn: Callable[[NodeId], Awaitable[Any]], what: str,
                      on_complete: Callable[[QuorumCall[Any]], Awaitable[None]] | None = None,
                      *, hear_all: bool = False) -> dict[NodeId, Any]:
        """Run ``fn`` on every target; return the replies once ``need`` answered. With
        ``hear_all`` (reads), also wait until every target gossip does not suspect has
        answered or failed (or timed out): see the module docstring, "Consistency". A
        suspected holder (a phone gone to sleep, a stalled machine) is still asked and its
        reply merged if it comes in time, but a read does not wait for it."""
        if not targets:
            raise IndexUnavailable(f"{what}: no live holder")
        call: QuorumCall[Any] = QuorumCall(targets, need)
        decided = trio.Event()
        heard = trio.Event()
        must = frozenset(targets) - frozenset(self.suspects()) if hear_all else frozenset()
        now = trio.current_time

        def heard_enough() -> bool:
            return must <= (call.replies.keys() | call.failures.keys())

        async def one(node: NodeId) -> None:
            try:
                with trio.fail_after(self.timeout):
                    value = await fn(node)
            except _TRANSIENT as exc:
                outputs = call.on_failure(node, str(exc) or type(exc).__name__, now())
            else:
                outputs = call.on_reply(node, value, now())
            if outputs:
                decided.set()
            if heard_enough():
                heard.set()
            if call.complete and on_complete is not None and call.replies:
                try:
                    await on_complete(call)
                except Exception as exc:  # read repair is best effort, never fatal
                    log.debug("index read repair failed: %s", exc)

        if self.nursery is None:
            async with trio.open_nursery() as nursery:
                for node in targets:
                    nursery.start_soon(one, node)
        else:
            for node in targets:
                self.nursery.start_soon(one, node)
            await decided.wait()
            if call.state is QuorumState.SUCCEEDED and not heard_enough():
                await heard.wait()
        if call.state is not QuorumState.SUCCEEDED:
            failures = "; ".join(f"{n.hex()[:12]}: {why}" for n, why in call.failures.items())
            raise IndexUnavailable(f"{what}: {len(call.replies)} of {need} replicas answered"
                                   f" ({failures or 'timed out'})")
        return dict(call.replies)

    async def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:  # background repair is best effort, never fatal
                log.debug("index background task failed: %s", exc)

        if self.nursery is not None:
            self.nursery.start_soon(guarded)
        else:
            await guarded()

    async def _repair(self, table: str, partition: Key, replies: dict[NodeId, dict[bytes, bytes]],
                      keys: Collection[bytes] | None) -> None:
        """Send the merged entry of each key to every replica that answered otherwise."""
        if len(replies) < 2:  # one copy (a 1-node mesh): nothing to compare it with
            return
        core = self._table(table)
        merged = _merge(core, list(replies.values()))
        for node, rows in replies.items():
            stale = [(k, _bytes(f)) for k, f in merged.items()
                     if (keys is None or k in keys) and rows.get(k) != _bytes(f)]
            if stale:
                await self._push(node, table, stale)

    async def _repair_scan(self, table: str, partition: Key,
                           replies: dict[NodeId, tuple[dict[bytes, bytes], bool]],
                           found: list[Found]) -> None:
        if len(replies) < 2:  # ``found`` is that one copy's rows
            return
        for node, (rows, truncated) in replies.items():
            edge = max(rows) if truncated and rows else None
            stale = [(f.key, _bytes(f)) for f in found
                     if (edge is None or f.key <= edge) and rows.get(f.key) != _bytes(f)]
            if stale:
                await self._push(node, table, stale)

    async def _push(self, node: NodeId, table: str, entries: list[tuple[bytes, bytes]]) -> None:
        self.read_repairs += len(entries)
        try:
            with trio.fail_after(self.timeout):
                await self._ask(node, IndexWrite(table=table, entries=tuple(entries)),
                                IndexWriteReply)
        except _TRANSIENT as exc:
            log.debug("read repair to %s failed: %s", node.hex()[:12], exc)


def _bytes(found: Found) -> bytes:
    return entry_bytes(found.entry)


def _merge(core: TableCore[Any], replies: list[dict[bytes, bytes]]) -> dict[bytes, Found]:
    """CRDT join of every replica's rows, decoded."""
    entries: dict[bytes, LwwRegister] = {}
    for rows in replies:
        for key, data in rows.items():
            entry = core.decode_remote(key, data)
            assert isinstance(entry, LwwRegister)
            mine = entries.get(key)
            entries[key] = entry if mine is None else mine.merge(entry)
    return {key: Found(key, entry, core.value_of_entry(entry))
            for key, entry in entries.items()}


def _stamp_of(entry: bytes) -> int:
    """The HLC stamp of an encoded register (its first field)."""
    return int(cbor.decode(entry)[0])

