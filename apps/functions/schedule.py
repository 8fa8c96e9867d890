"""Which scheduled ticks are due (pure, no I/O).

A tick is (function, firing time in seconds). The holder of the scheduler lease runs a
tick only if the ``fn_ticks`` table has no row for it, writing ``started`` before and
``done`` after: a new holder never runs a recorded tick again. Ticks missed while no
node held the lease (a holder died) are caught up, at most :data:`CATCH_UP_S` back.
"""

from __future__ import annotations

from collections.abc import Iterable

from apps.functions.cron import Cron

CATCH_UP_S = 600
"""Missed ticks older than this are skipped (a mesh that was down does not replay them)."""
MAX_CATCH_UP = 100


def due_ticks(cron: Cron, *, since_s: int, now_s: int, recorded: Iterable[int]
              ) -> list[int]:
    """Firing times in ``(start, now_s]`` without a row, oldest first, where ``start``
    is the latest of: the schedule's start, the newest recorded tick, ``now - CATCH_UP``."""
    seen = set(recorded)
    start = max(since_s, now_s - CATCH_UP_S, max(seen, default=since_s))
    return [t for t in cron.between(start, now_s, MAX_CATCH_UP) if t not in seen]


def next_due(cron: Cron, now_s: int) -> int:
    return cron.next_after(now_s)
