"""Checkers: read a :class:`~sim.trace.Trace`, decide pass or fail, and say why.

A checker is any object with ``name`` and ``check(trace, scenario) -> CheckResult``.
Adding one is a small, obvious change: write the class, add it to :data:`CHECKERS` (or
pass it to :func:`run_checkers`). Each result carries figures (for ``metrics.json``) and,
on failure, a few concrete examples of what went wrong.

What a node *should* believe about another: ``subject`` is alive for ``observer`` iff the
subject is really alive (not crashed, left, asleep or gone) and both are on the same side
of any partition. Membership checkers measure how long beliefs take to match that.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.scenario import Scenario
from sim.trace import Trace


@dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


class Checker(Protocol):
    name: str

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult: ...


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def short(node: bytes) -> str:
    return node.hex()[:8]


# --- replaying beliefs against the truth -----------------------------------------------------


@dataclass
class Episode:
    """One change of what nodes should believe about a subject, and when they caught up."""

    subject: bytes | None
    kind: str
    start: float
    converged: float | None = None
    superseded: bool = False
    """A newer change of the same subject came before this one converged (a crash undone
    by a restart 0.1 s later cannot, and need not, be noticed)."""

    @property
    def duration(self) -> float | None:
        return None if self.converged is None else self.converged - self.start


class BeliefReplay:
    """Replays a trace in time order, tracking disagreements between beliefs and truth.

    ``disagree[s]`` counts live observers whose belief about ``s`` differs from what they
    should believe. Truth changes cost O(N) (rare); belief changes cost O(1) (frequent).
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.truth: dict[bytes, str] = {}
        self.group: dict[bytes, int] = {}
        self.belief: dict[bytes, dict[bytes, bool]] = defaultdict(dict)
        self.initial: frozenset[bytes] = frozenset(
            node for row in trace.records.get("initial_members", []) for node in row["nodes"])
        """Nodes that started as one converged mesh: they believe each other alive."""
        self.restarted: set[bytes] = set()
        """Nodes that came back as a new process: they start knowing nothing."""
        self.disagree: dict[bytes, int] = defaultdict(int)
        self.total = 0
        self.episodes: list[Episode] = []
        self._open: dict[bytes | None, Episode] = {}
        self.partitioned = False

    def expected(self, observer: bytes, subject: bytes) -> bool:
        if self.truth.get(subject) != "alive":
            return False
        return self.group.get(observer, -1) == self.group.get(subject, -1)

    def observers(self) -> list[bytes]:
        return [n for n, s in self.truth.items() if s == "alive"]

    def believes_alive(self, observer: bytes, subject: bytes) -> bool:
        known = self.belief[observer].get(subject)
        if known is None:
            return (observer in self.initial and observer not in self.restarted
                    and subject in self.initial)
        return known

    def _pair_wrong(self, observer: bytes, subject: bytes) -> bool:
        return self.believes_alive(observer, subject) != self.expected(observer, subject)

    def _recount_subject(self, subject: bytes) -> None:
        count = sum(1 for o in self.observers()
                    if o != subject and self._pair_wrong(o, subject))
        self.total += count - self.disagree[subject]
        self.disagree[subject] = count

    def _recount_all(self) -> None:
        for subject in list(self.truth):
            self._recount_subject(subject)

    def _open_episode(self, subject: bytes | None, kind: str, t: float) -> None:
        previous = self._open.get(subject)
        if previous is not None:
            previous.superseded = True
        episode = Episode(subject, kind, t)
        self.episodes.append(episode)
        self._open[subject] = episode
        self._close_converged(t)

    def _close_converged(self, t: float) -> None:
        for key, episode in list(self._open.items()):
            done = self.total == 0 if key is None else self.disagree.get(key, 0) == 0
            if done:
                episode.converged = t
                del self._open[key]

    # --- events ---------------------------------------------------------------------------

    def on_truth(self, t: float, node: bytes, state: str) -> None:
        before = self.truth.get(node)
        was_observer = before == "alive"
        if state == "alive" and before in ("crashed", "gone", "left"):
            # a new process: what the old one believed died with it
            self.belief[node] = {}
            self.restarted.add(node)
        self.truth[node] = state
        is_observer = state == "alive"
        if was_observer != is_observer:
            # the node starts or stops counting as an observer of everyone; whether each of
            # its beliefs is wrong does not depend on its own state, only on the subject's
            step = 1 if is_observer else -1
            for subject in self.truth:
                if subject != node and self._pair_wrong(node, subject):
                    self.disagree[subject] += step
                    self.total += step
        self._recount_subject(node)
        if before != state:
            self._open_episode(node, f"{before or 'new'}->{state}", t)

    def on_view(self, t: float, observer: bytes, subject: bytes, state: str) -> None:
        believed = state == "alive"
        old = self.believes_alive(observer, subject)
        if old == believed:
            return
        counts = self.truth.get(observer) == "alive" and observer != subject
        wrong_before = counts and old != self.expected(observer, subject)
        self.belief[observer][subject] = believed
        wrong_after = counts and believed != self.expected(observer, subject)
        delta = int(wrong_after) - int(wrong_before)
        if delta:
            self.disagree[subject] += delta
            self.total += delta
        if delta < 0:
            self._close_converged(t)

    def on_partition(self, t: float, groups: list[frozenset[bytes]] | None) -> None:
        self.group = {}
        if groups:
            for index, group in enumerate(groups):
                for node in group:
                    self.group[node] = index
        self.partitioned = bool(groups)
        self._recount_all()
        self._open_episode(None, "partition" if groups else "heal", t)

    def run(self, until: float | None = None) -> None:
        events: list[tuple[float, int, Any]] = []
        events.extend((t, 0, ("truth", n, s)) for t, n, s in self.trace.truth)
        events.extend((t, 1, ("partition", g)) for t, g in self.trace.partitions)
        events.extend((t, 2, ("view", o, s, v)) for t, o, s, v in self.trace.views)
        events.sort(key=lambda e: (e[0], e[1]))
        for t, _, event in events:
            if until is not None and t > until:
                break
            if event[0] == "truth":
                self.on_truth(t, event[1], event[2])
            elif event[0] == "partition":
                self.on_partition(t, event[1])
            else:
                self.on_view(t, event[1], event[2], event[3])

    def wrong_pairs(self, limit: int = 5) -> list[str]:
        out = []
        for observer in self.observers():
            for subject in self.truth:
                if subject != observer and self._pair_wrong(observer, subject):
                    believed = ("alive" if self.believes_alive(observer, subject)
                                else "not alive")
                    out.append(f"{short(observer)} believes {short(subject)} {believed}, "
                               f"truth {self.truth[subject]}")
                    if len(out) >= limit:
                        return out
        return out


