"""Invites: how an admin lets a new machine into the mesh.

An **invite** is a small record signed by the mesh root (admin) key::

    InviteBody(mesh_id, invite_id, invite_public, expires_at, uses, bootstrap, root_public)

``invite_public`` is the public half of a fresh one-time Ed25519 key. The **token** a user
copies to the new machine (``mc1-`` + base64url of CBOR) holds the signed invite *and* the
private seed of that one-time key. The holder of the token proves it by signing its own
node key with the invite key (a :class:`Binding`, see :mod:`meshcloud.identity.certs`);
a member node that checks the invite is still valid (signature, expiry against its clock,
revocation, uses left) co-signs the binding, and that co-signed binding is the new node's
membership certificate.

Nothing here reads a clock: ``now`` (integer milliseconds) is always passed in.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from meshcloud.codec import cbor
from meshcloud.codec.messages import decode_message, encode_message, message, to_wire
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import CodecError, InviteError
from meshcloud.identity.keys import SigningKey, key_id, verify

TOKEN_PREFIX = "mc1-"
MAX_TOKEN_LENGTH = 4096
"""A token with a handful of bootstrap addresses is ~400 characters; 4 KiB is generous."""

MAX_BOOTSTRAP_ADDRESSES = 16


MAX_LEDGER = 3
"""Members that count an invite's redemptions (see :mod:`meshcloud.redemption`)."""


@message(TagBlock.CORE + 1, version=2, min_version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class InviteBody:
    mesh_id: bytes
    invite_id: bytes
    invite_public: bytes
    created_at: int
    expires_at: int
    uses: int
    bootstrap: tuple[str, ...]
    root_public: bytes
    mesh_name: str = ""
    ledger: tuple[bytes, ...] = ()
    """Node ids of the members that count this invite's uses: a certificate is issued only
    after a majority of them granted the joiner a use (fixed here, signed by the root key,
    so every issuer asks the same set and two majorities always share a member)."""

    @property
    def quorum(self) -> int:
        return len(self.ledger) // 2 + 1

    def signed_bytes(self) -> bytes:
        return b"meshcloud-invite-v2" + cbor.encode_canonical(to_wire(self))


@message(TagBlock.CORE + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class SignedInvite:
    body: InviteBody
    signature: bytes

    @property
    def invite_id(self) -> bytes:
        return self.body.invite_id

    def check_signature(self, root_public: bytes) -> None:
        """Raise InviteError unless the root key of this mesh signed this invite."""
        body = self.body
        if body.root_public != root_public or key_id(root_public) != body.mesh_id:
            raise InviteError("invite is for another mesh")
        if not verify(root_public, body.signed_bytes(), self.signature):
            raise InviteError("invite signature is not valid (forged or damaged)")

    def check_self_consistent(self) -> None:
        """The checks a joiner can make before it knows anything of the mesh."""
        body = self.body
        if key_id(body.root_public) != body.mesh_id:
            raise InviteError("invite is damaged: mesh id does not match its root key")
        if not verify(body.root_public, body.signed_bytes(), self.signature):
            raise InviteError("invite signature is not valid (forged or damaged)")
        if not 1 <= len(body.ledger) <= MAX_LEDGER:
            raise InviteError("invite names no redemption ledger (made by an older meshcloud?)")


@message(TagBlock.CORE + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class InviteToken:
    invite: SignedInvite
    invite_seed: bytes

    def invite_key(self) -> SigningKey:
        if len(self.invite_seed) != 32:  # the seed is not covered by the invite's signature
            raise InviteError("invite token is damaged: its key is not 32 bytes")
        key = SigningKey(self.invite_seed)
        if key.public != self.invite.body.invite_public:
            raise InviteError("invite token is damaged: its key does not match the invite")
        return key

    def encode(self) -> str:
        raw = encode_message(self)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> InviteToken:
        text = text.strip()
        if len(text) > MAX_TOKEN_LENGTH:
            raise InviteError("invite token is too long to be a meshcloud invite")
        if not text.startswith(TOKEN_PREFIX):
            raise InviteError(f"not a meshcloud invite token (it should start with {TOKEN_PREFIX})")
        body = text[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            token = decode_message(raw, InviteToken, max_size=MAX_TOKEN_LENGTH)
        except (ValueError, CodecError):
            raise InviteError("invite token is damaged (copy it again, whole)") from None
        token.invite.check_self_consistent()
        token.invite_key()
        return token


def create_invite(
    root: SigningKey,
    *,
    now: int,
    ttl_ms: int,
    uses: int,
    bootstrap: tuple[str, ...],
    mesh_name: str = "",
    ledger: tuple[bytes, ...],
) -> InviteToken:
    """A fresh invite signed by ``root``, valid from ``now`` for ``ttl_ms``, for ``uses`` nodes."""
    if ttl_ms <= 0:
        raise InviteError("an invite needs a positive lifetime")
    if uses < 1:
        raise InviteError("an invite must allow at least one use")
    if not 1 <= len(ledger) <= MAX_LEDGER or len(set(ledger)) != len(ledger):
        raise InviteError(f"an invite needs 1 to {MAX_LEDGER} distinct ledger members")
    if len(bootstrap) > MAX_BOOTSTRAP_ADDRESSES:
        bootstrap = bootstrap[:MAX_BOOTSTRAP_ADDRESSES]
    invite_key = SigningKey.generate()
    body = InviteBody(
        mesh_id=root.id,
        invite_id=os.urandom(16),
        invite_public=invite_key.public,
        created_at=now,
        expires_at=now + ttl_ms,
        uses=uses,
        bootstrap=tuple(bootstrap),
        root_public=root.public,
        mesh_name=mesh_name,
        ledger=tuple(ledger),
    )
    signed = SignedInvite(body=body, signature=root.sign(body.signed_bytes()))
    return InviteToken(invite=signed, invite_seed=invite_key.seed())
