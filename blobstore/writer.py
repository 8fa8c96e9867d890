"""The put pipeline: chunk, seal, encode, spread; streaming, with bounded memory.

::

    async byte source ─▶ Chunker ─▶ seal (object key, AAD = object id + index)
        ─▶ erasure code (k+m payloads) ─▶ shard header + payload, id = BLAKE2b
        ─▶ put shard i on holder i (distinct nodes; alternates on refusal)
        ─▶ ChunkRef ─▶ ... ─▶ Manifest (size, ETag, key, chunks)

Memory: at most ``chunks_in_flight`` chunks are being sealed or stored at once, each
costing about ``chunk_size * (1 + n/k)`` bytes, plus the chunk being read: 2 x 4 MiB x 2.5
= 20 MiB with the defaults, whatever the object's size.

Acknowledgement: :func:`write_object` returns only after every chunk has ``min_shards``
shards stored (default all k+m, each on a distinct node), so an object whose manifest is
committed survives the loss of any m holders. A shard whose holder refuses (full, down) is
retried on the picker's next node not already holding a shard of that chunk.

Failure leaves no visible object: the manifest is the only way to an object and it is only
returned on success. Shards already stored by a failed put are unreferenced and fall to
GC after its grace period (:mod:`blobstore.gc`). An exception raised by the source (a bad
signature, a wrong Content-MD5) aborts the put the same way.

ETag: the hex MD5 of the plaintext, as S3 computes for a single PUT. Multipart objects get
S3's ``md5(concat(part md5s))-N`` from :mod:`blobstore.s3.multipart`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterable
from dataclasses import dataclass

import nacl.utils
import trio

from blobstore.chunker import DEFAULT_CHUNK_SIZE, chunks
from blobstore.client import ShardClient
from blobstore.concurrency import open_nursery
from blobstore.crypto import new_object_key, seal_chunk
from blobstore.erasure import ErasureCode
from blobstore.errors import WriteFailed
from blobstore.holders import HolderPicker, assign_holders, placement_key
from blobstore.manifest import ChunkRef, Manifest, ShardRef
from blobstore.shards import ShardHeader, pack_shard, shard_id
from meshcloud.bulk import released, run_bulk
from meshcloud.errors import MeshError
from meshcloud.priority import gil_free

log = logging.getLogger(__name__)

OBJECT_ID_SIZE = 16


def new_object_id() -> bytes:
    """128 random bits: unique without coordination."""
    return nacl.utils.random(OBJECT_ID_SIZE)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Plaintext bytes per chunk (4 MiB, see :mod:`blobstore.chunker`)."""

    chunks_in_flight: int = 2
    """Chunks being sealed/stored concurrently: 2 overlaps CPU work with the network."""

    puts_in_flight: int = 8
    """Shard puts in flight per object (k+m of one chunk plus a few of the next)."""

    spare_holders: int = 3
    """Alternate holders per chunk tried when a holder refuses a shard."""

    min_shards: int | None = None
    """Shards per chunk that must be stored for the put to succeed; None means all k+m.
    Lower it (never below k) only to accept writes while holders are down; repair then
    has to catch up before the object can lose one more holder."""

    thread_threshold: int = 64 * 1024
    """Chunks at least this big are hashed, sealed and coded in a worker thread."""

    put_timeout: float = 30.0
    """Seconds one shard put may take before its holder counts as refusing (a phone on a
    slow uplink moves a 1 MiB shard in a few seconds; a hung peer must not stall a put)."""

    def __post_init__(self) -> None:
        if self.chunks_in_flight < 1 or self.puts_in_flight < 1 or self.spare_holders < 0:
            raise ValueError("writer limits must be positive")


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    index: int
    length: int
    sealed_length: int
    blobs: list[bytes]
    ids: list[bytes]


