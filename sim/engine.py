"""The discrete-event engine: one heap of timed callbacks, virtual time, one seeded RNG.

Nothing here knows about protocols. The simulator orders every event itself — never
trio's scheduler, which is randomised on purpose — so a run is a pure function of its
scenario and seed: the same seed gives the same event order, the same metrics, the same
bytes in ``metrics.json``.

Events at the same instant run in the order they were scheduled (a sequence number breaks
ties), so ordering never depends on hash seeds or object addresses.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any


class Engine:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.events_run = 0

    def derive_random(self, label: str) -> random.Random:
        """An independent, reproducible RNG for one component (a node's core, the network)."""
        return random.Random(f"{self.seed}/{label}")

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``when`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run_until(self, end: float, on_progress: Callable[[float], None] | None = None,
                  progress_step: float = 1.0) -> None:
        queue = self._queue
        next_report = self.now + progress_step
        pop = heapq.heappop
        while queue and queue[0][0] <= end:
            when, _, fn, args = pop(queue)
            self.now = when
            fn(*args)
            self.events_run += 1
            if on_progress is not None and when >= next_report:
                on_progress(when)
                next_report = when + progress_step
        self.now = max(self.now, end)
        if on_progress is not None:
            on_progress(self.now)

    def run_while(self, keep_going: Callable[[], bool], until: float = float("inf")) -> None:
        """Run events while ``keep_going()`` (checked before each) and the next is not
        later than ``until`` (then the clock stops at ``until``)."""
        queue = self._queue
        pop = heapq.heappop
        while queue and keep_going():
            if queue[0][0] > until:
                self.now = until
                return
            when, _, fn, args = pop(queue)
            self.now = when
            fn(*args)
            self.events_run += 1

    @property
    def pending(self) -> int:
        return len(self._queue)
