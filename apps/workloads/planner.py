"""Which node runs which replica: the same answer on every node with the same view.

Two steps, both pure functions:

1. :func:`place` picks, for each workload, the set of distinct nodes that should run its
   replicas: weighted rendezvous ranking (:mod:`meshcloud.placement`) filtered by the
   workload's constraints (runtime, arch, labels, RAM, CPUs, not draining, image present)
   with **bounded load** across all workloads (Mirrokni, Thorup & Zadimoghaddam 2018:
   workloads are placed in the order of their hash; a node already holding
   ``ceil(c × total × w / Σw)`` replicas is skipped). Each node appears at most once per
   workload, so replicas of one workload never share a node.
2. :func:`assign_indices` maps replica indices to those nodes, **sticky**: an index whose
   current claim (``replicas`` table) names a node of the set stays there; the remaining
   indices go to the remaining nodes in rank order. So when one node dies, only its index
   moves; the others keep running where they are.

Invariants (property-tested in ``tests/apps/workloads/test_planner.py``):

* distinct nodes per workload, never a draining or ineligible node;
* deterministic: independent of the order of the view, workloads or claims;
* stable: when no node is at its load cap, a node that holds none of a workload's
  replicas before or after a change (join, leave, drain of someone else, another
  workload added) does not move that workload; sticky indices keep unchanged nodes'
  replicas in place; a singleton stays on its node while that node is eligible.

Sans-IO: no clock, no I/O; the reconciler calls :func:`plan` on every pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshcloud.placement import (
    DEFAULT_LOAD_FACTOR,
    NO_CONSTRAINTS,
    Constraints,
    NodeId,
    NodeInfo,
    Ranker,
    capacities,
    members_of,
)

ReplicaKey = tuple[str, int]
"""(workload name, replica index): the key of the ``replicas`` table."""


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One workload as placement sees it."""

    name: str
    replicas: int
    """Replicas wanted now (0 when stopped)."""
    constraints: Constraints
    singleton: bool = False
    keep: frozenset[NodeId] = frozenset()
    """Nodes that keep their replica while eligible, before rank order fills the rest:
    a singleton stays where it runs (moving a database primary back after a partition
    heals would cost a second failover)."""


def item_key(name: str) -> bytes:
    """The rendezvous item of a workload (distinct from lease and shard items)."""
    return b"workload/" + name.encode()


def _order(name: str) -> tuple[bytes, str]:
    return hashlib.blake2b(name.encode(), digest_size=16).digest(), name


def place(view: Iterable[NodeInfo | NodeId], items: Iterable[PlanItem], *,
          load_factor: float | None = DEFAULT_LOAD_FACTOR) -> dict[str, list[NodeId]]:
    """For each workload, its replica nodes (distinct, best first). A workload with fewer
    eligible nodes than replicas gets as many as there are."""
    members = sorted(members_of(view), key=lambda m: m.node_id)
    active = [m for m in members if not m.draining]
    unique = {item.name: item for item in items}
    ordered = sorted(unique.values(), key=lambda it: _order(it.name))
    total = sum(max(0, it.replicas) for it in ordered)
    caps = (capacities(active, total, load_factor)
            if load_factor is not None and active else None)
    load: dict[NodeId, int] = {m.node_id: 0 for m in members}
    ranker = Ranker(members)
    placed: dict[str, list[NodeId]] = {}
    for item in ordered:
        if item.replicas <= 0:
            placed[item.name] = []
            continue
        # placement's NO_CONSTRAINTS fast path skips every filter, draining included
        rule = (item.constraints if item.constraints is not NO_CONSTRAINTS
                else Constraints(avoid_battery=False))
        ranking = ranker.rank(item_key(item.name), rule)
        chosen: list[NodeId] = [n for n in ranking if n in item.keep][: item.replicas]
        for node_id in ranking:
            if len(chosen) == item.replicas:
                break
            if node_id in chosen:
                continue
            if caps is not None and load[node_id] >= caps.get(node_id, 0):
                continue
            chosen.append(node_id)
        if len(chosen) < item.replicas:  # every eligible node is full: least loaded first
            position = {n: i for i, n in enumerate(ranking)}
            rest = sorted((n for n in ranking if n not in chosen),
                          key=lambda n: (load[n], position[n]))
            chosen.extend(rest[: item.replicas - len(chosen)])
            chosen.sort(key=lambda n: position[n])
        for node_id in chosen:
            load[node_id] += 1
        placed[item.name] = chosen
    return placed


def assign_indices(holders: Sequence[NodeId], replicas: int,
                   claimed: Mapping[int, NodeId]) -> dict[int, NodeId]:
    """Replica index → node. Indices claimed by a holder stay; the rest fill in rank
    order. Indices without a node (too few holders) are absent."""
    holder_set = set(holders)
    out: dict[int, NodeId] = {}
    used: set[NodeId] = set()
    for index in range(replicas):
        node = claimed.get(index)
        if node is not None and node in holder_set and node not in used:
            out[index] = node
            used.add(node)
    free_nodes = [n for n in holders if n not in used]
    free_indices = [i for i in range(replicas) if i not in out]
    for index, node in zip(free_indices, free_nodes, strict=False):
        out[index] = node
    return out


def plan(view: Iterable[NodeInfo | NodeId], items: Iterable[PlanItem],
         claims: Mapping[str, Mapping[int, NodeId]], *,
         load_factor: float | None = DEFAULT_LOAD_FACTOR) -> dict[str, dict[int, NodeId]]:
    """Every workload's index → node map (see the module docstring)."""
    items = list(items)
    placed = place(view, items, load_factor=load_factor)
    return {item.name: assign_indices(placed.get(item.name, []), item.replicas,
                                      claims.get(item.name, {}))
            for item in items}


def assigned_to(assignment: Mapping[str, Mapping[int, NodeId]], node: NodeId
                ) -> set[ReplicaKey]:
    """The replicas ``node`` should run."""
    return {(name, index) for name, indices in assignment.items()
            for index, holder in indices.items() if holder == node}
