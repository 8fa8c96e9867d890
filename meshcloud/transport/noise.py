"""The Noise Protocol Framework, sans-IO: ``Noise_XX_25519_ChaChaPoly_<HASH>``.

Implements the three objects of the Noise specification (revision 34, §5):

* :class:`CipherState` (§5.1): a key and a 64-bit nonce; ChaChaPoly is the IETF
  ChaCha20-Poly1305 AEAD (RFC 8439) with the nonce encoded as 4 zero bytes followed by
  the counter in 8 little-endian bytes (§12.3). Nonce 2^64-1 is reserved (§5.1).
* :class:`SymmetricState` (§5.2): chaining key ``ck`` and handshake hash ``h``, with
  ``MixKey``, ``MixHash``, ``EncryptAndHash``, ``DecryptAndHash`` and ``Split``. HMAC and
  HKDF are the standard constructions over the chosen hash (§4.3), HKDF with 2 outputs.
* :class:`HandshakeState` (§5.3) for the XX pattern (§7.5)::

      XX:
        -> e
        <- e, ee, s, es
        -> s, se

X25519 (§12.1) is libsodium's ``crypto_scalarmult``. The hash is pluggable
(:data:`HASHES`: BLAKE2b, BLAKE2s, SHA256, SHA512) so the published test vectors of all four
can be checked; meshcloud itself uses :data:`PROTOCOL_NAME` (BLAKE2b).

Invariants:

* nothing here does I/O or reads a clock; ephemeral keys are generated with
  ``os.urandom`` unless injected (test vectors inject them);
* a Noise message is at most :data:`MAX_MESSAGE` (65535) bytes (§3), so one transport
  message carries at most :data:`MAX_PLAINTEXT` bytes of plaintext;
* any failure to decrypt (forged, damaged, replayed or reordered data) raises
  :class:`NoiseDecryptError`, a :class:`~meshcloud.errors.RemoteProtocolError`, and leaves the
  object broken: every later call raises the same error. Calling out of turn is a
  :class:`~meshcloud.errors.LocalProtocolError` and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import nacl.bindings
import nacl.exceptions

# libsodium through pynacl's own cffi module: encrypt into and decrypt from buffers. pynacl's
# public ``nacl.bindings.crypto_aead_chacha20poly1305_ietf_*`` only take and return ``bytes``,
# which costs a copy of every 64 KiB frame each way (and an allocation) on the stream path;
# the fallback below uses that public API when the private module is missing or changes.
try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _FAST = hasattr(_lib, "crypto_aead_chacha20poly1305_ietf_encrypt")
except ImportError:  # pragma: no cover - every pynacl build has it; the public API is the fallback
    _FAST = False

from meshcloud.errors import LocalProtocolError, RemoteProtocolError

MAX_MESSAGE = 65535
"""Largest Noise message, handshake or transport (spec §3)."""

TAG_SIZE = 16
"""Poly1305 authentication tag appended to every ciphertext."""

MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE
"""Largest plaintext one transport message can carry (65519 bytes)."""

DHLEN = 32
"""Length of an X25519 public key and of a DH output."""

MAX_NONCE = 2**64 - 1
"""Reserved nonce value (spec §5.1): a CipherState never encrypts with it."""

_NONCE = struct.Struct("<4xQ")


class NoiseError(RemoteProtocolError):
    """The peer sent a Noise message we cannot accept."""

    code = "noise_error"


class NoiseDecryptError(NoiseError):
    """A ciphertext failed authentication: forged, damaged, replayed or reordered."""

    code = "noise_decrypt_failed"


# --- hash functions (spec §12.7 to 12.10) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoiseHash:
    """One of the Noise hash functions: its name in protocol names and a hashlib factory."""

    name: str
    hashlen: int
    factory: Callable[..., Any]

    def hash(self, data: bytes) -> bytes:
        digest: bytes = self.factory(data).digest()
        return digest

    def hmac(self, key: bytes, data: bytes) -> bytes:
        # hmac uses the factory's block_size: 128 for BLAKE2b/SHA512, 64 for BLAKE2s/SHA256,
        # which is BLOCKLEN in the spec.
        return hmac.new(key, data, self.factory).digest()

    def hkdf2(self, chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
        """HKDF with two outputs (spec §4.3)."""
        temp_key = self.hmac(chaining_key, ikm)
        out1 = self.hmac(temp_key, b"\x01")
        out2 = self.hmac(temp_key, out1 + b"\x02")
        return out1, out2


BLAKE2B = NoiseHash("BLAKE2b", 64, hashlib.blake2b)
BLAKE2S = NoiseHash("BLAKE2s", 32, hashlib.blake2s)
SHA256 = NoiseHash("SHA256", 32, hashlib.sha256)
SHA512 = NoiseHash("SHA512", 64, hashlib.sha512)
HASHES = {h.name: h for h in (BLAKE2B, BLAKE2S, SHA256, SHA512)}

PROTOCOL_NAME = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
"""The protocol meshcloud speaks."""


def protocol_name(noise_hash: NoiseHash) -> str:
    return f"Noise_XX_25519_ChaChaPoly_{noise_hash.name}"


# --- X25519 (spec §12.1) -----------------------------------------------------------------


def x25519_public(private: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(private)


def x25519(private: bytes, public: bytes) -> bytes:
    """DH(private, public); a low-order or malformed public key is the peer's fault."""
    try:
        return nacl.bindings.crypto_scalarmult(private, public)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError,
            nacl.exceptions.TypeError, nacl.exceptions.ValueError):
        raise NoiseError("peer sent an invalid X25519 public key") from None


