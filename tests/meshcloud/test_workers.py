"""Workers: states, tranquility throttle, error isolation."""

from __future__ import annotations

import pytest

from meshcloud.workers import Tranquilizer, WorkerSet, WorkerState


class Counter:
    def __init__(self, name: str, work: int, wake: float | None = None) -> None:
        self.name = name
        self.work = work
        self.wake = wake
        self.steps = 0

    def step(self, now: float) -> WorkerState:
        self.steps += 1
        if self.work < 0:
            raise RuntimeError("boom")
        if self.work == 0:
            return WorkerState.IDLE
        self.work -= 1
        return WorkerState.BUSY if self.work else WorkerState.DONE

    def next_deadline(self) -> float | None:
        return self.wake

    def queue_length(self) -> int | None:
        return self.work


@pytest.mark.parametrize(("tranquility", "steps", "rest"), [
    (2.0, [0.1], 0.2),
    (2.0, [0.1, 0.3], 0.4),
    (0.0, [5.0], 0.0),
    (1.0, [0.0], 0.0),
])
def test_tranquilizer_rests_in_proportion_to_work(tranquility, steps, rest):
    t = Tranquilizer(tranquility)
    for s in steps:
        got = t.observe(s)
    assert got == pytest.approx(rest)


def test_busy_worker_is_throttled_by_measured_time():
    clock = iter(x * 0.5 for x in range(1000))  # every step "takes" 0.5 s of CPU
    workers = WorkerSet(lambda: next(clock))
    worker = Counter("scrub", work=5)
    workers.add(worker, tranquility=2.0)
    workers.run_due(0.0)
    assert worker.steps == 1
    (status,) = workers.statuses()
    assert status.state is WorkerState.THROTTLED and status.next_run == pytest.approx(1.0)
    workers.run_due(0.5)
    assert worker.steps == 1  # still resting
    workers.run_due(1.0)
    assert worker.steps == 2


def test_without_throttle_work_runs_to_done_and_idle_waits_for_its_deadline():
    workers = WorkerSet()
    done, idle = Counter("gc", work=3), Counter("sync", work=0, wake=30.0)
    workers.add(done, tranquility=0.0)
    workers.add(idle)
    workers.run_due(0.0)
    assert done.steps == 3 and [s.name for s in workers.statuses()] == ["sync"]
    assert workers.next_deadline() == 30.0
    workers.run_due(10.0)
    assert idle.steps == 1
    workers.poke("sync", 12.0)
    workers.run_due(12.0)
    assert idle.steps == 2


def test_a_failing_worker_is_retried_later_and_reported():
    workers = WorkerSet(error_delay=5.0)
    bad = Counter("bad", work=-1)
    workers.add(bad)
    workers.run_due(0.0)
    (status,) = workers.statuses()
    assert status.errors == 1 and "boom" in status.last_error and status.next_run == 5.0
    with pytest.raises(ValueError):
        workers.add(Counter("bad", 1))
