"""Bulk work off the event loop: worker threads that yield the CPU to the loop.

An agent's event loop must answer probes and acks within a few hundred milliseconds even
while it moves gigabytes: encryption of large transport writes, hashing and erasure
coding run in worker threads (:func:`run_bulk`), at most :data:`BULK_THREADS` at a time
per process (a :class:`trio.CapacityLimiter` per trio run), so bulk work cannot take
every core either.

Each worker thread lowers its own scheduling priority once (``os.setpriority`` on its
thread id: Linux schedules threads separately, and raising one's own niceness needs no
privilege). Within the agent's share of the machine, the kernel then runs the event-loop
thread first whenever both are ready: the loop is not starved by its own bulk work.
Elsewhere (no per-thread priority), the call fails quietly and only the bound applies.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

BULK_THREADS = 2
"""Bulk work items running at once per process (one per core of a small machine)."""

BULK_NICENESS = 10
"""How much lower than the loop a bulk worker thread runs (Unix niceness, 0 to 19)."""

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("bulk")
_local = threading.local()


def limiter() -> trio.CapacityLimiter:
    """This trio run's limiter for bulk work (created on first use)."""
    try:
        return _LIMITER.get()
    except LookupError:
        lim = trio.CapacityLimiter(BULK_THREADS)
        _LIMITER.set(lim)
        return lim


def lower_this_thread() -> bool:
    """Lower the calling thread's priority by :data:`BULK_NICENESS` (once per thread).
    True if this thread now runs at the lower priority."""
    done = getattr(_local, "lowered", None)
    if done is None:
        try:
            native = threading.get_native_id()
            current = os.getpriority(os.PRIO_PROCESS, native)
            os.setpriority(os.PRIO_PROCESS, native, min(19, current + BULK_NICENESS))
            done = True
        except (AttributeError, OSError):
            done = False
        _local.lowered = done
    return done


def _lowered(fn: Callable[..., T], *args: object) -> T:
    lower_this_thread()
    return fn(*args)


async def run_bulk(fn: Callable[..., T], *args: object,
                   bound: trio.CapacityLimiter | None = None) -> T:
    """``fn(*args)`` in a low-priority worker thread, at most :data:`BULK_THREADS` at a
    time per process (or under ``bound``: disk I/O has its own). Not cancellable once
    started (the work finishes; its result is then dropped)."""
    return await trio.to_thread.run_sync(_lowered, fn, *args, limiter=bound or limiter())
