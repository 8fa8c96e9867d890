"""Records of the V-Nets' replicated tables (full copy on every node).

Tags ``VNET + 0`` .. ``VNET + 19`` are the control plane's; the data planes use others.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

HOST = "host"
"""Member kind: a node itself (``vnet attach NAME --host``)."""
REPLICA = "replica"
"""Member kind: a workload's replica; a process replica shares its node's address."""


@message(TagBlock.VNET + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class VNetRecord:
    cidr: str
    """The V-Net's IPv4 range, e.g. ``10.42.0.0/24``."""
    created_ms: int


@message(TagBlock.VNET + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecord:
    """One member of a V-Net, written only by the node it runs on (``node``)."""

    kind: str
    """:data:`HOST` or :data:`REPLICA`."""
    node: bytes
    address: int
    """Its IPv4 address as an integer (0: shares its node's host address)."""
    claimed_ms: int
    """When ``address`` was claimed: the earlier claim keeps an address claimed twice."""
    public_key: bytes = b""
    """The node's X25519 tunnel key (32 bytes)."""
    port: int = 0
    """The UDP port the node's plane listens on for this V-Net (0 until it runs)."""
    plane: str = ""
    """The data plane the node was asked to use ('' picks one)."""


@message(TagBlock.VNET + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class AttachRecord:
    """A workload attached to a V-Net: the nodes running its replicas join it."""

    created_ms: int
