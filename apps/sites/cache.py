"""Hot files in memory: an LRU bounded by the bytes it holds. Pure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ByteLru:
    """Keeps at most ``max_bytes`` of values; a value over ``max_entry`` is never kept."""

    def __init__(self, max_bytes: int, max_entry: int | None = None) -> None:
        self.max_bytes = max(0, max_bytes)
        self.max_entry = min(self.max_bytes, max_entry if max_entry is not None
                             else self.max_bytes // 8)
        self.items: OrderedDict[Hashable, bytes] = OrderedDict()
        self.size = 0
        self.hits = 0
        self.misses = 0

    def fits(self, size: int) -> bool:
        return 0 <= size <= self.max_entry

    def get(self, key: Hashable) -> bytes | None:
        value = self.items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: bytes) -> None:
        if not self.fits(len(value)):
            return
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self.items[key] = value
        self.size += len(value)
        while self.size > self.max_bytes:
            _, evicted = self.items.popitem(last=False)
            self.size -= len(evicted)

    def discard(self, key: Hashable) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= len(old)

    def __len__(self) -> int:
        return len(self.items)
