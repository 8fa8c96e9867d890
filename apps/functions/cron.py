"""Cron schedules of functions (pure, no I/O): parsing and the next firing time.

Five fields ``minute hour day-of-month month day-of-week`` or six with seconds first
(``*/10 * * * * *``). Each field is ``*``, a number, a range ``a-b``, a step ``*/n`` or
``a-b/n``, or a comma list of these. Day-of-week is 0-7 (0 and 7 are Sunday). When both
day fields are restricted a day matches either (the classic cron rule). Times are whole
seconds since the epoch, UTC.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meshcloud.errors import MeshError

_LIMITS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
MAX_SCAN_YEARS = 5
"""A schedule that fires less often than this never fires (e.g. Feb 30)."""


class CronError(MeshError):
    """A schedule that is not valid cron syntax."""

    code = "bad_request"


@dataclass(frozen=True, slots=True)
class Cron:
    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Monday … 6 = Sunday (Python's convention, converted from cron's)."""
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, dt: datetime) -> bool:
        in_days = dt.day in self.days
        in_week = dt.weekday() in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_week
        return in_days and in_week

    def matches(self, t: int) -> bool:
        dt = datetime.fromtimestamp(t, UTC)
        return (dt.second in self.seconds and dt.minute in self.minutes
                and dt.hour in self.hours and dt.month in self.months
                and self.day_matches(dt))

    def next_after(self, t: int) -> int:
        """The first firing time strictly after ``t``; :class:`CronError` if none within
        :data:`MAX_SCAN_YEARS`."""
        dt = datetime.fromtimestamp(int(t) + 1, UTC)
        limit = dt + timedelta(days=366 * MAX_SCAN_YEARS)
        while dt < limit:
            if dt.month not in self.months:
                year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
                dt = dt.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
                continue
            if not self.day_matches(dt):
                dt = (dt + timedelta(days=1)).replace(hour=0, minute=0, second=0)
                continue
            if dt.hour not in self.hours:
                dt = (dt + timedelta(hours=1)).replace(minute=0, second=0)
                continue
            if dt.minute not in self.minutes:
                dt = (dt + timedelta(minutes=1)).replace(second=0)
                continue
            later = [s for s in self.seconds if s >= dt.second]
            if not later:
                dt = (dt + timedelta(minutes=1)).replace(second=0)
                continue
            return calendar.timegm(dt.replace(second=min(later)).utctimetuple())
        raise CronError(f"schedule {self.text!r} does not fire within {MAX_SCAN_YEARS} years")

    def between(self, start: int, end: int, limit: int = 100) -> list[int]:
        """Firing times in ``(start, end]``, at most the last ``limit`` of them."""
        out: list[int] = []
        t = start
        while True:
            t = self.next_after(t)
            if t > end:
                return out[-limit:]
            out.append(t)
            if len(out) > 4 * limit:
                out = out[-limit:]


def _field(text: str, index: int) -> frozenset[int]:
    lo, hi = _LIMITS[index]
    name = _NAMES[index]
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"bad step {step_text!r} in the {name} field")
            step = int(step_text)
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            a_text, _, b_text = base.partition("-")
            if not (a_text.isdigit() and b_text.isdigit()):
                raise CronError(f"bad range {base!r} in the {name} field")
            a, b = int(a_text), int(b_text)
        elif base.isdigit():
            a = int(base)
            b = hi if step_text else a
        else:
            raise CronError(f"bad {name} field {text!r}")
        if not lo <= a <= b <= hi:
            raise CronError(f"{name} {base!r} is outside {lo}-{hi}")
        values.update(range(a, b + 1, step))
    return frozenset(values)


def parse_cron(text: object) -> Cron:
    """A :class:`Cron` from 5 or 6 fields; every bad field is a :class:`CronError`."""
    if not isinstance(text, str) or len(text) > 200:
        raise CronError(f"bad schedule {text!r}: a cron string")
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(f"bad schedule {text!r}: 5 fields (minute hour day month "
                        "weekday) or 6 with seconds first")
    sec, minute, hour, dom, month, dow = (_field(f, i) for i, f in enumerate(fields))
    weekdays = frozenset((d - 1) % 7 for d in dow)  # cron 0/7 = Sunday → 6, 1 = Monday → 0
    return Cron(text=" ".join(text.split()), seconds=sec, minutes=minute, hours=hour,
                days=dom, months=month, weekdays=weekdays,
                days_restricted=fields[3] != "*", weekdays_restricted=fields[5] != "*")
