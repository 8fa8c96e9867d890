"""The node's shard store: shards in LMDB, keyed by their content id (driver side).

One LMDB environment per node data directory, three named databases:

* ``shards``: shard id -> encoded shard (header + payload, :mod:`blobstore.shards`);
* ``meta``:   shard id -> (stored at, wall ms; size), for GC's grace period and listings;
* ``stats``:  running totals (count, bytes), updated in the same transaction as the data.

Invariants:

* every write is one LMDB transaction: a shard, its meta row and the totals change
  together or not at all. A full map or a full disk aborts the transaction and raises
  :class:`~blobstore.errors.StoreFullError`: nothing is half-written;
* a stored shard always hashes to its key: :meth:`ShardStore.put` checks the content id
  (and the header) before writing, so only rot can break it, and :meth:`verify` finds rot;
* ``put`` is idempotent: storing a shard that is already there changes nothing.

Map size: LMDB maps the file into memory and refuses writes past ``map_size``. We start
small (the file is sparse on Linux, so the size costs address space, not disk) and double
on :class:`lmdb.MapFullError` up to ``max_map_size`` (1 TiB on 64-bit; 1 GiB on 32-bit
ARM boards, whose address space is 3 GiB). Resizing needs no transaction open in the
process, so operations hold a shared gate and a resize takes it exclusively.

Free disk: before each write we check the filesystem keeps ``min_free_bytes`` after it
(LMDB without WRITEMAP gets ENOSPC from ``pwrite`` at commit; we refuse earlier and more
clearly, and map ENOSPC at commit to the same error anyway).

Concurrency: the methods here block (disk I/O, hashing megabytes). Trio code uses
:class:`AsyncShardStore`, which runs them in worker threads under a capacity limiter.
LMDB allows one writer at a time, so writes also queue on a lock; reads run in parallel.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import trio

from blobstore.errors import BlobstoreError, IntegrityError, ShardNotFound, StoreFullError
from blobstore.shards import SHARD_ID_SIZE, ShardId, shard_id, unpack_shard
from meshcloud.bulk import run_bulk
from meshcloud.clock import Clock, SystemClock
from meshcloud.errors import LocalProtocolError, MeshError

log = logging.getLogger(__name__)

_64BIT = sys.maxsize > 2**32

DEFAULT_MAP_SIZE = (1 << 30) if _64BIT else (256 << 20)
"""First map size: 1 GiB (256 MiB on 32-bit); grows by doubling."""

DEFAULT_MAX_MAP_SIZE = (1 << 40) if _64BIT else (1 << 30)
"""Growth stops here: 1 TiB (1 GiB on 32-bit, whose address space is small)."""

DEFAULT_MIN_FREE_BYTES = 256 << 20
"""Keep 256 MiB free on the filesystem: the OS, logs and LMDB's own pages need room."""

DELETE_HEADROOM = 4 << 20
"""How far past ``max_map_size`` a delete may grow the map: a delete needs a few pages
(tree path copies, free list), never megabytes."""

MAX_SHARD_SIZE = 65 << 20
"""A shard is at most one 64 MiB sealed chunk (replication) plus its header."""

HEAD_BYTES = 128
"""Enough for any shard header (26 bytes plus an object id of at most 64)."""

T = TypeVar("T")

_META = struct.Struct(">QQ")  # stored_at_ms, size
_COUNT, _BYTES = b"count", b"bytes"
_NOTE = b"note:"
"""Prefix of small named values kept in the ``stats`` database (the scrub schedule)."""
MAX_NOTE = 4096

RELEASE_READ_BYTES = 32 << 20
"""Shard bytes read through :meth:`ShardStore.get` between two :meth:`release_pages`: a
GET of a big object or a rebuild leaves at most this much of the map in RSS."""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: ShardId
    size: int
    stored_at_ms: int


