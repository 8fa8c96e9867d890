"""Cron schedules and due ticks (pure cores)."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.functions.core import build_version, deploy, with_schedule
from apps.functions.cron import CronError, parse_cron
from apps.functions.messages import FunctionRecord, TickRecord
from apps.functions.schedule import CATCH_UP_S, due_ticks, stale_ticks, tick_id

T0 = calendar.timegm((2026, 12, 7, 2, 0, 0))  # a Monday


def test_six_fields_every_ten_seconds():
    cron = parse_cron("*/10 * * * * *")
    assert cron.next_after(T0) == T0 + 10
    assert cron.next_after(T0 + 9) == T0 + 10
    assert cron.between(T0, T0 + 60) == [T0 + 10 * i for i in range(1, 7)]


def test_five_fields_fire_on_the_minute():
    cron = parse_cron("30 4 * * *")
    assert cron.next_after(T0) == T0 + (2 * 3600 + 30 * 60)
    assert parse_cron("0 0 1 1 *").next_after(T0) == calendar.timegm((2027, 1, 1, 0, 0, 0))


def test_day_fields_or_when_both_restricted():
    cron = parse_cron("0 0 0 13 * 5")  # the 13th or any Friday
    first = cron.next_after(T0)
    assert first == calendar.timegm((2026, 12, 11, 0, 0, 0))  # Friday 11th
    assert cron.next_after(first) == calendar.timegm((2026, 12, 13, 0, 0, 0))
    assert parse_cron("0 0 * * 0").next_after(T0) == calendar.timegm((2026, 12, 13, 0, 0, 0))
    assert parse_cron("0 0 * * 7").next_after(T0) == calendar.timegm((2026, 12, 13, 0, 0, 0))


@pytest.mark.parametrize("text", ["", "* * * *", "* * * * * * *", "61 * * * * *",
                                  "*/0 * * * *", "a * * * *", "5-2 * * * *", "* * 0 * *",
                                  "* * * 13 *", "* * * * 8", None, 5, "1,,2 * * * *"])
def test_bad_schedules_are_one_clear_error(text):
    with pytest.raises(CronError):
        parse_cron(text)


def test_impossible_date_never_fires():
    with pytest.raises(CronError, match="does not fire"):
        parse_cron("0 0 30 2 *").next_after(T0)


_field = st.one_of(st.just("*"), st.integers(0, 5).map(str),
                   st.integers(1, 20).map(lambda n: f"*/{n}"),
                   st.tuples(st.integers(0, 10), st.integers(0, 10)).map(
                       lambda ab: f"{min(ab)}-{max(ab)}"))


@settings(max_examples=60, deadline=None)
@given(sec=_field, minute=_field, start=st.integers(T0, T0 + 86_400 * 400))
def test_next_after_is_the_first_match(sec, minute, start):
    cron = parse_cron(f"{sec} {minute} * * * *")
    nxt = cron.next_after(start)
    assert nxt > start and cron.matches(nxt)
    assert not any(cron.matches(t) for t in range(start + 1, min(nxt, start + 4000)))


def test_due_ticks_skip_recorded_and_catch_up_missed():
    cron = parse_cron("*/10 * * * * *")
    assert due_ticks(cron, since_s=T0, now_s=T0 + 30, recorded=[]) == [T0 + 10, T0 + 20,
                                                                        T0 + 30]
    # a new holder after a gap: recorded ticks never again, missed ones caught up
    assert due_ticks(cron, since_s=T0, now_s=T0 + 50, recorded=[T0 + 10, T0 + 20]) == [
        T0 + 30, T0 + 40, T0 + 50]
    assert due_ticks(cron, since_s=T0, now_s=T0 + 50, recorded=[T0 + 40]) == [T0 + 50]
    assert due_ticks(cron, since_s=T0 + 25, now_s=T0 + 30, recorded=[]) == [T0 + 30]
    far = T0 + 10 * CATCH_UP_S
    assert due_ticks(cron, since_s=T0, now_s=far, recorded=[])[0] == far - CATCH_UP_S + 10


def row(state: str, at_s: int) -> TickRecord:
    return TickRecord(state=state, term=1, node=b"n" * 16, at_ms=at_s * 1000)


def test_a_tick_left_started_runs_again_after_the_timeout_and_done_never():
    recorded = {T0 + 10: row("done", T0 + 10), T0 + 20: row("started", T0 + 20),
                T0 + 30: row("started", T0 + 30)}
    # within the call's timeout the holder may still be running it: not yet
    assert stale_ticks(recorded, now_ms=(T0 + 25) * 1000, after_ms=10_000) == []
    assert stale_ticks(recorded, now_ms=(T0 + 31) * 1000, after_ms=10_000) == [T0 + 20]
    assert stale_ticks(recorded, now_ms=(T0 + 45) * 1000, after_ms=10_000) == [
        T0 + 20, T0 + 30]
    # not one this node is running, not one older than the catch-up window
    assert stale_ticks(recorded, now_ms=(T0 + 45) * 1000, after_ms=10_000,
                       running=[T0 + 20]) == [T0 + 30]
    far = (T0 + 30 + CATCH_UP_S + 1) * 1000
    assert stale_ticks(recorded, now_ms=far, after_ms=10_000) == []
    # a stale tick does not make due_ticks skip or repeat anything
    cron = parse_cron("*/10 * * * * *")
    assert due_ticks(cron, since_s=T0, now_s=T0 + 45, recorded=recorded) == [T0 + 40]
    assert tick_id("f", T0) == f"tick-f-{T0}" == tick_id("f", T0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 119), max_size=6), st.integers(1, 8))
def test_every_tick_completes_once_while_holders_die(kills, call_s):
    """A simulated mesh over two minutes: the lease holder runs due and stale ticks;
    killed holders leave their calls unfinished; a new holder takes over 6 s later.
    Every tick ends ``done`` by exactly one completed call; a ``done`` tick never runs
    again; a tick re-runs only after its last run was abandoned."""
    cron = parse_cron("*/10 * * * * *")
    timeout_s = 8
    recorded: dict[int, TickRecord] = {}
    running: dict[int, int] = {}  # tick -> second its call completes
    completed: dict[int, int] = {}
    abandoned: dict[int, int] = {}
    holder_from = 0
    deaths = set(kills)
    for now in range(0, 160):
        for tick, end in list(running.items()):
            if end <= now:
                del running[tick]
                completed[tick] = completed.get(tick, 0) + 1
                recorded[T0 + tick] = row("done", T0 + now)
        if now in deaths and now < 120:
            abandoned.update((t, abandoned.get(t, 0) + 1) for t in running)
            running.clear()  # the holder died mid-call
            holder_from = now + 6
        if now < holder_from:
            continue
        now_s = T0 + min(now, 120)
        due = due_ticks(cron, since_s=T0, now_s=now_s,
                        recorded={t: r for t, r in recorded.items()})
        stale = stale_ticks(recorded, now_ms=(T0 + now) * 1000,
                            after_ms=(timeout_s + 1) * 1000,
                            running=[T0 + t for t in running])
        for tick in sorted(set(due) | set(stale)):
            assert recorded.get(tick) is None or recorded[tick].state == "started"
            recorded[tick] = row("started", T0 + now)
            running[tick - T0] = now + call_s
    assert sorted(completed) == list(range(10, 121, 10))
    assert set(completed.values()) == {1}
    assert all(r.state == "done" for r in recorded.values())
    for tick, times in abandoned.items():
        assert completed[tick] == 1 and times >= 1


def test_schedule_on_a_record_survives_deploys():
    record = FunctionRecord(name="f", current=1, versions=())
    on = with_schedule(record, "*/10  * * * * *", now_ms=5000)
    assert (on.schedule, on.schedule_since_ms) == ("*/10 * * * * *", 5000)
    assert with_schedule(on, "*/10 * * * * *", now_ms=9000) is on  # same: start kept
    assert with_schedule(on, "off", now_ms=9000).schedule == ""
    with pytest.raises(CronError):
        with_schedule(on, "nope", now_ms=1)
    v = build_version({"sha256": "a" * 64}, version=2, size=10, now_ms=1)
    assert deploy(on, "f", v).schedule == "*/10 * * * * *"  # a new version keeps it
