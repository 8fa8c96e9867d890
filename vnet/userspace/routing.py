"""Where a V-Net address lives, from a :class:`PlaneConfig` alone (pure functions).

An address routed to a peer (in its allowed IPs) is reached over a mesh stream to that
peer's node; this node's own address, or an address of the V-Net no peer claims (a member
on this node), is local. Anything outside the V-Net is refused: the userspace mode is an
entry into the V-Net, not a general proxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vnet.plane import PeerConfig, PlaneConfig


@dataclass(frozen=True, slots=True)
class Local:
    host: str
    """What to connect to on this node."""


@dataclass(frozen=True, slots=True)
class Remote:
    peer: PeerConfig


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    """``outside`` (not a V-Net address), ``no_node`` (its peer has no mesh node id)."""


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def peer_for(config: PlaneConfig, address: ipaddress.IPv4Address) -> PeerConfig | None:
    """The peer whose allowed IPs hold ``address`` (the longest prefix wins)."""
    best: tuple[int, PeerConfig] | None = None
    for peer in config.peers:
        for net in peer.allowed_ips:
            if address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, peer)
    return best[1] if best else None


def locate(config: PlaneConfig, address: ipaddress.IPv4Address, *, loopback: bool
           ) -> Local | Remote | Refused:
    """Where to send a connection to ``address``. ``loopback``: this node has no V-Net
    interface, so its own V-Net address means 127.0.0.1."""
    if address == config.address.ip:
        return Local("127.0.0.1" if loopback else str(address))
    if address not in config.address.network:
        return Refused("outside")
    peer = peer_for(config, address)
    if peer is None:
        return Refused("outside") if loopback else Local(str(address))
    if not peer.node_id:
        return Refused("no_node")
    return Remote(peer)


def accepts(config: PlaneConfig, node_id: bytes, address: ipaddress.IPv4Address, *,
            loopback: bool) -> Local | Refused:
    """Whether this node serves a stream from ``node_id`` to ``address``: the requester
    must be a peer of the V-Net, and the address must be local here."""
    if not node_id or not any(peer.node_id == node_id for peer in config.peers):
        return Refused("not_member")
    where = locate(config, address, loopback=loopback)
    return where if isinstance(where, Local) else Refused("not_here")
