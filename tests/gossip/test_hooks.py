"""The real hooks (Ed25519, MeshCert membership) and the simulator's fakes."""

from __future__ import annotations

from gossip.hooks import (
    AllowAll,
    AllowListed,
    CertMembership,
    Ed25519Signer,
    Ed25519Verifier,
    FakeSigner,
    FakeVerifier,
    cert_hooks,
)
from meshcloud.codec.messages import encode_message
from meshcloud.testing import TestMesh


def test_ed25519_signature_checks_key_and_node_id():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    signer = Ed25519Signer(a.key)
    signature = signer.sign(b"statement")
    verifier = Ed25519Verifier()
    assert verifier.verify(a.id, a.key.public, b"statement", signature)
    assert not verifier.verify(a.id, a.key.public, b"other", signature)
    assert not verifier.verify(b.id, a.key.public, b"statement", signature)  # not b's key
    assert not verifier.verify(a.id, a.key.public, b"statement", b"\0" * 64)


def test_fake_signatures_are_per_node():
    sig = FakeSigner(b"a" * 32).sign(b"data")
    assert FakeVerifier().verify(b"a" * 32, b"", b"data", sig)
    assert not FakeVerifier().verify(b"b" * 32, b"", b"data", sig)
    assert not FakeVerifier().verify(b"a" * 32, b"", b"datum", sig)


def test_cert_membership_accepts_members_and_refuses_the_rest():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    check = CertMembership(mesh.root.public, a.records)
    proof_b = encode_message(b.cert)
    assert check.is_member(b.id, proof_b)
    assert check.is_member(b.id, proof_b)  # cached
    assert not check.is_member(a.id, proof_b)  # b's cert is not a's
    assert not check.is_member(b.id, b"")  # no proof
    assert not check.is_member(b.id, b"garbage")
    other = TestMesh.with_members(1).members[0]
    assert not check.is_member(other.id, encode_message(other.cert))  # another mesh
    assert check.is_member(b.id, None)  # an authenticated sender, not revoked
    a.records.revoke_node(b.id, mesh.now_ms)
    assert not check.is_member(b.id, proof_b)
    assert not check.is_member(b.id, None)


def test_cert_hooks_carry_the_node_certificate():
    mesh = TestMesh.with_members(1)
    a = mesh.members[0]
    hooks = cert_hooks(a.key, a.cert, mesh.root.public, a.records)
    assert hooks.proof == encode_message(a.cert)
    assert hooks.signer.public_key == a.key.public


def test_allow_hooks():
    assert AllowAll().is_member(b"x", None)
    listed = AllowListed([b"x"])
    assert listed.is_member(b"x", b"") and not listed.is_member(b"y", b"proof")