@dataclass(frozen=True, slots=True)
class ShardStoreStats:
    count: int
    bytes: int
    map_size: int
    max_map_size: int
    used_bytes: int
    """Bytes of the map in use (pages), i.e. the file's real size."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    shard_id: ShardId
    ok: bool
    size: int


class ShardStore:
    """Blocking LMDB shard store. One per data directory per process."""

    _open_paths: set[str] = set()
    _open_lock = threading.Lock()

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        clock: Clock | None = None,
        sync: bool = True,
    ) -> None:
        if map_size <= 0 or max_map_size < map_size:
            raise ValueError("need 0 < map_size <= max_map_size")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        real = os.path.realpath(self.path)
        with self._open_lock:
            # LMDB forbids opening one environment twice in a process (lock corruption).
            if real in self._open_paths:
                raise LocalProtocolError(f"shard store {real} is already open in this process")
            self._open_paths.add(real)
        self._real = real
        self.max_map_size = max_map_size
        self.min_free_bytes = min_free_bytes
        self._clock = clock or SystemClock()
        try:
            self._env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=4, subdir=True, sync=sync,
                metasync=sync, readahead=False, max_readers=256,
            )
        except BaseException:
            with self._open_lock:
                self._open_paths.discard(real)
            raise
        # LMDB keeps the larger of the requested and the file's recorded size on reopen.
        self.map_size = self._env.info()["map_size"]
        self._shards = self._env.open_db(b"shards")
        self._meta = self._env.open_db(b"meta")
        self._stats = self._env.open_db(b"stats")
        self._write_lock = threading.Lock()
        self._gate = _Gate()
        self._closed = False
        self.bytes_moved = 0
        """Shard bytes stored and read so far (what :mod:`blobstore.memory` watches)."""
        self._read_since_release = 0

    # --- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        with self._gate.exclusive():
            self._closed = True
            self._env.close()
        with self._open_lock:
            self._open_paths.discard(self._real)

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes -----------------------------------------------------------------------

    def put(self, blob: bytes, *, expect_id: ShardId | None = None) -> tuple[ShardId, bool]:
        """Store an encoded shard. Returns (its id, whether it was new).

        Raises IntegrityError / ShardFormatError for a malformed shard or one that does not
        match ``expect_id``, StoreFullError when there is no room (nothing written).
        """
        if len(blob) > MAX_SHARD_SIZE:
            raise IntegrityError(f"shard of {len(blob)} bytes exceeds {MAX_SHARD_SIZE}")
        blob = bytes(blob)
        sid = shard_id(blob)
        if expect_id is not None and sid != expect_id:
            raise IntegrityError(f"shard {expect_id.hex()[:16]}: content does not match its id")
        unpack_shard(blob)  # header sanity; raises ShardFormatError
        self._check_disk(len(blob))
        self.bytes_moved += len(blob)
        return sid, self._write(lambda: self._put_txn(sid, blob), len(blob), self.max_map_size)

    def _write(self, txn_fn: Callable[[], T], incoming: int, limit: int) -> T:
        """Run one write transaction, growing the map (up to ``limit``) when it is full."""
        with self._write_lock:
            while True:
                try:
                    with self._gate.shared():
                        self._check_open()
                        return txn_fn()
                except lmdb.MapFullError:
                    self._grow(incoming, limit)
                except lmdb.Error as exc:
                    raise self._translate(exc) from None

    def _put_txn(self, sid: ShardId, blob: bytes) -> bool:
        with self._env.begin(write=True) as txn:
            if txn.get(sid, db=self._meta) is not None:
                return False
            txn.put(sid, blob, db=self._shards)
            txn.put(sid, _META.pack(self._clock.wall_ms(), len(blob)), db=self._meta)
            self._bump(txn, 1, len(blob))
        return True

    def delete(self, sid: ShardId) -> bool:
        """Remove a shard; returns whether it was there.

        Deleting writes pages too (LMDB is copy-on-write), so a completely full map could
        refuse the very delete meant to free it: deletes may grow the map a little past
        ``max_map_size`` (:data:`DELETE_HEADROOM`).
        """

        def txn_fn() -> bool:
            with self._env.begin(write=True) as txn:
                meta = txn.get(sid, db=self._meta)
                if meta is None:
                    return False
                _, size = _META.unpack(meta)
                txn.delete(sid, db=self._shards)
                txn.delete(sid, db=self._meta)
                self._bump(txn, -1, -size)
            return True

        return self._write(txn_fn, 0, self.max_map_size + DELETE_HEADROOM)

    def note(self, name: str) -> bytes | None:
        """A small value stored under ``name`` with :meth:`set_note`, or None."""
        with self._read() as txn:
            return txn.get(_NOTE + name.encode(), db=self._stats)

    def set_note(self, name: str, value: bytes) -> None:
        """Store a small value (at most MAX_NOTE bytes) that survives restarts."""
        if len(value) > MAX_NOTE:
            raise ValueError(f"a note is at most {MAX_NOTE} bytes")
        key = _NOTE + name.encode()

        def txn_fn() -> None:
            with self._env.begin(write=True) as txn:
                txn.put(key, value, db=self._stats)

        self._write(txn_fn, len(value), self.max_map_size + DELETE_HEADROOM)

    def _bump(self, txn: lmdb.Transaction, count: int, size: int) -> None:
        for name, delta in ((_COUNT, count), (_BYTES, size)):
            raw = txn.get(name, db=self._stats)
            value = int.from_bytes(raw, "big") if raw else 0
            txn.put(name, (value + delta).to_bytes(8, "big"), db=self._stats)

    def _check_disk(self, incoming: int) -> None:
        free = shutil.disk_usage(self.path).free
        # LMDB copies pages on write (copy-on-write B+tree): budget twice the shard.
        if free - 2 * incoming < self.min_free_bytes:
            raise StoreFullError(
                f"disk holding {self.path} has {free >> 20} MiB free, keeping "
                f"{self.min_free_bytes >> 20} MiB in reserve: shard not stored"
            )

    def _grow(self, incoming: int, limit: int) -> None:
        if self.map_size >= limit:
            raise StoreFullError(
                f"shard store {self.path} is full ({self.map_size >> 20} MiB map, the "
                "configured maximum): nothing written"
            )
        new = min(max(self.map_size * 2, self.map_size + 4 * incoming, self.map_size + (1 << 20)),
                  limit)
        with self._gate.exclusive():
            self._check_open()
            self._env.set_mapsize(new)
            self.map_size = self._env.info()["map_size"]
        log.info("shard store %s: map grown to %d MiB", self.path, self.map_size >> 20)

    def _translate(self, exc: lmdb.Error) -> MeshError:
        if isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) == errno.ENOSPC \
                or "No space left" in str(exc):
            return StoreFullError(f"disk full under {self.path}: {exc}")
        return BlobstoreError(f"shard store {self.path}: {exc}")

    # --- reads ------------------------------------------------------------------------

    def get(self, sid: ShardId) -> bytes:
        """The stored shard, or ShardNotFound."""
        with self._read() as txn:
            blob = txn.get(sid, db=self._shards)
        if blob is None:
            raise ShardNotFound(f"no shard {sid.hex()[:16]} here")
        self.bytes_moved += len(blob)
        self._read_since_release += len(blob)
        if self._read_since_release >= RELEASE_READ_BYTES:
            self.release_pages()
        return blob

    def head(self, sid: ShardId, size: int = HEAD_BYTES) -> bytes:
        """The first ``size`` bytes of a stored shard (its header), read without copying
        the payload out of the map: what GC needs to learn a shard's object."""
        with self._gate.shared():
            self._check_open()
            try:
                with self._env.begin(buffers=True) as txn:
                    blob = txn.get(sid, db=self._shards)
                    if blob is None:
                        raise ShardNotFound(f"no shard {sid.hex()[:16]} here")
                    return bytes(blob[:size])
            except lmdb.Error as exc:
                raise self._translate(exc) from None

    def contains(self, sid: ShardId) -> bool:
        with self._read() as txn:
            return txn.get(sid, db=self._meta) is not None

    def info(self, sid: ShardId) -> ShardInfo:
        with self._read() as txn:
            meta = txn.get(sid, db=self._meta)
        if meta is None:
            raise ShardNotFound(f"no shard {sid.hex()[:16]} here")
        stored_at, size = _META.unpack(meta)
        return ShardInfo(sid, size, stored_at)

    def verify(self, sid: ShardId) -> bool:
        """Re-hash a stored shard: False if its bytes no longer match its id (rot)."""
        return _check(sid, self.get(sid))

    def verify_batch(
        self, after: ShardId = b"", limit: int = 64
    ) -> tuple[list[VerifyResult], bool]:
        """Verify up to ``limit`` shards with ids > ``after``; returns (results, reached end)."""
        results = []
        infos = self.list(after=after, limit=limit)
        with self._gate.shared():
            self._check_open()
            try:
                for info in infos:
                    # hashed in place in the map: no copy of the shard on the heap
                    with self._env.begin(buffers=True) as txn:
                        blob = txn.get(info.shard_id, db=self._shards)
                        if blob is None:
                            continue  # deleted meanwhile
                        results.append(VerifyResult(info.shard_id, _check(info.shard_id, blob),
                                                    len(blob)))
            except lmdb.Error as exc:
                raise self._translate(exc) from None
        self.release_pages()
        return results, len(infos) < limit

    def release_pages(self) -> None:
        """Unmap from this process the store pages it has read (they stay in the page
        cache): reading through the whole store must not leave it all counted in the
        process's RSS. The map is read-only and shared (writes go through the file), so
        the next read of a page simply faults it in again. Linux only; a no-op elsewhere."""
        self._read_since_release = 0
        with self._gate.shared():  # a resize (exclusive) moves the map
            if self._closed:
                return
            release_file_pages(os.path.join(self._real, "data.mdb"))

    def list(self, *, after: ShardId = b"", limit: int | None = None) -> list[ShardInfo]:
        """Shards with ids > ``after`` in id order, at most ``limit`` of them."""
        out: list[ShardInfo] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._meta)
            found = cursor.set_range(after) if after else cursor.first()
            while found:
                key, value = cursor.item()
                if key != after:
                    stored_at, size = _META.unpack(value)
                    out.append(ShardInfo(bytes(key), size, stored_at))
                    if limit is not None and len(out) >= limit:
                        break
                found = cursor.next()
        return out

    def iter_ids(self, page: int = 1024) -> Iterator[ShardId]:
        """Every shard id, paged so no transaction stays open across yields."""
        after = b""
        while True:
            infos = self.list(after=after, limit=page)
            for info in infos:
                yield info.shard_id
            if len(infos) < page:
                return
            after = infos[-1].shard_id

    def stats(self) -> ShardStoreStats:
        with self._read() as txn:
            count = txn.get(_COUNT, db=self._stats)
            size = txn.get(_BYTES, db=self._stats)
            info = self._env.info()
            stat = self._env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return ShardStoreStats(
            count=int.from_bytes(count, "big") if count else 0,
            bytes=int.from_bytes(size, "big") if size else 0,
            map_size=self.map_size, max_map_size=self.max_map_size, used_bytes=used,
        )

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        with self._gate.shared():
            self._check_open()
            try:
                with self._env.begin(buffers=False) as txn:
                    yield txn
            except lmdb.Error as exc:
                raise self._translate(exc) from None

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError(f"shard store {self.path} is closed")


