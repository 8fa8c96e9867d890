"""Placement: who runs or stores what, computed alike on every node without asking anyone.

**Weighted rendezvous hashing** (Thaler & Ravishankar 1998, "highest random weight";
weighted form of Schindelhauer & Schomaker 2005, "logarithmic method"): for item ``x``
each node ``n`` of weight ``w`` scores ``-w / ln(u(n, x))`` where ``u`` is a uniform
number in (0, 1) derived from BLAKE2b(node id | item). Nodes ranked by decreasing score
give, for every item, a preference list. The item's holder is the first eligible node
(``n`` holders: the first ``n``). Properties:

* node ``n`` comes first for a fraction ``w_n / sum(w)`` of items;
* when a node joins, only the items it now wins move (≈ 1/N of them, all to it); when a
  node leaves, only its items move, spread over the others in proportion to weight;
* a pure function of (view, item): same view, same answer, whatever the member order.

**Bounded load** (Mirrokni, Thorup & Zadimoghaddam 2018, "Consistent Hashing with
Bounded Loads"): :func:`assign` places a set of items with each node taking at most
``ceil(c * m * w_n / sum(w))`` of the ``m`` items (``c`` = ``load_factor``, default 1.25);
items are placed in a fixed order (by their hash) and an item whose preferred node is
full goes to the next node in its own ranking. The result is still a pure function of
(view, items), and max/mean load stays at most ``c`` (plus rounding).

**Constraints** (:class:`Constraints`): hard filters (runtime, architecture, labels,
minimum RAM and CPU, draining nodes) remove nodes; soft preferences (avoid battery, avoid
metered links) rank the nodes that break them after all the others, keeping rendezvous
order inside each tier. For heavy work (``heavy``) those preferences are hard filters.

Views and fencing: two nodes with different views can pick different holders for a
while; singletons are protected by fencing tokens in the ``replicas`` table, not here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

NodeId = bytes

DEFAULT_LOAD_FACTOR = 1.25
"""c in Mirrokni et al.: 1.25 keeps max load within 25 % of the mean at a small cost in
extra moves (their Theorem: O(1/ε²) expected extra moves per change, ε = c - 1)."""

_SCALE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What placement knows of one live node (the node builds it from gossip capacity)."""

    node_id: NodeId
    weight: float = 1.0
    arch: str = ""
    runtimes: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()
    cpus: float = 0.0
    ram_mb: int = 0
    on_battery: bool = False
    metered: bool = False
    draining: bool = False

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError("a node's weight is a positive finite number")


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where an item may go (hard) and where it would rather not (soft)."""

    runtime: str | None = None
    arch: frozenset[str] = frozenset()
    """Accepted architectures; empty means any."""
    labels: tuple[tuple[str, str], ...] = ()
    """Every (key, value) here must be among the node's labels."""
    min_ram_mb: int = 0
    min_cpus: float = 0.0
    avoid_battery: bool = True
    avoid_metered: bool = False
    exclude: frozenset[NodeId] = field(default_factory=frozenset)
    heavy: bool = False
    """Heavy work (databases, Spark, builds): ``avoid_battery`` and ``avoid_metered``
    become hard filters instead of preferences."""

    def allows(self, node: NodeInfo) -> bool:
        if node.draining or node.node_id in self.exclude:
            return False
        if self.heavy and self.penalty(node):
            return False
        if self.runtime is not None and self.runtime not in node.runtimes:
            return False
        if self.arch and node.arch not in self.arch:
            return False
        if self.labels and not set(self.labels) <= set(node.labels):
            return False
        return node.ram_mb >= self.min_ram_mb and node.cpus >= self.min_cpus

    def penalty(self, node: NodeInfo) -> int:
        """How many soft preferences ``node`` breaks (lower ranks first)."""
        return int(self.avoid_battery and node.on_battery) + int(
            self.avoid_metered and node.metered)


NO_CONSTRAINTS = Constraints(avoid_battery=False)


def uniform(node_id: NodeId, item: bytes) -> float:
    """A number in (0, 1), uniform over nodes and items, the same everywhere."""
    digest = hashlib.blake2b(item, digest_size=8, key=node_id[:64]).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def score(node_id: NodeId, item: bytes, weight: float = 1.0) -> float:
    """Weighted rendezvous score: higher wins. ``-w / ln(u)`` is > 0 for u in (0, 1)."""
    return -weight / math.log(uniform(node_id, item))


