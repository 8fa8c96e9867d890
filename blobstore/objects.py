"""ObjectStore: buckets and objects, on the index and the shard pipelines.

What the S3 app, the agent API and the CLI call. One method per operation; every S3
error a client can cause is raised here as the S3 error it maps to.

**A PUT** (:meth:`ObjectStore.put`), in order:

1. the object's :class:`~blobstore.records.BlobRef` (object id -> bucket, key) is written
   on a quorum *while* the bytes stream into shards (:func:`blobstore.writer.write_object`:
   every chunk on k+m distinct nodes); both must succeed;
2. only then the :class:`~blobstore.records.ObjectRecord` (with the manifest) is written
   on a quorum of the bucket's index holders: that write is the acknowledgement.

A source that raises (bad signature, wrong Content-MD5, truncated body) stops the put
before step 2: nothing becomes visible, and the shards already stored are unreferenced,
so GC takes them after the grace period. Because the BlobRef is durable before the record
exists, GC can always find the owner of a shard it is about to judge.

**Erasure code** per bucket (``BucketRecord.code``): automatic by default, i.e. 4+2 once
at least 6 nodes are live, else min(3, live) plain copies (:func:`blobstore.erasure.choose_code`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import trio

from blobstore.client import ShardClient
from blobstore.concurrency import open_nursery
from blobstore.erasure import ErasureCode, ReplicationCode, Scheme, ZfecCode, choose_code
from blobstore.fetch import BadShard
from blobstore.index import MISSING, Found, Index, Missing
from blobstore.manifest import Manifest
from blobstore.picker import PlacementPicker
from blobstore.reader import ReaderConfig, read_object
from blobstore.records import (
    BLOBREFS,
    BUCKETS,
    INLINE_MAX,
    OBJECTS,
    BlobRef,
    BucketRecord,
)
from blobstore.records import ObjectRecord as ObjectRecord
from blobstore.s3.errors import (
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    InvalidArgument,
    NoSuchBucket,
    NoSuchKey,
)
from blobstore.s3.names import validate_bucket_name
from blobstore.sortkeys import sort_key
from blobstore.writer import WriterConfig, new_object_id, write_object
from meshcloud.codec import cbor
from meshcloud.state.driver import StateDriver
from meshcloud.state.keys import encode_key, prefix_end

log = logging.getLogger(__name__)

_CODE = re.compile(r"^(?:(\d{1,2})\+(\d{1,2})|r(\d{1,2}))$")

BadShardHook = Callable[[BadShard], None]


def parse_code(text: str) -> tuple[int, int] | int | None:
    """"" -> None (automatic); "k+m" -> (k, m); "rN" -> N copies. ValueError otherwise."""
    if not text:
        return None
    match = _CODE.match(text)
    if match is None:
        raise ValueError(f"erasure code {text!r} is not k+m (like 4+2) or rN (like r3)")
    if match.group(3):
        copies = int(match.group(3))
        ReplicationCode(copies)
        return copies
    k, m = int(match.group(1)), int(match.group(2))
    ZfecCode(k, m)
    return k, m



def bucket_id_for(name: str, generation: int = 0) -> bytes:
    """The id of generation ``generation`` of bucket ``name`` (its ``generation``-th life
    after as many deletions): the same on every node, from the name and the generation
    alone. Names never hold a NUL, so no two (name, generation) share an input."""
    data = name.encode() if generation == 0 else f"{name}\x00{generation}".encode()
    return hashlib.blake2b(data, digest_size=16, person=b"mc-svc-bucket").digest()


def service_bucket_id(name: str) -> bytes:
    """The id of a service's bucket in its first life (as :func:`bucket_id_for`)."""
    return bucket_id_for(name, 0)


