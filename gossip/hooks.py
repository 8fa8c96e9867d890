"""What the node plugs into the gossip core: signing, verification and the membership veto.

The core stays pure: it never touches keys, certificates or revocation records itself. It
asks three small interfaces:

* :class:`Signer` signs this node's own statements (its Alive, its leave);
* :class:`Verifier` checks another node's signature against the public key its Alive
  carries, and that the key belongs to the node id (``node_id = BLAKE2b(public key)``);
* :class:`Membership` answers ``is_member(node_id, proof)``: ``proof`` is what the node's
  Alive carried (certificate bytes), ``b""`` when it carried none, or ``None`` when the
  question is about the *sender* of a datagram, whom the transport already authenticated.

Real nodes use :class:`Ed25519Signer`, :class:`Ed25519Verifier` and
:class:`CertMembership` (MeshCert checked against the mesh root key and the revocation
records). The simulator and most tests use :class:`FakeSigner`, :class:`FakeVerifier` and
:class:`AllowAll`: a keyed BLAKE2b tag instead of Ed25519 (about 1 µs instead of 60), so a
5,000-node simulation spends its time on the protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from meshcloud.codec.messages import decode_message
from meshcloud.errors import MeshError
from meshcloud.identity.certs import MeshCert, is_chain_revoked
from meshcloud.identity.keys import SigningKey, key_id, verify
from meshcloud.membership import MembershipRecords


class Signer(Protocol):
    public_key: bytes

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, node_id: bytes, public_key: bytes, data: bytes, signature: bytes) -> bool:
        """True when ``node_id`` owns ``public_key`` and it signed ``data``."""
        ...


class Membership(Protocol):
    def is_member(self, node_id: bytes, proof: bytes | None) -> bool: ...


@dataclass(slots=True)
class GossipHooks:
    """Everything the core asks of the node, bundled."""

    signer: Signer
    verifier: Verifier
    membership: Membership
    proof: bytes = b""
    """This node's own membership proof (its MeshCert bytes), attached to its Alive while
    it is new to the mesh and in every push-pull."""


# --- real: Ed25519 and mesh certificates ------------------------------------------------


class Ed25519Signer:
    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.public_key = key.public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class Ed25519Verifier:
    def verify(self, node_id: bytes, public_key: bytes, data: bytes, signature: bytes) -> bool:
        return key_id(public_key) == node_id and verify(public_key, data, signature)


class CertMembership:
    """Members are nodes with a valid, unrevoked MeshCert of this mesh.

    ``proof`` is the certificate (``encode_message(cert)``); it must be for ``node_id``.
    A datagram's sender (``proof is None``) was authenticated by the transport with its
    certificate; here we only check it was not revoked since. Results for valid proofs are
    cached per (node, proof) so a certificate is verified once.
    """

    MAX_CACHE = 100_000

    def __init__(self, root_public: bytes, records: MembershipRecords) -> None:
        self.root_public = root_public
        self.records = records
        self._certs: dict[bytes, MeshCert] = {}
        """node id -> its certificate, already verified."""
        self._proofs: dict[bytes, bytes] = {}

    def _revoked(self, cert: MeshCert | None) -> bool:
        return cert is not None and is_chain_revoked(cert, self.records.is_revoked)

    def is_member(self, node_id: bytes, proof: bytes | None) -> bool:
        if proof is None:
            cert = self._certs.get(node_id)
            if cert is None:
                return not self.records.is_revoked(node_id, b"")
            return not self._revoked(cert)
        if not proof:
            return False
        if self._proofs.get(node_id) == proof:
            return not self._revoked(self._certs[node_id])
        try:
            cert = decode_message(proof, MeshCert, max_size=len(proof))
            if cert.node_id != node_id:
                return False
            cert.verify(self.root_public)
        except MeshError:
            return False
        if len(self._certs) >= self.MAX_CACHE:
            self._certs.clear()
            self._proofs.clear()
        self._certs[node_id] = cert
        self._proofs[node_id] = proof
        return not self._revoked(cert)


# --- fakes: the simulator and fast tests ------------------------------------------------


def _fake_tag(node_id: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=node_id[:64], digest_size=16).digest()


class FakeSigner:
    """Signs with a keyed hash of the node id: unforgeable only by honest code (sim only)."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.public_key = b""

    def sign(self, data: bytes) -> bytes:
        return _fake_tag(self.node_id, data)


class FakeVerifier:
    def verify(self, node_id: bytes, public_key: bytes, data: bytes, signature: bytes) -> bool:
        return signature == _fake_tag(node_id, data)


class AllowAll:
    """Every node is a member (simulator)."""

    def is_member(self, node_id: bytes, proof: bytes | None) -> bool:
        return True


class AllowListed:
    """Members are the listed node ids; a proof is not needed (tests of the veto path)."""

    def __init__(self, members: Iterable[bytes] = ()) -> None:
        self.members = set(members)

    def is_member(self, node_id: bytes, proof: bytes | None) -> bool:
        return node_id in self.members


def fake_hooks(node_id: bytes, membership: Membership | None = None) -> GossipHooks:
    """Cheap hooks for the simulator and tests: fake signatures, everyone a member."""
    return GossipHooks(signer=FakeSigner(node_id), verifier=FakeVerifier(),
                       membership=membership or AllowAll())


def cert_hooks(key: SigningKey, cert: MeshCert, root_public: bytes,
               records: MembershipRecords) -> GossipHooks:
    """The hooks a real node uses."""
    from meshcloud.codec.messages import encode_message

    return GossipHooks(signer=Ed25519Signer(key), verifier=Ed25519Verifier(),
                       membership=CertMembership(root_public, records),
                       proof=encode_message(cert))


