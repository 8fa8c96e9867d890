"""Membership certificates: proof that a node key belongs to a mesh.

A certificate is built in three signatures, each checkable by any node that knows only
the mesh root public key:

1. the **invite** is signed by the mesh root key (:mod:`meshcloud.identity.invites`);
2. the **binding** ``(mesh id, node public key, invite id, issued at)`` is signed by the
   invite's one-time key, which only a holder of the invite token has;
3. the binding is **co-signed by a sponsor**: a member node that checked, on its own clock
   and records, that the invite was unexpired, unrevoked and not used up when it admitted
   the node. The sponsor proves its own membership with its binding and invite (but not
   its own sponsor: proofs never chain further than one step). The first node of a mesh
   is sponsored by the root key itself.

So a stolen, expired token cannot mint a certificate (no member will co-sign), a member
cannot be impersonated (the binding names its key), and verifying costs five Ed25519
checks with no network round trip. Revocation (of a node or an invite) and the count of
an invite's uses are records in the cluster state, consulted by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec import cbor
from meshcloud.codec.messages import message, to_wire
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import AuthError, InviteError
from meshcloud.identity.invites import InviteToken, SignedInvite
from meshcloud.identity.keys import SigningKey, key_id, verify


@message(TagBlock.CORE + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    mesh_id: bytes
    node_public: bytes
    invite_id: bytes
    issued_at: int

    def signed_bytes(self) -> bytes:
        return b"meshcloud-binding-v1" + cbor.encode_canonical(to_wire(self))

    @property
    def node_id(self) -> bytes:
        return key_id(self.node_public)


@message(TagBlock.CORE + 5)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberProof:
    """A binding with its invite: what a joiner shows, and what a sponsor shows of itself."""

    binding: Binding
    binding_signature: bytes
    invite: SignedInvite

    def check(self, root_public: bytes) -> None:
        """Raise AuthError unless the binding is a valid use of a root-signed invite."""
        self.invite.check_signature(root_public)
        body = self.invite.body
        binding = self.binding
        if binding.mesh_id != body.mesh_id:
            raise AuthError("certificate binding names another mesh")
        if binding.invite_id != body.invite_id:
            raise AuthError("certificate binding names another invite")
        if not verify(body.invite_public, binding.signed_bytes(), self.binding_signature):
            raise AuthError("certificate binding is not signed by its invite key")
        if binding.issued_at > body.expires_at:
            raise AuthError("certificate was issued after its invite expired")


@message(TagBlock.CORE + 6)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeshCert:
    proof: MemberProof
    sponsor_public: bytes
    sponsor_signature: bytes
    sponsor_proof: MemberProof | None = None

    @property
    def node_public(self) -> bytes:
        return self.proof.binding.node_public

    @property
    def node_id(self) -> bytes:
        return self.proof.binding.node_id

    @property
    def mesh_id(self) -> bytes:
        return self.proof.binding.mesh_id

    @property
    def invite_id(self) -> bytes:
        return self.proof.binding.invite_id

    @property
    def sponsor_id(self) -> bytes:
        return key_id(self.sponsor_public)

    def verify(self, root_public: bytes) -> None:
        """Raise AuthError unless this is a valid certificate of the mesh of ``root_public``."""
        self.proof.check(root_public)
        if self.sponsor_public == root_public:
            if self.sponsor_proof is not None:
                raise AuthError("a root-sponsored certificate carries no sponsor proof")
        else:
            sponsor = self.sponsor_proof
            if sponsor is None:
                raise AuthError("certificate has no proof of its sponsor's membership")
            if sponsor.binding.node_public != self.sponsor_public:
                raise AuthError("sponsor proof is for another key")
            sponsor.check(root_public)
        signed = self.proof.binding.signed_bytes()
        if not verify(self.sponsor_public, signed, self.sponsor_signature):
            raise AuthError("certificate is not co-signed by its sponsor")


def make_join_proof(token: InviteToken, node: SigningKey, *, now: int) -> MemberProof:
    """What a joining node sends: its key bound to the invite with the invite's key."""
    body = token.invite.body
    if now > body.expires_at:
        raise InviteError("invite has expired; ask an admin for a new one")
    binding = Binding(
        mesh_id=body.mesh_id, node_public=node.public, invite_id=body.invite_id, issued_at=now
    )
    signature = token.invite_key().sign(binding.signed_bytes())
    return MemberProof(binding=binding, binding_signature=signature, invite=token.invite)


def sponsor_cert(
    proof: MemberProof, sponsor: SigningKey, sponsor_proof: MemberProof | None
) -> MeshCert:
    """Co-sign a checked join proof, making it a certificate. ``None`` proof = root sponsor."""
    return MeshCert(
        proof=proof,
        sponsor_public=sponsor.public,
        sponsor_signature=sponsor.sign(proof.binding.signed_bytes()),
        sponsor_proof=sponsor_proof,
    )


def genesis_cert(root: SigningKey, node: SigningKey, *, now: int, mesh_name: str) -> MeshCert:
    """The first node's certificate, made by ``meshcloud init``: sponsored by the root key."""
    from meshcloud.identity.invites import create_invite

    token = create_invite(root, now=now, ttl_ms=1, uses=1, bootstrap=(), mesh_name=mesh_name)
    proof = make_join_proof(token, node, now=now)
    return sponsor_cert(proof, root, None)
