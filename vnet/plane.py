"""The contract between the V-Net control plane and a data plane.

The control plane computes, for each V-Net this node takes part in, one
:class:`PlaneConfig`: the interface to own, this node's address in the V-Net, its
tunnel key, and every peer (public key, underlay endpoint, the V-Net addresses routed to
it). A data plane makes the host match it: :meth:`DataPlane.apply` is idempotent and is
called again whenever the config changes (a peer roams, joins or leaves), and
:meth:`DataPlane.close` removes everything the plane made (interfaces, routes, rules,
sockets). Keys are X25519 (32 raw bytes), the shape WireGuard uses, so the planes are
interchangeable.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

Endpoint = tuple[str, int]
"""An underlay (host, UDP port)."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    """The peer's X25519 tunnel key (32 bytes)."""
    endpoint: Endpoint | None
    """Where the peer's plane listens on the underlay; None while unknown."""
    allowed_ips: tuple[ipaddress.IPv4Network, ...]
    """The V-Net addresses routed to this peer (its members' /32s)."""
    node_id: bytes = b""
    """The mesh node this peer is (for status and logs)."""


@dataclass(frozen=True, slots=True)
class PlaneConfig:
    vnet: str
    """The V-Net's name."""
    interface: str
    """The interface the plane owns on this node (at most 15 characters)."""
    address: ipaddress.IPv4Interface
    """This node's address in the V-Net, with the V-Net's prefix (e.g. 10.42.0.1/24)."""
    private_key: bytes
    """This node's X25519 tunnel key for the V-Net (32 bytes; never logged)."""
    listen_port: int
    """The UDP port the plane listens on (0: let the plane pick; see ``listen_port()``)."""
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)
    mtu: int = 1420

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return (f"PlaneConfig(vnet={self.vnet!r}, interface={self.interface!r}, "
                f"address={self.address}, listen_port={self.listen_port}, "
                f"peers={len(self.peers)})")


@dataclass(frozen=True, slots=True)
class PeerStats:
    public_key: bytes
    endpoint: Endpoint | None
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None
    """Unix time of the last completed handshake, or None if never."""


class PlaneError(Exception):
    """A data plane could not do what was asked (one clear message for the user)."""


class DataPlane(Protocol):
    name: str
    """``wireguard``, ``python`` or ``userspace``."""

    async def apply(self, config: PlaneConfig) -> None:
        """Make the host match ``config`` (create, update, add and remove peers)."""
        ...

    def listen_port(self) -> int:
        """The UDP port actually bound (after ``apply``)."""
        ...

    def stats(self) -> list[PeerStats]:
        ...

    async def close(self) -> None:
        """Remove every interface, route, rule and socket this plane made."""
        ...
