"""The get pipeline: for each chunk in the range, any k shards -> decode -> open -> bytes.

:func:`read_object` is an async generator of plaintext pieces for bytes [start, end) of
an object: one piece per chunk touched, sliced to the range, so a ranged read of 1 byte
costs one chunk's k shards. Per chunk, :func:`gather_chunk` drives a
:class:`~blobstore.fetch.ChunkFetch`: it asks for k shards at once (data shards first),
checks every reply against the manifest (hash and header, in a worker thread), and asks
for another shard for each one that is missing, slow (``shard_timeout``), unreachable or
corrupt. Up to m bad shards per chunk are invisible to the caller; each is reported to
``on_bad_shard`` so repair can rebuild it, and a holder that failed to answer is asked
last for the rest of the read (one dead node costs one timeout per read, not one per
chunk). Fewer than k good shards raise :class:`~blobstore.errors.NotEnoughShards`; a
chunk that decodes but fails to open (wrong key, tampering that kept the hashes right,
i.e. a forged manifest) raises
:class:`~blobstore.errors.IntegrityError`. Nothing unauthenticated is ever yielded.

Use it under ``contextlib.aclosing`` when the consumer may stop early. There is no read
ahead across chunks yet (a generator cannot keep a task running between yields): a
streaming HTTP response that wants one can run :func:`read_chunk` for chunk i+1 while it
sends chunk i.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from blobstore.client import ShardClient
from blobstore.concurrency import open_nursery
from blobstore.crypto import open_chunk
from blobstore.errors import NotEnoughShards
from blobstore.fetch import BadShard, ChunkFetch, verdict
from blobstore.manifest import ChunkRef, Manifest, ShardRef
from meshcloud.bulk import released, run_bulk
from meshcloud.errors import MeshError
from meshcloud.priority import gil_free

log = logging.getLogger(__name__)

BadShardHook = Callable[[BadShard], None]


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    shard_timeout: float = 10.0
    """Seconds to wait for one shard before asking another holder (a phone on 3G
    moves 1 MiB in a few seconds; a dead TCP peer is noticed by the transport sooner)."""

    hedge: int = 0
    """Extra shard requests sent up front to race stragglers (costs 1/k more traffic each)."""

    thread_threshold: int = 64 * 1024
    """Chunks at least this big are checked, decoded and opened in a worker thread."""


async def read_object(
    manifest: Manifest,
    client: ShardClient,
    *,
    start: int = 0,
    end: int | None = None,
    config: ReaderConfig = ReaderConfig(),
    on_bad_shard: BadShardHook | None = None,
) -> AsyncIterator[bytes]:
    """Plaintext of bytes [start, end) (end defaults to the object's size)."""
    end = manifest.size if end is None else end
    unreachable: set[bytes] = set()

    def note(bad: BadShard) -> None:
        if not bad.corrupt:
            unreachable.add(bad.ref.node)
        if on_bad_shard is not None:
            on_bad_shard(bad)

    for chunk, lo, hi in manifest.chunks_in_range(start, end):
        plain = await read_chunk(manifest, chunk, client, config=config, on_bad_shard=note,
                                 avoid=frozenset(unreachable))
        yield plain if (lo, hi) == (0, chunk.length) else plain[lo:hi]


async def read_all(manifest: Manifest, client: ShardClient, **kwargs: object) -> bytes:
    """The whole object (or range) as one bytes value: for tests and small objects."""
    parts = []
    async for piece in read_object(manifest, client, **kwargs):  # type: ignore[arg-type]
        parts.append(piece)
    return b"".join(parts)


async def read_chunk(
    manifest: Manifest, chunk: ChunkRef, client: ShardClient, *,
    config: ReaderConfig = ReaderConfig(), on_bad_shard: BadShardHook | None = None,
    avoid: frozenset[bytes] = frozenset(),
) -> bytes:
    """One chunk's plaintext, authenticated. Nodes in ``avoid`` are asked last."""
    fetch = ChunkFetch(manifest.object_id, manifest.scheme, manifest.k, manifest.m, chunk,
                       hedge=config.hedge, skip=avoid)
    await gather_chunk(fetch, client, config=config, on_bad_shard=on_bad_shard)

    def finish() -> bytes:
        sealed = fetch.decode()
        with gil_free():  # next to a real-time loop, the decryption runs ordinary
            return open_chunk(manifest.key, manifest.object_id, chunk.index, sealed)

    if chunk.sealed_length >= config.thread_threshold:
        return await run_bulk(finish)
    return finish()


async def gather_chunk(
    fetch: ChunkFetch, client: ShardClient, *, config: ReaderConfig = ReaderConfig(),
    on_bad_shard: BadShardHook | None = None,
) -> None:
    """Drive ``fetch`` until it has k good payloads; NotEnoughShards if it cannot."""
    big = fetch.chunk.sealed_length >= config.thread_threshold * fetch.k

    async with open_nursery() as nursery:

        async def get_one(ref: ShardRef) -> None:
            try:
                with trio.fail_after(config.shard_timeout):
                    blob = await client.get_shard(ref.node, ref.shard_id)
            except (MeshError, trio.TooSlowError) as exc:
                reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                more = fetch.on_bad(ref, reason, corrupt=False)
            else:
                if big:
                    payload, reason = await run_bulk(released(verdict), fetch, ref, blob)
                else:
                    payload, reason = verdict(fetch, ref, blob)
                if payload is None:
                    more = fetch.on_bad(ref, reason, corrupt=True)
                else:
                    more = fetch.on_payload(ref, payload)
            for nxt in more:
                nursery.start_soon(get_one, nxt)
            if fetch.done:
                nursery.cancel_scope.cancel()  # hedged stragglers are not needed

        for ref in fetch.start():
            nursery.start_soon(get_one, ref)

    if on_bad_shard is not None:
        for bad in fetch.bad:
            on_bad_shard(bad)
    if not fetch.done:
        raise NotEnoughShards(fetch.failure_reason())
