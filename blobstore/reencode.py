"""Re-encode an object under another code: what raises an object to its target layout.

One chunk at a time: any k shards of the current layout are fetched and decoded into the
sealed chunk (no key needed: the sealed bytes do not change, nor does the chunk's AAD
index or the object id), coded with the new code and put on the new code's n holders
(:func:`blobstore.writer.spread_chunk`: the nodes a fresh write would choose, alternates on
refusal). Memory: one sealed chunk and its shards, about ``chunk_size * (1 + n/k)``.

It returns the new manifest only when *every* chunk has all n new shards stored; the
caller then writes it to the index (:func:`blobstore.maintenance.write_repaired`). Until
that write the old layout is what the index points at and stays complete; once it is
written the old shards are unreferenced and GC removes them on each holder
(:mod:`blobstore.gc`). A failure part way leaves new shards nobody references (GC again)
and the object as it was.
"""

from __future__ import annotations

import dataclasses

import trio

from blobstore.client import ShardClient
from blobstore.erasure import ErasureCode
from blobstore.fetch import ChunkFetch
from blobstore.holders import HolderPicker
from blobstore.manifest import ChunkRef, Manifest
from blobstore.reader import ReaderConfig, gather_chunk
from blobstore.shards import ShardHeader, pack_shard, shard_id
from blobstore.writer import PreparedChunk, WriterConfig, spread_chunk


def encode_sealed(code: ErasureCode, object_id: bytes, chunk: ChunkRef, sealed: bytes
                  ) -> PreparedChunk:
    """The new code's framed shards of one sealed chunk (pure CPU work)."""
    header = ShardHeader(object_id, chunk.index, 0, code.scheme, code.k, code.m, len(sealed))
    blobs = [pack_shard(header.for_shard(i), p) for i, p in enumerate(code.encode(sealed))]
    return PreparedChunk(chunk.index, chunk.length, len(sealed), blobs,
                     [shard_id(b) for b in blobs])


async def reencode_object(
    manifest: Manifest, code: ErasureCode, *, client: ShardClient, picker: HolderPicker,
    writer: WriterConfig = WriterConfig(), reader: ReaderConfig = ReaderConfig(),
) -> Manifest:
    """``manifest``'s object stored under ``code``; see the module docstring. Raises
    NotEnoughShards (a chunk cannot be read) or WriteFailed (holders refused)."""
    puts = trio.CapacityLimiter(writer.puts_in_flight)
    chunks = []
    for chunk in manifest.chunks:
        fetch = ChunkFetch(manifest.object_id, manifest.scheme, manifest.k, manifest.m, chunk)
        await gather_chunk(fetch, client, config=reader)
        prepared = await trio.to_thread.run_sync(
            lambda fetch=fetch, chunk=chunk: encode_sealed(code, manifest.object_id, chunk,
                                                           fetch.decode()))
        del fetch
        chunks.append(await spread_chunk(prepared, manifest.object_id, client, picker, code,
                                         writer, code.n, puts))
        del prepared
    return dataclasses.replace(manifest, scheme=code.scheme, k=code.k, m=code.m,
                               chunks=tuple(chunks))
