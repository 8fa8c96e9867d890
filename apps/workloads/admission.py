"""Mesh-wide checks of a spec, before anything is written: can this mesh run it at all?

:func:`spec_problems` (in :mod:`apps.workloads.spec`) judges a spec alone; this module
judges it against the mesh as this node sees it:

* **the image exists somewhere**: podman workloads name an image some node's store holds
  (from the ``offers`` table: there is no registry to pull from);
* **the constraints are satisfiable**: at least one live node passes every hard filter
  (runtime, arch, labels, RAM, CPUs, not draining, holds the image), and as many as
  there are replicas (each replica needs its own node); when none does, the answer says
  why, node by node;
* **host ports are free**: no other workload publishes the same host port (replicas of
  two workloads may share a node), and no two replicas of this one would share a host
  port on one machine (:func:`shared_port_problems`: nodes advertising the same IP address
  are one machine, e.g. the demo's agents on 127.0.0.1).

Pure: the API calls :func:`admission_problems` with the node's view and refuses the spec
with all problems at once if the list is not empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from apps.workloads.messages import NodeOffer
from apps.workloads.spec import WorkloadSpec
from apps.workloads.view import plan_item
from meshcloud.placement import Constraints, NodeInfo

HOW_TO_GET_IMAGES = ("push it to the mesh first (`meshcloud images push ARCHIVE` for a "
                     "`podman save` archive, or `meshcloud images --build-demo` for the "
                     "demo images; docs/operations.md, Images)")


def why_not(node: NodeInfo, c: Constraints) -> str | None:
    """The first hard constraint ``node`` fails (None if it may run the workload)."""
    if node.draining:
        return "draining"
    if node.node_id in c.exclude:
        return "lacks the image"
    if c.runtime is not None and c.runtime not in node.runtimes:
        return f"has no {c.runtime} runtime"
    if c.arch and node.arch not in c.arch:
        return f"is {node.arch or 'of unknown arch'}"
    missing = [f"{k}={v}" for k, v in c.labels if (k, v) not in set(node.labels)]
    if missing:
        return f"lacks label {missing[0]}"
    if node.ram_mb < c.min_ram_mb:
        return f"has {node.ram_mb} MiB RAM"
    if node.cpus < c.min_cpus:
        return f"has {node.cpus:g} CPUs"
    return None


def admission_problems(spec: WorkloadSpec, view: Sequence[NodeInfo],
                       offers: Mapping[bytes, NodeOffer],
                       others: Mapping[str, WorkloadSpec] | None = None,
                       machines: Mapping[bytes, str] | None = None,
                       unannounced: int = 0) -> list[str]:
    """Every reason the mesh cannot run ``spec`` now. ``unannounced`` counts live members
    whose workload offer has not reached this node yet (just joined or just restarted):
    they are not in ``view``, and a refusal says so, since waiting a moment helps."""
    problems: list[str] = []
    later = (f"; {unannounced} more live member(s) have not announced their runtimes "
             "yet: try again in a few seconds") if unannounced else ""
    if spec.runtime == "podman" and spec.image is not None:
        holders = [n for n, o in offers.items() if spec.image in o.images]
        if not holders:
            problems.append(f"image {spec.image} is not in any node's store "
                            f"({len(offers)} node(s) checked): {HOW_TO_GET_IMAGES}")
    constraints = plan_item(spec.name, spec, spec.replicas, offers).constraints
    reasons = {n.node_id: why_not(n, constraints) for n in view}
    eligible = [n for n, why in reasons.items() if why is None]
    if not view:
        problems.append(f"no live node runs the workload service{later}")
    elif not eligible and not (problems and all(r == "lacks the image"
                                                for r in reasons.values())):
        counts = Counter(why for why in reasons.values() if why is not None)
        summary = ", ".join(f"{count} {why}" for why, count in counts.most_common())
        problems.append(f"no live node can run it ({len(view)} checked: {summary}){later}")
    elif 0 < len(eligible) < spec.replicas:
        problems.append(f"replicas = {spec.replicas} but only {len(eligible)} live node(s) "
                        f"can run it (each replica needs its own node{later})")
    problems += shared_port_problems(spec, eligible, machines or {})
    for name, other in sorted((others or {}).items()):
        if name == spec.name:
            continue
        for mine in spec.ports:
            for theirs in other.ports:
                same_ip = "0.0.0.0" in (mine.host_ip, theirs.host_ip) or \
                    mine.host_ip == theirs.host_ip
                if same_ip and mine.host_port == theirs.host_port and \
                        mine.protocol == theirs.protocol:
                    problems.append(f"host port {mine.host_port}/{mine.protocol} is already "
                                    f"published by workload {name!r}")
    return problems


def machine_of_addresses(addresses: Sequence[str]) -> str | None:
    """The machine behind a node's advertised addresses: the host of the first one."""
    for address in addresses:
        text = str(address).split("://", 1)[-1]
        host = (text.rsplit(":", 1)[0] if ":" in text else text).strip("[]")
        if host:
            return host
    return None

def shared_port_problems(spec: WorkloadSpec, eligible: Sequence[bytes],
                         machines: Mapping[bytes, str]) -> list[str]:
    """Host ports two replicas of ``spec`` would both bind on one machine.

    Replicas go to distinct nodes, but several nodes may share a machine. When the nodes
    that can run the workload span fewer machines than there are replicas, some machine
    gets two replicas, and a fixed host port would fail there with "address already in
    use", over and over. Refused at submit time instead.
    """
    if spec.replicas < 2 or not spec.ports:
        return []
    hosts = {machines.get(n) or n.hex() for n in eligible}
    if not eligible or len(hosts) >= spec.replicas:
        return []
    ports = ", ".join(f"{p.host_port}/{p.protocol}" for p in spec.ports)
    return [f"replicas = {spec.replicas} would share host port(s) {ports}: the nodes that "
            f"can run it are on {len(hosts)} machine(s) ({', '.join(sorted(hosts))}), "
            "so two replicas would bind the same port on one machine; run at most "
            f"{len(hosts)} replica(s), or publish no host port"]
