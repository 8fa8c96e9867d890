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
