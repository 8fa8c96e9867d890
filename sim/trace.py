"""The trace of a run: what really happened, and what each node believed.

The simulator records into a :class:`Trace` as it runs; checkers (:mod:`sim.checkers`)
read it afterwards. Keeping the two apart means a checker can be tested on a hand-made
trace, and a run can be re-checked with new checkers without re-running it.

* ``truth``: (t, node, state) — a node's real state: ``alive``, ``crashed``, ``left``,
  ``asleep`` (a phone: alive but unreachable), ``gone`` (never coming back).
* ``views``: (t, observer, subject, state) — ``observer`` now believes ``subject`` is
  ``alive`` / ``suspect`` / ``dead`` / ``left``.
* ``faults``: (t, action, detail) — what the nemesis did.
* ``series``: named time series (t, value), e.g. messages sent per second.
* ``records``: named lists of dicts for checkers added by later features (DHT lookups,
  Merkle roots, workload availability, acknowledged objects).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LIVE_STATES = ("alive",)
TRUTH_REACHABLE = "alive"


@dataclass
class Trace:
    truth: list[tuple[float, bytes, str]] = field(default_factory=list)
    views: list[tuple[float, bytes, bytes, str]] = field(default_factory=list)
    faults: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    partitions: list[tuple[float, list[frozenset[bytes]] | None]] = field(default_factory=list)
    end: float = 0.0
    truth_listeners: list[Callable[[float, bytes, str], None]] = field(
        default_factory=list, repr=False, compare=False)
    """Called with every truth change as it is recorded (services modelled on the hosts
    follow crashes, restarts and sleeps at the instant they happen)."""

    # --- recording ------------------------------------------------------------------------

    def node_state(self, t: float, node: bytes, state: str) -> None:
        self.truth.append((t, node, state))
        for listener in self.truth_listeners:
            listener(t, node, state)

    def view(self, t: float, observer: bytes, subject: bytes, state: str) -> None:
        self.views.append((t, observer, subject, state))

    def fault(self, t: float, action: str, **detail: Any) -> None:
        self.faults.append((t, action, detail))

    def partition(self, t: float, groups: list[frozenset[bytes]] | None) -> None:
        self.partitions.append((t, groups))

    def sample(self, name: str, t: float, value: float) -> None:
        self.series[name].append((t, value))

    def record(self, name: str, **facts: Any) -> None:
        self.records[name].append(facts)

    # --- reading --------------------------------------------------------------------------

    def truth_at(self, t: float) -> dict[bytes, str]:
        state: dict[bytes, str] = {}
        for when, node, value in self.truth:
            if when > t:
                break
            state[node] = value
        return state

    def truth_timeline(self) -> dict[bytes, list[tuple[float, str]]]:
        out: dict[bytes, list[tuple[float, str]]] = defaultdict(list)
        for when, node, value in self.truth:
            out[node].append((when, value))
        return out

    def groups_at(self, t: float) -> list[frozenset[bytes]] | None:
        groups = None
        for when, value in self.partitions:
            if when > t:
                break
            groups = value
        return groups

    @staticmethod
    def state_at(timeline: list[tuple[float, str]], t: float, default: str = "absent") -> str:
        state = default
        for when, value in timeline:
            if when > t:
                break
            state = value
        return state
