"""TableCore: one table's entries, their Merkle tree and their GC and expiry to-dos.

Model: Garage ``src/table/data.rs`` and ``table.rs``. There is **one mutation path**:
:meth:`TableCore.merge` (local writes build an entry and merge it too). Inside one
transaction it merges the incoming entry with the stored one (the CRDT join), and if the
result differs from what was stored:

* stores the result (key -> canonical entry bytes) in ``NAME/e``;
* adds a Merkle to-do item ``key -> BLAKE2b(entry bytes)`` (:mod:`.merkle`);
* if the result is a tombstone, adds a GC to-do item ``ts | key -> hash`` (:mod:`.gc`);
* if the table expires entries, adds an expiry item ``ts | key``;
* runs the schema's ``updated`` hook, and queues the entry in the **outbox** (news to
  spread to peers) and reports a :class:`Change`.

Removals (GC of a tombstone, expiry) go through :meth:`delete_if_equal`: the entry is
removed only if it still hashes to what the caller saw, with a Merkle to-do in the same
transaction; removals are not news (every replica removes on its own).

Entries from peers are decoded and validated *all before any is stored*
(:meth:`merge_encoded`): one malformed entry rejects its whole batch with a CodecError and
changes nothing. Entries stamped more than ``MAX_DRIFT_MS`` (60 s) ahead of our clock are
refused until our clock catches up, so one node with a wrong clock cannot win every
write for years.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from meshcloud.clock import MAX_DRIFT_MS, hlc_pack
from meshcloud.codec import cbor
from meshcloud.errors import CodecError
from meshcloud.state.crdt import Entry, LwwMap, LwwRegister, entry_bytes
from meshcloud.state.errors import ValueTooLargeError
from meshcloud.state.keys import Atom, Key, encode_prefix, prefix_end
from meshcloud.state.kv import Kv, Txn
from meshcloud.state.merkle import MerkleTree, TreeNames, blake
from meshcloud.state.schema import TableSchema

V = TypeVar("V")

_TS = struct.Struct(">Q")

ENTRY_OVERHEAD = 256
"""Bytes an entry may carry beyond its value (timestamps, writer ids, CBOR framing)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of ``table`` changed: ``old`` → ``new`` (None: absent)."""

    table: str
    key: bytes
    old: Entry | None
    new: Entry | None


@dataclass(frozen=True, slots=True)
class TableStatistics:
    name: str
    entries: int
    merkle_nodes: int
    merkle_todo: int
    gc_todo: int
    root: bytes
    refused_future: int


DECODED_ROWS = 256
"""Rows per table whose decoded value :meth:`TableCore.get` keeps."""


_ATOMS = (str, bytes, int, float, bool, type(None))


def _shareable(value: object, depth: int = 0) -> bool:
    """A value that may be handed to several readers: immutable all the way down (a
    frozen record of atoms, tuples and frozen records; one with a dict is decoded anew
    for every reader, who may change it)."""
    if isinstance(value, _ATOMS):
        return True
    if depth > 4:
        return False
    if isinstance(value, (tuple, frozenset)):
        return all(_shareable(item, depth + 1) for item in value)
    params = getattr(type(value), "__dataclass_params__", None)
    if params is None or not params.frozen:
        return False
    return all(_shareable(getattr(value, f), depth + 1)
               for f in type(value).__dataclass_fields__)  # type: ignore[attr-defined]


class TableCore(Generic[V]):
    """One table on one node. Sans-IO: storage is the injected :class:`Kv`."""

    def __init__(self, schema: TableSchema[V], kv: Kv) -> None:
        self.schema = schema
        self.kv = kv
        name = schema.name
        self.entries_tree = f"{name}/e"
        self.gc_tree = f"{name}/gc"
        self.expiry_tree = f"{name}/x"
        self.merkle = MerkleTree(kv, TreeNames(nodes=f"{name}/m", todo=f"{name}/todo"),
                                 schema.partition_of_key_bytes)
        kv.ensure(self.entries_tree, self.gc_tree, self.expiry_tree,
                  self.merkle.names.nodes, self.merkle.names.todo)
        self.outbox: list[tuple[bytes, bytes]] = []
        """(key, entry bytes) changed here and not yet spread; the state core drains it."""
        self.max_entry_bytes = schema.max_value_bytes + ENTRY_OVERHEAD
        self.refused_future = 0
        """Entries refused because they were stamped too far in our future."""
        self._decoded: dict[bytes, tuple[bytes, Any]] = {}
        """key → (stored bytes, value) of recent :meth:`get` calls: a hot row read again
        with the same bytes is not decoded again (values are frozen records)."""

    @property
    def name(self) -> str:
        return self.schema.name

    # --- decoding -------------------------------------------------------------------------

    def _load(self, data: bytes) -> Entry:
        return self.schema.entry.from_stored(cbor.decode(data))

    def decode_remote(self, key: bytes, data: bytes) -> Entry:
        """Validate one (key, entry bytes) pair from a peer. CodecError if malformed."""
        if len(data) > self.max_entry_bytes:
            raise CodecError(f"{self.name}: entry of {len(data)} bytes is too large")
        self.schema.key_from_bytes(key)
        entry = self.schema.entry_from_plain(cbor.decode(data))
        if entry_bytes(entry) != data:
            raise CodecError(f"{self.name}: entry is not in canonical form")
        self.schema.check_entry(entry)
        return entry

    # --- the one mutation path ------------------------------------------------------------

    def merge(self, items: Iterable[tuple[bytes, Entry]], now_ms: int) -> list[Change]:
        """Merge entries (local or validated remote) into the table in one transaction."""
        items = list(items)
        if not items:
            return []
        changes = self.kv.transact(lambda txn: self._merge_txn(txn, items, now_ms))
        for change in changes:
            if change.new is not None:
                self.outbox.append((change.key, entry_bytes(change.new)))
        return changes

    def merge_encoded(self, items: Sequence[tuple[bytes, bytes]], now_ms: int) -> list[Change]:
        """Merge entries received from a peer. Validates every item first: a malformed
        one raises CodecError and nothing is stored. Items equal to what is stored are
        skipped without decoding (the common case when news arrives twice)."""
        fresh: list[tuple[bytes, Entry]] = []
        horizon = hlc_pack(now_ms + MAX_DRIFT_MS, 0)

        def pick(txn: Txn) -> None:
            for key, data in items:
                if type(key) is not bytes or type(data) is not bytes:
                    raise CodecError(f"{self.name}: entries are (bytes, bytes) pairs")
                if txn.get(self.entries_tree, key) == data:
                    continue
                fresh.append((key, self.decode_remote(key, data)))

        self.kv.read(pick)
        # An entry stamped more than a minute in our future comes from a clock that is
        # wrong (a phone set to 2030): taking it would let it win every write for years.
        # It is refused (not an error) and accepted once our clock catches up.
        timely = [(k, e) for k, e in fresh if e.timestamp < horizon]
        self.refused_future += len(fresh) - len(timely)
        return self.merge(timely, now_ms)

    def _merge_txn(self, txn: Txn, items: list[tuple[bytes, Entry]],
                   now_ms: int) -> list[Change]:
        changes: list[Change] = []
        horizon = self._expiry_horizon(now_ms)
        for key, entry in items:
            old_bytes = txn.get(self.entries_tree, key)
            old = None if old_bytes is None else self._load(old_bytes)
            merged = entry if old is None else old.merge(entry)
            if horizon is not None and merged.timestamp < horizon:
                continue  # expired everywhere: refuse (purge removes the stored one)
            new_bytes = entry_bytes(merged)
            if new_bytes == old_bytes:
                continue
            if len(new_bytes) > self.max_entry_bytes:
                raise ValueTooLargeError(f"{self.name}: merged entry is too large")
            self._store(txn, key, old, merged, new_bytes)
            changes.append(Change(self.name, key, old, merged))
        return changes

    def _store(self, txn: Txn, key: bytes, old: Entry | None, new: Entry,
               data: bytes) -> None:
        value_hash = blake(data)
        txn.put(self.entries_tree, key, data)
        self.merkle.mark(txn, key, value_hash)
        if old is not None and old.is_tombstone:
            txn.delete(self.gc_tree, _TS.pack(old.timestamp) + key)
        if new.is_tombstone:
            txn.put(self.gc_tree, _TS.pack(new.timestamp) + key, value_hash)
        if self.schema.expires_after_ms is not None:
            if old is not None:
                txn.delete(self.expiry_tree, _TS.pack(old.timestamp) + key)
            txn.put(self.expiry_tree, _TS.pack(new.timestamp) + key, b"")
        if self.schema.updated is not None:
            self.schema.updated(self.schema.key_from_bytes(key), old, new)

    def _expiry_horizon(self, now_ms: int) -> int | None:
        ttl = self.schema.expires_after_ms
        if ttl is None:
            return None
        return hlc_pack(max(0, now_ms - ttl), 0)

    # --- local writes ---------------------------------------------------------------------

    def _register(self, plain: Any, ts: int, writer: bytes) -> LwwRegister:
        reg = LwwRegister.write(ts, writer, plain)
        assert reg.data is not None
        if len(reg.data) > self.schema.max_value_bytes:
            raise ValueTooLargeError(
                f"{self.name}: value of {len(reg.data)} bytes exceeds "
                f"{self.schema.max_value_bytes}")
        return reg

    def build(self, value: V, ts: int, writer: bytes) -> Entry:
        """The entry a local write of ``value`` at ``ts`` creates."""
        plain = self.schema.plain_of(value)
        self.schema.value_of(plain)  # a value we could not read back is refused now
        if self.schema.entry is LwwMap:
            if type(plain) is not dict:
                raise CodecError(f"{self.name}: an LwwMap row encodes to a dict")
            return LwwMap.of({f: self._register(v, ts, writer) for f, v in plain.items()})
        return self._register(plain, ts, writer)

    def build_patch(self, fields: Mapping[str, Any], ts: int, writer: bytes) -> LwwMap:
        """An LwwMap entry setting only ``fields`` (plain values; None removes a field)."""
        if self.schema.entry is not LwwMap:
            raise CodecError(f"{self.name}: only LwwMap tables take field patches")
        return LwwMap.of({
            name: LwwRegister.tombstone(ts, writer) if value is None
            else self._register(value, ts, writer)
            for name, value in fields.items()
        })

    def build_tombstone(self, key: bytes, ts: int, writer: bytes) -> Entry:
        if self.schema.entry is LwwMap:
            current = self.get_entry(key)
            names = [n for n, _ in current.fields] if isinstance(current, LwwMap) else []
            return LwwMap.of({n: LwwRegister.tombstone(ts, writer) for n in names})
        return LwwRegister.tombstone(ts, writer)

    # --- reads ----------------------------------------------------------------------------

    def get_entry(self, key: bytes) -> Entry | None:
        data = self.kv.read(lambda txn: txn.get(self.entries_tree, key))
        return None if data is None else self._load(data)

    def get_bytes(self, key: bytes) -> bytes | None:
        return self.kv.read(lambda txn: txn.get(self.entries_tree, key))

    def value_of_entry(self, entry: Entry | None) -> V | None:
        if entry is None or entry.is_tombstone:
            return None
        if isinstance(entry, LwwMap):
            return self.schema.value_of(entry.values())
        assert isinstance(entry, LwwRegister)
        return self.schema.value_of(entry.value())

    def get(self, key: Key | Atom) -> V | None:
        """The live value at ``key``, or None if absent or deleted."""
        key_bytes = self.schema.key_bytes(key)
        data = self.get_bytes(key_bytes)
        if data is None:
            return None
        known = self._decoded.get(key_bytes)
        if known is not None and known[0] == data:
            value: V | None = known[1]
            return value
        value = self.value_of_entry(self._load(data))
        if _shareable(value):
            if len(self._decoded) >= DECODED_ROWS:
                self._decoded.clear()
            self._decoded[key_bytes] = (data, value)
        return value

    def scan(self, partition: Key = (), prefix: str | bytes | None = None, *,
             start: Key | None = None, limit: int | None = None, reverse: bool = False,
             tombstones: bool = False) -> list[tuple[Key, V | None]]:
        """Live rows whose key starts with the atoms ``partition`` (any leading atoms, not
        only the partition key) and whose next atom starts with ``prefix``, in key order,
        from ``start`` (inclusive; exclusive of it when ``reverse``), at most ``limit``."""
        low = encode_prefix(tuple(partition), prefix)
        high = prefix_end(low) if low else None
        if start is not None:
            start_bytes = self.schema.key_bytes(start)
            if reverse:
                high = start_bytes if high is None else min(high, start_bytes)
            else:
                low = max(low, start_bytes)

        def run(txn: Txn) -> list[tuple[bytes, bytes]]:
            out = []
            for key, data in txn.range(self.entries_tree, low, high, reverse=reverse):
                if not tombstones and _is_tombstone_bytes(self.schema, data):
                    continue
                out.append((key, data))
                if limit is not None and len(out) >= limit:
                    break
            return out

        rows = self.kv.read(run)
        return [(self.schema.key_from_bytes(k), self.value_of_entry(self._load(d)))
                for k, d in rows]

    def entries_for(self, keys: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
        """Stored (key, entry bytes) for those of ``keys`` that exist."""

        def run(txn: Txn) -> list[tuple[bytes, bytes]]:
            out = []
            for key in keys:
                data = txn.get(self.entries_tree, key)
                if data is not None:
                    out.append((key, data))
            return out

        return self.kv.read(run)

    def scan_entries(self, low: bytes, high: bytes | None, *, limit: int | None = None
                     ) -> list[tuple[bytes, bytes]]:
        """Stored (key, entry bytes) with ``low <= key < high``, tombstones included, in
        key order: what a replica answers to a quorum range read."""

        def run(txn: Txn) -> list[tuple[bytes, bytes]]:
            out = []
            for key, data in txn.range(self.entries_tree, low, high):
                out.append((key, data))
                if limit is not None and len(out) >= limit:
                    break
            return out

        return self.kv.read(run)

    def count(self) -> int:
        return self.kv.read(lambda txn: txn.count(self.entries_tree))

    # --- removals: GC and expiry ----------------------------------------------------------

    def delete_if_equal(self, key: bytes, value_hash: bytes, *,
                        tombstone_only: bool = False) -> bool:
        """Remove ``key`` if its entry still hashes to ``value_hash`` (and, with
        ``tombstone_only``, is a tombstone); True if removed."""
        return self.kv.transact(
            lambda txn: self._delete_if_equal_txn(txn, key, value_hash, tombstone_only))

    def _delete_if_equal_txn(self, txn: Txn, key: bytes, value_hash: bytes,
                             tombstone_only: bool = False) -> bool:
        data = txn.get(self.entries_tree, key)
        if data is None or blake(data) != value_hash:
            return False
        old = self._load(data)
        if tombstone_only and not old.is_tombstone:
            return False
        txn.delete(self.entries_tree, key)
        self.merkle.mark(txn, key, None)
        txn.delete(self.gc_tree, _TS.pack(old.timestamp) + key)
        txn.delete(self.expiry_tree, _TS.pack(old.timestamp) + key)
        if self.schema.updated is not None:
            self.schema.updated(self.schema.key_from_bytes(key), old, None)
        return True

    def gc_candidates(self, before_ts: int, limit: int,
                      accept: Callable[[bytes], bool] | None = None,
                      ) -> list[tuple[bytes, bytes, bytes]]:
        """Tombstones written before HLC ``before_ts`` (and whose key ``accept`` takes):
        (key, value hash, entry bytes), oldest first.

        Stale to-do items (the entry changed since) are dropped on the way."""

        def run(txn: Txn) -> tuple[list[tuple[bytes, bytes, bytes]], list[bytes]]:
            found, stale = [], []
            for todo_key, value_hash in txn.range(self.gc_tree, b"", _TS.pack(before_ts)):
                key = todo_key[_TS.size :]
                if accept is not None and not accept(key):
                    continue
                data = txn.get(self.entries_tree, key)
                if data is None or blake(data) != value_hash:
                    stale.append(todo_key)
                    continue
                found.append((key, value_hash, data))
                if len(found) >= limit:
                    break
            return found, stale

        found, stale = self.kv.read(run)
        if stale:
            self.kv.transact(lambda txn: [txn.delete(self.gc_tree, k) for k in stale])
        return found

    def gc_todo_count(self) -> int:
        return self.kv.read(lambda txn: txn.count(self.gc_tree))

    def purge_expired(self, now_ms: int, limit: int = 1000) -> int:
        """Remove up to ``limit`` entries older than the table's retention."""
        horizon = self._expiry_horizon(now_ms)
        if horizon is None:
            return 0
        end = _TS.pack(horizon)

        def due(txn: Txn) -> bool:
            return next(iter(txn.range(self.expiry_tree, b"", end)), None) is not None

        if not self.kv.read(due):  # nothing expired: no write transaction, no commit
            return 0

        def run(txn: Txn) -> int:
            removed = 0
            items = list(txn.range(self.expiry_tree, b"", end))[:limit]
            for todo_key, _ in items:
                key = todo_key[_TS.size :]
                txn.delete(self.expiry_tree, todo_key)
                data = txn.get(self.entries_tree, key)
                if data is not None and self._load(data).timestamp < horizon:
                    removed += self._delete_if_equal_txn(txn, key, blake(data))
            return removed

        return self.kv.transact(run)

    # --- Merkle ---------------------------------------------------------------------------

    def flush_merkle(self, limit: int = 1000) -> int:
        return self.merkle.flush(limit)

    def merkle_root(self) -> bytes:
        return self.merkle.root()

    def take_outbox(self) -> list[tuple[bytes, bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def statistics(self) -> TableStatistics:
        def run(txn: Txn) -> TableStatistics:
            return TableStatistics(
                name=self.name,
                entries=txn.count(self.entries_tree),
                merkle_nodes=txn.count(self.merkle.names.nodes),
                merkle_todo=txn.count(self.merkle.names.todo),
                gc_todo=txn.count(self.gc_tree),
                root=self.merkle.view_hash(txn, b""),
                refused_future=self.refused_future,
            )

        return self.kv.read(run)


def _is_tombstone_bytes(schema: TableSchema[Any], data: bytes) -> bool:
    return schema.entry.from_stored(cbor.decode(data)).is_tombstone