def members_of(view: Iterable[NodeInfo | NodeId]) -> list[NodeInfo]:
    members: dict[NodeId, NodeInfo] = {}
    for member in view:
        info = member if isinstance(member, NodeInfo) else NodeInfo(member)
        members[info.node_id] = info
    return list(members.values())


class Ranker:
    """Ranks nodes for many items with one keyed BLAKE2b state per node (fast path)."""

    __slots__ = ("members", "states")

    def __init__(self, members: list[NodeInfo]) -> None:
        self.members = members
        self.states = [hashlib.blake2b(digest_size=8, key=m.node_id[:64]) for m in members]

    def rank(self, item: bytes, constraints: Constraints) -> list[NodeId]:
        log = math.log
        scored = []
        plain = constraints is NO_CONSTRAINTS
        for member, state in zip(self.members, self.states, strict=True):
            if not plain and not constraints.allows(member):
                continue
            h = state.copy()
            h.update(item)
            u = (int.from_bytes(h.digest(), "big") + 0.5) / _SCALE
            penalty = 0 if plain else constraints.penalty(member)
            scored.append((penalty, member.weight / log(u), member.node_id))
        scored.sort()
        return [node_id for _, _, node_id in scored]


def rank(view: Iterable[NodeInfo | NodeId], item: bytes,
         constraints: Constraints = NO_CONSTRAINTS) -> list[NodeId]:
    """Eligible nodes for ``item``, best first. Pure: the order does not depend on the
    order of ``view``; equal scores (practically impossible) fall back to node id."""
    return Ranker(members_of(view)).rank(item, constraints)


def holders(view: Iterable[NodeInfo | NodeId], item: bytes, n: int,
            constraints: Constraints = NO_CONSTRAINTS) -> list[NodeId]:
    """The ``n`` distinct holders of ``item`` (fewer if the view is smaller), e.g. the
    nodes that keep one object shard or one partition of a sharded table."""
    if n <= 0:
        return []
    return rank(view, item, constraints)[:n]


def capacities(view: Sequence[NodeInfo], total: int,
               load_factor: float = DEFAULT_LOAD_FACTOR) -> dict[NodeId, int]:
    """Bounded-load cap per node: ``ceil(c * total * w / sum(w))``."""
    weight = sum(m.weight for m in view)
    if weight <= 0:
        return {}
    return {m.node_id: max(1, math.ceil(load_factor * total * m.weight / weight))
            for m in view}


def assign(view: Iterable[NodeInfo | NodeId], items: Iterable[bytes], *,
           load_factor: float | None = DEFAULT_LOAD_FACTOR,
           constraints: Mapping[bytes, Constraints] | None = None,
           replicas: int = 1) -> dict[bytes, list[NodeId]]:
    """Place every item on ``replicas`` distinct nodes with bounded load.

    ``load_factor=None`` turns the bound off (plain rendezvous). Items are processed in
    the order of their BLAKE2b hash, so the answer depends only on (view, items). An item
    with no eligible node gets an empty list; when all its eligible nodes are full it
    falls back to the least loaded of them (the bound is a goal, not a reason to drop
    work)."""
    members = members_of(view)
    by_id = {m.node_id: m for m in members}
    unique = sorted(set(items), key=lambda it: (hashlib.blake2b(it, digest_size=16).digest(),
                                                 it))
    caps = (capacities(members, len(unique) * replicas, load_factor)
            if load_factor is not None else None)
    load = dict.fromkeys(by_id, 0)
    placed: dict[bytes, list[NodeId]] = {}
    ranker = Ranker(members)
    for item in unique:
        rule = (constraints or {}).get(item, NO_CONSTRAINTS)
        ranking = ranker.rank(item, rule)
        chosen: list[NodeId] = []
        for node_id in ranking:
            if len(chosen) == replicas:
                break
            if caps is not None and load[node_id] >= caps[node_id]:
                continue
            chosen.append(node_id)
        if len(chosen) < replicas:  # everyone eligible is full: least loaded first
            rest = sorted((n for n in ranking if n not in chosen),
                          key=lambda n: (load[n] / by_id[n].weight, ranking.index(n)))
            chosen.extend(rest[: replicas - len(chosen)])
        for node_id in chosen:
            load[node_id] += 1
        placed[item] = chosen
    return placed


def loads(placement: Mapping[bytes, Sequence[NodeId]]) -> dict[NodeId, int]:
    """Items per node in a placement (nodes with none are absent)."""
    out: dict[NodeId, int] = {}
    for nodes in placement.values():
        for node_id in nodes:
            out[node_id] = out.get(node_id, 0) + 1
    return out
