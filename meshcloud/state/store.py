"""LMDB persistence of state tables (driver side: this module does disk I/O).

:class:`LmdbKv` implements :class:`~.kv.Kv` on one LMDB environment, one named database
per tree (``workloads/e`` entries, ``workloads/m`` Merkle nodes, ``workloads/todo``,
``workloads/gc``, ``workloads/x``). Because :class:`~.table.TableCore` does all of one
mutation inside one :meth:`LmdbKv.transact`, an entry, its Merkle to-do and its GC to-do
are committed together or not at all.

* **Crash safety**: LMDB is copy-on-write with a two-page meta root; a crash leaves the
  last committed state. We open with ``metasync=False``: integrity is kept, and a power
  cut may undo the very last commit (state is replicated: anti-entropy brings it back).
  Each commit still costs one fdatasync (~270 commits/s on the dev VM, far fewer on an
  SD card): ``durable=False`` skips it (LMDB keeps integrity on
  file systems that preserve write order, but a power cut may lose recent commits) for
  nodes where flash is slow and peers hold copies anyway.
* **Background sync** (``background_sync=True``, what agents use): commits do not wait
  for the disk; the state driver flushes them (:meth:`LmdbKv.flush`, one fdatasync for
  every commit since the last) in a worker thread as soon as one is pending. An fsync'd
  commit on the trio thread waited behind the shard store's writes for up to hundreds of
  milliseconds under load, and a starved event loop misses its gossip deadlines (issue
  12). A power cut may undo the commits of the last flush window (milliseconds); the
  state is replicated, and anti-entropy brings them back.
* **Map size**: LMDB needs the largest size up front. We start at ``map_size`` (64 MiB,
  a sparse file: no disk used until written) and double it when a write does not fit,
  up to ``max_map_size`` (8 GiB on 64-bit hosts, 1 GiB on 32-bit ones, where address
  space is short, e.g. a Raspberry Pi on a 32-bit OS).
* **Full disk**: a write that cannot fit (disk full, or the map at its maximum) raises
  one :class:`~.errors.StoreFullError`; LMDB aborts that transaction, so what was stored
  before is unchanged and readable.
* Files are created with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb

from meshcloud.state.errors import StoreError, StoreFullError

R = TypeVar("R")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
"""Initial map: 64 MiB of address space, sparse on disk."""

DEFAULT_MAX_MAP_SIZE = 8 * 1024**3 if sys.maxsize > 2**32 else 1024**3
"""Growth stops here (8 GiB, or 1 GiB on 32-bit hosts)."""

DISK_FULL_MARGIN = 4 * 1024 * 1024
"""A failed write with less than 4 MiB free on the device is reported as a full disk."""

MAX_DBS = 1024
"""Named databases: five trees per table leaves room for 200 tables."""


class LmdbKv:
    """A :class:`~.kv.Kv` on an LMDB environment in directory ``path``."""

    def __init__(self, path: Path | str, *, map_size: int = DEFAULT_MAP_SIZE,
                 max_map_size: int = DEFAULT_MAX_MAP_SIZE, durable: bool = True,
                 background_sync: bool = False) -> None:
        self.path = Path(path)
        self.background_sync = durable and background_sync
        self.committed = 0
        """Commits so far (background sync only; only the writing thread counts them)."""
        self.synced = 0
        """Commits known flushed (only :meth:`flush` moves it)."""
        self.flushes = 0
        self.on_commit: Callable[[], None] | None = None
        """Called after each commit (background sync only), in the committing thread: the
        state driver's flush loop waits on it instead of polling."""
        self.max_map_size = max(max_map_size, map_size)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=MAX_DBS,
                                 subdir=True, metasync=False,
                                 sync=durable and not self.background_sync, readahead=False,
                                 mode=0o600, max_spare_txns=4)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open state store {self.path}: {exc}") from None
        self._dbs: dict[str, object] = {}
        self.grown = 0

    @property
    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def close(self) -> None:
        if self.pending:
            self.flush()
        self.env.close()

    def flush(self) -> None:
        """Make every commit so far durable (one fdatasync). Blocking: with background
        sync, the state driver calls it in a worker thread; safe beside new commits."""
        upto = self.committed
        if upto == self.synced:
            return
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise StoreError(f"state store sync failed: {exc}") from None
        self.synced = upto
        self.flushes += 1

    @property
    def pending(self) -> int:
        """Commits not yet flushed to disk (background sync only)."""
        return self.committed - self.synced

    def __enter__(self) -> LmdbKv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure(self, *trees: str) -> None:
        """Create the named trees if they do not exist (before first use)."""
        missing = [t for t in trees if t not in self._dbs]
        if not missing:
            return

        def create(txn: lmdb.Transaction) -> dict[str, object]:
            return {t: self.env.open_db(t.encode(), txn=txn, create=True) for t in missing}

        opened = self._with_growth(lambda: self._run_write(create))
        self._dbs.update(opened)

    # --- transactions ---------------------------------------------------------------------

    def transact(self, fn: Callable[[_LmdbTxn], R]) -> R:
        return self._with_growth(lambda: self._run_write(lambda t: fn(_LmdbTxn(self, t))))

    def read(self, fn: Callable[[_LmdbTxn], R]) -> R:
        try:
            with self.env.begin(write=False) as txn:
                return fn(_LmdbTxn(self, txn, writable=False))
        except lmdb.Error as exc:
            raise StoreError(f"state store read failed: {exc}") from None

    def _run_write(self, fn: Callable[[lmdb.Transaction], R]) -> R:
        txn = self.env.begin(write=True)
        try:
            result = fn(txn)
        except BaseException:
            txn.abort()
            raise
        txn.commit()
        if self.background_sync:
            self.committed += 1
            if self.on_commit is not None:
                self.on_commit()
        return result

    def _with_growth(self, attempt: Callable[[], R]) -> R:
        while True:
            try:
                return attempt()
            except lmdb.MapFullError:
                size = self.map_size
                if size >= self.max_map_size:
                    raise StoreFullError(
                        f"state store {self.path} is full: its map reached max_map_size "
                        f"({self.max_map_size} bytes)") from None
                self.env.set_mapsize(min(size * 2, self.max_map_size))
                self.grown += 1
            except lmdb.DiskError:
                raise StoreFullError(
                    f"state store {self.path}: no space left on the device") from None
            except lmdb.Error as exc:
                # LMDB reports a short write on a full disk as EIO: look at the disk.
                if self._disk_nearly_full():
                    raise StoreFullError(
                        f"state store {self.path}: no space left on the device "
                        f"({exc})") from None
                raise StoreError(f"state store write failed: {exc}") from None

    def _disk_nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < DISK_FULL_MARGIN

    def _db(self, tree: str) -> object:
        db = self._dbs.get(tree)
        if db is None:
            raise StoreError(f"tree {tree!r} was not created (call ensure first)")
        return db


