"""Event-loop lag: how late trio wakes us, and which task steps held the loop.

An agent that blocks its own event loop (a long hash, an fsync'd commit, an erasure
encode on the trio thread) cannot read the acks and refutations already waiting in its
sockets: its probe rounds and suspicions run out and it blames healthy peers. The gossip
driver measures that lag and hands it to the core (``SwimCore.on_loop_lag``), which then
neither counts a probe whose deadline passed during the stall as the peer's failure nor
lets a suspicion expire on it (Lifeguard's local health awareness, fed by the loop).

* :class:`LagHistogram` — a pure record: max, count, a fixed-bucket histogram of lag
  samples (milliseconds), and the stalls over a threshold;
* the driver's ``SlowSteps`` (:mod:`gossip.driver`, it reads clocks) — a trio instrument
  timing every task step with the monotonic clock (the CPU clock only for slow ones);
  steps longer than a threshold are counted per task name, so the status page says
  *who* held the loop, and for how long, and the longest one since the last sample
  counts as lag; with the thread's run-queue clock (Linux schedstat) a slow step's wall
  time splits into our CPU, the kernel running other threads, and the rest (the GIL
  held by a worker thread, a page fault).

Pure (no clock, no I/O): the driver measures, this module keeps the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BUCKETS_MS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
"""Upper bounds of the histogram's buckets (a last bucket holds everything above)."""

SAMPLE_INTERVAL = 0.2
"""Seconds between two lag samples (the monitor sleeps this long and measures how late
it wakes). Each sample also takes the longest task step ``SlowSteps`` saw since the last
one, so a stall shorter than the interval is still counted, at most this late; five
wake-ups a second keep an idle agent's own cost low (at 20 a second the sampler alone
used ~0.5 % of a core)."""

CPU_MARK_EVERY = 0.01
"""``SlowSteps`` reads the thread's CPU clock (a system call) at most this often besides
after a slow step; a slow step's CPU time is counted from a mark at most this old."""

LOG_THRESHOLD = 0.1
"""A lag above this (seconds) is logged and counted as a stall."""


@dataclass
class LagHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    samples: int = 0
    stalls: int = 0
    max_s: float = 0.0
    last_s: float = 0.0

    def record(self, lag: float) -> bool:
        """Count one sample (seconds, clamped at 0); True if it is a stall worth logging."""
        lag = max(0.0, lag)
        self.samples += 1
        self.last_s = lag
        self.max_s = max(self.max_s, lag)
        ms = lag * 1000
        for i, bound in enumerate(BUCKETS_MS):
            if ms <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        if lag > LOG_THRESHOLD:
            self.stalls += 1
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        labels = [f"<={b:g}" for b in BUCKETS_MS] + [f">{BUCKETS_MS[-1]:g}"]
        return {"max_ms": round(self.max_s * 1000, 1), "last_ms": round(self.last_s * 1000, 1),
                "samples": self.samples, "stalls": self.stalls,
                "histogram_ms": dict(zip(labels, self.counts, strict=True))}