# --- the checkers ----------------------------------------------------------------------------


class MembershipConvergence:
    """Every change (crash, join, leave, partition, heal) is reflected in every live view
    within the scenario's ``convergence_bound``; at the end every view matches the truth."""

    name = "membership_convergence"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        bound = scenario.checks.convergence_bound
        replay = BeliefReplay(trace)
        replay.run()
        by_kind: dict[str, list[float]] = defaultdict(list)
        late, examples = 0, []
        superseded = 0
        for episode in replay.episodes:
            if episode.start < 1.0 and episode.kind.startswith("new"):
                continue  # the initial bootstrap of the mesh is measured separately
            if episode.superseded and episode.converged is None:
                superseded += 1
                continue
            if episode.duration is not None:
                by_kind[_kind(episode.kind)].append(episode.duration)
                if episode.duration > bound:
                    late += 1
                    examples.append(f"{episode.kind} of {_who(episode)} at {episode.start:.1f}s "
                                    f"took {episode.duration:.1f}s (bound {bound:g}s)")
            elif trace.end - episode.start > bound:
                late += 1
                examples.append(f"{episode.kind} of {_who(episode)} at {episode.start:.1f}s "
                                f"never converged")
        figures = {f"{kind}_median_s": round(statistics.median(values), 3)
                   for kind, values in by_kind.items() if values}
        figures.update({f"{kind}_max_s": round(max(values), 3)
                        for kind, values in by_kind.items() if values})
        figures["late_episodes"] = late
        figures["superseded_episodes"] = superseded
        figures["episodes"] = sum(len(v) for v in by_kind.values())
        passed = late == 0
        summary = (f"{figures['episodes']} changes, all reflected in every live view within "
                   f"{bound:g}s" if passed else f"{late} change(s) not converged within {bound:g}s")
        return CheckResult(self.name, passed, summary, figures, examples[:5])


