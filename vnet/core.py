"""The V-Net control core (sans-IO): from the replicated rows and the membership view to
the rows this node must write and the :class:`~vnet.plane.PlaneConfig` of each V-Net it
takes part in.

It reads nothing and writes nothing itself: :func:`reconcile` returns :class:`Put` and
:class:`Delete` orders for this node's own member rows, :func:`plane_configs` returns the
configs; the service (:mod:`vnet.service`) performs them. Both are pure functions of their
arguments, so every node computes the same owners and peers from the same rows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from vnet.ipam import VNetError, allocate, interface_name, parse_cidr, resolve
from vnet.plane import Endpoint, PeerConfig, PlaneConfig
from vnet.records import HOST, REPLICA, AttachRecord, MemberRecord, VNetRecord
from vnet.tables import host_member, replica_member

MemberKey = tuple[str, str]
"""(V-Net name, member id)."""


@dataclass(frozen=True, slots=True)
class Put:
    vnet: str
    member: str
    record: MemberRecord


@dataclass(frozen=True, slots=True)
class Delete:
    vnet: str
    member: str


Order = Put | Delete


@dataclass(frozen=True, slots=True)
class View:
    """What the core reads: the tables and, for replicas, who runs what."""

    vnets: Mapping[str, VNetRecord]
    members: Mapping[MemberKey, MemberRecord]
    attachments: Mapping[MemberKey, AttachRecord] = field(default_factory=dict)
    running: Mapping[str, frozenset[int]] = field(default_factory=dict)
    """Workload name → replica indexes running (or starting) on this node."""


def network_of(record: VNetRecord) -> ipaddress.IPv4Network | None:
    try:
        return parse_cidr(record.cidr)
    except VNetError:
        return None


def claims(members: Mapping[MemberKey, MemberRecord], vnet: str) -> dict[str, tuple[int, int]]:
    return {m: (r.address, r.claimed_ms) for (v, m), r in members.items() if v == vnet}


def owners(members: Mapping[MemberKey, MemberRecord], vnet: str) -> dict[int, str]:
    """Address → the member holding it in ``vnet`` (losers of a collision left out)."""
    return resolve(claims(members, vnet))[0]


def new_host_member(view: View, vnet: str, node: bytes, now_ms: int, *,
                    public_key: bytes = b"", plane: str = "") -> Put:
    """The row attaching ``node`` itself to ``vnet`` (its current one if it has one)."""
    record = view.vnets.get(vnet)
    network = network_of(record) if record is not None else None
    if record is None or network is None:
        raise VNetError(f"no V-Net {vnet!r}")
    member = host_member(node)
    current = view.members.get((vnet, member))
    if current is not None:
        return Put(vnet, member, replace(current, plane=plane or current.plane))
    taken = [r.address for (v, _), r in view.members.items() if v == vnet]
    address = allocate(network, member, taken)
    return Put(vnet, member, MemberRecord(kind=HOST, node=node, address=address,
                                          claimed_ms=now_ms, public_key=public_key,
                                          plane=plane))


def _replica_address(view: View, vnet: str, member: str) -> int | None:
    """An address for replica ``member`` moving onto (or appearing on) this node: the one
    its row already names when no other member holds it (a re-placed replica keeps its
    address), else a free one; None when the range is full."""
    network = network_of(view.vnets[vnet])
    if network is None:
        return None
    row = view.members.get((vnet, member))
    held = owners(view.members, vnet)
    if row is not None and row.address and held.get(row.address, member) == member:
        return row.address
    taken = [r.address for (v, m), r in view.members.items() if v == vnet and m != member]
    try:
        return allocate(network, member, taken)
    except VNetError:
        return None


def reconcile(view: View, node: bytes, public_key: bytes, ports: Mapping[str, int],
              now_ms: int, netted: frozenset[MemberKey] = frozenset()) -> list[Order]:
    """The writes that make this node's own member rows right:

    * rows of V-Nets that no longer exist are deleted;
    * a row whose address lost a collision (:func:`vnet.ipam.resolve`) gets a new one;
    * the node's tunnel key and its plane's port (``ports[vnet]``, once known) are kept
      current in its host row;
    * a replica of an attached workload running here gets a replica row, and the node a
      host row; rows of replicas no longer running here are deleted. A replica with a
      network namespace of its own here (``netted``) gets an address of its own (the
      one its row had on its previous node when still free: it keeps it on failover);
      one without (a process replica started before the attach) shares the host's
      (address 0).
    """
    orders: list[Order] = []
    mine = {k: r for k, r in view.members.items() if r.node == node}
    wanted_replicas: set[MemberKey] = set()
    for (vnet, workload) in view.attachments:
        if vnet not in view.vnets:
            continue
        for index in view.running.get(workload, frozenset()):
            wanted_replicas.add((vnet, replica_member(workload, index)))
    for key in sorted(wanted_replicas):
        vnet, member = key
        if (vnet, host_member(node)) not in mine:
            try:
                put = new_host_member(view, vnet, node, now_ms, public_key=public_key)
            except VNetError:
                continue  # exhausted: the host row waits for a free address
            orders.append(put)
            mine[(vnet, put.member)] = put.record
        current = mine.get(key)
        if key in netted and (current is None or current.address == 0):
            address = _replica_address(view, vnet, member)
            previous = view.members.get(key)
            claimed = previous.claimed_ms if previous is not None and address and \
                previous.address == address else now_ms
            record = MemberRecord(kind=REPLICA, node=node, address=address or 0,
                                  claimed_ms=claimed)
            if record != current:
                orders.append(Put(vnet, member, record))
                mine[key] = record
        elif current is None:
            orders.append(Put(vnet, member, MemberRecord(
                kind=REPLICA, node=node, address=0, claimed_ms=now_ms)))
        elif key not in netted and current.address != 0:
            orders.append(Put(vnet, member, replace(current, address=0, claimed_ms=now_ms)))
    losers: dict[str, set[str]] = {}
    for (vnet, member), record in sorted(mine.items()):
        if vnet not in view.vnets:
            orders.append(Delete(vnet, member))
            continue
        if record.kind == REPLICA and (vnet, member) not in wanted_replicas:
            orders.append(Delete(vnet, member))
            continue
        if vnet not in losers:
            losers[vnet] = resolve(claims(view.members, vnet))[1]
        updated = record
        if member in losers[vnet]:
            network = network_of(view.vnets[vnet])
            if network is None:
                continue
            taken = [r.address for (v, m), r in view.members.items()
                     if v == vnet and m != member]
            try:
                address = allocate(network, member, taken)
            except VNetError:
                continue  # stays unrouted until an address frees up
            updated = replace(updated, address=address, claimed_ms=now_ms)
        if record.kind == HOST:
            port = ports.get(vnet, updated.port)
            if updated.public_key != public_key or updated.port != port:
                updated = replace(updated, public_key=public_key, port=port)
        if updated != record:
            orders.append(Put(vnet, member, updated))
    return orders


def endpoint_host(addresses: list[str]) -> str | None:
    """The host part of a member's mesh address (``host:port`` or ``[v6]:port``) to send
    tunnel packets to: the first that is not loopback (a node listening on a wildcard
    advertises 127.0.0.1 too), else the first (a mesh on one machine)."""
    hosts: list[str] = []
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            continue
        host = host.strip("[]")
        if host and host not in ("0.0.0.0", "::"):
            hosts.append(host)
    for host in hosts:
        if not (host.startswith("127.") or host == "::1" or host == "localhost"):
            return host
    return hosts[0] if hosts else None


def plane_configs(view: View, node: bytes, private_key: bytes,
                  addresses: Mapping[bytes, list[str]], *,
                  alive: frozenset[bytes] | None = None,
                  listen_ports: Mapping[str, int] | None = None) -> dict[str, PlaneConfig]:
    """One :class:`PlaneConfig` per V-Net where this node holds a routed host address.

    A peer is every other node holding an address in that V-Net (``alive``, when given,
    leaves out nodes the membership no longer lists: a removed node loses its tunnels);
    its endpoint is the host of its mesh address (``addresses``, from the membership view,
    so it follows a roaming node) and the port its row publishes; its allowed IPs are its
    members' /32s. A node only builds tunnels for V-Nets it is a member of.
    """
    out: dict[str, PlaneConfig] = {}
    for vnet, record in sorted(view.vnets.items()):
        network = network_of(record)
        if network is None:
            continue
        held = owners(view.members, vnet)
        me = host_member(node)
        mine = [a for a, m in held.items() if m == me]
        if not mine:
            continue
        hosts = {r.node: r for (v, _), r in view.members.items()
                 if v == vnet and r.kind == HOST and len(r.public_key) == 32}
        peers: dict[bytes, tuple[MemberRecord, list[int]]] = {}
        for address, member in sorted(held.items()):
            row = view.members[(vnet, member)]
            host_row = hosts.get(row.node)
            if row.node == node or host_row is None:
                continue  # a node's key and port are in its host row
            if alive is not None and row.node not in alive:
                continue
            entry = peers.setdefault(row.node, (host_row, []))
            entry[1].append(address)
        configs: list[PeerConfig] = []
        for peer_node, (row, peer_addresses) in sorted(peers.items()):
            host = endpoint_host(addresses.get(peer_node, []))
            endpoint: Endpoint | None = (host, row.port) if host and row.port else None
            configs.append(PeerConfig(
                public_key=row.public_key, endpoint=endpoint, node_id=peer_node,
                allowed_ips=tuple(ipaddress.IPv4Network(a) for a in sorted(peer_addresses))))
        prefix = network.prefixlen
        out[vnet] = PlaneConfig(
            vnet=vnet, interface=interface_name(vnet),
            address=ipaddress.IPv4Interface(f"{ipaddress.IPv4Address(mine[0])}/{prefix}"),
            private_key=private_key, listen_port=(listen_ports or {}).get(vnet, 0),
            peers=tuple(configs))
    return out
