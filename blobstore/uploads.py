"""Multipart uploads on the index: create, upload part, list parts, complete, abort, list.

State (sharded like objects, so one bucket's uploads live with its objects):

* ``uploads`` (bucket id | upload id) -> :class:`~blobstore.records.UploadRecord`: the key,
  and the object id, object key and code fixed at creation;
* ``parts`` (bucket id | upload id, part number) -> :class:`~blobstore.records.PartRecord`:
  the part's ETag, size and chunks, written by the ordinary put pipeline under the upload's
  object id and key with chunk indexes ``part << 20`` (:mod:`blobstore.s3.multipart`).

Completing checks the client's list (:meth:`MultipartUpload.complete`), repoints the
object's BlobRef from the upload to the object row, writes the object record (the
acknowledgement), then removes the upload and its part rows. Unused parts, and parts of
aborted uploads, are shards nobody references: GC takes them after its grace period.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any

from blobstore.crypto import new_object_key
from blobstore.erasure import Scheme, code_for
from blobstore.index import MAX_SCAN
from blobstore.objects import ObjectStore
from blobstore.records import (
    BLOBREFS,
    PARTS,
    UPLOADS,
    BlobRef,
    ObjectRecord,
    PartRecord,
    UploadRecord,
)
from blobstore.s3.errors import NoSuchUpload
from blobstore.s3.multipart import (
    MultipartUpload,
    Part,
    UploadEntry,
    new_upload_id,
    object_id_of_upload,
    part_chunk_base,
)
from blobstore.sortkeys import sort_key
from blobstore.writer import new_object_id, write_object
from meshcloud.state.keys import encode_key, prefix_end

MAX_UPLOADS_SCANNED = 10_000
"""Open uploads a ListMultipartUploads looks at (S3 lists 1000 per page)."""


class Uploads:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.index = store.index

    async def create(self, bucket_name: str, key: str, *, content_type: str,
                     metadata: dict[str, str]) -> str:
        bucket = self.store.bucket(bucket_name)
        code = self.store.code_for(bucket)
        object_id = new_object_id()
        upload_id = new_upload_id(object_id)
        record = UploadRecord(key=key, object_id=object_id, object_key=new_object_key(),
                              scheme=int(code.scheme), k=code.k, m=code.m,
                              initiated_ms=self.store.wall_ms(), content_type=content_type,
                              metadata=dict(metadata))
        await self.index.put(BLOBREFS.name, (object_id,),
                             BlobRef(bucket_id=bucket.bucket_id, upload_id=upload_id))
        await self.index.put(UPLOADS.name, (bucket.bucket_id, upload_id), record)
        return upload_id

    async def get(self, bucket_name: str, upload_id: str) -> tuple[bytes, UploadRecord]:
        bucket = self.store.bucket(bucket_name)
        if not upload_id or len(upload_id) > 128:
            raise NoSuchUpload(UploadId=upload_id[:128])
        found = await self.index.get(UPLOADS.name, (bucket.bucket_id, upload_id))
        if found is None or found.value is None:
            raise NoSuchUpload(UploadId=upload_id)
        return bucket.bucket_id, found.value

    async def upload_part(self, bucket_name: str, upload_id: str, number: int,
                          source: AsyncIterable[bytes]) -> PartRecord:
        bucket_id, upload = await self.get(bucket_name, upload_id)
        code = code_for(Scheme(upload.scheme), upload.k, upload.m)
        manifest = await write_object(
            source, client=self.store.client, picker=self.store.picker, code=code,
            config=self.store.writer, object_id=upload.object_id, key=upload.object_key,
            first_chunk_index=part_chunk_base(number))
        part = PartRecord(etag=manifest.etag, size=manifest.size,
                          modified_ms=self.store.wall_ms(), chunks=manifest.chunks)
        await self.index.replace(PARTS.name, (bucket_id, upload_id, number), part)
        return part

    async def parts(self, bucket_id: bytes, upload_id: str) -> list[tuple[int, PartRecord]]:
        low = encode_key((bucket_id, upload_id))
        high = prefix_end(low)
        out: list[tuple[int, PartRecord]] = []
        while True:
            rows, truncated = await self.index.scan(PARTS.name, (bucket_id,), low, high)
            schema = self.index.state.core.table(PARTS.name).schema
            for row in rows:
                if row.value is not None:
                    out.append((int(schema.key_from_bytes(row.key)[2]), row.value))
            if not truncated or not rows:
                return out
            low = rows[-1].key + b"\x00"

    def _upload(self, upload_id: str, record: UploadRecord,
                parts: Sequence[tuple[int, PartRecord]]) -> MultipartUpload:
        upload = MultipartUpload(
            upload_id=upload_id, bucket="", key=record.key, object_id=record.object_id,
            object_key=record.object_key, scheme=Scheme(record.scheme), k=record.k,
            m=record.m, initiated=record.initiated_ms / 1000)
        for number, part in parts:
            upload.add_part(Part(number=number, etag=part.etag, size=part.size,
                                 last_modified=part.modified_ms / 1000, chunks=part.chunks))
        return upload

    async def list_parts(self, bucket_name: str, upload_id: str
                         ) -> tuple[UploadRecord, MultipartUpload]:
        bucket_id, record = await self.get(bucket_name, upload_id)
        return record, self._upload(upload_id, record, await self.parts(bucket_id, upload_id))

    async def complete(self, bucket_name: str, upload_id: str,
                       requested: Sequence[tuple[int, str]], *, key: str | None = None,
                       precheck: Callable[[ObjectRecord | None], Any] | None = None,
                       ) -> ObjectRecord:
        """Complete an upload. Completing it again (a client retrying after a lost reply)
        answers with the object the first completion made, while that object is still
        the key's current one. ``precheck`` sees the key's current object just before the
        commit (If-Match / If-None-Match) and may raise."""
        bucket = self.store.bucket(bucket_name)
        try:
            bucket_id, record = await self.get(bucket_name, upload_id)
        except NoSuchUpload:
            done = await self._completed(bucket_name, upload_id, key)
            if done is None:
                raise
            return done
        parts = await self.parts(bucket_id, upload_id)
        manifest = self._upload(upload_id, record, parts).complete(requested)
        object_record = ObjectRecord(key=record.key, manifest=manifest,
                                     content_type=record.content_type,
                                     metadata=dict(record.metadata),
                                     modified_ms=self.store.wall_ms())
        current = await self.store.current(bucket, record.key)
        if precheck is not None:
            precheck(None if current is None else current.value)
        # past the upload's own ref, or GC would judge the parts by the upload row
        await self.index.replace(BLOBREFS.name, (record.object_id,),
                                 BlobRef(bucket_id=bucket_id, sort_key=sort_key(record.key)))
        await self.store.commit(bucket, object_record, current)
        await self._forget(bucket_id, upload_id, parts)
        return object_record

    async def _completed(self, bucket_name: str, upload_id: str, key: str | None
                         ) -> ObjectRecord | None:
        object_id = object_id_of_upload(upload_id)
        if key is None or object_id is None:
            return None
        current = await self.store.find(bucket_name, key)
        if current is None or current.manifest.object_id != object_id:
            return None
        return current

    async def abort(self, bucket_name: str, upload_id: str) -> None:
        bucket_id, _ = await self.get(bucket_name, upload_id)
        await self._forget(bucket_id, upload_id, await self.parts(bucket_id, upload_id))

    async def _forget(self, bucket_id: bytes, upload_id: str,
                      parts: Sequence[tuple[int, PartRecord]]) -> None:
        """Tombstones for the upload and its parts, past their rows' stamps (a part
        written through a node whose clock runs ahead must not outlive its upload)."""
        await self.index.replace(UPLOADS.name, (bucket_id, upload_id), None)
        keys = [(bucket_id, upload_id, number) for number, _ in parts]
        schema = self.index.state.core.table(PARTS.name).schema
        for i in range(0, len(keys), MAX_SCAN):
            batch = keys[i:i + MAX_SCAN]
            current = await self.index.get_many(PARTS.name, (bucket_id,), batch)
            entries = [self.index.entry_after(PARTS.name, key, None,
                                              current.get(schema.key_bytes(key)))
                       for key in batch]
            await self.index.write_entries(PARTS.name, (bucket_id,), entries)

    async def list(self, bucket_name: str) -> list[UploadEntry]:
        bucket = self.store.bucket(bucket_name)
        low = encode_key((bucket.bucket_id,))
        high = prefix_end(low)
        out: list[UploadEntry] = []
        schema = self.index.state.core.table(UPLOADS.name).schema
        while len(out) < MAX_UPLOADS_SCANNED:
            rows, truncated = await self.index.scan(UPLOADS.name, (bucket.bucket_id,), low,
                                                    high)
            for row in rows:
                if row.value is not None:
                    out.append(UploadEntry(key=row.value.key,
                                           upload_id=str(schema.key_from_bytes(row.key)[1]),
                                           initiated=row.value.initiated_ms / 1000))
            if not truncated or not rows:
                break
            low = rows[-1].key + b"\x00"
        return out
