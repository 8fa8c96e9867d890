"""Noise XX: the published test vectors for all four hashes, and every way a handshake or a
transport message can be broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.errors import LocalProtocolError, RemoteProtocolError
from meshcloud.transport.noise import (
    HASHES,
    MAX_PLAINTEXT,
    CipherState,
    HandshakeState,
    HandshakeStatus,
    NoiseDecryptError,
    NoiseError,
    generate_private,
)

ROOT = Path(__file__).resolve().parents[3]
VECTOR_DIR = ROOT.parent / "shared" / "data" / "noise-vectors"
VECTOR_FILES = ["cacophony-XX_25519_ChaChaPoly.json", "snow-XX_25519_ChaChaPoly.json"]


def load_vectors() -> list:
    cases = []
    for name in VECTOR_FILES:
        path = VECTOR_DIR / name
        if not path.exists():
            cases.append(pytest.param(None, marks=pytest.mark.skip(
                reason=f"Noise test vectors not found at {path} (shared data dir absent)"),
                id=name))
            continue
        for vector in json.loads(path.read_text())["vectors"]:
            cases.append(pytest.param(vector, id=f"{name.split('-')[0]}-{vector['protocol_name']}"))
    return cases


def test_all_four_hashes_are_covered_by_both_vector_files():
    if not VECTOR_DIR.exists():
        pytest.skip(f"Noise test vectors not found at {VECTOR_DIR}")
    for name in VECTOR_FILES:
        vectors = json.loads((VECTOR_DIR / name).read_text())["vectors"]
        hashes = {v["protocol_name"].rsplit("_", 1)[1] for v in vectors}
        assert hashes == set(HASHES)


@pytest.mark.parametrize("vector", load_vectors())
def test_published_vector(vector):
    noise_hash = HASHES[vector["protocol_name"].rsplit("_", 1)[1]]

    def side(prefix: str, initiator: bool) -> HandshakeState:
        return HandshakeState(
            initiator=initiator,
            static_private=bytes.fromhex(vector[f"{prefix}_static"]),
            ephemeral_private=bytes.fromhex(vector[f"{prefix}_ephemeral"]),
            prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
            noise_hash=noise_hash,
        )

    init, resp = side("init", True), side("resp", False)
    for index, step in enumerate(vector["messages"]):
        payload = bytes.fromhex(step["payload"])
        expected = bytes.fromhex(step["ciphertext"])
        sender, receiver = (init, resp) if index % 2 == 0 else (resp, init)
        if index < 3:
            assert sender.status is HandshakeStatus.WRITING
            assert receiver.status is HandshakeStatus.READING
            wire = sender.write_message(payload)
            assert wire == expected
            assert receiver.read_message(wire) == payload
        else:
            assert sender.ciphers is not None and receiver.ciphers is not None
            wire = sender.ciphers.send.encrypt_with_ad(None, payload)
            assert wire == expected
            assert receiver.ciphers.receive.decrypt_with_ad(None, wire) == payload
    assert init.status is HandshakeStatus.DONE and resp.status is HandshakeStatus.DONE
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert init.ciphers.remote_static == resp._s_public
    assert resp.ciphers.remote_static == init._s_public


def handshake_pair() -> tuple[HandshakeState, HandshakeState]:
    init = HandshakeState(initiator=True, static_private=generate_private(), prologue=b"p")
    resp = HandshakeState(initiator=False, static_private=generate_private(), prologue=b"p")
    return init, resp


def complete(init: HandshakeState, resp: HandshakeState) -> None:
    resp.read_message(init.write_message(b"one"))
    init.read_message(resp.write_message(b"two"))
    resp.read_message(init.write_message(b"three"))


def test_transport_messages_both_ways_and_max_size():
    init, resp = handshake_pair()
    complete(init, resp)
    big = bytes(range(256)) * (MAX_PLAINTEXT // 256) + b"x" * (MAX_PLAINTEXT % 256)
    wire = init.ciphers.send.encrypt_with_ad(None, big)
    assert len(wire) == 65535
    assert resp.ciphers.receive.decrypt_with_ad(None, wire) == big
    back = resp.ciphers.send.encrypt_with_ad(None, b"back")
    assert init.ciphers.receive.decrypt_with_ad(None, back) == b"back"
    with pytest.raises(LocalProtocolError):
        init.ciphers.send.encrypt_with_ad(None, big + b"!")


def test_prologue_mismatch_fails_the_handshake():
    init = HandshakeState(initiator=True, static_private=generate_private(), prologue=b"v1")
    resp = HandshakeState(initiator=False, static_private=generate_private(), prologue=b"v2")
    resp.read_message(init.write_message())  # message 1 is not authenticated yet
    with pytest.raises(NoiseDecryptError):
        init.read_message(resp.write_message(b"x"))
    assert init.status is HandshakeStatus.ERROR


def test_tampered_handshake_message_breaks_the_state_for_good():
    init, resp = handshake_pair()
    resp.read_message(init.write_message())
    msg2 = bytearray(resp.write_message(b"payload"))
    msg2[40] ^= 1
    with pytest.raises(NoiseDecryptError):
        init.read_message(bytes(msg2))
    assert init.status is HandshakeStatus.ERROR
    with pytest.raises(NoiseDecryptError):
        init.read_message(bytes(msg2))
    with pytest.raises(NoiseDecryptError):
        init.write_message(b"")


def test_out_of_turn_is_a_local_error_that_changes_nothing():
    init, resp = handshake_pair()
    with pytest.raises(LocalProtocolError):
        init.read_message(b"x" * 32)
    with pytest.raises(LocalProtocolError):
        resp.write_message(b"")
    complete(init, resp)  # still usable


def test_short_message_is_a_remote_error():
    _init, resp = handshake_pair()
    with pytest.raises(NoiseError):
        resp.read_message(b"short")
    assert resp.status is HandshakeStatus.ERROR


@pytest.mark.parametrize("fault", ["flip", "replay", "reorder", "truncate"])
def test_transport_decrypt_failure_breaks_the_cipher(fault):
    init, resp = handshake_pair()
    complete(init, resp)
    send, receive = init.ciphers.send, resp.ciphers.receive
    first = send.encrypt_with_ad(None, b"first")
    second = send.encrypt_with_ad(None, b"second")
    if fault == "flip":
        bad = bytes([first[0] ^ 0x80]) + first[1:]
    elif fault == "replay":
        assert receive.decrypt_with_ad(None, first) == b"first"
        bad = first
    elif fault == "reorder":
        bad = second
    else:
        bad = first[:10]
    with pytest.raises(NoiseDecryptError):
        receive.decrypt_with_ad(None, bad)
    with pytest.raises(NoiseDecryptError):  # broken for good, even for the right message
        receive.decrypt_with_ad(None, second)


def test_low_order_public_key_is_refused():
    init, resp = handshake_pair()
    msg1 = bytearray(init.write_message())
    msg1[:32] = bytes(32)  # the all-zero point gives an all-zero DH output
    resp.read_message(bytes(msg1))
    with pytest.raises(NoiseError):
        resp.write_message(b"")


def test_cipher_without_key_is_identity_and_rekey_changes_key():
    plain = CipherState()
    assert plain.encrypt_with_ad(b"ad", b"data") == b"data"
    keyed = CipherState(bytes(32))
    other = CipherState(bytes(32))
    keyed.rekey()
    assert keyed.k != other.k
    other.rekey()
    assert other.decrypt_with_ad(None, keyed.encrypt_with_ad(None, b"x")) == b"x"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2))
def test_random_bytes_raise_only_remote_errors(junk, step):
    init, resp = handshake_pair()
    try:
        if step == 0:
            resp.read_message(junk)
            resp.write_message(b"")
        elif step == 1:
            resp.read_message(init.write_message())
            init.read_message(junk)
        else:
            complete(init, resp)
            resp.ciphers.receive.decrypt_with_ad(None, junk)
    except RemoteProtocolError:
        pass
