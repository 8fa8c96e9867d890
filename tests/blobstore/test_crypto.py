from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.crypto import (
    KEY_SIZE,
    NONCE_SIZE,
    SEAL_OVERHEAD,
    new_object_key,
    open_chunk,
    seal_chunk,
)
from blobstore.errors import IntegrityError

OID = b"object-1"


@settings(max_examples=50, deadline=None)
@given(plain=st.binary(max_size=2000), index=st.integers(0, 2**64 - 1))
def test_seal_open_round_trip(plain, index):
    key = new_object_key()
    sealed = seal_chunk(key, OID, index, plain)
    assert len(sealed) == len(plain) + SEAL_OVERHEAD
    assert open_chunk(key, OID, index, sealed) == plain


def test_keys_and_nonces_are_fresh():
    key = new_object_key()
    assert len(key) == KEY_SIZE and key != new_object_key()
    a, b = seal_chunk(key, OID, 0, b"same"), seal_chunk(key, OID, 0, b"same")
    assert a[:NONCE_SIZE] != b[:NONCE_SIZE] and a != b


@pytest.mark.parametrize(
    "change",
    ["key", "object", "index", "nonce", "body", "tag", "truncate", "empty"],
)
def test_any_mismatch_is_one_integrity_error(change):
    key = new_object_key()
    sealed = bytearray(seal_chunk(key, OID, 7, b"secret chunk bytes"))
    open_key, oid, index = key, OID, 7
    if change == "key":
        open_key = new_object_key()
    elif change == "object":
        oid = b"object-2"
    elif change == "index":
        index = 8
    elif change == "nonce":
        sealed[0] ^= 1
    elif change == "body":
        sealed[NONCE_SIZE + 2] ^= 0x80
    elif change == "tag":
        sealed[-1] ^= 1
    elif change == "truncate":
        sealed = sealed[:-1]
    elif change == "empty":
        sealed = bytearray()
    with pytest.raises(IntegrityError):
        open_chunk(open_key, oid, index, bytes(sealed))


def test_known_nonce_gives_stable_ciphertext():
    key = bytes(range(32))
    nonce = bytes(24)
    a = seal_chunk(key, OID, 1, b"hello", nonce=nonce)
    assert a == seal_chunk(key, OID, 1, b"hello", nonce=nonce)
    assert a != seal_chunk(key, OID, 2, b"hello", nonce=nonce)  # index is bound


def test_bad_key_size_is_caller_error():
    with pytest.raises(ValueError):
        seal_chunk(b"short", OID, 0, b"x")


@settings(max_examples=50, deadline=None)
@given(plain=st.binary(max_size=9000), index=st.integers(0, 2**64 - 1),
       nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE), as_view=st.booleans())
def test_sealing_in_place_matches_libsodiums_wrapper_byte_for_byte(plain, index, nonce,
                                                                     as_view):
    """The sealed format is nonce || libsodium's XChaCha20-Poly1305 output, whatever the
    input's type; opening gives a fresh bytes object that nothing else shares."""
    from nacl.bindings import (
        crypto_aead_xchacha20poly1305_ietf_decrypt,
        crypto_aead_xchacha20poly1305_ietf_encrypt,
    )

    from blobstore.crypto import chunk_aad

    key = bytes(range(KEY_SIZE))
    source = memoryview(b"xx" + plain)[2:] if as_view else plain
    sealed = seal_chunk(key, OID, index, source, nonce=nonce)
    aad = chunk_aad(OID, index)
    assert type(sealed) is bytes
    assert sealed == nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(plain, aad, nonce, key)
    opened = open_chunk(key, OID, index, memoryview(b"y" + sealed)[1:] if as_view else sealed)
    assert type(opened) is bytes and opened == plain
    assert opened == crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[NONCE_SIZE:], aad,
                                                                nonce, key)
    assert open_chunk(key, OID, index, sealed) == plain  # the first result was not reused


@pytest.mark.parametrize("where", [0, NONCE_SIZE, NONCE_SIZE + 5000, -1])
def test_a_large_tampered_chunk_is_one_integrity_error(where):
    key = new_object_key()
    sealed = bytearray(seal_chunk(key, OID, 3, bytes(range(256)) * 40))
    sealed[where] ^= 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        open_chunk(key, OID, 3, bytes(sealed))
