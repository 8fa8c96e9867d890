"""Table tests for every formula in gossip.formulas (memberlist suspicion_test/util_test style)."""

from __future__ import annotations

import math

import pytest

from gossip.formulas import (
    confirmations_needed,
    push_pull_interval,
    remaining_suspicion_time,
    retransmit_limit,
    scale_by_health,
    suspicion_deadline_offset,
    suspicion_timeout,
)


@pytest.mark.parametrize(("mult", "n", "interval", "expected"), [
    (4, 0, 1.0, 4.0),        # no members: log10 floor of 1
    (4, 1, 1.0, 4.0),
    (4, 5, 1.0, 4.0),        # log10(5) < 1: floor of 1
    (4, 10, 1.0, 4.0),
    (4, 100, 1.0, 8.0),
    (4, 1000, 1.0, 12.0),
    (4, 1000, 0.5, 6.0),
    (0.25, 1000, 1.0, 0.75),
    (0.25, 5000, 1.0, 0.25 * math.log10(5000)),
])
def test_suspicion_timeout(mult, n, interval, expected):
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(("k", "n", "expected"), [
    (3, 0, 0), (3, 2, 0), (3, 3, 1), (3, 4, 2), (3, 5, 3), (3, 1000, 3), (0, 1000, 0),
    (1, 3, 1),
])
def test_confirmations_needed(k, n, expected):
    assert confirmations_needed(k, n) == expected


@pytest.mark.parametrize(("c", "k", "elapsed", "lo", "hi", "expected"), [
    # memberlist's table: min 2 s, max 30 s, k = 3
    (0, 3, 0.0, 2.0, 30.0, 30.0),
    (1, 3, 2.0, 2.0, 30.0, 14.0),
    (2, 3, 3.0, 2.0, 30.0, 30.0 - 28.0 * math.log(3) / math.log(4) - 3.0),
    (3, 3, 4.0, 2.0, 30.0, -2.0),   # confirmed: min, already past
    (4, 3, 5.0, 2.0, 30.0, -3.0),   # beyond k: still min
    (5, 0, 1.0, 2.0, 30.0, 1.0),    # k = 0: min at once
    (0, 3, 31.0, 2.0, 30.0, -1.0),
])
def test_remaining_suspicion_time(c, k, elapsed, lo, hi, expected):
    assert remaining_suspicion_time(c, k, elapsed, lo, hi) == pytest.approx(expected)


def test_suspicion_deadline_offset_never_below_min_and_monotonic():
    offsets = [suspicion_deadline_offset(c, 3, 1.0, 6.0) for c in range(6)]
    assert offsets == sorted(offsets, reverse=True)
    assert offsets[0] == 6.0 and min(offsets) == 1.0


@pytest.mark.parametrize(("mult", "n", "expected"), [
    (4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12),
    (4, 999, 12), (4, 1000, 16), (4, 5000, 16), (3, 10000, 15),
])
def test_retransmit_limit(mult, n, expected):
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(("base", "n", "threshold", "expected"), [
    (30.0, 1, 32, 30.0), (30.0, 32, 32, 30.0), (30.0, 64, 32, 60.0),
    (30.0, 1000, 32, 937.5), (30.0, 5000, 32, 4687.5), (60.0, 100, 100, 60.0),
])
def test_push_pull_interval(base, n, threshold, expected):
    assert push_pull_interval(base, n, threshold) == pytest.approx(expected)


def test_push_pull_bytes_per_node_stay_flat():
    """The reason for linear scaling: sync bytes per node per second do not grow with N."""
    rates = [n / push_pull_interval(30.0, n, 32) for n in (64, 500, 1000, 5000)]
    assert max(rates) == pytest.approx(min(rates))


@pytest.mark.parametrize(("value", "score", "expected"), [
    (1.0, 0, 1.0), (1.0, 1, 2.0), (0.4, 7, 3.2), (2.0, 3, 8.0),
])
def test_scale_by_health(value, score, expected):
    assert scale_by_health(value, score) == pytest.approx(expected)
