"""The transactional key-value interface tables are written against, and its in-memory form.

Cores stay free of I/O by taking a :class:`Kv` object (injected, like ``random.Random``):
:class:`MemoryKv` here for tests and the simulator, :class:`~.store.LmdbKv` in agents.
Both give the same semantics:

* ``transact(fn)`` runs ``fn(txn)`` in one write transaction: every change ``fn`` made is
  committed together, or (if ``fn`` raises, or the store fails) none is and the error
  propagates. ``fn`` may be run again (LMDB retries it after growing its map), so it must
  not have side effects outside ``txn`` before it returns.
* ``read(fn)`` runs ``fn(txn)`` on a consistent snapshot (``txn`` must not be written).
* Trees are named (``"workloads/e"``); keys and values are bytes; ``range`` walks keys in
  byte order from ``start`` (inclusive) to ``end`` (exclusive).

:class:`MemoryKv` applies writes in place and keeps an undo log to roll back; each tree
is a dict plus a key list sorted lazily (only when a range scan needs it), which keeps
point writes O(1) for the 1,000-node simulator.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

R = TypeVar("R")


class Txn(Protocol):
    def get(self, tree: str, key: bytes) -> bytes | None: ...

    def put(self, tree: str, key: bytes, value: bytes) -> None: ...

    def delete(self, tree: str, key: bytes) -> bool: ...

    def range(self, tree: str, start: bytes = b"", end: bytes | None = None,
              *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]: ...

    def count(self, tree: str) -> int: ...

    def some_keys(self, tree: str, limit: int) -> list[bytes]:
        """Up to ``limit`` keys of ``tree``, in no promised order (cheap: no sorting)."""
        ...


class Kv(Protocol):
    def ensure(self, *trees: str) -> None:
        """Create the named trees if missing (a table calls this when it opens)."""
        ...

    def transact(self, fn: Callable[[Txn], R]) -> R: ...

    def read(self, fn: Callable[[Txn], R]) -> R: ...


class _Tree:
    __slots__ = ("data", "sorted_keys")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sorted_keys: list[bytes] | None = []

    def keys_in_order(self) -> list[bytes]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.data)
        return self.sorted_keys


class MemoryKv:
    """An in-memory :class:`Kv` (tests, simulator). Not thread-safe; one writer at a time."""

    def __init__(self) -> None:
        self._trees: dict[str, _Tree] = {}
        self._undo: list[tuple[str, bytes, bytes | None]] | None = None
        self.commits = 0

    def _tree(self, name: str) -> _Tree:
        tree = self._trees.get(name)
        if tree is None:
            tree = self._trees[name] = _Tree()
        return tree

    def ensure(self, *trees: str) -> None:
        for name in trees:
            self._tree(name)

    def transact(self, fn: Callable[[Txn], R]) -> R:
        if self._undo is not None:
            raise RuntimeError("nested write transaction")
        self._undo = []
        try:
            result = fn(_MemoryTxn(self, writable=True))
        except BaseException:
            for tree, key, old in reversed(self._undo):
                self._raw_set(tree, key, old)
            raise
        finally:
            self._undo = None
        self.commits += 1
        return result

    def read(self, fn: Callable[[Txn], R]) -> R:
        return fn(_MemoryTxn(self, writable=False))

    def _raw_set(self, name: str, key: bytes, value: bytes | None) -> None:
        tree = self._tree(name)
        if value is None:
            if tree.data.pop(key, None) is not None and tree.sorted_keys is not None:
                tree.sorted_keys = None
        else:
            if key not in tree.data:
                tree.sorted_keys = None
            tree.data[key] = value

    def snapshot(self) -> dict[str, dict[bytes, bytes]]:
        """A copy of every non-empty tree (tests)."""
        return {name: dict(t.data) for name, t in self._trees.items() if t.data}


class _MemoryTxn:
    __slots__ = ("kv", "writable")

    def __init__(self, kv: MemoryKv, *, writable: bool) -> None:
        self.kv = kv
        self.writable = writable

    def get(self, tree: str, key: bytes) -> bytes | None:
        t = self.kv._trees.get(tree)
        return None if t is None else t.data.get(key)

    def put(self, tree: str, key: bytes, value: bytes) -> None:
        if not self.writable:
            raise RuntimeError("write in a read transaction")
        t = self.kv._tree(tree)
        undo = self.kv._undo
        assert undo is not None
        undo.append((tree, key, t.data.get(key)))
        if key not in t.data:
            t.sorted_keys = None
        t.data[key] = bytes(value)

    def delete(self, tree: str, key: bytes) -> bool:
        if not self.writable:
            raise RuntimeError("write in a read transaction")
        t = self.kv._trees.get(tree)
        if t is None or key not in t.data:
            return False
        undo = self.kv._undo
        assert undo is not None
        undo.append((tree, key, t.data.pop(key)))
        t.sorted_keys = None
        return True

    def range(self, tree: str, start: bytes = b"", end: bytes | None = None,
              *, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        t = self.kv._trees.get(tree)
        if t is None:
            return iter(())
        keys = t.keys_in_order()
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        chosen = keys[lo:hi]  # a copy: safe against writes while iterating
        if reverse:
            chosen.reverse()
        data = t.data
        return ((k, data[k]) for k in chosen if k in data)

    def count(self, tree: str) -> int:
        t = self.kv._trees.get(tree)
        return 0 if t is None else len(t.data)

    def some_keys(self, tree: str, limit: int) -> list[bytes]:
        t = self.kv._trees.get(tree)
        if t is None:
            return []
        return list(itertools.islice(t.data, limit))
