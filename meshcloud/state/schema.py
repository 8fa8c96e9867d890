"""Table schemas: what a table holds and how its rows are keyed and encoded.

A :class:`TableSchema` is written once per table (Garage ``src/table/schema.rs``): a
name, the types of the partition key atoms and of the sort key atoms (see :mod:`.keys`),
the entry CRDT (:class:`~.crdt.LwwRegister` for whole-row last-writer-wins,
:class:`~.crdt.LwwMap` for per-field), and how the application's value becomes plain
data and back. ``table.py``, ``sync.py`` and ``gc.py`` are written once for all schemas;
adding a table is adding a schema.

Invariants: a key is accepted only if its atoms have the declared types; a value is
accepted only if ``encode`` accepts it and its encoding is at most ``max_value_bytes``;
``decode`` raises :class:`CodecError` (or ``ValueError``/``TypeError``, turned into
CodecError) for anything malformed, so a hostile peer cannot store a value the
application cannot read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from meshcloud.codec.messages import _BY_CLASS, _plain, from_wire, to_wire
from meshcloud.errors import CodecError
from meshcloud.state.crdt import Entry, LwwMap, LwwRegister
from meshcloud.state.keys import Atom, Key, decode_key, encode_key, partition_of

V = TypeVar("V")

MAX_VALUE_BYTES = 64 * 1024
"""Default cap on one encoded entry (64 KiB): cluster metadata, not blobs. Entries above
the datagram budget travel only by anti-entropy streams."""

UpdatedHook = Callable[[Key, Entry | None, Entry | None], None]


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class TableSchema(Generic[V]):
    """How one table is keyed, typed and encoded. See the module docstring."""

    name: str
    partition: tuple[type, ...]
    """Types of the leading key atoms that form the partition key (may be empty)."""
    sort: tuple[type, ...] = ()
    """Types of the remaining key atoms (the sort key)."""
    entry: type[LwwRegister] | type[LwwMap] = LwwRegister
    """The entry CRDT: LwwRegister (whole row) or LwwMap (per field)."""
    encode: Callable[[V], Any] = _identity
    """Application value to plain data (for LwwMap: a dict of field name to plain)."""
    decode: Callable[[Any], V] = _identity
    """Plain data back to the application value; raises on malformed data."""
    max_value_bytes: int = MAX_VALUE_BYTES
    expires_after_ms: int | None = None
    """Entries older than this (by HLC physical time) are refused and purged, on every
    node alike, without tombstones: bounded retention for append-only tables (events)."""
    updated: UpdatedHook | None = None
    """Called after an entry changes (old, new entries), in the same transaction."""

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or "/" in self.name:
            raise ValueError("a table name is 1..64 characters without '/'")
        for kind in (*self.partition, *self.sort):
            if kind not in (str, bytes, int):
                raise ValueError(f"key atoms are str, bytes or int, not {kind}")
        if self.entry not in (LwwRegister, LwwMap):
            raise ValueError("entry type is LwwRegister or LwwMap")

    # --- keys -----------------------------------------------------------------------------

    @property
    def key_length(self) -> int:
        return len(self.partition) + len(self.sort)

    def check_key(self, key: Key | Atom) -> Key:
        """The key as a tuple, checked against the declared atom types."""
        # a lone atom is a key of one; anything else that is not exactly a tuple fails the
        # atom check below
        key = key if type(key) is tuple else cast(Key, (key,))
        kinds = (*self.partition, *self.sort)
        if len(key) != len(kinds):
            raise CodecError(f"table {self.name} keys have {len(kinds)} atoms, got {len(key)}")
        for atom, kind in zip(key, kinds, strict=True):
            if type(atom) is not kind:
                raise CodecError(
                    f"table {self.name} key atom {atom!r} should be {kind.__name__}")
        return key

    def key_bytes(self, key: Key | Atom) -> bytes:
        return encode_key(self.check_key(key))

    def key_from_bytes(self, data: bytes) -> Key:
        return self.check_key(decode_key(data))

    def partition_bytes(self, key: Key) -> bytes:
        return encode_key(key[: len(self.partition)])

    def partition_of_key_bytes(self, data: bytes) -> int:
        """The partition of a stored key (decodes only the partition atoms)."""
        key = decode_key(data)
        return partition_of(encode_key(key[: len(self.partition)]))

    # --- values ---------------------------------------------------------------------------

    def plain_of(self, value: V) -> Any:
        try:
            return self.encode(value)
        except CodecError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise CodecError(f"table {self.name}: cannot encode value: {exc}") from None

    def value_of(self, plain: Any) -> V:
        try:
            return self.decode(plain)
        except CodecError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise CodecError(f"table {self.name}: malformed value: {exc}") from None

    def entry_from_plain(self, plain: Any) -> Entry:
        return self.entry.from_plain(plain)

    def check_entry(self, entry: Entry) -> None:
        """Every live value in ``entry`` must decode (so peers cannot store garbage)."""
        if isinstance(entry, LwwRegister):
            if entry.data is not None:
                self.value_of(entry.value())
        elif isinstance(entry, LwwMap):
            live = entry.values()
            if live:
                self.value_of(live)


# --- value codecs for records ------------------------------------------------------------


def record_codec(cls: type[V]) -> tuple[Callable[[V], Any], Callable[[Any], V]]:
    """encode/decode for a whole-row record that is a registered message dataclass:
    stored as ``[tag, version, *fields]``, so it carries its version and old versions
    decode by the codec's evolution rules."""

    def encode(value: V) -> Any:
        if type(value) is not cls:
            raise CodecError(f"expected a {cls.__name__}, got {type(value).__name__}")
        return to_wire(value)

    def decode(plain: Any) -> V:
        return from_wire(plain, cls)

    return encode, decode


def fields_codec(cls: type[V]) -> tuple[Callable[[V], Any], Callable[[Any], V]]:
    """encode/decode for an LwwMap row backed by a registered message dataclass: each
    field is its own register; fields missing on decode take their defaults."""
    fields = dataclasses.fields(cast(Any, cls))  # a registered message is a dataclass
    names = [f.name for f in fields]

    def encode(value: V) -> dict[str, Any]:
        if type(value) is not cls:
            raise CodecError(f"expected a {cls.__name__}, got {type(value).__name__}")
        wire = to_wire(value)
        return dict(zip(names, wire[2:], strict=True))

    def decode(plain: Any) -> V:
        if type(plain) is not dict:
            raise CodecError(f"{cls.__name__} row is a map of fields")
        spec = _BY_CLASS[cls]  # the registered tag and version (codec internals)
        values: list[Any] = []
        defaults = {f.name: f for f in fields}
        for name in names:
            if name in plain:
                values.append(plain[name])
                continue
            field = defaults[name]
            if field.default is not dataclasses.MISSING:
                values.append(_plain(field.default))
            elif field.default_factory is not dataclasses.MISSING:
                values.append(_plain(field.default_factory()))
            else:
                raise CodecError(f"{cls.__name__} row lacks field {name}")
        return from_wire([spec.tag, spec.version, *values], cls)

    return encode, decode

