"""In-memory fakes around the unit under test: a mesh of shard stores in dicts."""

from __future__ import annotations

import trio

from blobstore.errors import ShardNotFound, StoreFullError
from blobstore.shards import shard_id
from meshcloud.errors import TransportError


def node(i: int) -> bytes:
    return bytes([i]) * 32


class MemoryShardClient:
    """Nodes as dicts. ``down`` nodes fail every call; ``full`` nodes refuse puts."""

    def __init__(self, nodes: list[bytes]) -> None:
        self.stores: dict[bytes, dict[bytes, bytes]] = {n: {} for n in nodes}
        self.down: set[bytes] = set()
        self.full: set[bytes] = set()
        self.puts = 0
        self.gets = 0

    def _store(self, n: bytes) -> dict[bytes, bytes]:
        if n in self.down or n not in self.stores:
            raise TransportError(f"node {n.hex()[:6]} unreachable")
        return self.stores[n]

    async def put_shard(self, n: bytes, sid: bytes, blob: bytes) -> None:
        await trio.lowlevel.checkpoint()
        store = self._store(n)
        if n in self.full:
            raise StoreFullError("full")
        assert shard_id(blob) == sid, "writer sent a shard under the wrong id"
        self.puts += 1
        store[sid] = bytes(blob)

    async def get_shard(self, n: bytes, sid: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        store = self._store(n)
        self.gets += 1
        try:
            return store[sid]
        except KeyError:
            raise ShardNotFound("no such shard") from None

    def corrupt(self, n: bytes, sid: bytes) -> None:
        blob = bytearray(self.stores[n][sid])
        blob[-1] ^= 0x01
        self.stores[n][sid] = bytes(blob)

    def total_shards(self) -> int:
        return sum(len(s) for s in self.stores.values())


async def source(data: bytes, piece: int = 1000):
    """An async byte source yielding ``data`` in pieces of ``piece`` bytes."""
    for i in range(0, len(data), piece):
        await trio.lowlevel.checkpoint()
        yield data[i : i + piece]
