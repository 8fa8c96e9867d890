"""The timing and size formulas of SWIM + Lifeguard, as pure functions (table-tested).

* :func:`suspicion_timeout` — SWIM's suspicion period grows with ``log10(N)``: a
  refutation must travel to the accused and back through an epidemic whose length is
  ``O(log N)`` gossip rounds (SWIM §4.2; memberlist ``suspicionTimeout``).
* :func:`remaining_suspicion_time` — Lifeguard's LHA-Suspicion (Dadgar et al. 2018, §4.2):
  the timeout starts at ``max`` and slides to ``min`` as independent confirmations arrive,
  ``timeout(c) = max - (max - min) * log(c + 1) / log(k + 1)``.
* :func:`confirmations_needed` — ``k``, dropped to 0 in meshes too small to supply it.
* :func:`retransmit_limit` — each broadcast is sent ``mult * ceil(log10(N + 1))`` times by
  every node that learns it: enough for an epidemic to reach all N with high probability.
* :func:`push_pull_interval` — the full-state sync period. A sync moves ``O(N)`` bytes,
  so the period grows **linearly** in N past a threshold and the bytes each node spends
  on syncs per second stay flat. (memberlist grows it with ``log2(N)`` only, which keeps
  the *message* rate nearly flat but lets sync bytes grow as ``N / log N``.)
* :func:`scale_by_health` — Lifeguard's LHA-Probe: timeouts and the probe period are
  stretched by ``score + 1`` while the local node is unhealthy (§4.1).
"""

from __future__ import annotations

import math


def suspicion_timeout(mult: float, n: int, interval: float) -> float:
    """Minimum suspicion timeout: ``mult * max(1, log10(n)) * interval`` seconds."""
    scale = max(1.0, math.log10(max(1, n)))
    return mult * scale * interval


def confirmations_needed(k: int, n: int) -> int:
    """Independent confirmations that bring a suspicion to its minimum timeout.

    Besides the accuser and the accused, at most ``n - 2`` nodes can confirm, so a small
    mesh asks for all of them (3 nodes: the one other node). 0 only when nobody else
    can (two nodes): the minimum timeout applies, and the suspicion still ends with the
    deciding node's own last check (a suspicion is confirmed only by someone else).
    """
    if k < 1:
        return 0
    return max(0, min(k, n - 2))


def suspicion_deadline_offset(confirmations: int, k: int, min_timeout: float,
                              max_timeout: float) -> float:
    """Seconds from the suspicion's start until it expires, after ``confirmations``."""
    if k < 1:
        return min_timeout
    frac = math.log(confirmations + 1) / math.log(k + 1)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    return max(min_timeout, raw)


def remaining_suspicion_time(confirmations: int, k: int, elapsed: float,
                             min_timeout: float, max_timeout: float) -> float:
    """Seconds left on a suspicion that started ``elapsed`` seconds ago (may be < 0)."""
    return suspicion_deadline_offset(confirmations, k, min_timeout, max_timeout) - elapsed


def retransmit_limit(mult: int, n: int) -> int:
    """How many times each node sends one broadcast: ``mult * ceil(log10(n + 1))``."""
    return mult * math.ceil(math.log10(max(0, n) + 1))


def push_pull_interval(base: float, n: int, threshold: int) -> float:
    """Full-state sync period: ``base`` up to ``threshold`` nodes, then ``base * n / threshold``."""
    if n <= threshold:
        return base
    return base * n / threshold


def scale_by_health(value: float, score: int) -> float:
    """A probe interval or timeout stretched by the local health score (0 = healthy)."""
    return value * (score + 1)
