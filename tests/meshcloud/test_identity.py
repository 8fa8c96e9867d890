"""Keys, invites and certificates: what verifies, and every way a forgery is refused."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import AuthError, CodecError, DataDirError, InviteError
from meshcloud.identity.certs import (
    MAX_CHAIN,
    CertLink,
    MeshCert,
    genesis_cert,
    issue_cert,
    make_join_proof,
)
from meshcloud.identity.invites import InviteToken, SignedInvite, create_invite
from meshcloud.identity.keys import SigningKey, key_id, verify

NOW = 1_800_000_000_000
HOUR = 3_600_000
LEDGER = (b"\x01" * 32,)


@pytest.fixture
def mesh():
    root = SigningKey.generate()
    first = SigningKey.generate()
    first_cert = genesis_cert(root, first, now=NOW, mesh_name="home")
    return root, first, first_cert


def invite(root, *, now=NOW, ttl=HOUR, uses=1):
    return create_invite(root, now=now, ttl_ms=ttl, uses=uses, bootstrap=("127.0.0.1:1",),
                         ledger=LEDGER)


def join(root, issuer, issuer_cert, *, now=NOW):
    """``issuer_cert`` None: ``issuer`` is the root key."""
    token = invite(root)
    node = SigningKey.generate()
    proof = make_join_proof(InviteToken.decode(token.encode()), node, now=now)
    return node, issue_cert(proof, issuer, issuer_cert, now=now)


def self_made_cert(token, node, *, issued_at):
    """What a token holder can build alone: its join proof plus a link it signs itself
    (the attack on the old sponsor scheme: a sponsor that proved itself with a proof)."""
    proof = make_join_proof(token, node, now=min(issued_at, token.invite.body.expires_at))
    unsigned = CertLink(proof=proof, issued_at=issued_at, issuer_public=node.public,
                        issuer_signature=b"")
    link = dataclasses.replace(unsigned, issuer_signature=node.sign(unsigned.signed_bytes()))
    return MeshCert(links=(link, link))


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


def test_genesis_and_issued_certs_verify(mesh):
    root, first, first_cert = mesh
    first_cert.verify(root.public)
    assert first_cert.node_id == first.id == key_id(first.public)
    assert first_cert.depth == 1
    node, cert = join(root, first, first_cert)
    cert.verify(root.public)
    assert cert.node_id == node.id
    assert cert.issuer_id == first.id
    assert cert.depth == 2
    # a node admitted by that one, and one admitted by the admin's node with the root key
    _, grandchild = join(root, node, cert)
    grandchild.verify(root.public)
    assert grandchild.depth == 3
    _, direct = join(root, root, None)
    direct.verify(root.public)
    assert direct.depth == 1


def test_cert_of_another_mesh_is_refused(mesh):
    _root, _first, first_cert = mesh
    other_root = SigningKey.generate()
    with pytest.raises(AuthError, match="another mesh"):
        first_cert.verify(other_root.public)


def test_invite_forged_with_another_key_is_refused(mesh):
    root, _first, _first_cert = mesh
    forger = SigningKey.generate()
    token = invite(forger)
    # the forger claims the real mesh's root key in the body but cannot sign for it
    body = dataclasses.replace(token.invite.body, root_public=root.public, mesh_id=root.id)
    forged = InviteToken(invite=SignedInvite(body=body, signature=token.invite.signature),
                         invite_seed=token.invite_seed)
    with pytest.raises(InviteError, match="forged"):
        InviteToken.decode(forged.encode())


def test_cert_with_a_bad_issuer_signature_is_refused(mesh):
    root, first, first_cert = mesh
    _, cert = join(root, first, first_cert)
    rogue = SigningKey.generate()
    link = dataclasses.replace(cert.links[0], issuer_signature=rogue.sign(b"x"))
    forged = MeshCert(links=(link, *cert.links[1:]))
    with pytest.raises(AuthError, match="not signed by its issuer"):
        forged.verify(root.public)


def test_non_member_cannot_issue(mesh):
    root, _first, first_cert = mesh
    outsider = SigningKey.generate()
    token = invite(root)
    node = SigningKey.generate()
    proof = make_join_proof(token, node, now=NOW)
    # the outsider signs and shows the first node's (public) certificate as its own
    link = issue_cert(proof, outsider, None, now=NOW).links[0]
    with pytest.raises(AuthError, match="does not certify"):
        MeshCert(links=(link, *first_cert.links)).verify(root.public)
    with pytest.raises(AuthError, match="does not end at the mesh root"):
        MeshCert(links=(link,)).verify(root.public)
    with pytest.raises(AuthError, match="another key"):
        issue_cert(proof, outsider, first_cert, now=NOW)


# --- the attacks of the security review (each built a certificate the old code accepted) ---


@pytest.mark.parametrize("when", ["expired", "used", "live"])
def test_a_token_holder_cannot_make_a_certificate_alone(mesh, when):
    """From an expired token, a used-up token, or a live token without a member: the
    old scheme accepted a certificate whose "sponsor" was the joiner itself, proved by a
    join proof any token holder can make, with a back-dated issue time."""
    root, _first, _first_cert = mesh
    token = invite(root, now=NOW, ttl=HOUR)
    node = SigningKey.generate()
    issued_at = NOW + 10  # back-dated inside the invite's life, whatever the real time
    for forged in (self_made_cert(token, node, issued_at=issued_at),
                   MeshCert(links=(self_made_cert(token, node, issued_at=issued_at).links[0],))):
        with pytest.raises(AuthError):
            forged.verify(root.public)


def test_the_issue_time_is_the_issuers_and_must_fall_inside_the_invite(mesh):
    root, first, first_cert = mesh
    token = invite(root, now=NOW, ttl=HOUR)
    node = SigningKey.generate()
    proof = make_join_proof(token, node, now=NOW)
    late = issue_cert(proof, first, first_cert, now=NOW + 2 * HOUR)
    with pytest.raises(AuthError, match="outside its invite's lifetime"):
        late.verify(root.public)
    early = issue_cert(proof, first, first_cert, now=NOW - 1)
    with pytest.raises(AuthError, match="outside its invite's lifetime"):
        early.verify(root.public)


def test_chains_are_bounded(mesh):
    root, first, first_cert = mesh
    key, cert = first, first_cert
    for _ in range(MAX_CHAIN - 1):
        key, cert = join(root, key, cert)
    cert.verify(root.public)
    assert cert.depth == MAX_CHAIN
    token = invite(root)
    proof = make_join_proof(token, SigningKey.generate(), now=NOW)
    with pytest.raises(InviteError, match="links from the admin key"):
        issue_cert(proof, key, cert, now=NOW)


def test_a_chain_with_a_loop_is_refused(mesh):
    root, first, first_cert = mesh
    _node, cert = join(root, first, first_cert)
    looped = MeshCert(links=(cert.links[0], cert.links[0], *cert.links[1:]))
    with pytest.raises(AuthError):
        looped.verify(root.public)


def test_old_version_1_certificates_are_refused_when_decoded(mesh):
    from meshcloud.codec import cbor

    _root, _first, first_cert = mesh
    wire = cbor.decode(encode_message(first_cert))
    wire[1] = 1
    with pytest.raises(CodecError, match="MeshCert version 1"):
        decode_message(cbor.encode(wire), MeshCert)


def test_join_proof_with_expired_invite_is_refused_by_the_joiner(mesh):
    root, *_ = mesh
    token = invite(root)
    with pytest.raises(InviteError, match="expired"):
        make_join_proof(token, SigningKey.generate(), now=NOW + HOUR + 1)


def test_binding_for_a_different_key_is_refused(mesh):
    root, first, first_cert = mesh
    _node, cert = join(root, first, first_cert)
    other = SigningKey.generate()
    link = cert.links[0]
    binding = dataclasses.replace(link.proof.binding, node_public=other.public)
    proof = dataclasses.replace(link.proof, binding=binding)
    forged = MeshCert(links=(dataclasses.replace(link, proof=proof), *cert.links[1:]))
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
                          bootstrap=("192.168.1.20:7946", "10.0.0.5:7946"), mesh_name="home",
                          ledger=tuple(SigningKey.generate().id for _ in range(3)))
    text = token.encode()
    assert len(text) < 700
    again = InviteToken.decode(text)
    assert again == token
    assert again.invite.body.uses == 3


def test_tampered_token_is_refused(mesh):
    root, *_ = mesh
    token = invite(root)
    body = dataclasses.replace(token.invite.body, uses=100)
    tampered = InviteToken(invite=SignedInvite(body=body, signature=token.invite.signature),
                           invite_seed=token.invite_seed)
    with pytest.raises(InviteError, match="forged"):
        InviteToken.decode(tampered.encode())


def test_cert_survives_the_wire(mesh):
    root, first, first_cert = mesh
    _, cert = join(root, first, first_cert)
    again = decode_message(encode_message(cert), MeshCert)
    again.verify(root.public)
    assert again == cert
