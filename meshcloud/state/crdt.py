"""Conflict-free replicated data types for table entries.

Every table entry is a state-based CRDT (Shapiro et al., "Conflict-free Replicated Data
Types", 2011, §2.2: a join semi-lattice). ``merge`` is the lattice join, so for all
``a``, ``b``, ``c`` of one type:

* **commutative**: ``a.merge(b) == b.merge(a)``
* **associative**: ``a.merge(b).merge(c) == a.merge(b.merge(c))``
* **idempotent**: ``a.merge(a) == a``

Those three laws are what makes replicas converge whatever order, duplication or
batching the network delivers updates in; ``tests/meshcloud/state/test_crdt.py`` checks
them with hypothesis for every type here and for whole tables.

Values are held as opaque **canonical CBOR bytes** (the schema encodes and decodes the
application's value), so merges compare bytes, equality is exact (no NaN or -0.0
surprises) and an entry re-encodes byte for byte on every node (equal data, equal
Merkle hashes).

Time is never read here (Garage's ``Lww::new`` reads the wall clock; ours does not): the
caller stamps a write with a timestamp from :class:`meshcloud.clock.Hlc`.

A **tombstone** is an entry that knows it is one (``is_tombstone``): a register whose
value is ``None``. Deleting writes a tombstone with a newer timestamp; it beats older
writes like any write, and is garbage-collected later in two phases (:mod:`.gc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Self

from meshcloud.codec import cbor
from meshcloud.errors import CodecError

MAX_WRITER_BYTES = 64
"""Writer ids are node ids (32 bytes); 64 leaves room and bounds hostile input."""


class Crdt(Protocol):
    """A state-based CRDT: ``merge`` is commutative, associative and idempotent."""

    def merge(self, other: Self) -> Self: ...


class Entry(Crdt, Protocol):
    """What a table stores: a CRDT that knows if it is a tombstone and when it was written."""

    @property
    def is_tombstone(self) -> bool: ...

    @property
    def timestamp(self) -> int:
        """The newest HLC timestamp inside (for GC delay, expiry and HLC observation)."""
        ...

    def to_plain(self) -> Any: ...

    @classmethod
    def from_plain(cls, plain: Any) -> Self:
        """Decode and validate plain data from a peer; CodecError if malformed."""
        ...

    @classmethod
    def from_stored(cls, plain: Any) -> Self:
        """Decode plain data this node stored itself (already validated: fast path)."""
        ...


@dataclass(frozen=True, slots=True)
class LwwRegister:
    """Last writer wins: the write with the greatest ``(ts, writer, data)`` is kept.

    ``ts`` is an HLC timestamp (int), ``writer`` the writing node's id, ``data`` the
    canonical CBOR of the value or ``None`` for a tombstone. Ordering by the triple is a
    total order, so ``merge`` (= max) is a join: ties between two writes with the same
    timestamp are broken by writer id, then by value bytes (a tombstone, ``None``, sorts
    below any value), the same way on every node.
    """

    ts: int
    writer: bytes
    data: bytes | None

    def _rank(self) -> tuple[int, bytes, bool, bytes]:
        return (self.ts, self.writer, self.data is not None, self.data or b"")

    def merge(self, other: LwwRegister) -> LwwRegister:
        return other if other._rank() > self._rank() else self

    @property
    def is_tombstone(self) -> bool:
        return self.data is None

    @property
    def timestamp(self) -> int:
        return self.ts

    @classmethod
    def write(cls, ts: int, writer: bytes, value: Any) -> LwwRegister:
        """A register holding ``value`` (plain data) written at ``ts`` by ``writer``."""
        return cls(ts, writer, cbor.encode_canonical(value))

    @classmethod
    def tombstone(cls, ts: int, writer: bytes) -> LwwRegister:
        return cls(ts, writer, None)

    def value(self) -> Any:
        """The plain value (None for a tombstone)."""
        return None if self.data is None else cbor.decode(self.data)

    def to_plain(self) -> list[Any]:
        return [self.ts, self.writer, self.data]

    @classmethod
    def from_plain(cls, plain: Any) -> LwwRegister:
        if type(plain) is not list or len(plain) != 3:
            raise CodecError("a register is [ts, writer, data]")
        ts, writer, data = plain
        if type(ts) is not int or ts < 0:
            raise CodecError("register timestamp must be a non-negative integer")
        if type(writer) is not bytes or len(writer) > MAX_WRITER_BYTES:
            raise CodecError("register writer must be a node id")
        if data is not None:
            if type(data) is not bytes:
                raise CodecError("register data must be bytes or null")
            # Must itself be valid, bounded CBOR, in canonical form.
            if cbor.encode_canonical(cbor.decode(data)) != data:
                raise CodecError("register data is not canonical CBOR")
        return cls(ts, writer, data)

    @classmethod
    def from_stored(cls, plain: Any) -> LwwRegister:
        return cls(plain[0], plain[1], plain[2])


@dataclass(frozen=True, slots=True)
class LwwMap:
    """A map of field name to :class:`LwwRegister`, merged field by field.

    Two nodes writing different fields of one row concurrently both win (an admin sets a
    node's ``drain`` flag while the node refreshes its ``addresses``). Removing a field
    writes a tombstone register for it. The map is a tombstone when it has no live field:
    deleting a row writes tombstones over every field it knows; a concurrent write of a
    field after that keeps the row alive with that field only (add wins per field).

    ``fields`` is a tuple of ``(name, register)`` sorted by name: hashable, canonical.
    """

    fields: tuple[tuple[str, LwwRegister], ...]

    @classmethod
    def of(cls, registers: dict[str, LwwRegister]) -> LwwMap:
        return cls(tuple(sorted(registers.items())))

    def as_dict(self) -> dict[str, LwwRegister]:
        return dict(self.fields)

    def merge(self, other: LwwMap) -> LwwMap:
        if other.fields == self.fields:
            return self
        merged = dict(self.fields)
        for name, reg in other.fields:
            mine = merged.get(name)
            merged[name] = reg if mine is None else mine.merge(reg)
        return LwwMap.of(merged)

    @property
    def is_tombstone(self) -> bool:
        return all(reg.is_tombstone for _, reg in self.fields)

    @property
    def timestamp(self) -> int:
        return max((reg.ts for _, reg in self.fields), default=0)

    def values(self) -> dict[str, Any]:
        """Live fields as plain values."""
        return {name: reg.value() for name, reg in self.fields if not reg.is_tombstone}

    def to_plain(self) -> dict[str, Any]:
        return {name: reg.to_plain() for name, reg in self.fields}

    @classmethod
    def from_plain(cls, plain: Any) -> LwwMap:
        if type(plain) is not dict:
            raise CodecError("an LWW map is a map of field name to register")
        registers = {}
        for name, reg in plain.items():
            if type(name) is not str:
                raise CodecError("LWW map field names are text")
            registers[name] = LwwRegister.from_plain(reg)
        return cls.of(registers)

    @classmethod
    def from_stored(cls, plain: Any) -> LwwMap:
        return cls(tuple((name, LwwRegister(*reg)) for name, reg in sorted(plain.items())))


def entry_bytes(entry: Entry) -> bytes:
    """The canonical bytes of an entry: what is stored, hashed and sent."""
    return cbor.encode_canonical(entry.to_plain())
