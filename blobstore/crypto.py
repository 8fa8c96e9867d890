"""Per-object encryption of chunks: XChaCha20-Poly1305 (RFC 8439 AEAD, extended nonce).

Every object gets its own random 256-bit key (:func:`new_object_key`), kept only in the
object's manifest, so a node that stores shards learns nothing about their contents and
cannot forge them. Each chunk is sealed separately so ranged reads open only the chunks
they need:

    sealed = nonce (24 bytes, random) || ciphertext || tag (16 bytes)
    AAD    = "meshcloud/blob/chunk/1" || len(object_id) || object_id || chunk_index (u64 BE)

The AAD binds a sealed chunk to its object and position: a chunk swapped in from another
object, or moved to another index of the same object, fails to open exactly like a
tampered or wrongly keyed one, with one error, :class:`~blobstore.errors.IntegrityError`.
Random 192-bit nonces make nonce reuse negligible even if a chunk is re-sealed (a
re-uploaded multipart part) under the same key (draft-irtf-cfrg-xchacha §2).

Keys and nonces come from libsodium's CSPRNG (``randombytes``), never from an injected
``random.Random``: determinism is for protocol decisions, not secrets.
"""

from __future__ import annotations

import struct

import nacl.exceptions
import nacl.utils
from nacl._sodium import ffi, lib
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)

from blobstore.errors import IntegrityError

KEY_SIZE = crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_SIZE = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
"""Bytes a sealed chunk adds to its plaintext (40)."""

AAD_DOMAIN = b"meshcloud/blob/chunk/1"
MAX_OBJECT_ID = 64


def new_object_key() -> bytes:
    """A fresh random 256-bit object key."""
    return nacl.utils.random(KEY_SIZE)


def chunk_aad(object_id: bytes, index: int) -> bytes:
    """The associated data binding a sealed chunk to (object, index)."""
    if not 0 < len(object_id) <= MAX_OBJECT_ID:
        raise ValueError(f"object id must be 1..{MAX_OBJECT_ID} bytes")
    if not 0 <= index < 2**64:
        raise ValueError("chunk index out of range")
    return AAD_DOMAIN + bytes([len(object_id)]) + object_id + struct.pack(">Q", index)


def sealed_size(plain_size: int) -> int:
    return plain_size + SEAL_OVERHEAD


def seal_chunk(
    key: bytes, object_id: bytes, index: int, plaintext: bytes | memoryview,
    *, nonce: bytes | None = None,
) -> bytes:
    """Encrypt and authenticate one chunk. ``nonce`` is for test vectors only."""
    _check_key(key)
    if nonce is None:
        nonce = nacl.utils.random(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    aad = chunk_aad(object_id, index)
    out = _fresh(NONCE_SIZE + len(plaintext) + TAG_SIZE)
    target = ffi.from_buffer(out)
    ffi.memmove(target, nonce, NONCE_SIZE)
    with ffi.from_buffer(plaintext) as plain:
        lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            target + NONCE_SIZE, ffi.NULL, plain, len(plaintext), aad, len(aad), ffi.NULL,
            nonce, key)
    return out


def open_chunk(key: bytes, object_id: bytes, index: int, sealed: bytes | memoryview) -> bytes:
    """Check and decrypt one chunk; any mismatch raises IntegrityError and nothing else."""
    _check_key(key)
    if len(sealed) < SEAL_OVERHEAD:
        raise IntegrityError(f"chunk {index}: sealed chunk too short ({len(sealed)} bytes)")
    aad = chunk_aad(object_id, index)
    if len(sealed) - SEAL_OVERHEAD < IN_PLACE_MIN:  # small: libsodium's wrapper
        view = memoryview(sealed)
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(view[NONCE_SIZE:]), aad, bytes(view[:NONCE_SIZE]), key)
        except nacl.exceptions.CryptoError:
            raise IntegrityError(_failed(object_id, index)) from None
    out = _fresh(len(sealed) - SEAL_OVERHEAD)
    with ffi.from_buffer(sealed) as source:
        failed = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ffi.from_buffer(out), ffi.NULL, ffi.NULL, source + NONCE_SIZE,
            len(sealed) - NONCE_SIZE, aad, len(aad), source, key)
    if failed:
        raise IntegrityError(_failed(object_id, index))
    return out


def _failed(object_id: bytes, index: int) -> str:
    return (f"chunk {index} of object {object_id.hex()[:16]} failed authentication "
            "(wrong key, wrong object or index, or tampered bytes)")


IN_PLACE_MIN = 4096
"""Plaintext size from which a chunk is opened in place (:func:`_fresh`); CPython shares
its ``bytes`` of length 0 and 1, which must never be written."""


def _fresh(size: int) -> bytes:
    """A new ``bytes`` of ``size`` (at least 2) that the libsodium call fills in place.

    ``bytes(size)`` takes zeroed pages from ``calloc`` (no pass over the memory), and the
    AEAD call writes the result straight into it with the GIL released: no copy of the
    chunk with the GIL held (nacl.bindings' wrappers clear an output buffer, then copy it
    into a new ``bytes``, and copy a memoryview input once more). The object is
    not shared with anyone until it is returned."""
    if size < 2:
        raise ValueError("a bytes object this short may be shared")
    return bytes(size)


def _check_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise ValueError(f"object key must be {KEY_SIZE} bytes")
