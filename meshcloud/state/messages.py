"""Wire messages of the replicated state (tags ``TagBlock.STATE + n``, append-only).

Datagrams on ``/meshcloud/state/1``: :class:`EntryBatch` (news), and the two GC phases
(:class:`GcPush`, :class:`GcDelete`, both answered by :class:`GcAck`).

Request/response on a ``/meshcloud/state-sync/1`` stream (anti-entropy, :mod:`.sync`):
``SyncHello`` → ``SyncHelloReply``, ``SyncNodes`` → ``SyncNodesReply``, ``SyncGet`` →
``SyncEntries``, ``SyncPush`` → ``SyncPushAck``; ``SyncRefused`` answers a request the
responder cannot serve.

Every count is bounded in ``__post_init__`` (the codec turns a violation into a
CodecError), so a hostile message is refused before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

STATE_PROTOCOL = "/meshcloud/state/1"
SYNC_PROTOCOL = "/meshcloud/state-sync/1"

MAX_BATCH_ENTRIES = 4096
"""Entries per message; the byte budget (config) usually binds first."""
MAX_PREFIXES = 256
"""Prefixes per hello table or node request: 256 partitions fit in one hello."""
MAX_PREFIX_BYTES = 33
"""A Merkle path is 1 partition byte + 32 hash bytes."""
MAX_KEYS = 1024
"""Keys per SyncGet or GcDelete."""
MAX_TABLES = 64
"""Tables per SyncHello."""

Pairs = tuple[tuple[bytes, bytes], ...]


def _check_pairs(pairs: Pairs, what: str) -> None:
    if len(pairs) > MAX_BATCH_ENTRIES:
        raise ValueError(f"{what}: more than {MAX_BATCH_ENTRIES} entries")


def _check_prefixes(prefixes: tuple[bytes, ...]) -> None:
    if len(prefixes) > MAX_PREFIXES:
        raise ValueError(f"more than {MAX_PREFIXES} prefixes")
    if any(len(p) > MAX_PREFIX_BYTES for p in prefixes):
        raise ValueError("a Merkle prefix is at most 33 bytes")


@message(TagBlock.STATE + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class EntryBatch:
    """News: entries that changed on the sender, to merge (and forward once if new)."""

    table: str
    entries: Pairs

    def __post_init__(self) -> None:
        _check_pairs(self.entries, "EntryBatch")


@message(TagBlock.STATE + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncHello:
    """Per table, (Merkle prefix, hash of our node there): which of these differ?"""

    tables: dict[str, Pairs]

    def __post_init__(self) -> None:
        if len(self.tables) > MAX_TABLES:
            raise ValueError(f"more than {MAX_TABLES} tables")
        for pairs in self.tables.values():
            _check_prefixes(tuple(p for p, _ in pairs))


@message(TagBlock.STATE + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncHelloReply:
    differ: dict[str, tuple[bytes, ...]]

    def __post_init__(self) -> None:
        if len(self.differ) > MAX_TABLES:
            raise ValueError(f"more than {MAX_TABLES} tables")
        for prefixes in self.differ.values():
            _check_prefixes(prefixes)


@message(TagBlock.STATE + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncNodes:
    """Send me your Merkle nodes (views) at these prefixes."""

    table: str
    prefixes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_prefixes(self.prefixes)


@message(TagBlock.STATE + 5)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncNodesReply:
    nodes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.nodes) > MAX_PREFIXES:
            raise ValueError(f"more than {MAX_PREFIXES} nodes")


@message(TagBlock.STATE + 6)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncGet:
    """Send me your entries at these keys."""

    table: str
    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.keys) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} keys")


@message(TagBlock.STATE + 7)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncEntries:
    """Entries for the first ``processed`` keys asked for (the rest did not fit)."""

    table: str
    entries: Pairs
    processed: int

    def __post_init__(self) -> None:
        _check_pairs(self.entries, "SyncEntries")
        if not 0 <= self.processed <= MAX_KEYS:
            raise ValueError("processed out of range")


@message(TagBlock.STATE + 8)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncPush:
    """Entries you may lack: merge them."""

    table: str
    entries: Pairs

    def __post_init__(self) -> None:
        _check_pairs(self.entries, "SyncPush")


@message(TagBlock.STATE + 9)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncPushAck:
    table: str
    changed: int


@message(TagBlock.STATE + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRefused:
    """The responder cannot serve the request (unknown table, bad data...)."""

    reason: str


@message(TagBlock.STATE + 11)
@dataclass(frozen=True, slots=True, kw_only=True)
class GcPush:
    """GC phase 1: store these tombstones (or anything newer), then ack."""

    table: str
    round: int
    entries: Pairs

    def __post_init__(self) -> None:
        _check_pairs(self.entries, "GcPush")


@message(TagBlock.STATE + 12)
@dataclass(frozen=True, slots=True, kw_only=True)
class GcDelete:
    """GC phase 2: delete each (key, value hash) if your entry still hashes to it."""

    table: str
    round: int
    items: Pairs

    def __post_init__(self) -> None:
        if len(self.items) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} items")


@message(TagBlock.STATE + 13)
@dataclass(frozen=True, slots=True, kw_only=True)
class GcAck:
    table: str
    round: int
    phase: int


SyncRequest = SyncHello | SyncNodes | SyncGet | SyncPush
SyncReply = SyncHelloReply | SyncNodesReply | SyncEntries | SyncPushAck | SyncRefused
Datagram = EntryBatch | GcPush | GcDelete | GcAck
