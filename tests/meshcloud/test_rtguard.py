"""The real-time loop's CPU-share guard: the sans-IO core (meshcloud/rtguard.py), with
hypothesis, and its driver (meshcloud/agent/loopguard.py) on trio's MockClock with a fake
CPU clock and the priority changes recorded instead of made."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from meshcloud import priority
from meshcloud.agent import loopguard
from meshcloud.rtguard import CpuShareGuard, GuardPolicy, Verdict

POLICY = GuardPolicy(window=10.0, max_share=0.5, resume_share=0.25, cooldown=60.0, period=2.0)


def feed(guard: CpuShareGuard, start: float, seconds: float, share: float, cpu: float,
         step: float = 2.0) -> tuple[list[tuple[float, Verdict]], float, float]:
    """Observations every ``step`` s for ``seconds`` at ``share`` of a core."""
    out = []
    now = start
    while now < start + seconds:
        now += step
        cpu += share * step
        out.append((now, guard.observe(now, cpu)))
    return out, now, cpu


def test_a_loop_that_mostly_sleeps_stays_real_time():
    guard = CpuShareGuard(POLICY)
    verdicts, _, _ = feed(guard, 0.0, 600.0, 0.45, 0.0)
    assert {v for _, v in verdicts} == {Verdict.STAY}
    assert guard.realtime


def test_a_busy_loop_leaves_within_a_window_and_comes_back_after_the_cooldown():
    guard = CpuShareGuard(POLICY)
    verdicts, now, cpu = feed(guard, 0.0, 30.0, 0.9, 0.0)
    left = [t for t, v in verdicts if v is Verdict.LEAVE]
    assert left == [12.0]  # the first moment the samples (from t=2) span a whole window
    assert not guard.realtime
    # still busy: stays out however long
    verdicts, now, cpu = feed(guard, now, 120.0, 0.6, cpu)
    assert {v for _, v in verdicts} == {Verdict.STAY}
    # quiet again: back once the window holds only quiet samples (cooldown long past)
    verdicts, now, cpu = feed(guard, now, 30.0, 0.1, cpu)
    back = [t for t, v in verdicts if v is Verdict.RETURN]
    assert back and back[0] - (now - 30.0) <= POLICY.window + POLICY.period
    assert guard.realtime


def test_no_return_before_the_cooldown_even_when_quiet():
    guard = CpuShareGuard(POLICY)
    verdicts, now, cpu = feed(guard, 0.0, 12.0, 1.0, 0.0)
    assert Verdict.LEAVE in {v for _, v in verdicts}
    left_at = next(t for t, v in verdicts if v is Verdict.LEAVE)
    verdicts, _, _ = feed(guard, now, 100.0, 0.0, cpu)
    back = [t for t, v in verdicts if v is Verdict.RETURN]
    assert back and back[0] >= left_at + POLICY.cooldown


def test_forbid_means_never_back():
    guard = CpuShareGuard(POLICY)
    guard.forbid()
    verdicts, _, _ = feed(guard, 0.0, 300.0, 0.0, 0.0)
    assert {v for _, v in verdicts} == {Verdict.STAY}


def test_a_clock_that_does_not_move_changes_nothing():
    guard = CpuShareGuard(POLICY)
    feed(guard, 0.0, 12.0, 0.1, 0.0)
    assert guard.observe(12.0, 1000.0) is Verdict.STAY  # same instant: ignored
    assert guard.realtime


@pytest.mark.parametrize("bad", [dict(max_share=0.2, resume_share=0.3), dict(period=0.0),
                                 dict(period=20.0), dict(max_share=1.5)])
def test_a_bad_policy_is_refused(bad):
    with pytest.raises(ValueError):
        GuardPolicy(**bad)


@given(st.lists(st.tuples(st.floats(0.1, 5.0), st.floats(0.0, 1.0)), min_size=1,
                max_size=200))
def test_verdicts_follow_the_share_and_alternate(steps):
    """Whatever the trace: LEAVE only when the window's share is over max_share and the
    loop was real-time, RETURN only when it is at most resume_share and the cooldown has
    passed; they alternate, starting with LEAVE."""
    guard = CpuShareGuard(POLICY)
    now = cpu = 0.0
    last = Verdict.RETURN
    left_at = None
    for dt, share in steps:
        now += dt
        cpu += dt * share
        was = guard.realtime
        verdict = guard.observe(now, cpu)
        measured = guard.share()
        if verdict is Verdict.LEAVE:
            assert was and measured is not None and measured > POLICY.max_share
            assert last is Verdict.RETURN
            last, left_at = verdict, now
        elif verdict is Verdict.RETURN:
            assert not was and measured is not None and measured <= POLICY.resume_share
            assert left_at is not None and now - left_at >= POLICY.cooldown
            assert last is Verdict.LEAVE
            last = verdict
        assert guard.realtime == (last is Verdict.RETURN)


# --- the driver ---------------------------------------------------------------------------


class FakeCpu:
    def __init__(self) -> None:
        self.share = 0.0
        self.cpu = 0.0
        self.at = 0.0

    def __call__(self) -> float:
        now = trio.current_time()
        self.cpu += (now - self.at) * self.share
        self.at = now
        return self.cpu


@pytest.fixture
def recorded(monkeypatch):
    calls: list[str] = []
    state = {"rr": True, "for_good": False}
    monkeypatch.setattr(priority, "realtime_now", lambda: state["rr"])
    monkeypatch.setattr(priority, "out_for_good", lambda: state["for_good"])

    def leave(why: str) -> None:
        calls.append(f"leave: {why}")
        state["rr"] = False

    def back() -> bool:
        if state["for_good"]:
            return False
        calls.append("return")
        state["rr"] = True
        return True

    monkeypatch.setattr(priority, "leave_realtime", leave)
    monkeypatch.setattr(priority, "return_to_realtime", back)
    return calls, state


async def test_the_driver_demotes_a_spinning_loop_and_brings_it_back(recorded, autojump_clock):
    calls, state = recorded
    cpu = FakeCpu()
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: loopguard.guard_realtime_loop(POLICY, cpu=cpu))
        cpu.share = 0.9
        await trio.sleep(30)
        assert len(calls) == 1 and calls[0].startswith("leave: it used 90% of a core")
        cpu.share = 0.05
        await trio.sleep(POLICY.cooldown + POLICY.window + 2 * POLICY.period)
        assert calls[1:] == ["return"] and state["rr"]
        nursery.cancel_scope.cancel()


async def test_the_driver_stops_when_the_loop_is_out_for_good(recorded, autojump_clock):
    calls, state = recorded
    cpu = FakeCpu()
    with trio.move_on_after(1000) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: loopguard.guard_realtime_loop(POLICY, cpu=cpu))
            await trio.sleep(5)
            state["rr"], state["for_good"] = False, True  # the kernel's SIGXCPU
    assert not scope.cancelled_caught  # the guard returned by itself
    assert calls == []


async def test_the_driver_does_nothing_without_real_time(recorded, autojump_clock):
    calls, state = recorded
    state["rr"] = False
    with trio.fail_after(1):
        await loopguard.guard_realtime_loop(POLICY, cpu=FakeCpu())
    assert calls == []
