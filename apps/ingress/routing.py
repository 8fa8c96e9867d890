"""Sans-IO choices of the ingress: which rows this node publishes, which replicas are
routable, and which one a new connection goes to. Pure functions, no clock, no I/O."""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from apps.ingress.messages import EndpointRecord

RowKey = tuple[str, str, int]
"""(workload, endpoint, replica index)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One routable replica: where to connect."""

    workload: str
    endpoint: str
    index: int
    node: bytes
    port: int

    @property
    def key(self) -> RowKey:
        return (self.workload, self.endpoint, self.index)


@dataclass(frozen=True, slots=True)
class LocalReplica:
    """What this node observed of a replica it runs: its port and its last TCP check."""

    port: int
    healthy: bool


def publish_plan(me: bytes, local: Mapping[RowKey, LocalReplica],
                 rows: Mapping[RowKey, EndpointRecord]
                 ) -> tuple[dict[RowKey, EndpointRecord], list[RowKey]]:
    """Rows to write (changed or new) and rows to delete (ours, no longer running here).
    A row another node wrote for a replica we do not run is never touched."""
    puts: dict[RowKey, EndpointRecord] = {}
    for key, seen in local.items():
        row = rows.get(key)
        if row is None or (row.node, row.port, row.healthy) != (me, seen.port, seen.healthy):
            puts[key] = EndpointRecord(node=me, port=seen.port, healthy=seen.healthy)
    deletes = [key for key, row in rows.items() if row.node == me and key not in local]
    return puts, sorted(deletes)


def live_targets(rows: Mapping[RowKey, EndpointRecord], workload: str, endpoint: str, *,
                 alive: Collection[bytes], replicas: int) -> list[Target]:
    """Healthy replicas of ``workload:endpoint`` on nodes believed alive, with an index
    below the workload's wanted count (a scaled-down index is not routable)."""
    out = []
    for (w, e, index), row in rows.items():
        if w == workload and e == endpoint and row.healthy and row.node in alive \
                and 0 <= index < replicas and 0 < row.port < 65536:
            out.append(Target(w, e, index, row.node, row.port))
    return sorted(out, key=lambda t: t.index)


def pick(targets: list[Target], open_connections: Mapping[RowKey, int],
         rng: random.Random, exclude: Collection[RowKey] = ()) -> Target | None:
    """Power of two choices: two distinct candidates at random, the one with fewer open
    connections (through this node) wins; None when every target is excluded."""
    pool = [t for t in targets if t.key not in exclude]
    if not pool:
        return None
    if len(pool) == 1:
        return pool[0]
    a, b = rng.sample(pool, 2)
    return a if open_connections.get(a.key, 0) <= open_connections.get(b.key, 0) else b
