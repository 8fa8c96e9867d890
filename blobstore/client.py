"""ShardClient: how the put/get pipelines reach a node's shard store.

The pipelines (:mod:`blobstore.writer`, :mod:`blobstore.reader`, :mod:`blobstore.rebuild`)
only need three calls per node, so they depend on this protocol, not on the transport:

* :class:`LocalShardClient` serves nodes whose stores live in this process (a one-node
  mesh; benchmarks; tests on real LMDB);
* :class:`blobstore.service.TransportShardClient` reaches other nodes over
  ``/meshcloud/blob/1`` streams.

There is no delete here on purpose: GC deletes from the node's own store only.

Errors: ``get_shard`` raises :class:`~blobstore.errors.ShardNotFound` when the node does
not have the shard; any :class:`~meshcloud.errors.MeshError` (transport failure, store
full, integrity) means "this node did not do it" and callers try another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from blobstore.shards import ShardId
from blobstore.shardstore import AsyncShardStore, ShardStore
from meshcloud.errors import TransportError

NodeId = bytes


class ShardClient(Protocol):
    async def put_shard(self, node: NodeId, sid: ShardId, blob: bytes) -> None:
        """Store ``blob`` (whose id is ``sid``) on ``node``; idempotent."""
        ...

    async def get_shard(self, node: NodeId, sid: ShardId) -> bytes:
        """The shard's bytes from ``node`` (unchecked: callers verify against ``sid``)."""
        ...


class LocalShardClient:
    """Shard stores of this process, by node id."""

    def __init__(self, stores: Mapping[NodeId, ShardStore | AsyncShardStore]) -> None:
        self.stores = {
            node: s if isinstance(s, AsyncShardStore) else AsyncShardStore(s)
            for node, s in stores.items()
        }

    def _store(self, node: NodeId) -> AsyncShardStore:
        store = self.stores.get(node)
        if store is None:
            raise TransportError(f"node {node.hex()[:12]} is not local")
        return store

    async def put_shard(self, node: NodeId, sid: ShardId, blob: bytes) -> None:
        await self._store(node).put(blob, expect_id=sid)

    async def get_shard(self, node: NodeId, sid: ShardId) -> bytes:
        return await self._store(node).get(sid)