def _kind(kind: str) -> str:
    if kind in ("partition", "heal"):
        return kind
    target = kind.split("->")[-1]
    return {"alive": "join", "crashed": "crash", "left": "leave", "asleep": "sleep",
            "gone": "crash"}.get(target, target)


def _who(episode: Episode) -> str:
    return "the mesh" if episode.subject is None else short(episode.subject)


class SplitBrain:
    """After the last fault has had time to settle, no two live nodes disagree."""

    name = "no_split_brain"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        bound = scenario.checks.convergence_bound
        last_fault = max((t for t, _, _ in trace.faults), default=0.0)
        last_truth = max((t for t, _, _ in trace.truth), default=0.0)
        settle = max(last_fault, last_truth) + bound
        if settle > trace.end:
            return CheckResult(self.name, True, f"not judged: the run ended before "
                               f"{settle:.0f}s (last change + {bound:g}s)", {"judged": False})
        replay = BeliefReplay(trace)
        replay.run()
        if replay.total == 0:
            return CheckResult(self.name, True, "all live views agree at the end",
                               {"judged": True, "disagreeing_pairs": 0})
        waited = trace.end - settle + bound
        return CheckResult(self.name, False,
                           f"{replay.total} belief(s) still wrong {waited:.0f}s after the last "
                           f"change", {"judged": True, "disagreeing_pairs": replay.total},
                           replay.wrong_pairs())


class DetectionTime:
    """How fast live nodes declare a crashed node dead: p99 within ``detect_bound``."""

    name = "detection_time"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        bound = scenario.checks.detect_bound
        times, first = detection_times(trace)
        suspected, _ = detection_times(trace, ("suspect", "dead", "left"))
        if not times:
            return CheckResult(self.name, True, "no crash to detect", {"crashes": 0})
        figures = {"crashes": len(first), "observations": len(times),
                   "detect_median_s": round(statistics.median(times), 3),
                   "detect_p99_s": round(percentile(times, 99), 3),
                   "detect_max_s": round(max(times), 3),
                   "first_detect_median_s": round(statistics.median(first), 3) if first else None,
                   "suspect_median_s": round(statistics.median(suspected), 3)}
        passed = figures["detect_p99_s"] <= bound
        summary = (f"crashed nodes declared dead in {figures['detect_median_s']:.2f}s median, "
                   f"{figures['detect_p99_s']:.2f}s p99 (bound {bound:g}s)")
        return CheckResult(self.name, passed, summary, figures)


def detection_times(trace: Trace, states: tuple[str, ...] = ("dead", "left")
                    ) -> tuple[list[float], list[float]]:
    """Per (crash, observer): seconds from the crash to the observer's first view of the
    node in one of ``states`` (declared dead, by default; ``("suspect", "dead", "left")``
    gives the time to first suspicion).

    Observers must be alive and on the crashed node's side from the crash until they
    noticed (or the end). Returns (all observations, first detection per crash).
    """
    timeline = trace.truth_timeline()
    crashes = [(t, node) for t, node, state in trace.truth if state in ("crashed", "gone")]
    if not crashes:
        return [], []
    views_by_subject: dict[bytes, list[tuple[float, bytes, str]]] = defaultdict(list)
    for t, observer, subject, state in trace.views:
        views_by_subject[subject].append((t, observer, state))
    all_times: list[float] = []
    first: list[float] = []
    for t_crash, node in crashes:
        noticed: dict[bytes, float] = {}
        for t, observer, state in views_by_subject.get(node, ()):
            if t >= t_crash and state in states and observer not in noticed:
                noticed[observer] = t - t_crash
        revived = next((t for t, s in timeline[node] if t > t_crash and s == "alive"), None)
        horizon = revived if revived is not None else trace.end
        groups = trace.groups_at(t_crash)
        for observer, observer_timeline in timeline.items():
            if observer == node:
                continue
            if Trace.state_at(observer_timeline, t_crash) != "alive":
                continue
            if groups and not any(node in g and observer in g for g in groups):
                continue
            if observer in noticed and noticed[observer] + t_crash <= horizon:
                all_times.append(noticed[observer])
            elif not any(s != "alive" for t, s in observer_timeline if t_crash < t <= horizon):
                all_times.append(horizon - t_crash)  # never noticed while it could: censored
        crash_times = [d for o, d in noticed.items()]
        if crash_times:
            first.append(min(crash_times))
    return all_times, first


