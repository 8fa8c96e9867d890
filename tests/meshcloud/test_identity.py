"""Keys, invites and certificates: what verifies, and every way a forgery is refused."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from meshcloud.errors import AuthError, DataDirError, InviteError
from meshcloud.identity.certs import (
    Binding,
    MeshCert,
    genesis_cert,
    make_join_proof,
    sponsor_cert,
)
from meshcloud.identity.invites import InviteToken, SignedInvite, create_invite
from meshcloud.identity.keys import SigningKey, key_id, verify

NOW = 1_800_000_000_000
HOUR = 3_600_000


@pytest.fixture
def mesh():
    root = SigningKey.generate()
    first = SigningKey.generate()
    first_cert = genesis_cert(root, first, now=NOW, mesh_name="home")
    return root, first, first_cert


def join(root, sponsor, sponsor_cert_, *, now=NOW, ttl=HOUR, invite_now=NOW):
    token = create_invite(root, now=invite_now, ttl_ms=ttl, uses=1, bootstrap=("127.0.0.1:1",))
    node = SigningKey.generate()
    proof = make_join_proof(InviteToken.decode(token.encode()), node, now=now)
    sponsor_proof = sponsor_cert_.proof if sponsor_cert_ is not None else None
    return node, sponsor_cert(proof, sponsor, sponsor_proof)


def test_key_file_is_0600_and_round_trips(tmp_path):
    key = SigningKey.generate()
    path = tmp_path / "sub" / "node.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert SigningKey.load(path).public == key.public


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(DataDirError, match="chmod 600"):
        SigningKey.load(path)


def test_damaged_key_file_is_refused(tmp_path):
    path = tmp_path / "node.key"
    path.write_text("meshcloud-ed25519-seed-v1\nnot-base64!!\n")
    os.chmod(path, 0o600)
    with pytest.raises(DataDirError, match="damaged"):
        SigningKey.load(path)


def test_repr_never_shows_the_secret():
    key = SigningKey.generate()
    assert key.seed().hex() not in repr(key)
    assert key.seed().hex()[:12] not in repr(key)


def test_signatures_verify_only_for_the_signed_data():
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert verify(key.public, b"hello", sig)
    assert not verify(key.public, b"hellO", sig)
    assert not verify(SigningKey.generate().public, b"hello", sig)
    assert not verify(b"short", b"hello", sig)


def test_genesis_and_sponsored_certs_verify(mesh):
    root, first, first_cert = mesh
    first_cert.verify(root.public)
    assert first_cert.node_id == first.id == key_id(first.public)
    node, cert = join(root, first, first_cert)
    cert.verify(root.public)
    assert cert.node_id == node.id
    assert cert.sponsor_id == first.id
    # and a node sponsored by that one
    _, grandchild = join(root, node, cert)
    grandchild.verify(root.public)


def test_cert_of_another_mesh_is_refused(mesh):
    _root, _first, first_cert = mesh
    other_root = SigningKey.generate()
    with pytest.raises(AuthError, match="another mesh"):
        first_cert.verify(other_root.public)


def test_invite_forged_with_another_key_is_refused(mesh):
    root, _first, _first_cert = mesh
    forger = SigningKey.generate()
    token = create_invite(forger, now=NOW, ttl_ms=HOUR, uses=1, bootstrap=())
    # the forger claims the real mesh's root key in the body but cannot sign for it
    body = dataclasses.replace(token.invite.body, root_public=root.public, mesh_id=root.id)
    forged = InviteToken(invite=SignedInvite(body=body, signature=token.invite.signature),
                         invite_seed=token.invite_seed)
    with pytest.raises(InviteError, match="forged"):
        InviteToken.decode(forged.encode())


def test_cert_without_valid_sponsor_signature_is_refused(mesh):
    root, first, first_cert = mesh
    _, cert = join(root, first, first_cert)
    rogue = SigningKey.generate()
    forged = dataclasses.replace(cert, sponsor_signature=rogue.sign(b"x"))
    with pytest.raises(AuthError, match="co-signed"):
        forged.verify(root.public)


def test_non_member_cannot_sponsor(mesh):
    root, _first, first_cert = mesh
    outsider = SigningKey.generate()
    token = create_invite(root, now=NOW, ttl_ms=HOUR, uses=1, bootstrap=())
    node = SigningKey.generate()
    proof = make_join_proof(token, node, now=NOW)
    # the outsider shows the first node's (public) proof as if it were its own
    cert = sponsor_cert(proof, outsider, first_cert.proof)
    with pytest.raises(AuthError, match="another key"):
        cert.verify(root.public)
    with pytest.raises(AuthError, match="no proof"):
        sponsor_cert(proof, outsider, None).verify(root.public)


def test_binding_issued_after_invite_expiry_is_refused(mesh):
    root, first, first_cert = mesh
    token = create_invite(root, now=NOW, ttl_ms=HOUR, uses=1, bootstrap=())
    node = SigningKey.generate()
    # the joiner backdates nothing: it signs with a time past the expiry
    binding = Binding(mesh_id=root.id, node_public=node.public,
                      invite_id=token.invite.invite_id, issued_at=NOW + 2 * HOUR)
    proof = make_join_proof(token, node, now=NOW)
    late = dataclasses.replace(
        proof, binding=binding,
        binding_signature=token.invite_key().sign(binding.signed_bytes()))
    with pytest.raises(AuthError, match="after its invite expired"):
        sponsor_cert(late, first, first_cert.proof).verify(root.public)


def test_join_proof_with_expired_invite_is_refused_by_the_joiner(mesh):
    root, *_ = mesh
    token = create_invite(root, now=NOW, ttl_ms=HOUR, uses=1, bootstrap=())
    with pytest.raises(InviteError, match="expired"):
        make_join_proof(token, SigningKey.generate(), now=NOW + HOUR + 1)


def test_binding_for_a_different_key_is_refused(mesh):
    root, first, first_cert = mesh
    _node, cert = join(root, first, first_cert)
    other = SigningKey.generate()
    binding = dataclasses.replace(cert.proof.binding, node_public=other.public)
    forged = dataclasses.replace(cert, proof=dataclasses.replace(cert.proof, binding=binding))
    with pytest.raises(AuthError):
        forged.verify(root.public)


@pytest.mark.parametrize("text, why", [
    ("hello", "should start with"),
    ("mc1-!!!!", "damaged"),
    ("mc1-" + "A" * 5000, "too long"),
    ("mc1-oQE", "damaged"),
])
def test_bad_tokens_give_one_clear_error(text, why):
    with pytest.raises(InviteError, match=why):
        InviteToken.decode(text)


def test_token_round_trips_and_is_compact(mesh):
    root, *_ = mesh
    token = create_invite(root, now=NOW, ttl_ms=HOUR, uses=3,
                          bootstrap=("192.168.1.20:7946", "10.0.0.5:7946"), mesh_name="home")
    text = token.encode()
    assert len(text) < 600
    again = InviteToken.decode(text)
    assert again == token
    assert again.invite.body.uses == 3


def test_tampered_token_is_refused(mesh):
    root, *_ = mesh
    token = create_invite(root, now=NOW, ttl_ms=HOUR, uses=1, bootstrap=())
    body = dataclasses.replace(token.invite.body, uses=100)
    tampered = InviteToken(invite=SignedInvite(body=body, signature=token.invite.signature),
                           invite_seed=token.invite_seed)
    with pytest.raises(InviteError, match="forged"):
        InviteToken.decode(tampered.encode())


def test_cert_survives_the_wire(mesh):
    from meshcloud.codec.messages import decode_message, encode_message

    root, first, first_cert = mesh
    _, cert = join(root, first, first_cert)
    again = decode_message(encode_message(cert), MeshCert)
    again.verify(root.public)
    assert again == cert