def prepare_chunk(
    code: ErasureCode, key: bytes, object_id: bytes, index: int, plain: bytes
) -> PreparedChunk:
    """Seal, encode and frame one chunk (pure CPU work; the sealing, coding and hashing
    run ordinary next to a real-time loop: :func:`meshcloud.priority.gil_free`)."""
    with gil_free():
        sealed = seal_chunk(key, object_id, index, plain)
    header = ShardHeader(object_id, index, 0, code.scheme, code.k, code.m, len(sealed))
    with gil_free():
        parts = code.encode(sealed)
    blobs = [pack_shard(header.for_shard(i), p) for i, p in enumerate(parts)]
    with gil_free():
        ids = [shard_id(b) for b in blobs]
    return PreparedChunk(index, len(plain), len(sealed), blobs, ids)


async def write_object(
    source: AsyncIterable[bytes],
    *,
    client: ShardClient,
    picker: HolderPicker,
    code: ErasureCode,
    config: WriterConfig = WriterConfig(),
    object_id: bytes | None = None,
    key: bytes | None = None,
    first_chunk_index: int = 0,
) -> Manifest:
    """Store everything ``source`` yields; return the object's manifest (see module doc)."""
    object_id = object_id or new_object_id()
    key = key or new_object_key()
    need = code.n if config.min_shards is None else config.min_shards
    if not code.k <= need <= code.n:
        raise ValueError(f"min_shards must be within k..k+m ({code.k}..{code.n})")
    md5 = hashlib.md5()
    size = 0
    refs: dict[int, ChunkRef] = {}
    slots = trio.Semaphore(config.chunks_in_flight)
    puts = trio.CapacityLimiter(config.puts_in_flight)

    async def store_chunk(position: int, plain: bytes) -> None:
        try:
            index = first_chunk_index + position
            if len(plain) >= config.thread_threshold:
                prepared = await run_bulk(prepare_chunk, code, key, object_id, index, plain)
            else:
                prepared = prepare_chunk(code, key, object_id, index, plain)
            del plain
            refs[position] = await spread_chunk(prepared, object_id, client, picker, code, config,
                                           need, puts)
        finally:
            slots.release()

    async with open_nursery() as nursery:
        position = 0
        async for plain in chunks(source, config.chunk_size):
            if len(plain) >= config.thread_threshold:
                await run_bulk(released(md5.update), plain)
            else:
                md5.update(plain)
            size += len(plain)
            await slots.acquire()
            nursery.start_soon(store_chunk, position, plain)
            position += 1
            del plain
    return Manifest(
        object_id=object_id, size=size, etag=md5.hexdigest(), scheme=code.scheme, k=code.k,
        m=code.m, key=key, chunks=tuple(refs[i] for i in range(position)),
    )


async def spread_chunk(
    prepared: PreparedChunk, object_id: bytes, client: ShardClient, picker: HolderPicker,
    code: ErasureCode, config: WriterConfig, need: int, puts: trio.CapacityLimiter,
) -> ChunkRef:
    """Put each shard on its own holder, moving to alternates on refusal."""
    nodes = assign_holders(picker, placement_key(object_id, prepared.index), code.n,
                           spares=config.spare_holders)
    spares = deque(nodes[code.n:])
    stored: dict[int, ShardRef] = {}
    errors: list[str] = []

    async def put_one(i: int, node: bytes) -> None:
        while True:
            try:
                async with puts:
                    with trio.fail_after(config.put_timeout):
                        await client.put_shard(node, prepared.ids[i], prepared.blobs[i])
            except (MeshError, trio.TooSlowError) as exc:
                why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                errors.append(f"shard {i} on {node.hex()[:12]}: {why}")
                if not spares:
                    return
                node = spares.popleft()
                continue
            stored[i] = ShardRef(index=i, shard_id=prepared.ids[i], node=node)
            return

    async with open_nursery() as nursery:
        for i in range(code.n):
            nursery.start_soon(put_one, i, nodes[i])
    if errors:
        log.info("object %s chunk %d: %s", object_id.hex()[:12], prepared.index,
                 "; ".join(errors))
    if len(stored) < need:
        raise WriteFailed(
            f"chunk {prepared.index}: stored {len(stored)} of {need} shards needed "
            f"({'; '.join(errors[-3:])})"
        )
    return ChunkRef(index=prepared.index, length=prepared.length,
                    sealed_length=prepared.sealed_length,
                    shards=tuple(stored[i] for i in sorted(stored)))