class ObjectStore:
    """See the module docstring."""

    def __init__(self, state: StateDriver, index: Index, client: ShardClient,
                 picker: PlacementPicker, *, wall_ms: Callable[[], int],
                 writer: WriterConfig = WriterConfig(), reader: ReaderConfig = ReaderConfig(),
                 on_bad_shard: BadShardHook | None = None,
                 emit: Callable[..., Any] | None = None) -> None:
        self.state = state
        self.index = index
        self.client = client
        self.picker = picker
        self.wall_ms = wall_ms
        self.writer = writer
        self.reader = reader
        self.on_bad_shard = on_bad_shard
        self.emit = emit
        """The node's event feed (``emit(kind, **facts)``), for ``object.put``."""
        self.puts = 0
        self.gets = 0
        self.bytes_moved = 0
        """Object bytes stored and read through this node (see :mod:`blobstore.memory`)."""

    # --- buckets (full copy: local reads) -------------------------------------------------

    def find_bucket(self, name: str) -> BucketRecord | None:
        """The live bucket ``name`` as this node knows it (None: none, or deleted)."""
        record: BucketRecord | None = self.state.get(BUCKETS.name, name)
        return None if record is None or record.deleted else record

    def bucket(self, name: str) -> BucketRecord:
        record = self.find_bucket(name)
        if record is None:
            raise NoSuchBucket(BucketName=name)
        return record

    def buckets(self) -> list[tuple[str, BucketRecord]]:
        return [(str(key[0]), value) for key, value in self.state.scan(BUCKETS.name)
                if value is not None and not value.deleted]

    async def create_bucket(self, name: str, *, code: str = "",
                            owner: str = "") -> BucketRecord:
        """A new bucket, or BucketAlreadyOwnedByYou if this node knows one of the name.

        Two nodes may create the same bucket at once (two CreateBucket calls at the same
        moment, or on both sides of a partition); their rows then merge to one, last
        writer wins. So that no object written under the losing row is out of sight, the
        id does not come from chance but from (name, generation), the generation being
        one more than that of the last deletion this node knows of the name: both rows
        carry the same id, whichever wins. A deletion keeps a row with its generation
        (:meth:`delete_bucket`), so a bucket made again takes a new id and never shows
        the objects of its earlier life."""
        validate_bucket_name(name)
        try:
            parse_code(code)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        known: BucketRecord | None = self.state.get(BUCKETS.name, name)
        if known is not None and not known.deleted:
            raise BucketAlreadyOwnedByYou(BucketName=name)
        generation = 0 if known is None else known.generation + 1
        record = BucketRecord(bucket_id=bucket_id_for(name, generation),
                              created_ms=self.wall_ms(), code=code, owner=owner,
                              generation=generation)
        await self.index.put_everywhere(BUCKETS.name, (name,), record)
        return record

    async def ensure_service_bucket(self, name: str, *, code: str = "") -> BucketRecord:
        """The bucket a service keeps its own objects in (database backups, sites, Spark's
        recovery state and logs), made if missing. Services on several nodes make it at
        once when they start: as for any bucket (:meth:`create_bucket`) its id comes from
        its name and generation, so whichever row wins, every node writes and reads under
        the same id."""
        try:
            return self.bucket(name)
        except NoSuchBucket:
            pass
        try:
            return await self.create_bucket(name, code=code)
        except BucketAlreadyOwnedByYou:
            return self.bucket(name)

    async def delete_bucket(self, name: str) -> None:
        """Refused while it holds objects; leaves a row marked deleted that keeps the
        generation (see :meth:`create_bucket`)."""
        bucket = self.bucket(name)
        for table in (OBJECTS.name,):
            low = encode_key((bucket.bucket_id,))
            rows, _ = await self.index.scan(table, (bucket.bucket_id,), low, prefix_end(low),
                                            limit=50)
            if any(row.value is not None for row in rows):
                raise BucketNotEmpty(BucketName=name)
        gone = BucketRecord(bucket_id=bucket.bucket_id, created_ms=self.wall_ms(),
                            owner=bucket.owner, generation=bucket.generation, deleted=True)
        await self.index.put_everywhere(BUCKETS.name, (name,), gone)

    def code_for(self, bucket: BucketRecord) -> ErasureCode:
        explicit = self.explicit_code(bucket)
        return explicit or choose_code(max(1, self.picker.live_count()))

    @staticmethod
    def explicit_code(bucket: BucketRecord) -> ErasureCode | None:
        """The bucket's own code, or None when it is automatic."""
        chosen = parse_code(bucket.code)
        if chosen is None:
            return None
        if isinstance(chosen, int):
            return ReplicationCode(chosen)
        return ZfecCode(*chosen)

    # --- objects --------------------------------------------------------------------------

    async def head(self, bucket_name: str, key: str) -> ObjectRecord:
        bucket = self.bucket(bucket_name)
        found = await self.index.get(OBJECTS.name, (bucket.bucket_id, sort_key(key)))
        if found is None or found.value is None:
            raise NoSuchKey(Key=key[:1024])
        return found.value  # type: ignore[no-any-return]

    async def find(self, bucket_name: str, key: str) -> ObjectRecord | None:
        try:
            return await self.head(bucket_name, key)
        except NoSuchKey:
            return None

    async def put(self, bucket_name: str, key: str, source: AsyncIterable[bytes], *,
                  content_type: str = "binary/octet-stream",
                  metadata: dict[str, str] | None = None,
                  precheck: Callable[[ObjectRecord | None], Any] | None = None,
                  size_hint: int | None = None) -> ObjectRecord:
        """Store an object (see the module docstring); returns its record once
        acknowledged. ``precheck`` runs on the current record just before the commit
        (conditional PUTs: If-None-Match / If-Match) and may raise."""
        bucket = self.bucket(bucket_name)
        if size_hint is not None and size_hint <= INLINE_MAX:
            return await self._put_inline(bucket, bucket_name, key, source,
                                          content_type=content_type, metadata=metadata,
                                          precheck=precheck)
        code = self.code_for(bucket)
        object_id = new_object_id()
        sk = sort_key(key)
        manifest: list[Manifest] = []

        async def shards() -> None:
            manifest.append(await write_object(source, client=self.client, picker=self.picker,
                                               code=code, config=self.writer,
                                               object_id=object_id))

        current: list[Found | None] = []

        async def read_current() -> None:  # what this put replaces, read while it streams
            current.append(await self.current(bucket, key))

        async with open_nursery() as nursery:
            nursery.start_soon(shards)
            nursery.start_soon(self._write_ref, object_id,
                               BlobRef(bucket_id=bucket.bucket_id, sort_key=sk))
            if precheck is None:
                nursery.start_soon(read_current)
        record = ObjectRecord(key=key, manifest=manifest[0], content_type=content_type,
                              metadata=dict(metadata or {}), modified_ms=self.wall_ms())
        if precheck is not None:
            current.append(await self.current(bucket, key))
            precheck(_live(current[0]))
        await self.commit(bucket, record, current[0])
        return record

    async def _put_inline(self, bucket: BucketRecord, bucket_name: str, key: str,
                          source: AsyncIterable[bytes], *, content_type: str,
                          metadata: dict[str, str] | None,
                          precheck: Callable[[ObjectRecord | None], Any] | None,
                          ) -> ObjectRecord:
        """A small object: its bytes go in the record (see ``ObjectRecord.inline``)."""
        data = bytearray()
        current: list[Found | None] = []

        async def drain() -> None:
            async for piece in source:
                data.extend(piece)
                if len(data) > INLINE_MAX:
                    raise InvalidArgument("body longer than its declared length")

        async def read_current() -> None:  # what this put replaces, read while it arrives
            current.append(await self.current(bucket, key))

        async with open_nursery() as nursery:
            nursery.start_soon(drain)
            if precheck is None:
                nursery.start_soon(read_current)
        manifest = Manifest(object_id=new_object_id(), size=0,
                            etag=hashlib.md5(data).hexdigest(), scheme=Scheme.REPLICATION,
                            k=1, m=0, key=bytes(32), chunks=())
        record = ObjectRecord(key=key, manifest=manifest, content_type=content_type,
                              metadata=dict(metadata or {}), modified_ms=self.wall_ms(),
                              inline=bytes(data))
        if precheck is not None:
            current.append(await self.current(bucket, key))
            precheck(_live(current[0]))
        await self.commit(bucket, record, current[0])
        return record

    async def current(self, bucket: BucketRecord, key: str) -> Found | None:
        """The key's row (a tombstone included) as every holder has it now."""
        return await self.index.get(OBJECTS.name, (bucket.bucket_id, sort_key(key)))

    async def commit(self, bucket: BucketRecord, record: ObjectRecord,
                     current: Found | Missing | None = MISSING) -> None:
        """Write an object record on a quorum (the acknowledgement of a put), stamped to
        supersede ``current``, the key's row read after the request began (read here when
        not given): see :meth:`Index.replace`."""
        await self.index.replace(OBJECTS.name, (bucket.bucket_id, sort_key(record.key)),
                                 record, current)
        self.puts += 1
        self.bytes_moved += record.size
        if self.emit is not None:
            self.emit("object.put", bucket=bucket.bucket_id.hex(), key=record.key[:200],
                      size=record.size, etag=record.etag)

    async def _write_ref(self, object_id: bytes, ref: BlobRef) -> None:
        await self.index.put(BLOBREFS.name, (object_id,), ref)

    async def read(self, record: ObjectRecord, start: int = 0, end: int | None = None
                   ) -> AsyncIterator[bytes]:
        """Plaintext of bytes [start, end) of an object (see :mod:`blobstore.reader`)."""
        self.gets += 1
        if record.inline is not None:
            end = len(record.inline) if end is None else end
            if end > start:
                yield record.inline[start:end]
            return
        async for piece in read_object(record.manifest, self.client, start=start, end=end,
                                       config=self.reader, on_bad_shard=self.on_bad_shard):
            self.bytes_moved += len(piece)
            yield piece

    async def delete(self, bucket_name: str, key: str) -> None:
        """Delete ``key`` (a tombstone on a quorum); deleting a missing key is fine (S3)."""
        await self.delete_many(bucket_name, [key])

    async def delete_many(self, bucket_name: str, keys: list[str]) -> None:
        """Delete several keys of one bucket: their tombstones travel in one quorum write
        (a bucket's rows share their holders), one commit per holder instead of one per
        key (S3 DeleteObjects)."""
        bucket = self.bucket(bucket_name)
        wanted = [(bucket.bucket_id, sort_key(key)) for key in dict.fromkeys(keys)]
        current = await self.index.get_many(OBJECTS.name, (bucket.bucket_id,), wanted)
        schema = self.state.core.table(OBJECTS.name).schema
        entries = [self.index.entry_after(OBJECTS.name, key, None,
                                          current.get(schema.key_bytes(key)))
                   for key in wanted]
        if entries:
            await self.index.write_entries(OBJECTS.name, (bucket.bucket_id,), entries)
            for key, (_, entry) in zip(dict.fromkeys(keys), entries, strict=True):
                if self.emit is not None:  # ts: the tombstone's stamp (names this delete)
                    self.emit("object.deleted", bucket=bucket.bucket_id.hex(), key=key[:200],
                              ts=int(cbor.decode(entry)[0]))

    async def copy(self, source: ObjectRecord, bucket_name: str, key: str, *,
                   content_type: str, metadata: dict[str, str]) -> ObjectRecord:
        """A new object with ``source``'s bytes (re-encoded under a new id and key)."""
        send, receive = trio.open_memory_channel[bytes](2)

        async def pump() -> None:
            async with send:
                async for piece in self.read(source):
                    await send.send(piece)

        async def pieces() -> AsyncIterator[bytes]:
            async with receive:
                async for piece in receive:
                    yield piece

        result: list[ObjectRecord] = []

        async def store() -> None:
            result.append(await self.put(bucket_name, key, pieces(),
                                         content_type=content_type, metadata=metadata,
                                         size_hint=source.size))

        async with open_nursery() as nursery:
            nursery.start_soon(pump)
            nursery.start_soon(store)
        return result[0]


def _live(found: Found | None) -> ObjectRecord | None:
    """The object a row holds (None: no row, or a tombstone)."""
    return None if found is None else found.value
