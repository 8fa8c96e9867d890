"""The admin's operations: invites and revocations, signed with the mesh root key."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from meshcloud.errors import MeshError
from meshcloud.identity.invites import MAX_LEDGER, InviteToken
from meshcloud.identity.invites import create_invite as make_invite
from meshcloud.revocation import sign_revocation

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

log = logging.getLogger(__name__)


def _require_admin(node: Node, what: str) -> None:
    if node.root_key is None:
        raise MeshError(f"this node holds no admin key: {what} on the node where "
                        "`meshcloud init` ran", code="not_admin")


def create_invite(node: Node, *, ttl_s: float, uses: int,
                  bootstrap: list[str] | None = None) -> InviteToken:
    _require_admin(node, "create invites")
    assert node.root_key is not None
    # who counts the invite's uses: this node and up to two live members, the
    # longest-connected first (they are the likeliest to be up when it is used)
    ledger = (node.node_id, *node.book.connected_since(node.alive_peer_ids)[:MAX_LEDGER - 1])
    token = make_invite(
        node.root_key, now=node.clock.wall_ms(), ttl_ms=int(ttl_s * 1000), uses=uses,
        bootstrap=tuple(bootstrap or node.advertised_addresses()),
        mesh_name=node.mesh.mesh_name, ledger=ledger,
    )
    node.events.emit("invite.created", invite=token.invite.invite_id.hex()[:8], uses=uses,
                     expires_at=token.invite.body.expires_at)
    return token


def revoke(node: Node, kind: str, subject: bytes) -> dict[str, Any]:
    """Revoke a node or an invite (admin only): signed with the root key, spread by
    the replicated state, enforced by every member on handshakes and open connections."""
    _require_admin(node, "revoke")
    assert node.root_key is not None
    if kind == "node" and subject == node.node_id:
        raise MeshError("a node cannot revoke itself; run `meshcloud revoke` on the "
                        "admin node for another node, or `meshcloud leave` here",
                        code="bad_request")
    at = node.clock.wall_ms()
    node.records.add_revocation(kind, subject, at, sign_revocation(node.root_key, kind,
                                                                   subject, at))
    node.events.emit(f"{kind}.revoked", subject=subject.hex())
    log.warning("revoked", extra={"kind": kind, "subject": subject.hex()[:12]})
    return {"kind": kind, "id": subject.hex(), "at": at}
