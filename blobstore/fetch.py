"""ChunkFetch: gather any k good shards of one chunk, asking for more only on failure.

Sans-IO: the driver (:func:`blobstore.reader.gather_chunk`) sends the requests this core
asks for, checks each reply with :func:`check_shard` (pure, CPU-heavy, so the driver may
run it in a worker thread) and feeds the verdict back. The core:

* starts with the k data shards when it can (zfec's decode is a copy for them), then
  parity shards in index order; ``hedge`` extra requests race stragglers;
* on every failure or bad shard, asks for the next untried shard of the chunk;
* is *done* with k good payloads, *failed* once fewer than k could still arrive;
* remembers every bad shard (:class:`BadShard`) so the reader can report it for repair.

A shard is good only if it hashes to the id the manifest lists and its header names this
object, chunk, index, code and sealed length: a holder cannot substitute another shard,
even one of the same object.
"""

from __future__ import annotations

from dataclasses import dataclass

from blobstore.erasure import Scheme, code_for
from blobstore.errors import IntegrityError, NotEnoughShards
from blobstore.manifest import ChunkRef, ShardRef
from blobstore.shards import ShardHeader, unpack_shard
from meshcloud.errors import MeshError


@dataclass(frozen=True, slots=True)
class BadShard:
    """A shard that was missing, unreachable or corrupt when read."""

    object_id: bytes
    chunk_index: int
    ref: ShardRef
    reason: str
    corrupt: bool
    """True if the holder returned bytes that failed checks (rot or forgery), False if the
    holder failed to answer or did not have the shard."""


def check_shard(
    object_id: bytes, scheme: Scheme, k: int, m: int, chunk: ChunkRef, ref: ShardRef,
    blob: bytes,
) -> bytes:
    """The payload of ``blob`` if it is exactly shard ``ref`` of ``chunk``; else MeshError."""
    header, payload = unpack_shard(blob, expect_id=ref.shard_id)
    want = ShardHeader(object_id, chunk.index, ref.index, scheme, k, m, chunk.sealed_length)
    if header != want:
        raise IntegrityError(f"shard {ref.index} of chunk {chunk.index} has a foreign header")
    return bytes(payload)


class ChunkFetch:
    """See the module docstring."""

    def __init__(
        self, object_id: bytes, scheme: Scheme, k: int, m: int, chunk: ChunkRef,
        *, hedge: int = 0, skip: frozenset[bytes] = frozenset(),
    ) -> None:
        self.object_id = object_id
        self.scheme = scheme
        self.k = k
        self.m = m
        self.chunk = chunk
        self.hedge = hedge
        # Data shards first (cheap decode), then parity; nodes in ``skip`` (known down) last.
        self._queue = sorted(chunk.shards, key=lambda s: (s.node in skip, s.index))
        self._in_flight: set[int] = set()
        self.payloads: dict[int, bytes] = {}
        self.bad: list[BadShard] = []

    @property
    def done(self) -> bool:
        return len(self.payloads) >= self.k

    @property
    def failed(self) -> bool:
        reachable = len(self.payloads) + len(self._in_flight) + len(self._queue)
        return not self.done and reachable < self.k

    def start(self) -> list[ShardRef]:
        """The first requests: k shards (plus ``hedge``), or none if k cannot be reached."""
        if self.failed:
            return []
        return self._more(self.k + self.hedge)

    def on_payload(self, ref: ShardRef, payload: bytes) -> list[ShardRef]:
        self._in_flight.discard(ref.index)
        if not self.done:
            self.payloads[ref.index] = payload
        return []

    def on_bad(self, ref: ShardRef, reason: str, *, corrupt: bool) -> list[ShardRef]:
        self._in_flight.discard(ref.index)
        self.bad.append(BadShard(self.object_id, self.chunk.index, ref, reason, corrupt))
        if self.done:
            return []
        return self._more(self.k - len(self.payloads) - len(self._in_flight))

    def _more(self, count: int) -> list[ShardRef]:
        out = []
        while count > 0 and self._queue:
            ref = self._queue.pop(0)
            self._in_flight.add(ref.index)
            out.append(ref)
            count -= 1
        return out

    def decode(self) -> bytes:
        """The sealed chunk, from the k payloads gathered."""
        if not self.done:
            raise NotEnoughShards(self.failure_reason())
        code = code_for(self.scheme, self.k, self.m)
        return code.decode(self.payloads, self.chunk.sealed_length)

    def failure_reason(self) -> str:
        why = "; ".join(f"shard {b.ref.index}: {b.reason}" for b in self.bad) or "none listed"
        return (
            f"chunk {self.chunk.index}: {len(self.payloads)} good shards of {self.k} needed "
            f"({len(self.chunk.shards)} listed; {why})"
        )


def verdict(
    fetch: ChunkFetch, ref: ShardRef, blob: bytes
) -> tuple[bytes | None, str]:
    """check_shard for a fetch, as (payload, "") or (None, reason)."""
    try:
        return check_shard(fetch.object_id, fetch.scheme, fetch.k, fetch.m, fetch.chunk, ref,
                           blob), ""
    except MeshError as exc:
        return None, str(exc)
