"""What the node (or a simulator) plugs into :class:`~dht.core.DhtCore`: signing and checking.

Records are signed by their subject's own key, and a record is accepted only when the
signing key hashes to the node id it speaks for. The core never touches keys itself; it
calls a :class:`Signer` (our key) and a :class:`Verifier` (anyone's). Real nodes use
:class:`KeySigner` and :class:`Ed25519Verifier`. A simulator running thousands of cores
uses :class:`FakeSigner` and :class:`FakeVerifier`: a keyed hash instead of Ed25519 and the
node id standing in for the public key, hundreds of times cheaper and **not secure**
(anyone can compute a fake signature). Never use the fakes outside simulations and tests.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from meshcloud.identity.keys import SigningKey, key_id
from meshcloud.identity.keys import verify as ed25519_verify

SIGNATURE_BYTES = 64
"""Ed25519 signatures are 64 bytes; the fake ones are made the same size."""


class Signer(Protocol):
    """Our identity as the DHT needs it."""

    node_id: bytes
    public_key: bytes

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks anyone's signature and maps a public key to the node id it owns."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool: ...

    def node_id_of(self, public_key: bytes) -> bytes: ...


class KeySigner:
    """Signs with the node's Ed25519 key."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.node_id = key.id
        self.public_key = key.public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"<KeySigner {self.node_id.hex()[:12]}>"


class Ed25519Verifier:
    """Ed25519 signatures; node id = BLAKE2b-256(public key)."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        return ed25519_verify(public_key, data, signature)

    def node_id_of(self, public_key: bytes) -> bytes:
        return key_id(public_key)


class FakeSigner:
    """Simulation only: the "public key" is the node id, the signature a keyed hash."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.public_key = node_id

    def sign(self, data: bytes) -> bytes:
        return _fake_signature(self.public_key, data)


class FakeVerifier:
    """Simulation only: checks :class:`FakeSigner` signatures (forgeable by anyone)."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        return signature == _fake_signature(public_key, data)

    def node_id_of(self, public_key: bytes) -> bytes:
        return public_key


def _fake_signature(public_key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=public_key[:64], digest_size=SIGNATURE_BYTES).digest()
