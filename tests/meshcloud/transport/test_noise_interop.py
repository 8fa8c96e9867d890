"""Noise XX against an independent implementation (the ``noiseprotocol`` package from PyPI).

The published test vectors (test_noise.py) live outside the repository and are checked
where ``../shared`` exists; this check runs in every clone: our initiator against its
responder and the reverse, for every hash we support, with payloads in each handshake
message and transport messages both ways, and a tampered message refused on each side.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from meshcloud.transport.noise import (
    HASHES,
    HandshakeState,
    HandshakeStatus,
    NoiseDecryptError,
    generate_private,
    protocol_name,
)

PROLOGUE = b"meshcloud interop"
USED = "BLAKE2b"
"""The suite meshcloud itself speaks (Noise_XX_25519_ChaChaPoly_BLAKE2b)."""


def theirs(hash_name: str, *, initiator: bool) -> NoiseConnection:
    conn = NoiseConnection.from_name(protocol_name(HASHES[hash_name]).encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, generate_private())
    conn.set_prologue(PROLOGUE)
    conn.start_handshake()
    return conn


def ours(hash_name: str, *, initiator: bool) -> HandshakeState:
    return HandshakeState(initiator=initiator, static_private=generate_private(),
                          prologue=PROLOGUE, noise_hash=HASHES[hash_name])


def handshake(hash_name: str, we_initiate: bool,
              payloads: tuple[bytes, bytes, bytes] = (b"one", b"two", b"three")
              ) -> tuple[HandshakeState, NoiseConnection]:
    us = ours(hash_name, initiator=we_initiate)
    them = theirs(hash_name, initiator=not we_initiate)
    for index, payload in enumerate(payloads):
        our_turn = (index % 2 == 0) == we_initiate
        if our_turn:
            assert them.read_message(us.write_message(payload)) == payload
        else:
            assert us.read_message(them.write_message(payload)) == payload
    assert us.status is HandshakeStatus.DONE and them.handshake_finished
    return us, them


@pytest.mark.parametrize("hash_name", sorted(HASHES))
@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "they-initiate"])
def test_handshake_and_transport_with_an_independent_implementation(hash_name, we_initiate):
    us, them = handshake(hash_name, we_initiate)
    ciphers = us.ciphers
    assert ciphers is not None
    assert ciphers.handshake_hash == them.get_handshake_hash()
    for size in (0, 1, 1000, 65519):
        message = bytes(range(256)) * (size // 256) + bytes(size % 256)
        assert them.decrypt(ciphers.send.encrypt_with_ad(b"", message)) == message
        assert ciphers.receive.decrypt_with_ad(b"", them.encrypt(message)) == message


def test_the_suite_meshcloud_speaks_is_among_them():
    assert protocol_name(HASHES[USED]) == "Noise_XX_25519_ChaChaPoly_BLAKE2b"


@pytest.mark.parametrize("we_initiate, message_index", [(True, 1), (False, 2)],
                         ids=["their-message-2", "their-message-3"])
def test_a_tampered_handshake_message_is_refused_by_us(we_initiate, message_index):
    us = ours(USED, initiator=we_initiate)
    them = theirs(USED, initiator=not we_initiate)
    for index in range(3):
        if (index % 2 == 0) == we_initiate:
            them.read_message(us.write_message(b"payload"))
            continue
        data = bytearray(them.write_message(b"payload"))
        if index == message_index:
            data[-1] ^= 0x01  # the payload's tag: damaged in flight
            with pytest.raises(NoiseDecryptError):
                us.read_message(bytes(data))
            assert us.status is HandshakeStatus.ERROR
            return
        us.read_message(bytes(data))
    pytest.fail("the tampered message was never sent")


def test_a_tampered_message_of_ours_is_refused_by_them():
    from cryptography.exceptions import InvalidTag
    from noise.exceptions import NoiseInvalidMessage

    us = ours(USED, initiator=True)
    them = theirs(USED, initiator=False)
    them.read_message(us.write_message(b""))
    us.read_message(them.write_message(b""))
    data = bytearray(us.write_message(b"who I am"))
    data[40] ^= 0x80  # inside our encrypted static key
    with pytest.raises((NoiseInvalidMessage, InvalidTag)):
        them.read_message(bytes(data))


@settings(max_examples=25, deadline=None)
@given(payloads=st.tuples(st.binary(max_size=300), st.binary(max_size=300),
                          st.binary(max_size=300)),
       transport=st.lists(st.binary(max_size=2000), max_size=5),
       we_initiate=st.booleans())
def test_any_payloads_round_trip_with_them(payloads, transport, we_initiate):
    us, them = handshake(USED, we_initiate, payloads)
    assert us.ciphers is not None
    for message in transport:
        assert them.decrypt(us.ciphers.send.encrypt_with_ad(b"", message)) == message
        assert us.ciphers.receive.decrypt_with_ad(b"", them.encrypt(message)) == message
