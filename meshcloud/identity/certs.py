"""Membership certificates: proof that a node key belongs to a mesh.

A certificate is a **chain of links** that ends at the mesh root key. Each link says
"``issuer`` admitted ``node`` through ``invite`` at ``issued_at``" and carries:

1. the node's **join proof**: the binding ``(mesh id, node public key, invite id)`` signed
   by the invite's one-time key (so only a holder of that invite's token could have asked),
   with the invite itself, signed by the root key (:mod:`meshcloud.identity.invites`);
2. the **issuer's signature** over the link: the issuer is a member that checked, on *its*
   clock and against the mesh's redemption ledger, that the invite was unexpired,
   unrevoked and had uses left, and chose ``issued_at`` itself.

The last link of every chain is issued by the root key; every other link is issued by the
node of the next link. So a certificate cannot be made without either the root key or a
member's key whose own chain ends at the root: holding a token (expired, used up, or
copied from a photo of its QR code) gives nothing but the right to *ask* a member, and the
member judges the invite. Chains are at most :data:`MAX_CHAIN` links: a node that holds
the root key issues single-link certificates, so in practice almost every chain is one
link (three Ed25519 checks) and verifying needs no network round trip. Revocation (of any
node or invite in a chain) and the count of an invite's uses are records in the cluster
state, consulted by the caller (:func:`chain_members`).

Version 1 certificates (a sponsor that proved itself with only a join proof, which any
token holder could make) are refused when decoded: a mesh made by meshcloud 0.1 must be
created again (``meshcloud init``), see docs/security.md.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from meshcloud.codec import cbor
from meshcloud.codec.messages import encode_message, message, to_wire
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import AuthError, InviteError
from meshcloud.identity.invites import InviteToken, SignedInvite
from meshcloud.identity.keys import SigningKey, key_id, verify

MAX_CHAIN = 4
"""Links in a certificate at most (root → … → node). A member whose own chain is this long
cannot admit anyone: joins go through the admin's node or a member closer to it."""


