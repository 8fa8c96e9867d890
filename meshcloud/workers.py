"""Background workers with a visible state and a tranquility throttle.

Model: Garage ``src/util/background/worker.rs`` and ``src/util/tranquilizer.rs``.
Anti-entropy, tombstone GC, Merkle updates, expiry, and later repair and scrub are
*workers*: objects whose :meth:`Worker.step` does a bounded amount of work and says what
state it is in:

* ``BUSY``: more work is waiting; run again soon (after resting, see below);
* ``THROTTLED``: resting after busy work (set by the :class:`WorkerSet`, not by steps);
* ``IDLE``: nothing to do until :meth:`Worker.next_deadline`;
* ``DONE``: finished for good; the set drops it.

**Tranquility** (phones share the mesh): after a busy step that took ``t`` seconds of
CPU, the worker rests ``tranquility * mean(t over the last steps)`` before the next step,
so it uses at most ``1 / (1 + tranquility)`` of a core. Time spent is measured by the
caller's ``cpu_clock`` (``time.perf_counter`` in a driver, a constant in the simulator,
where steps take no time and throttling is off).

Pure: no clock is read here; ``now`` and ``cpu_clock`` are passed in.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class WorkerState(enum.Enum):
    BUSY = "busy"
    THROTTLED = "throttled"
    IDLE = "idle"
    DONE = "done"


class Worker(Protocol):
    name: str

    def step(self, now: float) -> WorkerState:
        """Do a bounded amount of work; BUSY if more is waiting, IDLE or DONE if not."""
        ...

    def next_deadline(self) -> float | None:
        """When an IDLE worker wants to run again (None: only when poked)."""
        ...

    def queue_length(self) -> int | None:
        """Work waiting, if the worker can tell (shown in statistics)."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    name: str
    state: WorkerState
    steps: int
    queue_length: int | None
    next_run: float | None
    errors: int
    last_error: str | None


DEFAULT_TRANQUILITY = 2.0
"""Rest twice as long as the work took: at most a third of a core per worker."""

OBSERVATIONS = 10
"""Steps averaged by the tranquilizer (Garage keeps a window too)."""


class Tranquilizer:
    """Rest in proportion to work done: ``tranquility * mean(last step durations)``."""

    def __init__(self, tranquility: float = DEFAULT_TRANQUILITY,
                 observations: int = OBSERVATIONS) -> None:
        if tranquility < 0:
            raise ValueError("tranquility is >= 0")
        self.tranquility = tranquility
        self._window: deque[float] = deque(maxlen=observations)

    def observe(self, step_seconds: float) -> float:
        """Record one step's duration; returns how long to rest now."""
        self._window.append(max(0.0, step_seconds))
        return self.tranquility * sum(self._window) / len(self._window)

    def clear(self) -> None:
        self._window.clear()


class _Slot:
    __slots__ = ("errors", "last_error", "next_run", "state", "steps", "tranquilizer",
                 "worker")

    def __init__(self, worker: Worker, tranquility: float) -> None:
        self.worker = worker
        self.tranquilizer = Tranquilizer(tranquility)
        self.state = WorkerState.BUSY
        self.next_run: float | None = float("-inf")
        self.steps = 0
        self.errors = 0
        self.last_error: str | None = None


class WorkerSet:
    """Runs workers when due and throttles busy ones. Pure: ``now`` and ``cpu_clock``
    come from the caller.

    A step that raises an exception counts as an error: the worker is retried after
    ``error_delay`` (the error never escapes, as in Garage's worker runner), and
    :meth:`statuses` shows it.
    """

    def __init__(self, cpu_clock: Callable[[], float] = lambda: 0.0, *,
                 error_delay: float = 10.0) -> None:
        self.cpu_clock = cpu_clock
        self.error_delay = error_delay
        self._slots: dict[str, _Slot] = {}

    def add(self, worker: Worker, tranquility: float = DEFAULT_TRANQUILITY) -> None:
        if worker.name in self._slots:
            raise ValueError(f"a worker named {worker.name} is already running")
        self._slots[worker.name] = _Slot(worker, tranquility)

    def poke(self, name: str, now: float) -> None:
        """New work for ``name``: run it at ``now`` unless it is resting."""
        slot = self._slots.get(name)
        if slot is not None and slot.state is not WorkerState.THROTTLED:
            slot.next_run = now if slot.next_run is None else min(slot.next_run, now)

    def next_deadline(self) -> float | None:
        runs = [s.next_run for s in self._slots.values() if s.next_run is not None]
        return min(runs) if runs else None

    def run_due(self, now: float, *, max_steps: int = 64) -> int:
        """Step every due worker (each up to ``max_steps`` times while BUSY and not
        throttled). Returns the number of steps taken."""
        taken = 0
        for name, slot in list(self._slots.items()):
            steps = 0
            while slot.next_run is not None and slot.next_run <= now and steps < max_steps:
                steps += 1
                taken += 1
                begin = self.cpu_clock()
                try:
                    state = slot.worker.step(now)
                except Exception as exc:  # a worker bug must not stop the others
                    slot.errors += 1
                    slot.last_error = f"{type(exc).__name__}: {exc}"
                    slot.state = WorkerState.IDLE
                    slot.next_run = now + self.error_delay
                    break
                slot.steps += 1
                elapsed = self.cpu_clock() - begin
                if state is WorkerState.DONE:
                    del self._slots[name]
                    break
                if state is WorkerState.BUSY:
                    rest = slot.tranquilizer.observe(elapsed)
                    if rest > 0:
                        slot.state = WorkerState.THROTTLED
                        slot.next_run = now + rest
                        break
                    slot.state = WorkerState.BUSY
                    slot.next_run = now
                    continue
                slot.state = WorkerState.IDLE
                slot.tranquilizer.clear()
                slot.next_run = slot.worker.next_deadline()
            if steps >= max_steps and slot.state is WorkerState.BUSY:
                slot.next_run = now  # yield to the caller, come back at once
        return taken

    def statuses(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(name=name, state=s.state, steps=s.steps,
                         queue_length=s.worker.queue_length(), next_run=s.next_run,
                         errors=s.errors, last_error=s.last_error)
            for name, s in sorted(self._slots.items())
        ]
