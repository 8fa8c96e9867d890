"""Which scheduled ticks are due (pure, no I/O).

A tick is (function, firing time in seconds). The holder of the scheduler lease runs a
tick only if the ``fn_ticks`` table has no row for it, writing ``started`` before and
``done`` after: a new holder never runs a ``done`` tick again. Ticks missed while no
node held the lease (a holder died) are caught up, at most :data:`CATCH_UP_S` back. A
tick left ``started`` without ``done`` for longer than the call could take (its holder
died between ``started`` and the end of the call) is run again by the next holder
(:func:`stale_ticks`), with the tick id as the dedup id so the handler can tell.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from apps.functions.cron import Cron
from apps.functions.messages import TickRecord

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


def stale_ticks(recorded: Mapping[int, TickRecord], *, now_ms: int, after_ms: int,
                running: Iterable[int] = ()) -> list[int]:
    """Ticks recorded ``started`` (never ``done``) more than ``after_ms`` ago and not
    ``running`` on this node, oldest first, at most :data:`CATCH_UP_S` back: the node
    that started them died before the call ended, so they run again."""
    busy = set(running)
    oldest_s = now_ms // 1000 - CATCH_UP_S
    return sorted(t for t, row in recorded.items()
                  if row.state == "started" and now_ms - row.at_ms > after_ms
                  and t not in busy and t >= oldest_s)[:MAX_CATCH_UP]


def tick_id(name: str, tick: int) -> str:
    """The dedup id of one tick of ``name`` (the same on every run of that tick)."""
    return f"tick-{name}-{tick}"