@message(TagBlock.CORE + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    mesh_id: bytes
    node_public: bytes
    invite_id: bytes
    issued_at: int
    """The joiner's own clock: informational only (the issuer's ``issued_at`` counts)."""

    def signed_bytes(self) -> bytes:
        return b"meshcloud-binding-v1" + cbor.encode_canonical(to_wire(self))

    @property
    def node_id(self) -> bytes:
        return key_id(self.node_public)


@message(TagBlock.CORE + 5)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberProof:
    """A binding with its invite: what a joiner shows to ask for a certificate."""

    binding: Binding
    binding_signature: bytes
    invite: SignedInvite

    def check(self, root_public: bytes) -> None:
        """Raise AuthError unless the binding is signed by the key of a root-signed invite."""
        self.invite.check_signature(root_public)
        body = self.invite.body
        binding = self.binding
        if binding.mesh_id != body.mesh_id:
            raise AuthError("certificate binding names another mesh")
        if binding.invite_id != body.invite_id:
            raise AuthError("certificate binding names another invite")
        if not verify(body.invite_public, binding.signed_bytes(), self.binding_signature):
            raise AuthError("certificate binding is not signed by its invite key")


@message(TagBlock.CORE + 7)
@dataclass(frozen=True, slots=True, kw_only=True)
class CertLink:
    """One admission: ``issuer`` let the node of ``proof`` in at ``issued_at``."""

    proof: MemberProof
    issued_at: int
    issuer_public: bytes
    issuer_signature: bytes

    @property
    def node_public(self) -> bytes:
        return self.proof.binding.node_public

    def signed_bytes(self) -> bytes:
        binding = self.proof.binding
        return b"meshcloud-cert-link-v2" + cbor.encode_canonical(
            [binding.mesh_id, binding.node_public, binding.invite_id, self.issued_at,
             self.issuer_public])


@message(TagBlock.CORE + 6, version=2, min_version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeshCert:
    links: tuple[CertLink, ...]
    """``links[0]`` is this node's admission, ``links[-1]`` was issued by the root key."""

    @property
    def node_public(self) -> bytes:
        return self.links[0].node_public

    @property
    def node_id(self) -> bytes:
        return key_id(self.node_public)

    @property
    def mesh_id(self) -> bytes:
        return self.links[0].proof.binding.mesh_id

    @property
    def invite_id(self) -> bytes:
        return self.links[0].proof.binding.invite_id

    @property
    def issued_at(self) -> int:
        return self.links[0].issued_at

    @property
    def issuer_id(self) -> bytes:
        return key_id(self.links[0].issuer_public)

    @property
    def depth(self) -> int:
        return len(self.links)

    def verify(self, root_public: bytes) -> None:
        """Raise AuthError unless this is a valid certificate of the mesh of ``root_public``."""
        digest = _digest(self, root_public)
        if digest in _VERIFIED:
            _VERIFIED.move_to_end(digest)
            return
        _verify_chain(self.links, root_public)
        _VERIFIED[digest] = None
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)


def _verify_chain(links: tuple[CertLink, ...], root_public: bytes) -> None:
    if not links:
        raise AuthError("certificate has no links")
    if len(links) > MAX_CHAIN:
        raise AuthError(f"certificate chain is longer than {MAX_CHAIN} links")
    mesh_id = key_id(root_public)
    for i, link in enumerate(links):
        link.proof.check(root_public)
        if link.proof.binding.mesh_id != mesh_id:
            raise AuthError("certificate is for another mesh")
        body = link.proof.invite.body
        if not body.created_at <= link.issued_at <= body.expires_at:
            raise AuthError("certificate was issued outside its invite's lifetime")
        issuer = links[i + 1].node_public if i + 1 < len(links) else root_public
        if link.issuer_public != issuer:
            if i + 1 == len(links):
                raise AuthError("certificate chain does not end at the mesh root key")
            raise AuthError("certificate link is issued by a key its chain does not certify")
        if not verify(issuer, link.signed_bytes(), link.issuer_signature):
            raise AuthError("certificate is not signed by its issuer")
    if len({link.node_public for link in links}) != len(links):
        raise AuthError("certificate chain has a loop")


_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
_VERIFIED_MAX = 4096
"""Certificates already verified (by content and root key): a handshake or gossip Alive
showing a known certificate costs a hash, not ``3 × links`` signature checks."""


def _digest(cert: MeshCert, root_public: bytes) -> bytes:
    return hashlib.blake2b(root_public + encode_message(cert), digest_size=32).digest()


def chain_members(cert: MeshCert) -> list[tuple[bytes, bytes]]:
    """(node id, invite id) of every admission in the chain: revoking any of them revokes
    this certificate (a revoked member's admissions are not trusted either)."""
    return [(key_id(link.node_public), link.proof.binding.invite_id) for link in cert.links]


def is_chain_revoked(cert: MeshCert, is_revoked: Callable[[bytes, bytes], bool]) -> bool:
    """True if ``is_revoked(node id, invite id)`` holds for any admission in the chain."""
    return any(is_revoked(node, invite) for node, invite in chain_members(cert))


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


def issue_cert(proof: MemberProof, issuer: SigningKey, issuer_cert: MeshCert | None, *,
               now: int) -> MeshCert:
    """Admit the node of a checked join proof at ``now`` (the issuer's clock).

    ``issuer_cert`` is the issuing member's own certificate, or ``None`` when ``issuer`` is
    the mesh root key. Raises InviteError when the chain would grow past :data:`MAX_CHAIN`.
    """
    parent = () if issuer_cert is None else issuer_cert.links
    if issuer_cert is not None and issuer_cert.node_public != issuer.public:
        raise AuthError("the issuer's certificate is for another key")
    if len(parent) + 1 > MAX_CHAIN:
        raise InviteError(
            f"this node's certificate is already {len(parent)} links from the admin key: "
            "join through the admin's node or a member closer to it")
    unsigned = CertLink(proof=proof, issued_at=now, issuer_public=issuer.public,
                        issuer_signature=b"")
    link = CertLink(proof=proof, issued_at=now, issuer_public=issuer.public,
                    issuer_signature=issuer.sign(unsigned.signed_bytes()))
    return MeshCert(links=(link, *parent))


def genesis_cert(root: SigningKey, node: SigningKey, *, now: int, mesh_name: str) -> MeshCert:
    """The first node's certificate, made by ``meshcloud init``: issued by the root key."""
    from meshcloud.identity.invites import create_invite

    token = create_invite(root, now=now, ttl_ms=1, uses=1, bootstrap=(), mesh_name=mesh_name,
                          ledger=(node.id,))
    proof = make_join_proof(token, node, now=now)
    return issue_cert(proof, root, None, now=now)