class _LmdbTxn:
    __slots__ = ("kv", "txn", "writable")

    def __init__(self, kv: LmdbKv, txn: lmdb.Transaction, *, writable: bool = True) -> None:
        self.kv = kv
        self.txn = txn
        self.writable = writable

    def get(self, tree: str, key: bytes) -> bytes | None:
        value = self.txn.get(key, db=self.kv._db(tree))
        return None if value is None else bytes(value)

    def put(self, tree: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.kv._db(tree))

    def delete(self, tree: str, key: bytes) -> bool:
        return bool(self.txn.delete(key, db=self.kv._db(tree)))

    def range(self, tree: str, start: bytes = b"", end: bytes | None = None,
              *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        cursor = self.txn.cursor(db=self.kv._db(tree))
        if reverse:
            if end is None:
                positioned = cursor.last()
            elif cursor.set_range(end):
                positioned = cursor.prev()
            else:
                positioned = cursor.last()
            while positioned:
                key = bytes(cursor.key())
                if key < start:
                    break
                yield key, bytes(cursor.value())
                positioned = cursor.prev()
            return
        positioned = cursor.set_range(start) if start else cursor.first()
        while positioned:
            key = bytes(cursor.key())
            if end is not None and key >= end:
                break
            yield key, bytes(cursor.value())
            positioned = cursor.next()

    def count(self, tree: str) -> int:
        return int(self.txn.stat(self.kv._db(tree))["entries"])

    def some_keys(self, tree: str, limit: int) -> list[bytes]:
        cursor = self.txn.cursor(db=self.kv._db(tree))
        out: list[bytes] = []
        positioned = cursor.first()
        while positioned and len(out) < limit:
            out.append(bytes(cursor.key()))
            positioned = cursor.next()
        return out