MADV_DONTNEED = 4


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """libc, looked up once (``find_library`` runs ``ldconfig``: far too slow per call)."""
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def release_file_pages(path: str) -> int:
    """madvise(MADV_DONTNEED) every mapping of ``path`` in this process; returns bytes
    released. Only for shared read-only file mappings, where it drops page table entries
    and nothing else."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == path \
                        and parts[1].startswith("r") and "w" not in parts[1] \
                        and parts[1].endswith("s"):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return 0
    libc = _libc()
    released = 0
    for start, end in ranges:
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                        MADV_DONTNEED) == 0:
            released += end - start
    return released


def _check(sid: ShardId, blob: bytes) -> bool:
    if len(sid) != SHARD_ID_SIZE or shard_id(blob) != sid:
        return False
    try:
        unpack_shard(blob)
    except MeshError:
        return False
    return True


class _Gate:
    """Many shared holders or one exclusive holder (a map resize, close)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


DEFAULT_THREADS = 4
"""Worker threads per store: enough to overlap hashing and I/O on 2-4 cores."""


class AsyncShardStore:
    """The same store for trio code: every call runs in a worker thread."""

    def __init__(self, store: ShardStore, *, threads: int = DEFAULT_THREADS) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(threads)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_bulk(functools.partial(fn, *args, **kwargs), bound=self._limiter)

    async def put(self, blob: bytes, *, expect_id: ShardId | None = None) -> tuple[ShardId, bool]:
        return await self._run(self.store.put, blob, expect_id=expect_id)

    async def get(self, sid: ShardId) -> bytes:
        return await self._run(self.store.get, sid)

    async def head(self, sid: ShardId) -> bytes:
        return await self._run(self.store.head, sid)

    async def verify(self, sid: ShardId) -> bool:
        return await self._run(self.store.verify, sid)

    async def verify_batch(
        self, after: ShardId = b"", limit: int = 64
    ) -> tuple[list[VerifyResult], bool]:
        return await self._run(self.store.verify_batch, after, limit)

    async def delete(self, sid: ShardId) -> bool:
        return await self._run(self.store.delete, sid)

    async def list(self, *, after: ShardId = b"", limit: int | None = None) -> list[ShardInfo]:
        return await self._run(self.store.list, after=after, limit=limit)

    async def stats(self) -> ShardStoreStats:
        return await self._run(self.store.stats)

    async def note(self, name: str) -> bytes | None:
        return await self._run(self.store.note, name)

    async def set_note(self, name: str, value: bytes) -> None:
        await self._run(self.store.set_note, name, value)
