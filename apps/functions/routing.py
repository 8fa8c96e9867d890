"""Where one call of a function runs (pure, no I/O).

A function's warm instances live on its rendezvous top nodes
(:func:`meshcloud.placement.rank` of ``fn:NAME`` under :func:`constraints`: the
function's runtime, never a draining node, battery and metered nodes ranked last).
:func:`route` keeps only the best tier of that ranking (the nodes that break the fewest
soft preferences: a battery node is a candidate only when no mains node is eligible).

Each call goes to one of the first ``k`` candidates, ``k`` = :func:`spread`: one node
while the calls in flight fit one node's ``concurrency``, one more node for each further
``concurrency`` calls. Among the ``k``, :func:`choose` draws two and takes the one with
fewer outstanding calls (power of two choices; ties go to the better ranked). At rest a
function so stays on its top node (one warm pool, scale to zero elsewhere); under load it
spreads over the next ones; a dead node leaves the live view and its calls go to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshcloud.placement import Constraints, NodeInfo, rank

NodeId = bytes


def constraints(image: bool) -> Constraints:
    """A function's placement rules: podman for an image function, else the process
    runtime; battery and metered nodes only when nothing else is eligible."""
    return Constraints(runtime="podman" if image else "process", avoid_battery=True,
                       avoid_metered=True)


def item(name: str) -> bytes:
    return b"fn:" + name.encode()


@dataclass(frozen=True, slots=True)
class Route:
    candidates: tuple[NodeId, ...]
    """The best tier of the ranking, best first: where the calls go."""
    ranking: tuple[NodeId, ...]
    """Every eligible node, best first (failover order past the candidates)."""


def route(view: Iterable[NodeInfo], name: str, rules: Constraints) -> Route:
    members = {m.node_id: m for m in view}
    def tier(n: NodeId) -> tuple[bool, bool]:  # mains before metered before battery
        m = members[n]
        return (rules.avoid_battery and m.on_battery, rules.avoid_metered and m.metered)

    # rank() puts nodes breaking one soft rule alike; a stable sort on the tier keeps the
    # rendezvous order inside each tier and puts a battery node after a metered one
    ranking = sorted(rank(members.values(), item(name), rules), key=tier)
    if not ranking:
        return Route((), ())
    best = tier(ranking[0])
    return Route(tuple(n for n in ranking if tier(n) == best), tuple(ranking))


def spread(concurrency: int, in_flight: int, available: int) -> int:
    """How many of the candidates share the calls: 1 + ``in_flight // concurrency``,
    at most ``available`` (0 when there is none)."""
    if available <= 0:
        return 0
    return min(available, 1 + max(0, in_flight) // max(1, concurrency))


def choose(candidates: Sequence[NodeId], k: int, outstanding: Mapping[NodeId, int],
           draw: Callable[[int], int]) -> NodeId | None:
    """The node for one call: of two of the first ``k`` candidates drawn at random
    (``draw(n)`` is a number in ``[0, n)``), the one with fewer outstanding calls."""
    top = candidates[:max(1, k)]
    if not top:
        return None
    if len(top) == 1:
        return top[0]
    first = draw(len(top)) % len(top)
    second = draw(len(top) - 1) % (len(top) - 1)
    if second >= first:
        second += 1
    a, b = sorted((first, second))
    return top[b] if outstanding.get(top[b], 0) < outstanding.get(top[a], 0) else top[a]


def order(chosen: NodeId | None, ranking: Sequence[NodeId]) -> list[NodeId]:
    """Nodes to try for a call: the chosen one, then the rest in ranking order."""
    rest = [n for n in ranking if n != chosen]
    return ([chosen] if chosen is not None else []) + rest