class FalsePositives:
    """Nobody who is alive and reachable is declared dead (suspicions are only counted)."""

    name = "false_positives"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        deaths, suspicions, examples = false_positives(trace, scenario.checks.detect_bound)
        hours = max(trace.end, 1e-9) / 3600
        live_nodes = max(1, len({n for _, n, s in trace.truth if s == "alive"}))
        figures = {"false_deaths": deaths, "false_suspicions": suspicions,
                   "false_deaths_per_node_hour": round(deaths / live_nodes / hours, 6),
                   "false_suspicions_per_node_hour": round(suspicions / live_nodes / hours, 6)}
        passed = deaths <= scenario.checks.max_false_deaths
        summary = (f"{deaths} false death(s), {suspicions} false suspicion(s) "
                   f"(allowed deaths: {scenario.checks.max_false_deaths})")
        return CheckResult(self.name, passed, summary, figures, examples[:5])


def false_positives(trace: Trace, grace: float) -> tuple[int, int, list[str]]:
    """Views of ``dead``/``suspect`` about a subject that was alive and reachable from the
    observer for the whole ``grace`` window before (so the view cannot be about a real,
    recent failure)."""
    timeline = trace.truth_timeline()
    partitions = trace.partitions
    deaths = suspicions = 0
    examples: list[str] = []
    for t, observer, subject, state in trace.views:
        if state not in ("dead", "suspect"):
            continue
        subject_timeline = timeline.get(subject, [])
        if Trace.state_at(subject_timeline, t) != "alive":
            continue
        if Trace.state_at(subject_timeline, t - grace) != "alive":
            continue  # it was down (asleep, crashed) at the start of the window
        if any(t - grace <= when <= t and s != "alive" for when, s in subject_timeline):
            continue
        if any(t - grace <= when <= t for when, _ in partitions) or trace.groups_at(t):
            continue
        if Trace.state_at(timeline.get(observer, []), t) != "alive":
            continue
        if state == "dead":
            deaths += 1
            if len(examples) < 5:
                examples.append(f"{short(observer)} declared {short(subject)} dead at {t:.1f}s "
                                f"while it was alive and reachable")
        else:
            suspicions += 1
    return deaths, suspicions, examples


class DhtLookups:
    """DHT lookups from random live nodes find their target: success rate ≥ the minimum."""

    name = "dht_lookups"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        every = trace.records.get("dht_lookup", [])
        lookups = [x for x in every if x.get("expected", True)]
        if not lookups:
            return CheckResult(self.name, True, "no lookups were run", {"lookups": 0})
        ok = [x for x in lookups if x["ok"]]
        rate = len(ok) / len(lookups)
        rounds = [x["rounds"] for x in lookups]
        figures = {"lookups": len(lookups), "success_rate": round(rate, 4),
                   "unreachable_targets": len(every) - len(lookups),
                   "rounds_median": statistics.median(rounds),
                   "rounds_p99": percentile([float(r) for r in rounds], 99)}
        passed = rate >= scenario.checks.min_dht_success
        examples = [f"lookup from {x['origin'][:8]} for {x['target'][:8]} at {x['t']:.1f}s "
                    f"failed" for x in lookups if not x["ok"]][:5]
        skipped = len(every) - len(lookups)
        note = f"; {skipped} for unreachable targets not counted" if skipped else ""
        return CheckResult(self.name, passed, f"{rate:.1%} of {len(lookups)} lookups "
                           f"succeeded (minimum {scenario.checks.min_dht_success:.0%}){note}",
                           figures, examples)


CHECKERS: list[Checker] = [MembershipConvergence(), SplitBrain(), DetectionTime(),
                           FalsePositives(), DhtLookups()]


def run_checkers(trace: Trace, scenario: Scenario,
                 checkers: Iterable[Checker] | None = None) -> list[CheckResult]:
    return [checker.check(trace, scenario) for checker in (checkers or CHECKERS)]
