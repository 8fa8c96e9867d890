"""The real-time loop's CPU-share guard (sans-IO): real time only while the loop mostly sleeps.

A real-time event loop (:func:`meshcloud.priority.realtime_loop`) runs ahead of every
ordinary thread of the machine. The kernel's ``RLIMIT_RTTIME`` demotes a loop that runs
a whole second without sleeping, but not one that spins with short sleeps: that one could
take ~95 % of a core (RT throttling's cap) from everything else. The guard watches the
loop thread's own CPU time over a sliding window: above :attr:`GuardPolicy.max_share` of
one core it says *leave* (the loop goes back to the ordinary scheduler); once it has been
out for :attr:`GuardPolicy.cooldown` seconds and its share over the last window is at
most :attr:`GuardPolicy.resume_share`, it says *return*.

The driver (:func:`meshcloud.agent.daemon`'s guard task) feeds :meth:`CpuShareGuard.observe`
the monotonic time and the loop thread's CPU time every :attr:`GuardPolicy.period` seconds
and applies what it answers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum


class Verdict(Enum):
    STAY = "stay"
    LEAVE = "leave"
    RETURN = "return"


@dataclass(frozen=True)
class GuardPolicy:
    window: float = 10.0
    """Seconds over which the loop's CPU share is measured."""
    max_share: float = 0.5
    """Share of one core (0..1) above which the loop leaves real time."""
    resume_share: float = 0.25
    """Share at or below which a loop out of real time may come back."""
    cooldown: float = 60.0
    """Seconds out of real time before it may come back."""
    period: float = 2.0
    """Seconds between two observations (the driver's sleep)."""

    def __post_init__(self) -> None:
        if not 0 < self.resume_share <= self.max_share <= 1:
            raise ValueError("need 0 < resume_share <= max_share <= 1")
        if not 0 < self.period <= self.window:
            raise ValueError("need 0 < period <= window")


class CpuShareGuard:
    """Sliding-window CPU share of one thread; says when it should leave or come back."""

    def __init__(self, policy: GuardPolicy = GuardPolicy(), *, realtime: bool = True) -> None:
        self.policy = policy
        self.realtime = realtime
        self._samples: deque[tuple[float, float]] = deque()
        self._left_at: float | None = None

    def share(self) -> float | None:
        """CPU share over the samples held (None until they span a whole window)."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if t1 - t0 < self.policy.window:
            return None
        return max(0.0, c1 - c0) / (t1 - t0)

    def observe(self, now: float, cpu: float) -> Verdict:
        """One observation: monotonic seconds, the thread's CPU seconds."""
        samples = self._samples
        if samples and now <= samples[-1][0]:
            return Verdict.STAY  # a clock that did not move tells nothing
        samples.append((now, cpu))
        while len(samples) > 2 and now - samples[1][0] >= self.policy.window:
            samples.popleft()  # keep the newest samples spanning at least a window
        share = self.share()
        if share is None:
            return Verdict.STAY
        if self.realtime and share > self.policy.max_share:
            self.realtime = False
            self._left_at = now
            return Verdict.LEAVE
        if (not self.realtime and self._left_at is not None
                and now - self._left_at >= self.policy.cooldown
                and share <= self.policy.resume_share):
            self.realtime = True
            self._left_at = None
            return Verdict.RETURN
        return Verdict.STAY

    def forbid(self) -> None:
        """Out of real time for good (the kernel's RLIMIT_RTTIME fired): never RETURN."""
        self.realtime = False
        self._left_at = None
