"""The encrypted channel: framing of Noise transport messages on a byte stream, through
libsodium's buffers (the hot path) and through pynacl's public API (the fallback)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.transport import noise
from meshcloud.transport.channel import SecureChannel
from meshcloud.transport.noise import (
    MAX_PLAINTEXT,
    CipherState,
    NoiseDecryptError,
    TransportCiphers,
)


@pytest.fixture(params=[True, False], ids=["libsodium-buffers", "public-api"])
def fast(request, monkeypatch):
    if request.param and not noise._FAST:
        pytest.skip("pynacl without its cffi module")
    monkeypatch.setattr(noise, "_FAST", request.param)
    return request.param


def channel_pair(key: bytes = bytes(range(32))) -> tuple[SecureChannel, SecureChannel]:
    def ciphers(a: bytes, b: bytes) -> TransportCiphers:
        return TransportCiphers(send=CipherState(a), receive=CipherState(b),
                                handshake_hash=b"h", remote_static=b"s")

    other = bytes(reversed(key))
    return SecureChannel(ciphers(key, other)), SecureChannel(ciphers(other, key))


def test_encrypt_into_matches_the_spec_encryption(fast):
    reference, fast_cipher = CipherState(bytes(32)), CipherState(bytes(32))
    for plaintext in (b"", b"x", bytes(1000), bytes(MAX_PLAINTEXT)):
        out = bytearray(len(plaintext) + 20)
        written = fast_cipher.encrypt_into(out, 3, memoryview(plaintext))
        assert bytes(out[3:3 + written]) == reference.encrypt_with_ad(None, plaintext)


def test_decrypt_buffer_rejects_forgeries_and_stays_broken(fast):
    sender, receiver = CipherState(bytes(32)), CipherState(bytes(32))
    first = bytearray(sender.encrypt_with_ad(None, b"first"))
    assert receiver.decrypt_buffer(memoryview(bytes(first))) == b"first"
    second = sender.encrypt_with_ad(None, b"second")
    tampered = bytearray(second)
    tampered[-1] ^= 1
    with pytest.raises(NoiseDecryptError):
        receiver.decrypt_buffer(tampered)
    with pytest.raises(NoiseDecryptError):
        receiver.decrypt_buffer(second)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 17, 1000, 65_519, 65_520, 200_000]), min_size=1,
                max_size=12),
       st.lists(st.integers(1, 70_000), min_size=1, max_size=20), st.integers(0, 2**32))
def test_any_split_of_the_stream_gives_the_same_plaintexts(sizes, cuts, seed):
    rnd = random.Random(seed)  # bytes from a seed: large draws would overrun hypothesis
    messages = [rnd.randbytes(size) for size in sizes]
    alice, bob = channel_pair()
    wire = b"".join(bytes(alice.encrypt(m)) for m in messages)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += bob.decrypt(wire[pos:pos + step])
        pos += step
        i += 1
    assert b"".join(got) == b"".join(messages)
    assert bob.bytes_received == alice.bytes_sent == sum(map(len, messages))


def test_large_data_is_cut_at_the_noise_limit(fast):
    alice, bob = channel_pair()
    data = bytes(range(256)) * 1000
    wire = bytes(alice.encrypt(data))
    assert len(wire) == len(data) + 4 * 18
    assert b"".join(bob.decrypt(wire)) == data
    single = [bytearray(b"a"), bytearray(b"bc")]
    assert [bytes(p) for p in bob.decrypt(bytes(alice.encrypt_packets(single)))] == [b"a", b"bc"]


def test_byte_by_byte_delivery(fast):
    alice, bob = channel_pair()
    wire = bytes(alice.encrypt(b"hello")) + bytes(alice.encrypt(b""))
    got = []
    for i in range(len(wire)):
        got += bob.decrypt(wire[i:i + 1])
    assert [bytes(p) for p in got] == [b"hello", b""]
