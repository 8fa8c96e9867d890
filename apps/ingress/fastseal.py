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

from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

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
        out = bytearray(HEADER_SIZE + len(data) + TAG)
        out[HEADER_SIZE:HEADER_SIZE + len(data)] = data
        return bytes(out[:self.seal_in_place(out, len(data), flags)])

    def seal_in_place(self, buffer: bytearray, size: int, flags: int = 0) -> int:
        """Seal the ``size`` plaintext bytes at ``buffer[HEADER_SIZE:]`` in place (the
        relay's hot path: no copy); ``buffer`` has room for the tag. Returns the record's
        length (from ``buffer[0]``)."""
        if self.finished:
            raise SealError("this direction has ended")
        if size > MAX_RECORD or flags & ~_FLAGS:
            raise SealError("record too large or unknown flags")
        if len(buffer) < HEADER_SIZE + size + TAG:
            raise SealError("no room for the record's tag")
        if self.seq >= _MAX_SEQ:
            raise SealError("record sequence exhausted")
        HEADER.pack_into(buffer, 0, flags << 24 | (size + TAG))
        pointer = _ffi.from_buffer("unsigned char[]", buffer, require_writable=True)
        if _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
                pointer + HEADER_SIZE, _ffi.NULL, pointer + HEADER_SIZE, size, pointer,
                HEADER_SIZE, _ffi.NULL, _NONCE.pack(self.seq), self.key) != 0:
            raise SealError("encryption failed")
        self.seq += 1
        if flags & FIN:
            self.finished = True
        return HEADER_SIZE + size + TAG


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

    def take_pending(self) -> bytes:
        """The start of a record :meth:`feed` holds (to go on with :meth:`open_in_place`)."""
        pending = bytes(self._buffer)
        self._buffer.clear()
        return pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._broken is not None:
            raise self._broken
        if data and self.finished:
            raise self._fail("bytes after the end of the direction")
        buffer = self._buffer
        buffer += data
        spans, used = self.open_in_place(buffer, len(buffer))
        out = [bytes(buffer[start:end]) for start, end in spans]
        del buffer[:used]
        return out

    def open_in_place(self, buffer: bytearray, end: int) -> tuple[list[tuple[int, int]], int]:
        """Open the whole records in ``buffer[:end]`` in place (the relay's hot path):
        the (start, end) spans of their non-empty plaintexts in ``buffer``, and the bytes
        used (the rest starts a record not yet complete)."""
        if self._broken is not None:
            raise self._broken
        spans: list[tuple[int, int]] = []
        start = 0
        pointer = None
        try:
            while end - start >= HEADER_SIZE:
                if self.finished:
                    raise self._fail("bytes after the end of the direction")
                (word,) = HEADER.unpack_from(buffer, start)
                flags, size = word >> 24, word & 0xFFFFFF
                if flags & ~_FLAGS or size < TAG or size > MAX_RECORD + TAG:
                    raise self._fail("malformed record header")
                stop = start + HEADER_SIZE + size
                if end < stop:
                    break
                if pointer is None:
                    pointer = _ffi.from_buffer("unsigned char[]", buffer, require_writable=True)
                body = pointer + start + HEADER_SIZE
                if _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
                        body, _ffi.NULL, _ffi.NULL, body, size, pointer + start, HEADER_SIZE,
                        _NONCE.pack(self.seq), self.key) != 0:
                    raise self._fail("record failed authentication (forged, replayed or "
                                     "out of order)")
                self.seq += 1
                plain = size - TAG
                if flags & HELLO:
                    if plain or self.seq != 1:
                        raise self._fail("a HELLO record comes first and is empty")
                    self.hellos += 1
                elif plain:
                    spans.append((start + HEADER_SIZE, start + HEADER_SIZE + plain))
                start = stop
                if flags & FIN:
                    self.finished = True
        finally:
            if pointer is not None:
                _ffi.release(pointer)  # the buffer may be resized again
        if self.finished and end > start:
            raise self._fail("bytes after the end of the direction")
        return spans, start

    def _fail(self, message: str) -> SealError:
        self._broken = SealError(message)
        return self._broken
