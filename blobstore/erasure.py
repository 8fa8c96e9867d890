"""Erasure codes: k data + m parity shards, any k of which rebuild the chunk.

:class:`ZfecCode` is Reed-Solomon over GF(2^8) as implemented by zfec (Rizzo's fec, a
systematic Vandermonde code: shards 0..k-1 are the data itself, k..n-1 parity). A sealed
chunk of ``length`` bytes is cut into k blocks of ``ceil(length / k)`` bytes, the last one
padded with zeros; the padding is not stored anywhere but recomputed from ``length``, which
every shard header records, so decoding is exact for every length including 0.

:class:`ReplicationCode` is the degenerate code k=1: every shard is the whole chunk. Small
meshes use it (:func:`choose_code`): 4+2 needs six distinct nodes, and below that three
plain copies give the same "survive two losses" promise at 3x instead of 1.5x storage.

Both sit behind :class:`ErasureCode`, so the writer, reader and repair never branch on the
scheme. Codes are pure functions of their input (no randomness), which repair relies on:
re-encoding a chunk reproduces byte-identical shards, hence identical shard ids.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

import zfec

from blobstore.errors import IntegrityError, NotEnoughShards

DEFAULT_K = 4
DEFAULT_M = 2
"""4+2: survives any two lost holders at 1.5x storage (Backblaze uses 17+3, Ceph's usual 4+2)."""

DEFAULT_REPLICAS = 3
"""Copies per chunk on meshes too small for 4+2: also survives two lost holders."""

MAX_SHARDS = 32
"""k+m cap: header fields are one byte and nobody runs a wider stripe at home."""


class Scheme(enum.IntEnum):
    """How shards relate to the chunk. Wire values: append-only."""

    REPLICATION = 0
    ZFEC = 1


class ErasureCode(Protocol):
    scheme: Scheme
    k: int
    m: int

    @property
    def n(self) -> int: ...

    def shard_size(self, length: int) -> int:
        """Bytes of each shard's payload for a chunk of ``length`` bytes."""
        ...

    def encode(self, data: bytes) -> list[bytes | memoryview]:
        """All n shard payloads of ``data``, in shard-index order, equal sizes."""
        ...

    def decode(self, shards: Mapping[int, bytes], length: int) -> bytes:
        """The chunk of ``length`` bytes from any k shards (index -> payload)."""
        ...


class ZfecCode:
    """Reed-Solomon k+m via zfec. See the module docstring."""

    scheme = Scheme.ZFEC

    def __init__(self, k: int = DEFAULT_K, m: int = DEFAULT_M) -> None:
        if k < 1 or m < 0 or k + m > MAX_SHARDS:
            raise ValueError(f"need k >= 1, m >= 0, k + m <= {MAX_SHARDS}")
        self.k = k
        self.m = m

    @property
    def n(self) -> int:
        return self.k + self.m

    def __repr__(self) -> str:
        return f"ZfecCode({self.k}+{self.m})"

    def shard_size(self, length: int) -> int:
        return -(-length // self.k)

    def encode(self, data: bytes) -> list[bytes | memoryview]:
        """Data shards are views into ``data`` (no copy; the caller frames them), parity new."""
        size = self.shard_size(len(data))
        view = memoryview(data)
        blocks: list[bytes | memoryview] = [
            view[i * size : (i + 1) * size] for i in range(self.k)
        ]
        if size * self.k != len(data):
            # Only the last block(s) need padding: copy just those.
            for i in range(self.k):
                if len(blocks[i]) < size:
                    blocks[i] = bytes(blocks[i]) + bytes(size - len(blocks[i]))
        parity = (
            zfec.Encoder(self.k, self.n).encode(tuple(blocks), tuple(range(self.k, self.n)))
            if self.m
            else []
        )
        return blocks + list(parity)

    def decode(self, shards: Mapping[int, bytes], length: int) -> bytes:
        size = self.shard_size(length)
        chosen = _choose(shards, self.k, self.n, size)
        if all(i < self.k for i in chosen):
            blocks = [shards[i] for i in range(self.k)]
        else:
            blocks = zfec.Decoder(self.k, self.n).decode(
                tuple(shards[i] for i in chosen), tuple(chosen)
            )
        return b"".join(blocks)[:length]


class ReplicationCode:
    """``copies`` identical shards; any one rebuilds the chunk (k=1, m=copies-1)."""

    scheme = Scheme.REPLICATION
    k = 1

    def __init__(self, copies: int = DEFAULT_REPLICAS) -> None:
        if not 1 <= copies <= MAX_SHARDS:
            raise ValueError(f"copies must be within 1..{MAX_SHARDS}")
        self.m = copies - 1

    @property
    def n(self) -> int:
        return self.m + 1

    def __repr__(self) -> str:
        return f"ReplicationCode({self.n})"

    def shard_size(self, length: int) -> int:
        return length

    def encode(self, data: bytes) -> list[bytes | memoryview]:
        data = bytes(data)
        return [data] * self.n

    def decode(self, shards: Mapping[int, bytes], length: int) -> bytes:
        chosen = _choose(shards, 1, self.n, length)
        return bytes(shards[chosen[0]])


def _choose(shards: Mapping[int, bytes], k: int, n: int, size: int) -> list[int]:
    """k shard indexes to decode from, data shards first (zfec's fast path)."""
    for index, payload in shards.items():
        if not 0 <= index < n:
            raise IntegrityError(f"shard index {index} outside 0..{n - 1}")
        if len(payload) != size:
            raise IntegrityError(
                f"shard {index} holds {len(payload)} bytes, expected {size}"
            )
    if len(shards) < k:
        raise NotEnoughShards(f"need {k} shards to decode, have {len(shards)}")
    return sorted(shards)[:k]


def code_for(scheme: Scheme | int, k: int, m: int) -> ErasureCode:
    """The code a manifest or shard header names."""
    scheme = Scheme(scheme)
    if scheme is Scheme.ZFEC:
        return ZfecCode(k, m)
    if k != 1:
        raise ValueError("replication has k = 1")
    return ReplicationCode(m + 1)


def choose_code(
    node_count: int, *, k: int = DEFAULT_K, m: int = DEFAULT_M, replicas: int = DEFAULT_REPLICAS
) -> ErasureCode:
    """The code for a mesh of ``node_count`` usable nodes.

    k+m needs k+m distinct holders; with fewer nodes, replicate on as many as there are
    (up to ``replicas``). A one-node mesh keeps one copy: there is nowhere else to put one.
    """
    if node_count < 1:
        raise ValueError("no nodes to store on")
    if node_count >= k + m:
        return ZfecCode(k, m)
    return ReplicationCode(min(replicas, node_count))
