"""The shard protocol ``/meshcloud/blob/1``: put and get shards on other nodes.

One request per stream (:func:`meshcloud.transport.base.request`): ``PutShard`` ->
``PutShardReply``, ``GetShard`` -> ``GetShardReply``. Every peer behind the transport is a
certified member; still, the holder checks everything it is sent (the shard's id against
its bytes, its header, its size) before storing, and a refusal comes back as a typed
error code the writer acts on (a full holder is skipped for an alternate).

There is deliberately no remote delete: GC runs on each node against its own store
(:mod:`blobstore.gc`), so a compromised member can waste space but never erase shards.

:class:`ShardService` is the holder side (register it on the node's transport);
:class:`TransportShardClient` is the :class:`~blobstore.client.ShardClient` the pipelines
use, with a shortcut to the local store for shards placed on this very node.
"""

from __future__ import annotations

import logging

import trio

from blobstore.errors import (
    BlobstoreError,
    IntegrityError,
    ShardFormatError,
    ShardNotFound,
    StoreFullError,
)
from blobstore.messages import GetShard, GetShardReply, PutShard, PutShardReply
from blobstore.shards import SHARD_ID_SIZE, ShardId
from blobstore.shardstore import AsyncShardStore
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream, Transport, receive_message, request, send_message

log = logging.getLogger(__name__)

PROTOCOL = "/meshcloud/blob/1"

_ERRORS: dict[str, type[BlobstoreError]] = {
    StoreFullError.code: StoreFullError,
    IntegrityError.code: IntegrityError,
    ShardFormatError.code: ShardFormatError,
}


class ShardService:
    """Serves this node's shard store to the mesh."""

    def __init__(self, store: AsyncShardStore) -> None:
        self.store = store
        self.puts = 0
        self.gets = 0
        self.refused = 0

    def register(self, transport: Transport) -> None:
        transport.serve(PROTOCOL, self.handle)

    async def handle(self, stream: Stream) -> None:
        try:
            msg = await receive_message(stream, (PutShard, GetShard))
        except (MeshError, trio.EndOfChannel):
            return
        if isinstance(msg, PutShard):
            reply: PutShardReply | GetShardReply = await self._put(msg)
        else:
            reply = await self._get(msg)
        try:
            await send_message(stream, reply)
            await stream.close()
        except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("shard reply to %s lost: %s", stream.peer.node_id.hex()[:12], exc)

    async def _put(self, msg: PutShard) -> PutShardReply:
        try:
            await self.store.put(msg.blob, expect_id=msg.shard_id)
        except MeshError as exc:
            self.refused += 1
            return PutShardReply(ok=False, code=exc.code, error=str(exc)[:200])
        self.puts += 1
        return PutShardReply(ok=True)

    async def _get(self, msg: GetShard) -> GetShardReply:
        if len(msg.shard_id) != SHARD_ID_SIZE:
            return GetShardReply(found=False, error="bad shard id")
        try:
            blob = await self.store.get(msg.shard_id)
        except ShardNotFound:
            return GetShardReply(found=False)
        except MeshError as exc:
            return GetShardReply(found=False, error=str(exc)[:200])
        self.gets += 1
        return GetShardReply(found=True, blob=blob)


class TransportShardClient:
    """ShardClient over the transport; shards for ``transport.local_id`` go straight to disk."""

    def __init__(self, transport: Transport, local: AsyncShardStore | None = None) -> None:
        self.transport = transport
        self.local = local

    async def put_shard(self, node: bytes, sid: ShardId, blob: bytes) -> None:
        if node == self.transport.local_id and self.local is not None:
            await self.local.put(blob, expect_id=sid)
            return
        reply = await request(self.transport, node, PROTOCOL, PutShard(shard_id=sid, blob=blob),
                              PutShardReply)
        if not reply.ok:
            error = _ERRORS.get(reply.code, BlobstoreError)
            raise error(f"node {node.hex()[:12]} refused shard {sid.hex()[:12]}: {reply.error}")

    async def get_shard(self, node: bytes, sid: ShardId) -> bytes:
        if node == self.transport.local_id and self.local is not None:
            return await self.local.get(sid)
        reply = await request(self.transport, node, PROTOCOL, GetShard(shard_id=sid),
                              GetShardReply)
        if not reply.found:
            raise ShardNotFound(f"node {node.hex()[:12]} has no shard {sid.hex()[:12]}"
                                + (f" ({reply.error})" if reply.error else ""))
        return reply.blob
