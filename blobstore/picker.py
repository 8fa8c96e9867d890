"""The node's :class:`~blobstore.holders.HolderPicker`: ``meshcloud.placement`` over the
live members, weighted by free disk, avoiding battery and metered nodes when it can.

Each live member becomes a :class:`~meshcloud.placement.NodeInfo`:

* weight = free disk in GiB (at least 0.05, so a nearly full node still ranks somewhere
  and a write can fall back to it); a member whose capacity is unknown gets the mean
  weight of the known ones (1.0 when none is known);
* ``on_battery`` when its capacity says it runs on battery, ``metered`` likewise;
* ``draining`` when its capacity says ``low_power`` (battery low, not charging): it
  gets no new shards, and repair moves its shards to the others.

The soft constraints ``avoid_battery`` and ``avoid_metered`` rank those nodes after all
the others: they are used only when too few other nodes exist, so a 4+2 write on a mesh
of five desktops and one phone still succeeds. Pure given the two callables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from meshcloud import placement

NodeId = bytes

GIB = 1 << 30
MIN_WEIGHT = 0.05


def node_infos(alive: Iterable[NodeId], members: Iterable[Mapping[str, Any]]
               ) -> list[placement.NodeInfo]:
    """NodeInfo for every id in ``alive``, with capacity from ``members`` (the node's
    ``members_view()`` rows: ``{"id": hex, "capacity": {...}}``)."""
    capacity: dict[NodeId, Mapping[str, Any]] = {}
    for row in members:
        try:
            capacity[bytes.fromhex(row["id"])] = row.get("capacity") or {}
        except (KeyError, ValueError, TypeError):
            continue
    known = {}
    for node in alive:
        disk = capacity.get(node, {}).get("disk_free", 0)
        if isinstance(disk, int | float) and disk > 0:
            known[node] = max(disk / GIB, MIN_WEIGHT)
    default = sum(known.values()) / len(known) if known else 1.0
    out = []
    for node in sorted(set(alive)):
        cap = capacity.get(node, {})
        on_ac = cap.get("on_ac")
        out.append(placement.NodeInfo(
            node, weight=known.get(node, default),
            on_battery=on_ac is False,
            metered=bool(cap.get("metered", False)),
            draining=bool(cap.get("draining", False)) or cap.get("low_power") is True,
        ))
    return out


class PlacementPicker:
    """HolderPicker over the live view (see the module docstring)."""

    def __init__(self, alive: Callable[[], Collection[NodeId]],
                 members: Callable[[], Iterable[Mapping[str, Any]]] = lambda: ()) -> None:
        self.alive = alive
        self.members = members

    def view(self) -> list[placement.NodeInfo]:
        return node_infos(self.alive(), self.members())

    def live_count(self) -> int:
        return len(set(self.alive()))

    def pick(self, key: bytes, count: int, *, exclude: Collection[NodeId] = ()
             ) -> list[NodeId]:
        rule = placement.Constraints(avoid_battery=True, avoid_metered=True,
                                     exclude=frozenset(exclude))
        return placement.rank(self.view(), key, rule)[:count]