def generate_private() -> bytes:
    """A fresh X25519 private key (libsodium clamps it when used)."""
    return os.urandom(32)


# --- CipherState (spec §5.1) -------------------------------------------------------------


class CipherState:
    """A ChaChaPoly key and nonce. Before a key is set, encryption is the identity (§5.1)."""

    __slots__ = ("_broken", "k", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.k: bytes | None = key
        self.n = 0
        self._broken: NoiseError | None = None

    def has_key(self) -> bool:
        return self.k is not None

    def set_nonce(self, nonce: int) -> None:
        self.n = nonce

    def encrypt_with_ad(self, ad: bytes | None, plaintext: bytes) -> bytes:
        if self._broken is not None:
            raise self._broken
        k = self.k
        if k is None:
            return plaintext
        n = self.n
        if n >= MAX_NONCE:
            raise LocalProtocolError("Noise nonce exhausted: the connection must be rekeyed")
        if len(plaintext) > MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"Noise plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, ad or None, _NONCE.pack(n), k)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes | None, ciphertext: bytes) -> bytes:
        if self._broken is not None:
            raise self._broken
        k = self.k
        if k is None:
            return ciphertext
        n = self.n
        if n >= MAX_NONCE:
            raise self._break(NoiseError("Noise nonce exhausted"))
        if len(ciphertext) < TAG_SIZE:
            raise self._break(NoiseDecryptError("Noise ciphertext shorter than its tag"))
        try:
            plaintext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad or None, _NONCE.pack(n), k)
        except nacl.exceptions.CryptoError:
            raise self._break(NoiseDecryptError(
                "Noise message failed authentication (forged or damaged)")) from None
        self.n = n + 1
        return plaintext

    def encrypt_into(self, out: bytearray, offset: int,
                     plaintext: bytes | bytearray | memoryview) -> int:
        """ENCRYPT(k, n++, "", plaintext) written into ``out`` at ``offset``, without
        intermediate copies (the transport's hot path). Returns the ciphertext length."""
        if self._broken is not None:
            raise self._broken
        k, n = self.k, self.n
        size = len(plaintext)
        if k is None or n >= MAX_NONCE or size > MAX_PLAINTEXT:
            raise LocalProtocolError("encrypt_into needs a keyed cipher, a nonce and at most "
                                     f"{MAX_PLAINTEXT} bytes")
        if len(out) - offset < size + TAG_SIZE:
            raise LocalProtocolError("output buffer too small for the ciphertext")
        if _FAST:
            target = _ffi.from_buffer("unsigned char[]", out, require_writable=True)
            source = _ffi.from_buffer("unsigned char[]", plaintext) if size else _ffi.NULL
            if _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
                    target + offset, _ffi.NULL, source, size, _ffi.NULL, 0, _ffi.NULL,
                    _NONCE.pack(n), k) != 0:
                raise LocalProtocolError("ChaCha20-Poly1305 encryption failed")
        else:
            ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
                bytes(plaintext), None, _NONCE.pack(n), k)
            out[offset:offset + size + TAG_SIZE] = ciphertext
        self.n = n + 1
        return size + TAG_SIZE

    def decrypt_buffer(self, ciphertext: bytes | bytearray | memoryview) -> bytes | bytearray:
        """DECRYPT(k, n++, "", ciphertext) from any buffer, into a new buffer (hot path)."""
        if self._broken is not None:
            raise self._broken
        k, n = self.k, self.n
        if k is None:
            raise LocalProtocolError("decrypt_buffer needs a keyed cipher")
        if n >= MAX_NONCE:
            raise self._break(NoiseError("Noise nonce exhausted"))
        size = len(ciphertext) - TAG_SIZE
        if size < 0:
            raise self._break(NoiseDecryptError("Noise ciphertext shorter than its tag"))
        if not _FAST:
            return self.decrypt_with_ad(None, bytes(ciphertext))
        plaintext = bytearray(size)
        target = _ffi.from_buffer("unsigned char[]", plaintext, require_writable=True)
        if _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
                target if size else _ffi.NULL, _ffi.NULL, _ffi.NULL,
                _ffi.from_buffer("unsigned char[]", ciphertext), size + TAG_SIZE,
                _ffi.NULL, 0, _NONCE.pack(n), k) != 0:
            raise self._break(NoiseDecryptError(
                "Noise message failed authentication (forged or damaged)"))
        self.n = n + 1
        return plaintext

    def rekey(self) -> None:
        """REKEY(k) (spec §4.2, §11.3): the first 32 bytes of encrypting zeros at nonce max."""
        if self.k is None:
            raise LocalProtocolError("cannot rekey a CipherState without a key")
        self.k = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(32), None, _NONCE.pack(MAX_NONCE), self.k)[:32]

    def _break(self, error: NoiseError) -> NoiseError:
        self._broken = error
        self.k = None
        return error


