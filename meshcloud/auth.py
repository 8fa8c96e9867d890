"""Admission: the node's handshake policy (who gets past the Noise handshake).

A peer is let in when it shows a membership certificate that verifies against our mesh
root key (:meth:`MeshCert.verify`) for the very key it proved in the handshake, and
neither the node nor the invite it used is revoked. A peer that shows an invite-backed
*join proof* instead (a binding signed with a root-signed invite's key) is let in only as a
**joiner**, and only while the invite is unexpired on our clock, unrevoked and not known to
be used up; a joiner may open nothing but the join protocol; there
:class:`meshcloud.join.JoinService` checks that the invite is unexpired on our clock,
unrevoked and wins a use from the invite's redemption ledger
(:mod:`meshcloud.redemption`), and answers with a certificate or one clear reason. Everything
else is refused with one clear AuthError.
"""

from __future__ import annotations

from collections.abc import Callable

from meshcloud.errors import AuthError, InviteError
from meshcloud.identity.certs import MemberProof, MeshCert, is_chain_revoked
from meshcloud.membership import MembershipRecords
from meshcloud.transport.base import PeerAuth


def is_cert_revoked(cert: MeshCert, records: MembershipRecords) -> bool:
    """True if any node or invite of the certificate's chain is revoked."""
    return is_chain_revoked(cert, records.is_revoked)


def check_join_proof(proof: MemberProof, root_public: bytes, records: MembershipRecords,
                     now_ms: int) -> None:
    """Raise InviteError unless ``proof`` is a usable invite right now."""
    try:
        proof.check(root_public)
    except AuthError as exc:
        raise InviteError(f"invite refused: {exc}") from None
    body = proof.invite.body
    node_id = proof.binding.node_id
    if records.is_revoked(node_id, body.invite_id):
        raise InviteError("invite refused: it has been revoked")
    if now_ms > body.expires_at:
        raise InviteError("invite refused: it has expired; ask an admin for a new one")
    users = records.redeemed_by(body.invite_id)
    if node_id not in users and len(users) >= body.uses:
        raise InviteError(
            f"invite refused: it was already used ({len(users)} of {body.uses} uses)"
        )


class MeshAuthenticator:
    """The :class:`~meshcloud.transport.base.Authenticator` of a node of one mesh."""

    def __init__(self, root_public: bytes, records: MembershipRecords,
                 wall_ms: Callable[[], int], cert: MeshCert | None = None,
                 join_proof: MemberProof | None = None) -> None:
        self.root_public = root_public
        self.records = records
        self.wall_ms = wall_ms
        self.cert = cert
        self.join_proof = join_proof
        self.refused = 0

    def local_credentials(self) -> tuple[MeshCert | None, MemberProof | None]:
        return self.cert, self.join_proof

    def check_peer(self, peer: PeerAuth, *, we_dialed: bool) -> None:
        try:
            self._check(peer, we_dialed=we_dialed)
        except AuthError:
            self.refused += 1
            raise

    def _check(self, peer: PeerAuth, *, we_dialed: bool) -> None:
        if peer.cert is not None:
            cert = peer.cert
            if cert.node_public != peer.node_public:
                raise AuthError("peer shows a certificate for another key")
            cert.verify(self.root_public)
            if is_cert_revoked(cert, self.records):
                raise AuthError("peer's membership has been revoked")
            return
        if peer.join_proof is not None:
            if we_dialed:
                raise AuthError("the node we dialled is not a member (it only holds an invite)")
            if self.cert is None:
                raise AuthError("this node is not a member yet and cannot admit others")
            if peer.join_proof.binding.node_public != peer.node_public:
                raise AuthError("join proof is for another key")
            check_join_proof(peer.join_proof, self.root_public, self.records, self.wall_ms())
            return
        raise AuthError("peer shows no membership certificate")
