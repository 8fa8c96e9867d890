"""Where the sites service keeps bytes: the blobstore's bucket :data:`BUCKET`, through a
small interface (:class:`Storage`) that the unit tests replace with a dict."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from apps.sites.manifest import BUCKET
from meshcloud.errors import MeshError


class StorageUnavailable(MeshError):
    code = "unavailable"


class Storage(Protocol):
    async def ensure_bucket(self) -> None: ...

    async def size_of(self, key: str) -> int | None:
        """The stored object's size, None when there is no such object."""
        ...

    async def put(self, key: str, source: AsyncIterable[bytes], *, size: int,
                  content_type: str, check: Callable[[], None]) -> None:
        """Store ``source`` under ``key``; ``check`` runs once every byte was read and
        before the object becomes visible, and may raise to store nothing."""
        ...

    async def handle(self, key: str) -> Any:
        """What :meth:`read` needs to read ``key`` (raises when it is missing)."""
        ...

    def read(self, handle: Any, start: int, end: int) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...

    async def keys(self, prefix: str) -> list[str]: ...

    async def sizes(self, prefix: str) -> dict[str, int]:
        """{key: size} of the objects under ``prefix`` (one listing, not one read each)."""
        ...


class BlobStorage:
    """:class:`Storage` on the node's blobstore (its ``ObjectStore`` once it runs), in one
    bucket (the sites' :data:`BUCKET` unless told; the functions service keeps its bundles
    through it too)."""

    def __init__(self, blobs: Any, bucket: str = BUCKET) -> None:
        self.blobs = blobs
        self.bucket = bucket

    def _objects(self) -> Any:
        objects = getattr(self.blobs, "objects", None)
        if objects is None:
            raise StorageUnavailable("this node's storage service is not running")
        return objects

    async def ensure_bucket(self) -> None:

        await self._objects().ensure_service_bucket(self.bucket)

    async def size_of(self, key: str) -> int | None:
        record = await self._objects().find(self.bucket, key)
        return None if record is None else int(record.size)

    async def put(self, key: str, source: AsyncIterable[bytes], *, size: int,
                  content_type: str, check: Callable[[], None]) -> None:
        await self._objects().put(self.bucket, key, source, content_type=content_type,
                                  size_hint=size, precheck=lambda _current: check())

    async def handle(self, key: str) -> Any:
        return await self._objects().head(self.bucket, key)

    async def read(self, handle: Any, start: int, end: int) -> AsyncIterator[bytes]:
        end = min(end, int(handle.size))
        if end <= start:
            return
        async for piece in self._objects().read(handle, start, end):
            yield piece

    async def delete(self, key: str) -> None:
        await self._objects().delete(self.bucket, key)

    async def keys(self, prefix: str) -> list[str]:
        return list(await self.sizes(prefix))

    async def sizes(self, prefix: str) -> dict[str, int]:
        from blobstore.bucketlist import list_bucket
        from blobstore.s3.errors import NoSuchBucket

        objects = self._objects()
        try:
            bucket = objects.bucket(self.bucket)
        except NoSuchBucket:
            return {}
        out: dict[str, int] = {}
        after = None
        while True:
            page = await list_bucket(objects.index, bucket.bucket_id, prefix=prefix,
                                     after=after)
            out.update((key, int(entry.size)) for key, entry in page.contents)
            if not page.is_truncated or page.last is None:
                return out
            after = page.last
