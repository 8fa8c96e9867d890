"""A model of workload placement for the simulator: replicas running vs desired over time.

Every node runs the replicas its *own* membership view gives it (as the real reconciler
does), so what runs is a function of what each node believes. The model follows the
trace's truth (who is really alive) and views (who believes whom alive) and records, per
workload, how many replicas really run and how many should:

* node ``o`` runs workload ``w`` when, among the nodes it believes alive or suspect
  (itself included), fewer than ``replicas`` rank above it in ``w``'s rendezvous order
  (:func:`meshcloud.placement.rank` with the planner's item key: the same order the real
  planner starts from, phones last as ``avoid_battery`` does; the model leaves out
  bounded load and hard constraints);
* a replica counts ``start_delay`` seconds after its node decided to run it (the
  container start), and stops counting at once when the node stops believing it should
  run it, crashes, or is asleep (pessimistic: the real reconciler hands over, make before
  break);
* a node (re)started with no one in its view runs nothing for ``startup_grace`` (the
  reconciler's boot rule), then everything its view gives it;
* ``wanted`` is ``min(replicas, nodes really alive)``; ``running`` counts distinct live
  nodes running the workload (more than ``wanted`` while views disagree: over-replication
  is recorded, not judged).

Records (into the trace): ``workload_replicas`` rows ``{t, workload, running, wanted}``
whenever either changes, and the series ``workload_missing`` (replicas missing, summed
over workloads). :class:`sim.availability.WorkloadAvailability` judges them.

Sans-IO and incremental: a view change costs O(workloads) integer updates (per observer
and workload the model keeps how many believed-alive nodes rank above the observer), so
it keeps up with a 1,000-node run.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from apps.workloads.planner import item_key
from meshcloud.placement import rank

DEFAULT_START_DELAY = 1.0
"""Seconds from a node's decision to a running replica (podman start measured 0.2 s;
1 s leaves room for a slow machine and the reconciler's pass)."""
DEFAULT_STARTUP_GRACE = 10.0
"""The reconciler's ``startup_grace``: a node alone after boot starts nothing this long."""


class _View:
    """The nodes one observer believes alive: a base set shared by every member of the
    initial mesh (a converged mesh of 1,000 nodes would otherwise hold a million entries),
    plus this observer's own changes."""

    __slots__ = ("added", "base", "removed")

    def __init__(self, base: frozenset[bytes] = frozenset()) -> None:
        self.base = base
        self.added: set[bytes] = set()
        self.removed: set[bytes] = set()

    def __contains__(self, node: bytes) -> bool:
        return (node in self.base and node not in self.removed) or node in self.added

    def add(self, node: bytes) -> None:
        if node in self.base:
            self.removed.discard(node)
        else:
            self.added.add(node)

    def discard(self, node: bytes) -> None:
        if node in self.base:
            self.removed.add(node)
        else:
            self.added.discard(node)

    def __iter__(self) -> Iterator[bytes]:
        yield from (n for n in self.base if n not in self.removed)
        yield from self.added

    def __bool__(self) -> bool:
        return bool(self.added) or len(self.base) > len(self.removed)


@dataclass(frozen=True, slots=True)
class ModelWorkload:
    name: str
    replicas: int = 2


def default_workloads(count: int = 20, replicas: int = 2) -> list[ModelWorkload]:
    return [ModelWorkload(f"w{i}", replicas) for i in range(count)]


