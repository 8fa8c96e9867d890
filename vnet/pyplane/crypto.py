"""The primitives of the Python plane, on libsodium through pynacl's public bindings.

X25519 for key agreement, BLAKE2b for hashing and key derivation (keyed BLAKE2b is a PRF,
used where HKDF would use HMAC), ChaCha20-Poly1305 (IETF, 96-bit nonce) for every
encrypted field. Nonces are 4 zero bytes and a little-endian 64-bit counter, so a key never
sees the same nonce twice as long as its counter only grows.
"""

from __future__ import annotations

import struct

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

KEY_BYTES = 32
TAG_BYTES = 16
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_Q = struct.Struct("<Q")


class AuthError(Exception):
    """A ciphertext did not authenticate (wrong key, tampered or truncated)."""


def public_key(private_key: bytes) -> bytes:
    return bytes(sodium.crypto_scalarmult_base(private_key))


def dh(private_key: bytes, public: bytes) -> bytes:
    """X25519; AuthError for a low-order public key (the all-zero shared secret)."""
    try:
        shared = bytes(sodium.crypto_scalarmult(private_key, public))
    except (CryptoError, RuntimeError, ValueError) as exc:
        raise AuthError("invalid public key") from exc
    if shared == bytes(KEY_BYTES):
        raise AuthError("low-order public key")
    return shared


def hash32(*parts: bytes) -> bytes:
    return bytes(sodium.crypto_generichash_blake2b_salt_personal(b"".join(parts),
                                                                 digest_size=KEY_BYTES))


def kdf2(chaining_key: bytes, material: bytes) -> tuple[bytes, bytes]:
    """(new chaining key, derived key) from keyed BLAKE2b-512 of ``material``."""
    out = bytes(sodium.crypto_generichash_blake2b_salt_personal(material, digest_size=64,
                                                                key=chaining_key))
    return out[:32], out[32:]


def nonce(counter: int) -> bytes:
    return _NONCE_PREFIX + _Q.pack(counter)


def seal(key: bytes, counter: int, plaintext: bytes, ad: bytes | None = None) -> bytes:
    return bytes(sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
        plaintext, ad, nonce(counter), key))


def open_(key: bytes, counter: int, ciphertext: bytes, ad: bytes | None = None) -> bytes:
    try:
        return bytes(sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
            ciphertext, ad, nonce(counter), key))
    except CryptoError as exc:
        raise AuthError("ciphertext does not authenticate") from exc