# --- SymmetricState (spec §5.2) ----------------------------------------------------------


class SymmetricState:
    __slots__ = ("cipher", "ck", "h", "hash")

    def __init__(self, name: str, noise_hash: NoiseHash) -> None:
        self.hash = noise_hash
        raw = name.encode("ascii")
        if len(raw) <= noise_hash.hashlen:
            self.h = raw + bytes(noise_hash.hashlen - len(raw))
        else:
            self.h = noise_hash.hash(raw)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self.hash.hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = self.hash.hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = self.hash.hkdf2(self.ck, b"")
        return CipherState(temp_k1[:32]), CipherState(temp_k2[:32])


# --- HandshakeState (spec §5.3) for XX ---------------------------------------------------

XX_PATTERN: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)
"""The XX message patterns (spec §7.5), initiator first."""


class HandshakeStatus(Enum):
    WRITING = "writing"  # our turn to write a message
    READING = "reading"  # waiting for the peer's message
    DONE = "done"  # split: transport ciphers ready
    ERROR = "error"  # broken; refuses further use


@dataclass(frozen=True, slots=True)
class TransportCiphers:
    """The two CipherStates of a finished handshake, oriented for this side."""

    send: CipherState
    receive: CipherState
    handshake_hash: bytes
    remote_static: bytes


