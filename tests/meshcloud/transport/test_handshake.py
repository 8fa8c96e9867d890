"""The handshake: identity bound to the Noise static key, admission by the Authenticator,
refusals with a reason, and a clean state after every failure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.auth import MeshAuthenticator
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import AuthError, RemoteProtocolError
from meshcloud.identity.certs import make_join_proof
from meshcloud.identity.invites import create_invite
from meshcloud.identity.keys import SigningKey
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.testing import TestMesh, forge_issuer_signature
from meshcloud.transport.channel import MessageReader, SecureChannel
from meshcloud.transport.handshake import (
    HandshakeCore,
    HandshakeError,
    HandshakePayload,
    HandshakeStatus,
)
from meshcloud.transport.noise import MAX_PLAINTEXT, NoiseDecryptError


def core(key, authenticator, *, initiator, expect=None, addresses=("127.0.0.1:1",)):
    return HandshakeCore(initiator=initiator, key=key, authenticator=authenticator,
                         listen_addresses=addresses, agent_version="test/1", expect=expect)


def run(dialer: HandshakeCore, listener: HandshakeCore, *, byte_by_byte: bool = False):
    """Shuttle bytes until both stop talking; returns the first error of each side."""
    errors: dict[str, Exception] = {}
    for _ in range(6):
        moved = False
        for name, src, dst in (("listener", dialer, listener), ("dialer", listener, dialer)):
            data = src.data_to_send()
            if not data or dst.status is not HandshakeStatus.IN_PROGRESS:
                continue
            moved = True
            chunks = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
            try:
                for chunk in chunks:
                    assert dst.receive_data(chunk) == []
            except (AuthError, RemoteProtocolError) as exc:
                errors[name] = exc
        if not moved:
            break
    return errors


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_members_admit_each_other_and_share_a_channel(byte_by_byte):
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True, expect=b.id)
    listener = core(b.key, b.authenticator, initiator=False)
    assert run(dialer, listener, byte_by_byte=byte_by_byte) == {}
    assert dialer.status is listener.status is HandshakeStatus.DONE
    assert dialer.peer.node_id == b.id and listener.peer.node_id == a.id
    assert dialer.peer.cert == b.cert and not dialer.peer.joining
    assert listener.peer.listen_addresses == ("127.0.0.1:1",)
    assert listener.peer.agent_version == "test/1"
    assert dialer.channel.handshake_hash == listener.channel.handshake_hash
    big = bytes(range(256)) * 1000
    wire = dialer.channel.encrypt(big)
    assert len(wire) == len(big) + 4 * (2 + 16)  # 4 messages of at most 65519 bytes
    reader_side = listener.channel
    got = b"".join(b"".join(reader_side.decrypt(bytes(wire[i:i + 7000])))
                   for i in range(0, len(wire), 7000))
    assert got == big
    assert dialer.channel.decrypt(listener.channel.encrypt(b"pong")) == [b"pong"]


def test_dialer_refuses_an_unexpected_node_before_revealing_itself():
    mesh = TestMesh.with_members(3)
    a, b, c = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True, expect=c.id)
    listener = core(b.key, b.authenticator, initiator=False)
    listener.receive_data(dialer.data_to_send())
    with pytest.raises(AuthError, match="another node than the one expected"):
        dialer.receive_data(listener.data_to_send())
    assert dialer.data_to_send() == b""  # message 3 (our identity) never written
    assert dialer.status is HandshakeStatus.FAILED and dialer.peer is None
    with pytest.raises(AuthError):
        dialer.receive_data(b"more")


def test_outsider_is_told_why_it_was_refused():
    mesh = TestMesh.with_members(1)
    member = mesh.members[0]
    key, auth = mesh.outsider()
    dialer = core(key, auth, initiator=True)
    listener = core(member.key, member.authenticator, initiator=False)
    errors = run(dialer, listener)
    assert "no membership certificate" in str(errors["listener"])
    assert "refused by the peer: peer shows no membership certificate" in str(errors["dialer"])
    assert listener.status is dialer.status is HandshakeStatus.FAILED
    assert listener.peer is None and dialer.peer is None
    assert member.authenticator.refused == 1


def test_certificate_of_another_mesh_is_refused_by_either_side():
    mesh, other = TestMesh.with_members(1), TestMesh.with_members(1)
    member, stranger = mesh.members[0], other.members[0]
    # the stranger's own node refuses our member first (before revealing itself)...
    listener = core(member.key, member.authenticator, initiator=False)
    errors = run(core(stranger.key, stranger.authenticator, initiator=True), listener)
    assert "another mesh" in str(errors["dialer"])
    assert listener.status is HandshakeStatus.IN_PROGRESS and listener.peer is None
    # ...and a stranger that lets anyone in is refused by our member
    lenient = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms,
                                stranger.cert)
    errors = run(core(stranger.key, lenient, initiator=True),
                 core(member.key, member.authenticator, initiator=False))
    assert "another mesh" in str(errors["listener"])
    assert "refused by the peer" in str(errors["dialer"])


def test_revoked_member_is_refused():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    b.records.revoke_node(a.id, mesh.now_ms)
    errors = run(core(a.key, a.authenticator, initiator=True),
                 core(b.key, b.authenticator, initiator=False))
    assert "revoked" in str(errors["listener"])


def test_someone_elses_certificate_is_refused():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    thief = SigningKey.generate()
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms, a.cert)
    errors = run(core(thief, auth, initiator=True), core(b.key, b.authenticator, initiator=False))
    assert "certificate for another key" in str(errors["listener"])


def test_payload_naming_another_node_key_is_refused():
    """A payload copied from another node does not match the proven static key."""
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    thief = SigningKey.generate()
    dialer = core(thief, a.authenticator, initiator=True)
    forged = HandshakePayload(node_public=a.key.public, cert=a.cert)
    dialer._payload = encode_message(forged)
    errors = run(dialer, core(b.key, b.authenticator, initiator=False))
    assert "does not match the key it proved" in str(errors["listener"])


def test_forged_certificate_signature_is_refused():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    bad_sig = bytes(64)
    forged = forge_issuer_signature(a.cert, bad_sig)
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms, forged)
    errors = run(core(a.key, auth, initiator=True), core(b.key, b.authenticator, initiator=False))
    assert "not signed by its issuer" in str(errors["listener"])


def test_joiner_is_admitted_as_joiner_and_refused_as_a_listener():
    mesh = TestMesh.with_members(1)
    member = mesh.members[0]
    token = create_invite(mesh.root, now=mesh.now_ms, ttl_ms=60_000, uses=1, bootstrap=(),
                          ledger=(mesh.members[0].id,))
    joiner = SigningKey.generate()
    proof = make_join_proof(token, joiner, now=mesh.now_ms)
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms,
                             None, proof)
    dialer = core(joiner, auth, initiator=True)
    listener = core(member.key, member.authenticator, initiator=False)
    assert run(dialer, listener) == {}
    assert listener.peer.joining and listener.peer.join_proof == proof
    # a member does not dial into a node that only holds an invite
    errors = run(core(member.key, member.authenticator, initiator=True),
                 core(joiner, auth, initiator=False))
    assert "only holds an invite" in str(errors["dialer"])


def test_tampered_handshake_is_a_remote_error_on_both_sides():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True)
    listener = core(b.key, b.authenticator, initiator=False)
    listener.receive_data(dialer.data_to_send())
    msg2 = bytearray(listener.data_to_send())
    msg2[-1] ^= 1
    with pytest.raises(NoiseDecryptError):
        dialer.receive_data(bytes(msg2))
    assert dialer.status is HandshakeStatus.FAILED


def test_first_message_with_a_payload_is_refused():
    mesh = TestMesh.with_members(1)
    listener = core(mesh.members[0].key, mesh.members[0].authenticator, initiator=False)
    with pytest.raises(HandshakeError):
        listener.receive_data(b"\x00\x21" + bytes(32) + b"x")


def test_early_transport_data_after_the_verdict_is_returned():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True)
    listener = core(b.key, b.authenticator, initiator=False)
    listener.receive_data(dialer.data_to_send())
    dialer.receive_data(listener.data_to_send())
    assert listener.receive_data(dialer.data_to_send()) == []
    verdict = listener.data_to_send()
    early = bytes(listener.channel.encrypt(b"hello"))
    assert dialer.receive_data(verdict + early) == [b"hello"]
    assert dialer.status is HandshakeStatus.DONE


@pytest.mark.parametrize("payload", [
    HandshakePayload(node_public=bytes(31)),
    HandshakePayload(node_public=bytes(32), listen_addresses=("a",) * 17),
    HandshakePayload(node_public=bytes(32), listen_addresses=("a" * 257,)),
    HandshakePayload(node_public=bytes(32), agent_version="v" * 65),
], ids=["short key", "many addresses", "long address", "long version"])
def test_payload_outside_the_limits_is_refused(payload):
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True)
    dialer._payload = encode_message(payload)
    listener = core(b.key, b.authenticator, initiator=False)
    errors = run(dialer, listener)
    assert isinstance(errors["listener"], HandshakeError)
    assert listener.status is HandshakeStatus.FAILED and listener.peer is None
    ok = HandshakePayload(node_public=bytes(32), listen_addresses=("a",) * 16)
    assert decode_message(encode_message(ok), HandshakePayload) == ok


def test_message_reader_cuts_whole_split_and_trailing():
    reader = MessageReader()
    stream = b"\x00\x03abc\x00\x00\x00\x02xy\x00"
    assert reader.feed(stream) == [b"abc", b"", b"xy"]
    assert reader.buffered == 1
    assert reader.feed(b"\x01") == []
    assert reader.feed(b"z") == [b"z"]
    pieces = []
    for i in range(len(stream)):
        pieces += reader.feed(bytearray(stream[i:i + 1]))
    assert pieces == [b"abc", b"", b"xy"]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_raise_only_remote_errors(junk, as_listener):
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    if as_listener:
        side = core(b.key, b.authenticator, initiator=False)
    else:
        side = core(a.key, a.authenticator, initiator=True)
        side.data_to_send()
    try:
        side.receive_data(junk)
    except RemoteProtocolError:
        assert side.status is HandshakeStatus.FAILED
    else:
        assert side.status is HandshakeStatus.IN_PROGRESS


def test_channel_encrypt_splits_at_max_plaintext():
    mesh = TestMesh.with_members(2)
    a, b = mesh.members
    dialer = core(a.key, a.authenticator, initiator=True)
    listener = core(b.key, b.authenticator, initiator=False)
    run(dialer, listener)
    channel: SecureChannel = dialer.channel
    data = b"q" * (MAX_PLAINTEXT + 1)
    out = listener.channel.decrypt(bytes(channel.encrypt(data)))
    assert [len(p) for p in out] == [MAX_PLAINTEXT, 1]
