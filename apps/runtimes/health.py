"""HealthCore: the verdict of a replica's health check from its probe results (sans-IO).

The runtime's driver asks :meth:`HealthCore.next_deadline` when to probe, runs the probe
(:mod:`apps.runtimes.probes`) under the check's timeout, and feeds the result back with
:meth:`HealthCore.on_probe_result`. The rules follow Docker/podman HEALTHCHECK semantics
(docs.docker.com "HEALTHCHECK", options ``--interval --timeout --start-period --retries``):

- the state starts at STARTING; the first success makes it HEALTHY;
- ``retries`` consecutive failures make it UNHEALTHY; failures whose probe *started* inside
  the start period do not count (a slow starter is not punished), successes always do;
- one success resets the failing streak and makes it HEALTHY again;
- probes are ``interval`` apart, measured from the end of the previous probe, and the first
  runs right away (``started`` time), so a fast server is healthy within one probe.

Time is ``now`` (float seconds, any monotonic origin) passed in; nothing here reads a clock.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from apps.runtimes.spec import HealthCheck

LOG_KEPT = 5
"""Probe results remembered for ``health_detail`` (podman keeps 5 too)."""


class HealthState(enum.Enum):
    NONE = "none"
    """No health check in the spec."""
    STARTING = "starting"
    """Checked, but no verdict yet (start period, or no probe answered)."""
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str
    at: float


class HealthCore:
    """Health of one replica. States: STARTING -> HEALTHY <-> UNHEALTHY."""

    def __init__(self, check: HealthCheck, now: float) -> None:
        self.check = check
        self.started = now
        self.state = HealthState.STARTING
        self.failing_streak = 0
        self.log: deque[ProbeResult] = deque(maxlen=LOG_KEPT)
        self._next = now
        self._probe_started: float | None = None

    def next_deadline(self) -> float:
        """When the next probe should start (absolute, same origin as ``now``)."""
        return self._next

    def on_probe_started(self, now: float) -> None:
        """Record when the probe began (the start period is judged at that moment)."""
        self._probe_started = now

    def on_probe_result(self, ok: bool, detail: str, now: float) -> HealthState | None:
        """Feed one probe outcome; return the new state if it changed, else None."""
        began = now if self._probe_started is None else self._probe_started
        self._probe_started = None
        self.log.append(ProbeResult(ok, detail, now))
        self._next = now + self.check.interval
        before = self.state
        if ok:
            self.failing_streak = 0
            self.state = HealthState.HEALTHY
        elif began - self.started >= self.check.start_period:
            self.failing_streak += 1
            if self.failing_streak >= self.check.retries:
                self.state = HealthState.UNHEALTHY
        return self.state if self.state is not before else None

    @property
    def detail(self) -> str:
        """The latest probe's outcome in words ("" before any probe)."""
        if not self.log:
            return ""
        last = self.log[-1]
        streak = f" ({self.failing_streak} failing in a row)" if self.failing_streak else ""
        return ("ok: " if last.ok else "failed: ") + last.detail + streak
