"""The manifest: everything needed to read an object back, and nothing a holder has.

A :class:`Manifest` is what the object index stores for a (bucket, key, version): size,
ETag, the object key, the code, and for every chunk its length and where each of its
shards lives (:class:`ChunkRef`, :class:`ShardRef`). Shard holders never see it; whoever
can read the manifest can read the object, so the index is cluster metadata, replicated
only among members.

Invariants (checked when built or decoded, so a manifest off the wire is as sound as one
built here): ``size`` is the sum of chunk lengths; every chunk's sealed length is its
length plus the AEAD overhead; a chunk's shard indexes are distinct and < k+m; chunk
indexes (the AAD index of :mod:`blobstore.crypto`) are distinct. A chunk may list fewer
than k+m shards (a degraded write or a lost holder); repair adds them back.

Chunk indexes need not be 0..N-1: a multipart object keeps each part's chunks under
``part_number << PART_INDEX_SHIFT``, so parts written separately concatenate unchanged.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from blobstore.crypto import KEY_SIZE, SEAL_OVERHEAD
from blobstore.erasure import MAX_SHARDS, Scheme
from blobstore.shards import MAX_OBJECT_ID, SHARD_ID_SIZE, ShardId
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

NodeId = bytes

PART_INDEX_SHIFT = 20
"""Chunk index = part number << 20 | chunk within part: 2^20 chunks (4 TiB) per part."""


@message(TagBlock.BLOBSTORE + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class ShardRef:
    """Shard ``index`` of a chunk: its content id and the node that holds it."""

    index: int
    shard_id: ShardId
    node: NodeId

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_SHARDS:
            raise ValueError(f"shard index {self.index} out of range")
        if len(self.shard_id) != SHARD_ID_SIZE:
            raise ValueError("shard id must be 32 bytes")
        if not 0 < len(self.node) <= 64:
            raise ValueError("node id must be 1..64 bytes")


@message(TagBlock.BLOBSTORE + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRef:
    """One chunk: its AAD index, plaintext and sealed lengths, and its shards."""

    index: int
    length: int
    sealed_length: int
    shards: tuple[ShardRef, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.index < 2**64:
            raise ValueError("chunk index out of range")
        if self.length < 0 or self.sealed_length != self.length + SEAL_OVERHEAD:
            raise ValueError("chunk lengths do not add up")
        indexes = [s.index for s in self.shards]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"chunk {self.index} lists a shard index twice")

    def shard(self, index: int) -> ShardRef | None:
        for ref in self.shards:
            if ref.index == index:
                return ref
        return None

    def holders(self) -> set[NodeId]:
        return {s.node for s in self.shards}


@message(TagBlock.BLOBSTORE + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """An object's layout and key. See the module docstring."""

    object_id: bytes
    size: int
    etag: str
    scheme: Scheme
    k: int
    m: int
    key: bytes = field(repr=False)
    chunks: tuple[ChunkRef, ...]
    part_sizes: tuple[int, ...] = ()
    """Multipart objects: each part's size, in order (for GET ?partNumber=)."""

    def __post_init__(self) -> None:
        if not 0 < len(self.object_id) <= MAX_OBJECT_ID:
            raise ValueError(f"object id must be 1..{MAX_OBJECT_ID} bytes")
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"object key must be {KEY_SIZE} bytes")
        if self.k < 1 or self.m < 0 or self.k + self.m > MAX_SHARDS:
            raise ValueError("bad code parameters")
        if self.scheme is Scheme.REPLICATION and self.k != 1:
            raise ValueError("replication has k = 1")
        if sum(c.length for c in self.chunks) != self.size:
            raise ValueError("object size is not the sum of its chunk lengths")
        if self.part_sizes and sum(self.part_sizes) != self.size:
            raise ValueError("part sizes do not add up to the object size")
        if len({c.index for c in self.chunks}) != len(self.chunks):
            raise ValueError("a chunk index appears twice")
        n = self.k + self.m
        for chunk in self.chunks:
            if any(s.index >= n for s in chunk.shards):
                raise ValueError(f"chunk {chunk.index} has a shard index >= k+m")

    @property
    def n(self) -> int:
        return self.k + self.m

    def chunk_starts(self) -> list[int]:
        """Plaintext offset of each chunk, in order."""
        starts, offset = [], 0
        for chunk in self.chunks:
            starts.append(offset)
            offset += chunk.length
        return starts

    def chunks_in_range(self, start: int, end: int) -> list[tuple[ChunkRef, int, int]]:
        """The chunks covering bytes [start, end), each with the slice [lo, hi) of it needed."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"range {start}..{end} outside 0..{self.size}")
        if start == end:
            return []
        starts = self.chunk_starts()
        out = []
        i = bisect.bisect_right(starts, start) - 1
        while i < len(self.chunks) and starts[i] < end:
            chunk = self.chunks[i]
            lo = max(start - starts[i], 0)
            hi = min(end - starts[i], chunk.length)
            if hi > lo:
                out.append((chunk, lo, hi))
            i += 1
        return out

    def shard_refs(self) -> Iterator[tuple[ChunkRef, ShardRef]]:
        for chunk in self.chunks:
            for ref in chunk.shards:
                yield chunk, ref

    def with_shards(self, chunk_index: int, refs: list[ShardRef]) -> Manifest:
        """A copy where chunk ``chunk_index`` lists ``refs`` in place of same-index shards."""
        replaced = {r.index: r for r in refs}
        chunks = []
        found = False
        for chunk in self.chunks:
            if chunk.index == chunk_index:
                found = True
                kept = [s for s in chunk.shards if s.index not in replaced]
                shards = tuple(sorted(kept + list(replaced.values()), key=lambda s: s.index))
                chunk = dataclasses.replace(chunk, shards=shards)
            chunks.append(chunk)
        if not found:
            raise KeyError(f"no chunk {chunk_index} in this manifest")
        return dataclasses.replace(self, chunks=tuple(chunks))
