"""The workload availability checker: replicas running vs wanted, over time.

Reads the ``workload_replicas`` records that :class:`sim.workloads.WorkloadSim`
writes (``{t, workload, running, wanted}`` at every change). A **deficit episode** of a
workload starts when fewer replicas run than wanted and ends when enough run again. After
the warm-up (the first instant every workload had all its replicas), every episode must
end within the bound — by default the scenario's ``detect_bound`` + 5 s, the issue's
"a replacement runs within detection + 5 s" — and none may still be open at the end
unless it began less than the bound before the end.

Figures: episodes, recovery median / p99 / max, availability (replica-seconds running
over replica-seconds wanted, capped at wanted, after warm-up), the largest
over-replication (more copies than wanted: views disagreeing, e.g. during a partition).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sim.checkers import CheckResult, percentile
from sim.scenario import Scenario
from sim.trace import Trace

RECOVERY_MARGIN = 5.0
"""Seconds on top of detection for a replacement to run (issue 6's failover target)."""


@dataclass
class Episode:
    workload: str
    start: float
    end: float | None = None
    worst: int = 0
    """Most replicas missing at once during the episode."""


class WorkloadAvailability:
    name = "workload_availability"

    def __init__(self, bound: float | None = None) -> None:
        self.bound = bound

    def bound_for(self, scenario: Scenario) -> float:
        if self.bound is not None:
            return self.bound
        explicit = getattr(scenario.checks, "workload_bound", None)
        if explicit is not None:
            return float(explicit)
        return float(scenario.checks.detect_bound) + RECOVERY_MARGIN

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        rows = trace.records.get("workload_replicas", [])
        if not rows:
            return CheckResult(self.name, True, "no workloads were modelled", {"workloads": 0})
        bound = self.bound_for(scenario)
        timelines: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: r["t"]):  # stable: same-time rows keep order
            timeline = timelines[row["workload"]]
            if timeline and timeline[-1][0] == row["t"]:
                timeline.pop()  # several changes at one instant: the last one holds
            timeline.append((row["t"], row["running"], row["wanted"]))
        warm = warm_up(timelines)
        if warm is None:
            return CheckResult(self.name, False, "some workload never had all its replicas",
                               {"workloads": len(timelines), "warm_up_s": None},
                               [f"{w} never reached {tl[-1][2]} replicas (at most "
                                f"{max(r for _, r, _ in tl)})" for w, tl in
                                sorted(timelines.items()) if not any(r >= wt for _, r, wt in tl)
                                ][:5])
        episodes: list[Episode] = []
        up_time = wanted_time = 0.0
        over = 0
        for workload, timeline in sorted(timelines.items()):
            eps, up, want, most = _scan(workload, timeline, warm, trace.end)
            episodes.extend(eps)
            up_time += up
            wanted_time += want
            over = max(over, most)
        closed = [e.end - e.start for e in episodes if e.end is not None]
        late = [e for e in episodes
                if (e.end is not None and e.end - e.start > bound)
                or (e.end is None and trace.end - e.start > bound)]
        figures: dict[str, Any] = {
            "workloads": len(timelines), "warm_up_s": round(warm, 3),
            "episodes": len(episodes), "late_episodes": len(late),
            "recovery_median_s": round(statistics.median(closed), 3) if closed else None,
            "recovery_p99_s": round(percentile(closed, 99), 3) if closed else None,
            "recovery_max_s": round(max(closed), 3) if closed else None,
            "availability": round(up_time / wanted_time, 6) if wanted_time else 1.0,
            "max_over_replication": over, "bound_s": bound,
        }
        examples = [
            f"{e.workload}: {e.worst} replica(s) missing from {e.start:.1f}s, "
            + (f"back after {e.end - e.start:.1f}s" if e.end is not None else "never back")
            + f" (bound {bound:g}s)" for e in late[:5]]
        if late:
            summary = f"{len(late)} of {len(episodes)} deficit(s) lasted longer than {bound:g}s"
        else:
            worst = f", slowest {figures['recovery_max_s']}s" if closed else ""
            summary = (f"{len(episodes)} deficit(s) across {len(timelines)} workloads, all "
                       f"recovered within {bound:g}s{worst}; availability "
                       f"{figures['availability']:.4%}")
        return CheckResult(self.name, not late, summary, figures, examples)


def warm_up(timelines: dict[str, list[tuple[float, int, int]]]) -> float | None:
    """The first time at which every workload had reached all its wanted replicas once."""
    firsts = []
    for timeline in timelines.values():
        first = next((t for t, running, wanted in timeline if running >= wanted), None)
        if first is None:
            return None
        firsts.append(first)
    return max(firsts)


def _scan(workload: str, timeline: list[tuple[float, int, int]], warm: float, end: float
          ) -> tuple[list[Episode], float, float, int]:
    episodes: list[Episode] = []
    current: Episode | None = None
    up = want = 0.0
    most_over = 0
    state = (0, 0)
    last_t = warm
    for t, running, wanted in [*timeline, (end, -1, -1)]:
        if t > warm:
            span = t - max(last_t, warm)
            if span > 0:
                up += min(state[0], state[1]) * span
                want += state[1] * span
            last_t = t
        if running < 0:
            break
        state = (running, wanted)
        most_over = max(most_over, running - wanted)
        if t < warm:
            continue
        if running < wanted:
            if current is None:
                current = Episode(workload, t)
                episodes.append(current)
            current.worst = max(current.worst, wanted - running)
        elif current is not None:
            current.end = t
            current = None
    return episodes, up, want, most_over
