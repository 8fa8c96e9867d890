"""Sealed records of a forward's direct connection, sans-IO.

Once a forward is set up over the authenticated mesh stream, the bytes may go on a
dedicated TCP connection between the two nodes' forward relays
(:mod:`apps.ingress.fastrelay`). That connection is sealed with keys agreed over the
stream: each side sends 32 random bytes (its *share*) on the stream, which the transport
encrypts and authenticates; :func:`derive_keys` turns both shares into one key per
direction and the connection's lookup *token*.

A record is a 4-byte header (one flags byte, a 24-bit ciphertext length), then the
ChaCha20-Poly1305 ciphertext of at most :data:`MAX_RECORD` plaintext bytes, with the
header as associated data and the record's sequence number (from 0, per direction) as
the nonce. A replayed, reordered, cut or forged record fails authentication; the end of
a direction is an authenticated FIN record, so a connection cut short is an error, never
a silent truncation. The dialer's first record is an empty HELLO: the listening relay
binds the connection to a forward only once it opened.
"""

from __future__ import annotations

import hashlib
import struct

import nacl.bindings
import nacl.exceptions

from meshcloud.errors import MeshError

MAX_RECORD = 256 * 1024
"""Plaintext bytes in one record."""
TAG = 16
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
SHARE_SIZE = 32
TOKEN_SIZE = 16
FIN = 0x01
HELLO = 0x02
_FLAGS = FIN | HELLO
_NONCE = struct.Struct("<4xQ")
_MAX_SEQ = 2 ** 64 - 1


class SealError(MeshError):
    """A record failed authentication, came out of order or was malformed."""

    code = "forward_sealed_error"


def derive_keys(opener_share: bytes, target_share: bytes) -> tuple[bytes, bytes, bytes]:
    """(opener→target key, target→opener key, token) from both sides' shares."""
    if len(opener_share) != SHARE_SIZE or len(target_share) != SHARE_SIZE:
        raise SealError("a key share is 32 bytes")
    both = opener_share + target_share

    def part(label: bytes, size: int) -> bytes:
        return hashlib.blake2b(both, digest_size=size, person=b"mc-fwd-" + label).digest()

    return part(b"ot", 32), part(b"to", 32), part(b"token", TOKEN_SIZE)


class Sealer:
    """Seals one direction's records."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SealError("a record key is 32 bytes")
        self.key = key
        self.seq = 0
        self.finished = False

    def seal(self, data: bytes | bytearray | memoryview, flags: int = 0) -> bytes:
        """One record carrying ``data`` (at most MAX_RECORD bytes); FIN ends the direction."""
        if self.finished:
            raise SealError("this direction has ended")
        if len(data) > MAX_RECORD or flags & ~_FLAGS:
            raise SealError("record too large or unknown flags")
        if self.seq >= _MAX_SEQ:
            raise SealError("record sequence exhausted")
        header = HEADER.pack(flags << 24 | (len(data) + TAG))
        sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(data), header, _NONCE.pack(self.seq), self.key)
        self.seq += 1
        if flags & FIN:
            self.finished = True
        return header + sealed


class Unsealer:
    """Opens one direction's records from the bytes as they arrive.

    :meth:`feed` takes bytes and returns the plaintexts of the whole records in them;
    :attr:`finished` turns true at the FIN record (any byte after it is an error);
    :attr:`hello` counts HELLO records. Any error is final."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SealError("a record key is 32 bytes")
        self.key = key
        self.seq = 0
        self.finished = False
        self.hellos = 0
        self._buffer = bytearray()
        self._broken: SealError | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a record not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._broken is not None:
            raise self._broken
        if data and self.finished:
            raise self._fail("bytes after the end of the direction")
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        while len(buffer) - start >= HEADER_SIZE:
            (word,) = HEADER.unpack_from(buffer, start)
            flags, size = word >> 24, word & 0xFFFFFF
            if flags & ~_FLAGS or size < TAG or size > MAX_RECORD + TAG:
                raise self._fail("malformed record header")
            end = start + HEADER_SIZE + size
            if len(buffer) < end:
                break
            try:
                plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                    bytes(buffer[start + HEADER_SIZE:end]), bytes(buffer[start:start + 4]),
                    _NONCE.pack(self.seq), self.key)
            except nacl.exceptions.CryptoError:
                raise self._fail("record failed authentication (forged, replayed or "
                                 "out of order)") from None
            self.seq += 1
            start = end
            if flags & HELLO:
                if plain or self.seq != 1:
                    raise self._fail("a HELLO record comes first and is empty")
                self.hellos += 1
            elif plain:
                out.append(plain)
            if flags & FIN:
                self.finished = True
                if len(buffer) > start:
                    raise self._fail("bytes after the end of the direction")
                break
        del buffer[:start]
        return out

    def _fail(self, message: str) -> SealError:
        self._broken = SealError(message)
        self._buffer.clear()
        return self._broken
