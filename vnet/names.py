"""V-Net names (sans-IO): what a name under ``.vnet`` resolves to, from the rows.

Inside V-Net ``NET`` (the resolver listens on each node's address in it):

* ``WORKLOAD.NET.vnet``: every live replica of a workload attached to ``NET`` (each
  replica's own address; a process replica started before the attach shares its node's
  host address);
* ``INDEX.WORKLOAD.vnet``: one replica of such a workload;
* ``NODE.NET.vnet``: a host member, by the first 12 hex digits of its node id.

Names are case-insensitive; anything else under ``.vnet`` is NXDOMAIN, and a name outside
``.vnet`` is not ours (REFUSED by the driver).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from vnet.core import MemberKey, owners
from vnet.records import HOST, REPLICA, MemberRecord
from vnet.tables import host_member

SUFFIX = "vnet"


def _host_address(members: Mapping[MemberKey, MemberRecord], vnet: str,
                  node: bytes) -> ipaddress.IPv4Address | None:
    row = members.get((vnet, host_member(node)))
    if row is None or row.address == 0:
        return None
    if owners(members, vnet).get(row.address) != host_member(node):
        return None  # a claim that lost a collision is not routed
    return ipaddress.IPv4Address(row.address)


def _replica_address(members: Mapping[MemberKey, MemberRecord], vnet: str, member: str,
                     row: MemberRecord) -> ipaddress.IPv4Address | None:
    if row.address == 0:
        return _host_address(members, vnet, row.node)
    if owners(members, vnet).get(row.address) != member:
        return None  # a claim that lost a collision is not routed
    return ipaddress.IPv4Address(row.address)


def resolve_name(name: str, vnet: str, members: Mapping[MemberKey, MemberRecord]
                 ) -> list[ipaddress.IPv4Address] | None:
    """The addresses ``name`` has inside ``vnet``; [] for a name under ``.vnet`` that
    does not exist; None for a name that is not under ``.vnet``."""
    labels = [label for label in name.lower().rstrip(".").split(".") if label]
    if not labels or labels[-1] != SUFFIX:
        return None
    if len(labels) != 3:
        return []
    first, second = labels[0], labels[1]
    rows = {m: r for (v, m), r in members.items() if v == vnet}
    found: list[ipaddress.IPv4Address] = []
    if second == vnet:
        # WORKLOAD.NET.vnet: every replica of that workload in this V-Net
        prefix = f"wl:{first}/"
        for member, row in sorted(rows.items()):
            if member.startswith(prefix) and row.kind == REPLICA:
                address = _replica_address(members, vnet, member, row)
                if address is not None and address not in found:
                    found.append(address)
        if found:
            return found
        # NODE.NET.vnet: a host by its id's first hex digits
        for _, row in sorted(rows.items()):
            if row.kind == HOST and len(first) >= 6 and row.node.hex().startswith(first):
                address = _host_address(members, vnet, row.node)
                if address is not None:
                    return [address]
        return []
    if first.isdigit():
        member = f"wl:{second}/{int(first)}"
        replica = rows.get(member)
        if replica is not None:
            address = _replica_address(members, vnet, member, replica)
            return [address] if address is not None else []
    return []
