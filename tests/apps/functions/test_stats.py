"""The per-function metrics core: duration buckets, percentiles within one bucket's
ratio of the exact ones, the merge over nodes, and what is published when."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from apps.functions.messages import FnNodeStats
from apps.functions.stats import (
    RATIO,
    RECENT,
    StatsBook,
    bucket_of,
    bucket_upper_ms,
    merge,
    quantile_ms,
)
from meshcloud.codec.messages import decode_message, encode_message

durations = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300)


@given(st.integers(min_value=2, max_value=10**10))
def test_a_duration_falls_in_the_bucket_that_bounds_it(us):
    i = bucket_of(us)
    assert us <= bucket_upper_ms(i) * 1000 * (1 + 1e-9) or i == 260
    assert i == 0 or us > bucket_upper_ms(i - 1) * 1000 * (1 - 1e-9)


@given(durations, st.sampled_from([0.5, 0.9, 0.99, 1.0]))
def test_quantiles_are_within_one_bucket_of_the_exact_ones(values, q):
    buckets: dict[int, int] = {}
    for us in values:
        buckets[bucket_of(us)] = buckets.get(bucket_of(us), 0) + 1
    exact = sorted(values)[max(1, math.ceil(q * len(values))) - 1] / 1000
    got = quantile_ms(buckets, q)
    assert got is not None
    assert exact <= got * (1 + 1e-9) + 1e-9
    assert got <= max(exact * RATIO, 0.001) * (1 + 1e-9)


def test_no_durations_no_quantile():
    assert quantile_ms({}, 0.5) is None
    assert merge({})["p50_ms"] is None and merge({})["invocations"] == 0


def book_of(values: list[int], errors: int = 0) -> StatsBook:
    book = StatsBook()
    for n, us in enumerate(values):
        book.record("f", request_id=f"r{n}", at_ms=n, duration_us=us, ok=n >= errors,
                    code="" if n >= errors else "error", cold=n == 0, version=1)
    return book


@given(durations, durations)
def test_merge_over_nodes_equals_one_node_that_ran_everything(a, b):
    rows = {b"\x01": book_of(a).row("f", instances=1, now_ms=0),
            b"\x02": book_of(b).row("f", instances=2, now_ms=0)}
    together = merge({b"\x09": book_of(a + b).row("f", instances=0, now_ms=0)})
    merged = merge(rows)
    assert merged["invocations"] == len(a) + len(b) == together["invocations"]
    assert merged["p50_ms"] == together["p50_ms"] and merged["p99_ms"] == together["p99_ms"]
    assert merged["instances"] == {"01": 1, "02": 2}
    assert merged == merge(dict(reversed(list(rows.items()))))


def test_counters_recent_and_dirty():
    book = book_of([1000, 2000, 3000], errors=1)
    assert book.dirty() == {"f"} and book.dirty() == set()
    row = book.row("f", instances=1, now_ms=5)
    assert (row.invocations, row.errors, row.cold_starts, row.instances) == (3, 1, 1, 1)
    assert decode_message(encode_message(row), FnNodeStats) == row
    view = merge({b"\xaa": row})
    assert [r["request_id"] for r in view["recent"]] == ["r2", "r1", "r0"]
    assert view["recent"][2] == {"request_id": "r0", "node": "aa", "at_ms": 0,
                                 "duration_ms": 1.0, "ok": False, "code": "error",
                                 "cold": True, "version": 1}
    for n in range(RECENT + 5):
        book.record("f", request_id=f"x{n}", at_ms=100 + n, duration_us=1, ok=True)
    assert len(book.row("f", instances=0, now_ms=0).recent) == RECENT
    book.mark("g")
    assert book.dirty() == {"f", "g"}
    book.forget("f")
    assert "f" not in book.functions
