"""Cron schedules and due ticks (pure cores)."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.functions.core import build_version, deploy, with_schedule
from apps.functions.cron import CronError, parse_cron
from apps.functions.messages import FunctionRecord
from apps.functions.schedule import CATCH_UP_S, due_ticks

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
