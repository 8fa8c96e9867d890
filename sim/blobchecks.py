"""Checker "no acknowledged object lost" (a :mod:`sim.checkers` checker).

The promise (shared/ARCHITECTURE.md §5): an acknowledged object stays readable while at
most m of its shard holders are gone. The checker replays the trace: for every read of an
acknowledged object (``object_read``, recorded by :mod:`sim.blobs`), it takes the
object's holders at that moment (the ``object_acked`` record, updated by each
``object_repaired``) and counts the *distinct* holder nodes that were gone: not alive then
(crashed, left, asleep, gone), or left / gone at any moment since the shards were placed
(a node that leaves and joins again comes back empty; a crash and restart keeps its disk).
A read that failed while that count was at most m is a violation: the system lost
something it promised to keep (wrong placement, two shards on one node, a repair that
recorded shards it did not store, GC deleting a referenced shard...). Reads that failed
with more than m holders gone are counted, not failed: that loss is outside the promise.
An acknowledged object never read at all is a violation too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sim.checkers import CheckResult
from sim.scenario import Scenario
from sim.trace import Trace

WIPED = ("left", "gone")
"""States after which a node comes back (if ever) without its shards."""


def _holder_gone(timeline: list[tuple[float, str]], since: float, t: float) -> bool:
    """Not alive at ``t``, or left/gone at some moment after ``since`` (its shard is lost
    even if the node joined again); a crash and restart keeps the disk."""
    state = "absent"
    for when, what in timeline:
        if when > t:
            break
        state = what
        if when > since and what in WIPED:
            return True
    return state != "alive"


class NoAcknowledgedObjectLost:
    name = "no_acknowledged_object_lost"

    def check(self, trace: Trace, scenario: Scenario | None = None) -> CheckResult:
        truth: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for t, node, state in sorted(trace.truth, key=lambda e: e[0]):
            truth[node.hex()].append((t, state))
        events: list[tuple[float, int, str, dict[str, Any]]] = []
        order = {"object_acked": 0, "object_repaired": 1, "object_read": 2}
        for name, rank in order.items():
            for facts in trace.records.get(name, []):
                events.append((facts["t"], rank, name, facts))
        events.sort(key=lambda e: (e[0], e[1]))
        holders: dict[str, list[str]] = {}
        placed: dict[str, list[float]] = {}
        """When each shard index got its current holder."""
        params: dict[str, tuple[int, int]] = {}
        read: set[str] = set()
        violations: list[str] = []
        beyond = reads = failed_reads = 0
        for t, _, name, facts in events:
            obj = facts["object"]
            if name == "object_acked":
                holders[obj] = list(facts["holders"])
                placed[obj] = [t] * len(holders[obj])
                params[obj] = (facts["k"], facts["m"])
                continue
            if obj not in holders:
                continue  # not acknowledged: no promise
            if name == "object_repaired":
                new = list(facts["holders"])
                placed[obj] = [since if old == fresh else t for old, fresh, since
                               in zip(holders[obj], new, placed[obj], strict=False)]
                holders[obj] = new
                continue
            reads += 1
            read.add(obj)
            if facts["ok"]:
                continue
            failed_reads += 1
            _, m = params[obj]
            gone = {h for h, since in zip(holders[obj], placed[obj], strict=True)
                    if _holder_gone(truth[h], since, t)}
            if len(gone) <= m:
                violations.append(
                    f"t={t:.1f}s object {obj[:12]} unreadable with only {len(gone)} of its "
                    f"holders gone (m={m}; {facts.get('readable_shards', '?')} shards "
                    f"readable)")
            else:
                beyond += 1
        never = sorted(set(holders) - read)
        violations += [f"object {obj[:12]} acknowledged but never read" for obj in never[:3]]
        figures = {"objects_acked": len(holders), "reads": reads, "failed_reads": failed_reads,
                   "lost_beyond_m": beyond, "violations": len(violations)}
        if violations:
            return CheckResult(self.name, False,
                               f"{len(violations)} reads of acknowledged objects failed "
                               f"within the m-failure promise", figures, violations[:5])
        return CheckResult(self.name, True,
                           f"{len(holders)} acknowledged objects, {reads} reads, none lost "
                           f"within the promise ({beyond} failed reads beyond m)", figures)
