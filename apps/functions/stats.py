"""Per-function invocation metrics of one node, and their merge over the mesh. No I/O.

Each node counts what it ran (:class:`StatsBook`): invocations, errors, cold starts, a
duration histogram with logarithmic buckets (ratio :data:`RATIO`: a percentile read from
it is within 5 % of the true one) and the last invocations (their request ids find their
log lines). The service publishes one :class:`~apps.functions.messages.FnNodeStats` row
per (function, node) when something changed; any node merges the rows of every node
(:func:`merge`), so percentiles over the mesh come from the summed histograms, not from
averaged percentiles.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from apps.functions.messages import FnNodeStats, RecentInvocation

RATIO = 1.1
"""Bucket ``i`` holds durations in ``(RATIO**(i-1), RATIO**i]`` microseconds."""
MAX_BUCKET = 260
"""Durations past ``RATIO**MAX_BUCKET`` µs (about 17 h) land in the last bucket."""
RECENT = 20
"""Invocations kept per function and node for the page (and their logs)."""
_LOG_RATIO = math.log(RATIO)


def bucket_of(duration_us: int) -> int:
    """The bucket of a duration (0 for up to 1 µs)."""
    if duration_us <= 1:
        return 0
    i = math.ceil(math.log(duration_us) / _LOG_RATIO - 1e-9)
    return min(max(i, 0), MAX_BUCKET)


def bucket_upper_ms(index: int) -> float:
    """The largest duration bucket ``index`` holds, in milliseconds."""
    return float(RATIO ** index) / 1000.0


def quantile_ms(buckets: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) of the durations counted in ``buckets`` (the upper
    bound of the bucket it falls in), or None when nothing is counted."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return bucket_upper_ms(index)
    return bucket_upper_ms(max(buckets))  # pragma: no cover - seen reaches total


@dataclass(slots=True)
class FunctionStats:
    """What one node counted for one function."""

    invocations: int = 0
    errors: int = 0
    cold_starts: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    recent: deque[RecentInvocation] = field(default_factory=lambda: deque(maxlen=RECENT))


class StatsBook:
    """The counters of every function this node ran; ``dirty()`` says which changed
    since they were last published."""

    def __init__(self) -> None:
        self.functions: dict[str, FunctionStats] = {}
        self._dirty: set[str] = set()

    def record(self, name: str, *, request_id: str, at_ms: int, duration_us: int, ok: bool,
               code: str = "", cold: bool = False, version: int = 0) -> None:
        stats = self.functions.setdefault(name, FunctionStats())
        stats.invocations += 1
        stats.errors += 0 if ok else 1
        stats.cold_starts += 1 if cold else 0
        index = bucket_of(max(0, duration_us))
        stats.buckets[index] = stats.buckets.get(index, 0) + 1
        stats.recent.append(RecentInvocation(
            request_id=request_id[:64], at_ms=at_ms, duration_us=max(0, duration_us), ok=ok,
            code=code[:32], cold=cold, version=version))
        self._dirty.add(name)

    def mark(self, name: str) -> None:
        """Publish ``name`` again (its instance count changed)."""
        self._dirty.add(name)

    def dirty(self) -> set[str]:
        """The functions changed since the last call (and forgets them)."""
        out, self._dirty = self._dirty, set()
        return out

    def forget(self, name: str) -> None:
        self.functions.pop(name, None)
        self._dirty.discard(name)

    def row(self, name: str, *, instances: int, now_ms: int,
            prepared: tuple[int, str, str] = (0, "", "")) -> FnNodeStats:
        """This node's row; ``prepared`` is (version, state, message) of the
        requirements install of the current version here."""
        stats = self.functions.get(name, FunctionStats())
        return FnNodeStats(invocations=stats.invocations, errors=stats.errors,
                           cold_starts=stats.cold_starts, instances=instances,
                           buckets=tuple(sorted(stats.buckets.items())),
                           recent=tuple(stats.recent), updated_ms=now_ms,
                           prepared_version=prepared[0], prepared_state=prepared[1],
                           prepared_message=prepared[2][:2000])


def merge(rows: dict[bytes, FnNodeStats]) -> dict[str, Any]:
    """The JSON view of one function over the mesh from each node's row: totals,
    p50/p99 of the summed histograms, instances per node, and the most recent
    invocations (newest first, each naming its node)."""
    buckets: dict[int, int] = {}
    for row in rows.values():
        for index, count in row.buckets:
            buckets[index] = buckets.get(index, 0) + count
    recent = sorted(((node, r) for node, row in rows.items() for r in row.recent),
                    key=lambda item: (item[1].at_ms, item[1].request_id, item[0]), reverse=True)
    p50, p99 = quantile_ms(buckets, 0.5), quantile_ms(buckets, 0.99)
    return {
        "invocations": sum(r.invocations for r in rows.values()),
        "errors": sum(r.errors for r in rows.values()),
        "cold_starts": sum(r.cold_starts for r in rows.values()),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "instances": {node.hex(): r.instances for node, r in sorted(rows.items())
                      if r.instances},
        "requirements": {node.hex(): {"version": r.prepared_version,
                                      "state": r.prepared_state,
                                      "message": r.prepared_message}
                         for node, r in sorted(rows.items()) if r.prepared_state},
        "recent": [{"request_id": r.request_id, "node": node.hex(), "at_ms": r.at_ms,
                    "duration_ms": round(r.duration_us / 1000, 3), "ok": r.ok,
                    "code": r.code, "cold": r.cold, "version": r.version}
                   for node, r in recent[:RECENT]],
    }
