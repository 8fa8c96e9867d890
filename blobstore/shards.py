"""Shards on disk and on the wire: a small versioned header, then the payload.

A shard is self-describing, so a node (or a repair worker) that holds any k shards of a
chunk can rebuild the others without the manifest or the key::

    offset size  field
    0      4     magic  b"MCSH"
    4      1     header version (1)
    5      1     scheme (:class:`~blobstore.erasure.Scheme`)
    6      1     k
    7      1     m
    8      1     shard index (0..k+m-1)
    9      1     object id length L (1..64)
    10     L     object id
    10+L   8     chunk index (u64 BE)
    18+L   8     chunk length: bytes of the sealed chunk before padding (u64 BE)
    26+L   ...   payload: exactly shard_size(chunk length) bytes

The :data:`ShardId` is the BLAKE2b-256 of the *whole* shard (header and payload): shards
are content-addressed, so a store checks what it is given, a reader checks what it got,
and a scrubber finds rot by re-hashing, all without any key. Because the header names the
object and position, two different shards never share an id, and because codes are
deterministic, a rebuilt shard has exactly the id of the one it replaces.

Version rules: a decoder refuses any version it does not know (one clear error); a new
version may add fields after the chunk length and bumps the version byte.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from blobstore.erasure import MAX_SHARDS, Scheme, code_for
from blobstore.errors import IntegrityError, ShardFormatError

ShardId = bytes
"""32 bytes: BLAKE2b-256 of the encoded shard."""

SHARD_ID_SIZE = 32
MAGIC = b"MCSH"
HEADER_VERSION = 1
MAX_OBJECT_ID = 64
MAX_CHUNK_LENGTH = 1 << 32
"""4 GiB: a sealed chunk is held in memory; anything bigger in a header is garbage."""

_FIXED = struct.Struct(">4sBBBBBB")  # magic, version, scheme, k, m, shard index, id length
_TAIL = struct.Struct(">QQ")  # chunk index, chunk length


def shard_id(blob: bytes | memoryview) -> ShardId:
    """The content address of an encoded shard."""
    return hashlib.blake2b(blob, digest_size=SHARD_ID_SIZE).digest()


@dataclass(frozen=True, slots=True)
class ShardHeader:
    object_id: bytes
    chunk_index: int
    shard_index: int
    scheme: Scheme
    k: int
    m: int
    chunk_length: int

    def __post_init__(self) -> None:
        if not 0 < len(self.object_id) <= MAX_OBJECT_ID:
            raise ShardFormatError(f"object id must be 1..{MAX_OBJECT_ID} bytes")
        if self.k < 1 or self.m < 0 or self.k + self.m > MAX_SHARDS:
            raise ShardFormatError(f"bad code parameters k={self.k} m={self.m}")
        if self.scheme is Scheme.REPLICATION and self.k != 1:
            raise ShardFormatError("replication shards have k = 1")
        if not 0 <= self.shard_index < self.k + self.m:
            raise ShardFormatError(f"shard index {self.shard_index} outside 0..{self.n - 1}")
        if not 0 <= self.chunk_index < 2**64:
            raise ShardFormatError("chunk index out of range")
        if not 0 <= self.chunk_length <= MAX_CHUNK_LENGTH:
            raise ShardFormatError(f"chunk length {self.chunk_length} out of range")

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def payload_size(self) -> int:
        return code_for(self.scheme, self.k, self.m).shard_size(self.chunk_length)

    def encode(self) -> bytes:
        return (
            _FIXED.pack(MAGIC, HEADER_VERSION, self.scheme, self.k, self.m, self.shard_index,
                        len(self.object_id))
            + self.object_id
            + _TAIL.pack(self.chunk_index, self.chunk_length)
        )

    def for_shard(self, shard_index: int) -> ShardHeader:
        """The header of a sibling shard (same chunk, another index)."""
        return ShardHeader(self.object_id, self.chunk_index, shard_index, self.scheme, self.k,
                           self.m, self.chunk_length)

    def same_chunk(self, other: ShardHeader) -> bool:
        return (self.object_id, self.chunk_index, self.scheme, self.k, self.m,
                self.chunk_length) == (other.object_id, other.chunk_index, other.scheme,
                                       other.k, other.m, other.chunk_length)


def pack_shard(header: ShardHeader, payload: bytes | memoryview) -> bytes:
    """Header + payload; the payload must have the size the header implies."""
    if len(payload) != header.payload_size:
        raise ShardFormatError(
            f"payload of {len(payload)} bytes, header implies {header.payload_size}"
        )
    return b"".join((header.encode(), payload))  # one copy, payload may be a view


def parse_header(head: bytes | memoryview) -> ShardHeader:
    """The header of a shard from its first bytes (no payload, no id check)."""
    view = memoryview(head)
    if len(view) < _FIXED.size:
        raise ShardFormatError("too few bytes for a shard header")
    magic, version, scheme, k, m, index, id_len = _FIXED.unpack_from(view)
    if magic != MAGIC or version != HEADER_VERSION:
        raise ShardFormatError("not a shard header of a known version")
    start = _FIXED.size
    if len(view) < start + id_len + _TAIL.size:
        raise ShardFormatError("shard header truncated")
    chunk_index, chunk_length = _TAIL.unpack_from(view, start + id_len)
    try:
        return ShardHeader(bytes(view[start:start + id_len]), chunk_index, index,
                           Scheme(scheme), k, m, chunk_length)
    except ValueError:
        raise ShardFormatError(f"unknown shard scheme {scheme}") from None


def unpack_shard(
    blob: bytes | memoryview, *, expect_id: ShardId | None = None
) -> tuple[ShardHeader, memoryview]:
    """Parse (and, given ``expect_id``, authenticate) a shard. Every failure is one error."""
    view = memoryview(blob)
    if expect_id is not None and shard_id(view) != expect_id:
        raise IntegrityError(f"shard {expect_id.hex()[:16]}: content does not match its id")
    if len(view) < _FIXED.size:
        raise ShardFormatError(f"shard of {len(view)} bytes is shorter than any header")
    magic, version, scheme, k, m, index, id_len = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise ShardFormatError("not a shard (bad magic)")
    if version != HEADER_VERSION:
        raise ShardFormatError(f"shard header version {version} is not supported")
    start = _FIXED.size
    if len(view) < start + id_len + _TAIL.size:
        raise ShardFormatError("shard truncated inside its header")
    object_id = bytes(view[start : start + id_len])
    chunk_index, chunk_length = _TAIL.unpack_from(view, start + id_len)
    try:
        header = ShardHeader(object_id, chunk_index, index, Scheme(scheme), k, m, chunk_length)
    except ValueError:
        raise ShardFormatError(f"unknown shard scheme {scheme}") from None
    payload = view[start + id_len + _TAIL.size :]
    if len(payload) != header.payload_size:
        raise ShardFormatError(
            f"shard payload of {len(payload)} bytes, header implies {header.payload_size}"
        )
    return header, payload
