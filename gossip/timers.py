"""TimerHeap: the core's per-object timers in one heap, with lazy cancellation.

SwimCore has many small timers (a probe round's next step, a relay's nack, a suspicion's
expiry, a dead member's reaping) but must answer ``next_deadline()`` with one time. They
live in one heap of ``(when, counter, kind, key)``. Nothing is ever removed on cancel: an
entry is *valid* only while the object it names still wants to fire at exactly ``when``
(the core's ``is_valid`` callback checks), and invalid entries are dropped as they reach
the top. A suspicion whose deadline moves earlier simply gets a second entry.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable


class TimerKind(enum.IntEnum):
    ROUND = 0
    """A probe round's next step: the direct timeout, then the round's end."""
    RELAY = 1
    """A relayed ping's nack deadline."""
    SUSPICION = 2
    """A suspicion's expiry."""
    REAP = 3
    """A DEAD or LEFT member's end of retention."""


TimerKey = bytes | int
"""What a timer is about: a member's node id, or (RELAY) our sequence number of a relay."""

Entry = tuple[float, int, TimerKind, TimerKey]


class TimerHeap:
    def __init__(self, is_valid: Callable[[float, TimerKind, TimerKey], bool]) -> None:
        self._heap: list[Entry] = []
        self._counter = 0
        self._is_valid = is_valid

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, kind: TimerKind, key: TimerKey) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, kind, key))

    def peek(self) -> float | None:
        """The earliest valid deadline (dropping invalid entries on the way)."""
        heap = self._heap
        while heap:
            when, _, kind, key = heap[0]
            if self._is_valid(when, kind, key):
                return when
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[TimerKind, TimerKey]:
        """Remove the top entry (call after peek()) and return its kind and key."""
        _, _, kind, key = heapq.heappop(self._heap)
        return kind, key
