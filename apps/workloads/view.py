"""The placement view: live nodes as :class:`~meshcloud.placement.NodeInfo`, built alike
on every node from what it knows.

Inputs: the ids this node believes alive (gossip), gossip capacity (``members_view``),
the ``offers`` table (runtimes and images each node publishes) and the ``nodes`` table's
``drain`` flags; a node whose capacity says ``low_power`` (battery under its
threshold, not charging) counts as draining until it charges. Only nodes with an offer
can run workloads (an agent without the workload service publishes none). Pure: same
inputs, same view, whatever their order.

Capacity dicts are read tolerantly (gossip's ``Capacity`` field names, or the short
forms ``cpus``/``ram_mb``), and the offer fills in what gossip does not say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from apps.workloads.messages import NodeOffer
from apps.workloads.planner import PlanItem
from apps.workloads.spec import WorkloadSpec
from meshcloud.placement import NodeInfo

MIB = 1 << 20


def node_info(node_id: bytes, offer: NodeOffer, capacity: Mapping[str, Any] | None = None,
              *, draining: bool = False) -> NodeInfo:
    cap = capacity or {}
    cpus = _number(cap.get("cpu_cores", cap.get("cpus"))) or offer.cpus
    ram_total = _number(cap.get("ram_total"))
    ram_mb = int(ram_total // MIB) if ram_total else int(_number(cap.get("ram_mb"))
                                                        or offer.ram_mb)
    labels = dict(offer.labels)
    raw_labels = cap.get("labels")
    if isinstance(raw_labels, Mapping):
        labels.update({str(k): str(v) for k, v in raw_labels.items()})
    elif isinstance(raw_labels, list | tuple):
        labels.update({str(p[0]): str(p[1]) for p in raw_labels
                       if isinstance(p, list | tuple) and len(p) == 2})
    on_ac = cap.get("on_ac")
    return NodeInfo(
        node_id=node_id, arch=str(cap.get("arch") or offer.arch),
        runtimes=frozenset(offer.runtimes), labels=tuple(sorted(labels.items())),
        cpus=float(cpus), ram_mb=ram_mb, on_battery=on_ac is False,
        metered=bool(cap.get("metered", offer.metered)),
        draining=draining or cap.get("low_power") is True)


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def build_view(alive: Iterable[bytes], offers: Mapping[bytes, NodeOffer],
               capacities: Mapping[bytes, Mapping[str, Any]] | None = None,
               draining: Iterable[bytes] = ()) -> list[NodeInfo]:
    """Live nodes that can run workloads, sorted by id."""
    drained = set(draining)
    caps = capacities or {}
    return [node_info(node_id, offers[node_id], caps.get(node_id),
                      draining=node_id in drained)
            for node_id in sorted(set(alive)) if node_id in offers]


def capacities_from_members(members: Iterable[Mapping[str, Any]]) -> dict[bytes, dict[str, Any]]:
    """``{node id: capacity}`` from ``node.members_view()`` rows (hex ids)."""
    out: dict[bytes, dict[str, Any]] = {}
    for row in members:
        try:
            node_id = bytes.fromhex(str(row.get("id", "")))
        except ValueError:
            continue
        capacity = row.get("capacity")
        if isinstance(capacity, Mapping):
            out[node_id] = dict(capacity)
    return out


def lacking_image(image: str | None, offers: Mapping[bytes, NodeOffer]) -> frozenset[bytes]:
    """Nodes whose store does not hold ``image`` (none for a process workload)."""
    if image is None:
        return frozenset()
    return frozenset(node for node, offer in offers.items() if image not in offer.images)


def plan_item(name: str, spec: WorkloadSpec, replicas: int,
              offers: Mapping[bytes, NodeOffer], holder: bytes | None = None) -> PlanItem:
    """A workload as placement sees it: its constraints plus "the node holds the image";
    a singleton keeps ``holder`` (its current claim) while that node is eligible."""
    constraints = replace(spec.placement_constraints(),
                          exclude=lacking_image(spec.image if spec.runtime == "podman"
                                                else None, offers))
    keep = frozenset({holder}) if spec.singleton and holder is not None else frozenset()
    return PlanItem(name, replicas, constraints, spec.singleton, keep)