class WorkloadModel:
    def __init__(self, workloads: Sequence[ModelWorkload], nodes: Iterable[bytes] = (), *,
                 start_delay: float = DEFAULT_START_DELAY,
                 startup_grace: float = DEFAULT_STARTUP_GRACE,
                 alive_states: tuple[str, ...] = ("alive", "suspect"),
                 last: Iterable[bytes] = ()) -> None:
        self.workloads = list(workloads)
        self.last = frozenset(last)
        """Nodes ranked after every other (phones on battery: the planner's default
        ``avoid_battery`` preference)."""
        self.alive_states = alive_states
        """View states a node places work on: SWIM keeps suspects in the member list
        until they are declared dead, and so does ``alive_peer_ids``."""
        self.start_delay = start_delay
        self.startup_grace = startup_grace
        self._pos: list[dict[bytes, int]] = [{} for _ in self.workloads]
        self._nodes: list[bytes] = []
        self.truth: dict[bytes, str] = {}
        self.view: dict[bytes, _View] = {}
        self._above: dict[bytes, list[int]] = {}
        self._booted_at: dict[bytes, float] = {}
        self._deciding: dict[bytes, list[bool]] = {}
        """Whether node o's view makes it run workload w (before the start delay)."""
        self._counting: dict[bytes, list[bool]] = {}
        self._epoch: dict[tuple[bytes, int], int] = {}
        self._pending: list[tuple[float, int, bytes, int, int]] = []
        self._seq = 0
        self.running = [0] * len(self.workloads)
        self._alive = 0
        self._dirty = True
        self._last: list[tuple[int, int]] = [(-1, -1)] * len(self.workloads)
        self.records: list[dict[str, object]] = []
        self.missing_series: list[tuple[float, float]] = []
        self.add_nodes(nodes)

    # --- membership of the model ----------------------------------------------------------

    def add_nodes(self, nodes: Iterable[bytes], t: float | None = None) -> None:
        """Nodes the model ranks (a replay adds every node of the trace up front; a node
        seen for the first time later re-ranks everything, which is rare)."""
        known = set(self._nodes)
        new = list(dict.fromkeys(n for n in nodes if n not in known))
        if not new or not self.workloads:
            self._nodes.extend(n for n in new if n not in known)
            return
        self._nodes.extend(new)
        for index, workload in enumerate(self.workloads):
            order = rank(self._nodes, item_key(workload.name))
            order = [n for n in order if n not in self.last] + [
                n for n in order if n in self.last]
            self._pos[index] = {node: i for i, node in enumerate(order)}
        for node in self._nodes:  # positions moved: recount from the views, decide again
            if node in self.view:
                self._recount(node)
                if t is not None:
                    self._decide(t, node)

    def _recount(self, observer: bytes) -> None:
        believed = self.view.get(observer, _View())
        self._above[observer] = [
            sum(1 for s in believed if pos.get(s, 1 << 30) < pos[observer])
            for pos in self._pos]

    # --- inputs (the same events the trace records) ---------------------------------------

    def on_truth(self, t: float, node: bytes, state: str) -> None:
        self._advance(t)
        self.add_nodes([node], t)
        before = self.truth.get(node)
        self.truth[node] = state
        self._alive += (state == "alive") - (before == "alive")
        self._dirty = True
        if state == "alive" and before != "alive":
            if before in (None, "crashed", "gone", "left"):
                self.view[node] = _View()  # a fresh process knows no one yet
                self._booted_at[node] = t
            self._recount(node)
            self._decide(t, node)
        elif state != "alive" and before == "alive":
            for index in range(len(self.workloads)):
                self._stop(node, index)
        self._emit(t)

    def on_view(self, t: float, observer: bytes, subject: bytes, state: str) -> None:
        self._advance(t)
        if observer == subject:
            return
        self.add_nodes([observer, subject], t)
        believed = self.view.setdefault(observer, _View())
        if observer not in self._above:
            self._recount(observer)
        alive = state in self.alive_states
        if alive == (subject in believed):
            return
        above = self._above[observer]
        if alive:
            believed.add(subject)
        else:
            believed.discard(subject)
        step = 1 if alive else -1
        for index, pos in enumerate(self._pos):
            if pos[subject] < pos[observer]:
                above[index] += step
        self._decide(t, observer)
        self._emit(t)

    def on_initial(self, t: float, nodes: Iterable[bytes]) -> None:
        """The simulator starts from a converged mesh: these nodes believe each other
        alive without any view being recorded (``initial_members`` in the trace)."""
        self._advance(t)
        base = frozenset(nodes)
        self.add_nodes(base, t)
        orders = [{n: i for i, n in enumerate(sorted(base, key=pos.__getitem__))}
                  for pos in self._pos]
        for node in base:
            self.view[node] = _View(base - {node})
            self._above[node] = [order[node] for order in orders]
        for node in base:
            self._decide(t, node)
        self._emit(t)

    def finish(self, t: float) -> None:
        self._advance(t)
        self._emit(t)

    # --- the model ------------------------------------------------------------------------

    def _decide(self, t: float, node: bytes) -> None:
        if self.truth.get(node) != "alive":
            return
        believed = self.view.get(node, _View())
        booting = not believed and t - self._booted_at.get(node, -1e18) < self.startup_grace
        if booting:
            self._pending_wake(t + self.startup_grace - (t - self._booted_at[node]), node)
        decisions = self._deciding.setdefault(node, [False] * len(self.workloads))
        above = self._above[node]
        for index, workload in enumerate(self.workloads):
            runs = not booting and above[index] < workload.replicas
            if runs and not decisions[index]:
                decisions[index] = True
                key = (node, index)
                self._epoch[key] = self._epoch.get(key, 0) + 1
                self._seq += 1
                heapq.heappush(self._pending, (t + self.start_delay, self._seq, node, index,
                                               self._epoch[key]))
            elif not runs and decisions[index]:
                self._stop(node, index)

    def _pending_wake(self, when: float, node: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (when, self._seq, node, -1, 0))

    def _stop(self, node: bytes, index: int) -> None:
        decisions = self._deciding.get(node)
        if decisions is not None:
            decisions[index] = False
        key = (node, index)
        self._epoch[key] = self._epoch.get(key, 0) + 1
        counting = self._counting.get(node)
        if counting is not None and counting[index]:
            counting[index] = False
            self.running[index] -= 1
            self._dirty = True

    def _advance(self, t: float) -> None:
        while self._pending and self._pending[0][0] <= t:
            when, _, node, index, epoch = heapq.heappop(self._pending)
            if index < 0:  # the boot grace ended: decide again
                self._decide(when, node)
            elif self._epoch.get((node, index)) == epoch and self.truth.get(node) == "alive":
                counting = self._counting.setdefault(node, [False] * len(self.workloads))
                if not counting[index]:
                    counting[index] = True
                    self.running[index] += 1
                    self._dirty = True
            self._emit(when)

    def _emit(self, t: float) -> None:
        if not self._dirty:
            return
        self._dirty = False
        alive = self._alive
        missing = 0
        for index, workload in enumerate(self.workloads):
            wanted = min(workload.replicas, alive)
            running = self.running[index]
            missing += max(0, wanted - running)
            if self._last[index] != (running, wanted):
                self._last[index] = (running, wanted)
                self.records.append({"t": round(t, 6), "workload": workload.name,
                                     "running": running, "wanted": wanted})
        if not self.missing_series or self.missing_series[-1][1] != missing:
            self.missing_series.append((t, float(missing)))

    # --- whole traces ---------------------------------------------------------------------

    def replay(self, trace: object) -> None:
        """Feed a finished trace's truth and views in time order, then write the records
        into it (``trace.records['workload_replicas']``, series ``workload_missing``)."""
        events: list[tuple[float, int, tuple[object, ...]]] = []
        events.extend((t, 0, ("truth", n, s)) for t, n, s in trace.truth)  # type: ignore[attr-defined]
        events.extend((row["t"], 1, ("initial", row["nodes"]))
                      for row in trace.records.get("initial_members", []))  # type: ignore[attr-defined]
        events.extend((t, 2, ("view", o, s, v)) for t, o, s, v in trace.views)  # type: ignore[attr-defined]
        events.sort(key=lambda e: (e[0], e[1]))
        self.add_nodes(n for _, n, _ in trace.truth)  # type: ignore[attr-defined]
        for t, _, event in events:
            if event[0] == "truth":
                self.on_truth(t, event[1], event[2])  # type: ignore[arg-type]
            elif event[0] == "initial":
                self.on_initial(t, event[1])  # type: ignore[arg-type]
            else:
                self.on_view(t, event[1], event[2], event[3])  # type: ignore[arg-type]
        self.finish(trace.end)  # type: ignore[attr-defined]
        self.write(trace)

    def write(self, trace: object) -> None:
        for row in self.records:
            trace.record("workload_replicas", **row)  # type: ignore[attr-defined]
        for t, value in self.missing_series:
            trace.sample("workload_missing", t, value)  # type: ignore[attr-defined]


