"""Clocks: the only place time comes from.

Cores never read a clock; drivers pass ``now`` in. Drivers get it from a :class:`Clock`:
:class:`SystemClock` in real agents (``trio.current_time`` for deadlines, wall time for
records), :class:`ManualClock` in tests and the simulator.

:class:`Hlc` is a hybrid logical clock (Kulkarni et al., 2014): timestamps that follow
physical time closely, never go backwards on one node, and are always greater than any
timestamp the node has seen. A timestamp is one integer: ``physical_ms << 16 | counter``,
so they compare with ``<`` and travel as plain CBOR integers.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

COUNTER_BITS = 16
COUNTER_MASK = (1 << COUNTER_BITS) - 1

MAX_DRIFT_MS = 60_000
"""Remote timestamps more than a minute ahead of our clock are not followed (clock attack)."""


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for deadlines; only differences mean anything."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch, for records and certificates."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (tests, simulator)."""

    def __init__(self, start: float = 0.0, *, epoch_ms: int = 1_767_225_600_000) -> None:
        self.now = start
        self.epoch_ms = epoch_ms

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.epoch_ms + int(self.now * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds


def hlc_physical(ts: int) -> int:
    return ts >> COUNTER_BITS


def hlc_counter(ts: int) -> int:
    return ts & COUNTER_MASK


def hlc_pack(physical_ms: int, counter: int) -> int:
    return (physical_ms << COUNTER_BITS) | counter


class Hlc:
    """A hybrid logical clock. Pure: physical time is passed to every call."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def now(self, physical_ms: int) -> int:
        """A timestamp for a local event, greater than every one issued or seen before."""
        last_physical = hlc_physical(self.last)
        if physical_ms > last_physical:
            self.last = hlc_pack(physical_ms, 0)
        else:
            self.last = self._bump(self.last)
        return self.last

    def observe(self, remote: int, physical_ms: int) -> int:
        """Merge a timestamp received from a peer; returns the new local timestamp."""
        if hlc_physical(remote) > physical_ms + MAX_DRIFT_MS:
            remote = hlc_pack(physical_ms + MAX_DRIFT_MS, 0)
        top = max(self.last, remote)
        if physical_ms > hlc_physical(top):
            self.last = hlc_pack(physical_ms, 0)
        else:
            self.last = self._bump(top)
        return self.last

    @staticmethod
    def _bump(ts: int) -> int:
        if hlc_counter(ts) == COUNTER_MASK:
            return hlc_pack(hlc_physical(ts) + 1, 0)
        return ts + 1


def next_tick(now: float, period: float) -> float:
    """The first multiple of ``period`` after ``now``. Loops that sleep until it instead of
    for ``period`` share one tick: those of one period, or of multiples of it, wake at the
    same instants, so one wake-up of the process serves them all (a phone's CPU sleeps
    between). A loop's first sleep is shorter, then every one lasts ``period``."""
    if period <= 0:
        raise ValueError("period must be positive")
    return (math.floor(now / period) + 1) * period
