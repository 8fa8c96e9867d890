"""Carry out one :class:`~blobstore.repair.RebuildChunk`: fetch k, re-encode, put the rest.

No key is needed: the sealed chunk is rebuilt from any k shards and re-encoded, and since
codes are deterministic each rebuilt shard is byte-identical to the lost one, with the
same id (checked: a mismatch means the manifest and the shards disagree and the shard is
not stored). Each target gets its shard independently; the ones that fail are simply
absent from the result, and the next planning round tries again.
"""

from __future__ import annotations

import logging

import trio

from blobstore.client import ShardClient
from blobstore.concurrency import open_nursery
from blobstore.erasure import code_for
from blobstore.errors import IntegrityError
from blobstore.fetch import ChunkFetch
from blobstore.manifest import ChunkRef, ShardRef
from blobstore.reader import BadShardHook, ReaderConfig, gather_chunk
from blobstore.repair import RebuildChunk
from blobstore.shards import ShardHeader, pack_shard, shard_id
from meshcloud.errors import MeshError

log = logging.getLogger(__name__)


def reencode(task: RebuildChunk, sealed: bytes) -> dict[int, bytes]:
    """The encoded shards for every target index of ``task``, checked against their ids."""
    code = code_for(task.scheme, task.k, task.m)
    payloads = code.encode(sealed)
    header = ShardHeader(task.object_id, task.chunk.index, 0, task.scheme, task.k, task.m,
                         task.chunk.sealed_length)
    out = {}
    for index, _node in task.targets:
        blob = pack_shard(header.for_shard(index), payloads[index])
        listed = task.chunk.shard(index)
        if listed is not None and listed.shard_id != shard_id(blob):
            raise IntegrityError(
                f"chunk {task.chunk.index}: rebuilt shard {index} does not match its listed id"
            )
        out[index] = blob
    return out


async def rebuild_chunk(
    task: RebuildChunk, client: ShardClient, *, config: ReaderConfig = ReaderConfig(),
    on_bad_shard: BadShardHook | None = None, avoid: frozenset[bytes] = frozenset(),
) -> list[ShardRef]:
    """Rebuild ``task``'s missing shards on its targets; returns the refs now stored.
    Shards on ``avoid`` nodes (metered links) are read only when the others fall short."""
    sources = ChunkRef(index=task.chunk.index, length=task.chunk.length,
                       sealed_length=task.chunk.sealed_length, shards=task.sources)
    fetch = ChunkFetch(task.object_id, task.scheme, task.k, task.m, sources, skip=avoid)
    await gather_chunk(fetch, client, config=config, on_bad_shard=on_bad_shard)
    blobs = await trio.to_thread.run_sync(lambda: reencode(task, fetch.decode()))
    stored: list[ShardRef] = []

    async def put(index: int, node: bytes) -> None:
        blob = blobs[index]
        sid = shard_id(blob)
        try:
            with trio.fail_after(config.shard_timeout * 3):
                await client.put_shard(node, sid, blob)
        except (MeshError, trio.TooSlowError) as exc:
            log.info("rebuild of chunk %d shard %d on %s failed: %s", task.chunk.index, index,
                     node.hex()[:12], exc)
            return
        stored.append(ShardRef(index=index, shard_id=sid, node=node))

    async with open_nursery() as nursery:
        for index, node in task.targets:
            nursery.start_soon(put, index, node)
    return sorted(stored, key=lambda r: r.index)
