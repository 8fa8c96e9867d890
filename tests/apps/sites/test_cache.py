"""The hot-file cache never holds more than its byte bound and evicts the least recently
used first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apps.sites.cache import ByteLru


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 40), st.booleans()),
                max_size=60))
def test_bound_and_contents(ops: list[tuple[int, int, bool]]) -> None:
    cache = ByteLru(100, 30)
    model: dict[int, bytes] = {}
    for key, size, is_get in ops:
        if is_get:
            got = cache.get(key)
            assert got is None or got == model[key]
        else:
            value = bytes([key % 256]) * size
            cache.put(key, value)
            if size <= 30:
                model[key] = value
        assert cache.size == sum(len(v) for v in cache.items.values()) <= 100


def test_least_recently_used_goes_first() -> None:
    cache = ByteLru(30, 10)
    for key in "abc":
        cache.put(key, b"x" * 10)
    assert cache.get("a") == b"x" * 10
    cache.put("d", b"y" * 10)
    assert cache.get("b") is None and cache.get("a") is not None
    cache.put("big", b"z" * 11)
    assert cache.get("big") is None and len(cache) == 3
