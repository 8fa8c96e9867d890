"""Wire messages of the blobstore (tags 600-699, append-only).

601-603 are the manifest types (:mod:`blobstore.manifest`); the shard protocol
(``/meshcloud/blob/1``, :mod:`blobstore.service`) uses 610-613. A shard travels whole in
one message: at most a 4 MiB chunk plus its header, well under the codec's 16 MiB limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock


@message(TagBlock.BLOBSTORE + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class PutShard:
    shard_id: bytes
    blob: bytes


@message(TagBlock.BLOBSTORE + 11)
@dataclass(frozen=True, slots=True, kw_only=True)
class PutShardReply:
    ok: bool
    code: str = ""
    """The holder's error code when not ok (``store_full``, ``integrity_error``...)."""
    error: str = ""


@message(TagBlock.BLOBSTORE + 12)
@dataclass(frozen=True, slots=True, kw_only=True)
class GetShard:
    shard_id: bytes


@message(TagBlock.BLOBSTORE + 13)
@dataclass(frozen=True, slots=True, kw_only=True)
class GetShardReply:
    found: bool
    blob: bytes = b""
    error: str = ""


# --- the object index protocol (/meshcloud/blob-index/1, blobstore.index) ---------------

Pairs = tuple[tuple[bytes, bytes], ...]


@message(TagBlock.BLOBSTORE + 40)
@dataclass(frozen=True, slots=True, kw_only=True)
class IndexWrite:
    """Merge these writer-stamped entries (key bytes, entry bytes) into ``table``."""

    table: str
    entries: Pairs


@message(TagBlock.BLOBSTORE + 41)
@dataclass(frozen=True, slots=True, kw_only=True)
class IndexWriteReply:
    ok: bool
    error: str = ""


@message(TagBlock.BLOBSTORE + 42)
@dataclass(frozen=True, slots=True, kw_only=True)
class IndexRead:
    table: str
    keys: tuple[bytes, ...]


@message(TagBlock.BLOBSTORE + 43)
@dataclass(frozen=True, slots=True, kw_only=True)
class IndexScan:
    """Stored entries with ``low <= key < high`` (high empty: no bound), tombstones too."""

    table: str
    low: bytes
    high: bytes
    limit: int


@message(TagBlock.BLOBSTORE + 44)
@dataclass(frozen=True, slots=True, kw_only=True)
class IndexEntries:
    """Reply to IndexRead / IndexScan: the entries found; ``truncated``: a scan stopped
    at ``limit`` with more keys in range."""

    entries: Pairs
    truncated: bool = False
    error: str = ""
