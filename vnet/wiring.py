"""How a replica with a network of its own is wired into its V-Nets (sans-IO).

A replica attached to a V-Net runs in a network namespace of its own on whichever node
runs it. For each V-Net it has one veth pair: the inner end, named like the nodes'
V-Net interfaces (``mc-NAME``), holds the replica's own address (/32) and routes the
V-Net's range via the node's address in it; the host end (``mvXXXXXXYYYYYYY``,
:func:`vnet.ipam.replica_link`) holds the node's address (/32, so it answers ARP for it
whatever the host's ARP settings) and a /32 route to the replica. The node forwards
between the host end and its tunnel interface (per-interface forwarding, checked by the
V-Net's firewall rules), and its tunnel peers route the replica's /32 to it (the
replica's row is one of the node's members: :func:`vnet.core.plane_configs`).

Routed veths rather than a bridge: replicas share no layer 2 (no ARP between them), each
has one /32 route, and strict reverse-path filtering on the host end refuses a replica
that sends from an address that is not its own.

:func:`wirings` says what a replica's namespace should hold, from the rows; the driver
(:mod:`vnet.replicas`) compares it with what it made and runs :func:`setup` and
:func:`teardown`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vnet.core import View, network_of, owners
from vnet.ipam import interface_name, replica_link
from vnet.tables import host_member, replica_member

MTU = 1420
"""The tunnels' MTU: a replica never sends what the tunnel must fragment."""
NETNS_PREFIX = "mc"


@dataclass(frozen=True, slots=True)
class Wiring:
    vnet: str
    link: str
    """The veth's host end."""
    inner: str
    """The veth's end in the replica's namespace."""
    address: ipaddress.IPv4Address
    """The replica's own address in the V-Net."""
    gateway: ipaddress.IPv4Address
    """The node's address in the V-Net (also the V-Net's resolver for the replica)."""
    network: ipaddress.IPv4Network


def netns_name(node: bytes, replica: str) -> str:
    """The replica's network namespace on ``node`` (``ip netns`` name): unique per node,
    so agents sharing a ``/run`` (network-namespace labs) never collide."""
    return f"{netns_prefix(node)}{replica}"


def netns_prefix(node: bytes) -> str:
    return f"{NETNS_PREFIX}{node.hex()[:8]}-"


def replica_of(node: bytes, netns: str) -> tuple[str, int] | None:
    """(workload, index) of a namespace :func:`netns_name` made on ``node``, else None."""
    prefix = netns_prefix(node)
    if not netns.startswith(prefix):
        return None
    workload, _, index = netns[len(prefix):].rpartition("-")
    if not workload or not index.isdigit():
        return None
    return workload, int(index)


def attached(view: View, workload: str) -> list[str]:
    """The V-Nets ``workload`` is attached to (that exist)."""
    return sorted(v for (v, w) in view.attachments if w == workload and v in view.vnets)


def wirings(view: View, node: bytes, replica: str, workload: str, index: int
            ) -> dict[str, Wiring]:
    """The interfaces the replica's namespace should have: one per V-Net where its row is
    this node's, with an address it holds, and the node holds a routed address too."""
    out: dict[str, Wiring] = {}
    member = replica_member(workload, index)
    for vnet in attached(view, workload):
        network = network_of(view.vnets[vnet])
        row = view.members.get((vnet, member))
        host = view.members.get((vnet, host_member(node)))
        if network is None or row is None or host is None or row.node != node \
                or not row.address:
            continue
        held = owners(view.members, vnet)
        if held.get(row.address) != member or held.get(host.address) != host_member(node):
            continue
        out[vnet] = Wiring(vnet=vnet, link=replica_link(vnet, node, replica),
                           inner=interface_name(vnet),
                           address=ipaddress.IPv4Address(row.address),
                           gateway=ipaddress.IPv4Address(host.address), network=network)
    return out


def setup(netns: str, w: Wiring) -> list[list[str]]:
    """The ``ip`` commands that make ``w`` (after :func:`teardown` of an older one)."""
    gw, addr = str(w.gateway), str(w.address)
    return [
        ["ip", "link", "add", w.link, "type", "veth", "peer", "name", w.inner,
         "netns", netns],
        ["ip", "link", "set", w.link, "mtu", str(MTU), "up"],
        ["ip", "addr", "add", f"{gw}/32", "dev", w.link],
        ["ip", "route", "replace", f"{addr}/32", "dev", w.link],
        ["ip", "-n", netns, "link", "set", w.inner, "mtu", str(MTU), "up"],
        ["ip", "-n", netns, "addr", "add", f"{addr}/32", "dev", w.inner],
        ["ip", "-n", netns, "route", "add", f"{gw}/32", "dev", w.inner, "scope", "link"],
        ["ip", "-n", netns, "route", "add", str(w.network), "via", gw, "dev", w.inner,
         "src", addr],
    ]


def sysctls(w: Wiring) -> list[tuple[str, str]]:
    """(path, value): the host end forwards, and refuses sources not routed to it."""
    base = f"/proc/sys/net/ipv4/conf/{w.link}"
    return [(f"{base}/forwarding", "1"), (f"{base}/rp_filter", "1")]


def teardown(w: Wiring) -> list[str]:
    """Deleting the host end deletes the pair, its address and its route."""
    return ["ip", "link", "del", w.link]


def env_name(vnet: str) -> str:
    return "MESHCLOUD_VNET_" + vnet.upper().replace("-", "_")


def replica_env(wired: dict[str, Wiring]) -> dict[str, str]:
    """What a replica is told: ``MESHCLOUD_VNET_<NAME>`` its address in each V-Net, and
    ``MESHCLOUD_VNET_<NAME>_RESOLVER`` the address of that V-Net's resolver."""
    env: dict[str, str] = {}
    for vnet, w in sorted(wired.items()):
        env[env_name(vnet)] = str(w.address)
        env[env_name(vnet) + "_RESOLVER"] = str(w.gateway)
    return env

