"""Who a peer is, and who decides whether it may connect: the trio-free half of the
transport interface (re-exported by :mod:`meshcloud.transport.base`).

Sans-IO cores (the handshake) and the admission policy (:mod:`meshcloud.auth`) import
these without pulling in trio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from meshcloud.identity.certs import MemberProof, MeshCert

NodeId = bytes

JOIN_PROTOCOLS = frozenset({"/meshcloud/join/1"})
"""The only protocols a peer that is still joining (no certificate yet) may open."""


@dataclass(frozen=True, slots=True)
class PeerAuth:
    """Who a connection's peer is, as established by the handshake."""

    node_id: NodeId
    node_public: bytes
    cert: MeshCert | None = None
    join_proof: MemberProof | None = None
    listen_addresses: tuple[str, ...] = ()
    agent_version: str = ""

    @property
    def joining(self) -> bool:
        return self.cert is None


class Authenticator(Protocol):
    """The node's policy for the handshake: what we show, and whom we let in."""

    def local_credentials(self) -> tuple[MeshCert | None, MemberProof | None]:
        """Our certificate, or (while joining) our join proof."""
        ...

    def check_peer(self, peer: PeerAuth, *, we_dialed: bool) -> None:
        """Raise AuthError to refuse the peer (forged cert, revoked, wrong mesh...)."""
        ...