class HandshakeState:
    """One side of a Noise XX handshake.

    Call :meth:`write_message` when :attr:`status` is WRITING and :meth:`read_message` when
    it is READING; after the third message :attr:`status` is DONE and :attr:`ciphers` holds
    the transport CipherStates. ``static_private`` is this side's X25519 key;
    ``ephemeral_private`` may be injected (test vectors), otherwise it is random.
    """

    def __init__(self, *, initiator: bool, static_private: bytes, prologue: bytes = b"",
                 ephemeral_private: bytes | None = None,
                 noise_hash: NoiseHash = BLAKE2B) -> None:
        if len(static_private) != 32:
            raise ValueError("an X25519 private key is 32 bytes")
        self.initiator = initiator
        self.symmetric = SymmetricState(protocol_name(noise_hash), noise_hash)
        self.symmetric.mix_hash(prologue)
        self._s = static_private
        self._s_public = x25519_public(static_private)
        self._e = ephemeral_private
        self._e_public: bytes | None = None
        self.remote_static: bytes | None = None
        self._re: bytes | None = None
        self._index = 0
        self.ciphers: TransportCiphers | None = None
        self._error: NoiseError | None = None

    @property
    def status(self) -> HandshakeStatus:
        if self._error is not None:
            return HandshakeStatus.ERROR
        if self.ciphers is not None:
            return HandshakeStatus.DONE
        ours = (self._index % 2 == 0) == self.initiator
        return HandshakeStatus.WRITING if ours else HandshakeStatus.READING

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.h

    @property
    def message_index(self) -> int:
        """How many handshake messages have gone by (0 to 3)."""
        return self._index

    def write_message(self, payload: bytes = b"") -> bytes:
        if self._error is not None:
            raise self._error
        if self.status is not HandshakeStatus.WRITING:
            raise LocalProtocolError(f"cannot write a handshake message while {self.status.value}")
        sym = self.symmetric
        out = bytearray()
        for token in XX_PATTERN[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = generate_private()
                self._e_public = x25519_public(self._e)
                out += self._e_public
                sym.mix_hash(self._e_public)
            elif token == "s":
                out += sym.encrypt_and_hash(self._s_public)
            else:
                sym.mix_key(self._dh(token))
        out += sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise LocalProtocolError(f"handshake message of {len(out)} bytes exceeds {MAX_MESSAGE}")
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's handshake message; returns its decrypted payload."""
        if self._error is not None:
            raise self._error
        if self.status is not HandshakeStatus.READING:
            raise LocalProtocolError(f"cannot read a handshake message while {self.status.value}")
        if len(message) > MAX_MESSAGE:
            raise self._fail(NoiseError(f"handshake message exceeds {MAX_MESSAGE} bytes"))
        sym = self.symmetric
        view = bytes(message)
        pos = 0
        try:
            for token in XX_PATTERN[self._index]:
                if token == "e":
                    if len(view) - pos < DHLEN:
                        raise NoiseError("handshake message too short for an ephemeral key")
                    self._re = view[pos:pos + DHLEN]
                    pos += DHLEN
                    sym.mix_hash(self._re)
                elif token == "s":
                    size = DHLEN + (TAG_SIZE if sym.cipher.has_key() else 0)
                    if len(view) - pos < size:
                        raise NoiseError("handshake message too short for a static key")
                    self.remote_static = sym.decrypt_and_hash(view[pos:pos + size])
                    pos += size
                else:
                    sym.mix_key(self._dh(token))
            payload = sym.decrypt_and_hash(view[pos:])
        except NoiseError as exc:
            raise self._fail(exc) from None
        self._advance()
        return payload

    def _dh(self, token: str) -> bytes:
        # ee: e with re; es: initiator e with rs, responder s with re; se: the mirror.
        if token == "ee":
            return x25519(self._need(self._e), self._need(self._re))
        if token == "es":
            if self.initiator:
                return x25519(self._need(self._e), self._need(self.remote_static))
            return x25519(self._s, self._need(self._re))
        if token == "se":
            if self.initiator:
                return x25519(self._s, self._need(self._re))
            return x25519(self._need(self._e), self._need(self.remote_static))
        raise LocalProtocolError(f"token {token} is not part of XX")

    @staticmethod
    def _need(key: bytes | None) -> bytes:
        if key is None:
            raise LocalProtocolError("handshake key missing (tokens out of order)")
        return key

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(XX_PATTERN):
            first, second = self.symmetric.split()
            send, receive = (first, second) if self.initiator else (second, first)
            assert self.remote_static is not None
            self.ciphers = TransportCiphers(send=send, receive=receive,
                                            handshake_hash=self.symmetric.h,
                                            remote_static=self.remote_static)
            self._e = None  # forget the ephemeral private key once it is no longer needed

    def _fail(self, error: NoiseError) -> NoiseError:
        self._error = error
        self._e = None
        return error