class WorkloadAvailabilityModel:
    """The model as a plug-in of the simulated-mode runner (``sim.runner.run(...,
    models=[WorkloadAvailabilityModel()])``): it replays the finished trace, writes its
    records and brings its checker."""

    def __init__(self, workloads: Sequence[ModelWorkload] | None = None, *,
                 start_delay: float = DEFAULT_START_DELAY,
                 startup_grace: float = DEFAULT_STARTUP_GRACE) -> None:
        self.model = WorkloadModel(workloads or default_workloads(), start_delay=start_delay,
                                   startup_grace=startup_grace)
        self.trace: object = None

    def attach(self, run: object) -> None:
        self.trace = run.trace  # type: ignore[attr-defined]
        self.run = run

    def _phones(self) -> set[bytes]:
        cluster = getattr(getattr(self, "run", None), "cluster", None)
        hosts = getattr(cluster, "by_index", [])
        return {h.node_id for h in hosts if getattr(h, "phone", False)}

    def sample(self, now: float) -> None:
        """Nothing to do while running: the model reads the trace at the end."""

    def finish(self, now: float) -> None:
        if self.trace is not None:
            self.model.last = frozenset(self._phones())
            self.model.replay(self.trace)

    def checkers(self) -> list[object]:
        from sim.availability import WorkloadAvailability

        return [WorkloadAvailability()]
