"""Bulk work off the event loop: worker threads that yield the CPU to the loop.

An agent's event loop must answer probes and acks within a few hundred milliseconds even
while it moves gigabytes: encryption of large transport writes, hashing and erasure
coding run in worker threads (:func:`run_bulk`), at most :data:`BULK_THREADS` at a time
per process (a :class:`trio.CapacityLimiter` per trio run), so bulk work cannot take
every core either.

Each work item runs with its worker thread's scheduling priority lowered
(:func:`meshcloud.priority.lowered`: ``os.setpriority`` on the thread id; Linux schedules
threads separately, and raising one's own niceness needs no privilege). Within the
agent's share of the machine, the kernel then runs the event-loop thread first whenever
both are ready: the loop is not starved by its own bulk work. After the item the thread
goes back to the base priority when the process may raise it again (else it stays low).
Elsewhere (no per-thread priority), the call fails quietly and only the bound applies.

The GIL is the other way a worker thread holds the loop: the loop thread releases it in
every system call and C call that allows it (each ``recv``/``send``, each AEAD call of
the transport, hashing, LMDB), a worker thread running Python takes it, and the loop
thread then waits CPython's *switch interval* before it may ask for it back (the
"convoy": 5 ms by default, once per such call, so a loop step that reads and decrypts
2 MiB in 40 calls took 50-350 ms of wall time for 2-4 ms of CPU under load). The first
use of the bulk limiter therefore shortens the process's switch interval to
:data:`SWITCH_INTERVAL` (:func:`favour_loop`): the loop waits at most that long per call.

That bound holds only while the thread holding the GIL runs. When the loop is real-time
(``loop_scheduler = "rr"``), an item is not lowered but runs its Python real-time, one
priority below the loop, and its long C calls that release the GIL ordinary
(:func:`meshcloud.priority.python_work`, :func:`meshcloud.priority.gil_free`): a worker
preempted while it holds the GIL runs again as soon as the loop waits for it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

from meshcloud import priority

T = TypeVar("T")

BULK_THREADS = 2
"""Bulk work items running at once per process (one per core of a small machine)."""

BULK_NICENESS = 10
"""How much lower than the base priority a bulk work item runs (Unix niceness, 0 to 19)."""

SWITCH_INTERVAL = 0.0005
"""Seconds a thread waiting for the GIL waits before it asks the holder to drop it
(CPython's default is 0.005): bounds what each GIL hand-over costs the event loop."""

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("bulk")


def favour_loop(interval: float = SWITCH_INTERVAL) -> float:
    """Shorten the process's GIL switch interval to ``interval`` (never lengthen it):
    a thread waiting for the GIL (the event loop, back from a system call) waits at
    most that long for a worker thread running Python to hand it over. Returns the
    interval now in force."""
    if sys.getswitchinterval() > interval:
        sys.setswitchinterval(interval)
    return sys.getswitchinterval()


def limiter() -> trio.CapacityLimiter:
    """This trio run's limiter for bulk work (created on first use, which also
    shortens the GIL switch interval: :func:`favour_loop`)."""
    try:
        return _LIMITER.get()
    except LookupError:
        favour_loop()
        lim = trio.CapacityLimiter(BULK_THREADS)
        _LIMITER.set(lim)
        return lim


def _bulk_item(lower: bool, fn: Callable[..., T], *args: object) -> T:
    if priority.begin_python_work() or not lower:  # real-time until delivered
        return fn(*args)
    with priority.lowered(BULK_NICENESS):
        return fn(*args)


def released(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` as a bulk item that is one long C call releasing the GIL (hashing): it runs
    at the ordinary priority even next to a real-time loop (:func:`priority.gil_free`)."""
    def call(*args: object) -> T:
        with priority.gil_free():
            return fn(*args)
    return call


async def run_bulk(fn: Callable[..., T], *args: object,
                   bound: trio.CapacityLimiter | None = None, lower: bool = True) -> T:
    """``fn(*args)`` in a low-priority worker thread (real-time Python next to a
    real-time loop), at most :data:`BULK_THREADS` at a time per process (or under
    ``bound``: disk I/O has its own). ``lower=False``: at the base priority unless the
    loop is real-time (short Python work off the loop: the state store's flush, the
    capacity sample). Not cancellable once started (the work finishes; its result is
    then dropped).

    Started with :func:`trio.lowlevel.start_thread_soon`, not ``trio.to_thread``, so
    that the worker thread leaves real time only after it has handed the result back
    (``deliver``): trio's hand-over takes the GIL too."""
    async with bound or limiter():
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            finally:
                priority.end_python_work()

        trio.lowlevel.start_thread_soon(functools.partial(_bulk_item, lower, fn, *args), deliver)

        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the item runs to its end

        value: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return value
