"""Noise messages on a byte stream: 2-byte length prefixes and the encrypted channel, sans-IO.

On the wire every Noise message, handshake or transport, is its length as a 2-byte
big-endian integer followed by that many bytes (as libp2p's Noise framing): a message is
at most 65535 bytes (Noise spec §3), so the prefix can never announce more, and a hostile
length cannot make us buffer more than one message.

:class:`SecureChannel` turns the two transport CipherStates of a finished handshake into a
byte pipe: :meth:`~SecureChannel.encrypt` cuts any amount of plaintext into messages of at
most :data:`~meshcloud.transport.noise.MAX_PLAINTEXT` bytes (large messages: fewer AEAD calls
and syscalls), :meth:`~SecureChannel.decrypt` is fed ciphertext as it arrives (whole
messages, single bytes, several at once) and returns the plaintexts. A message that fails
authentication breaks the channel for good (:class:`~meshcloud.transport.noise.NoiseDecryptError`).
"""

from __future__ import annotations

import struct

from meshcloud.transport.noise import MAX_PLAINTEXT, CipherState, TransportCiphers

LENGTH = struct.Struct(">H")

Buffer = bytes | bytearray | memoryview


class MessageReader:
    """Cuts a byte stream into length-prefixed messages."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: Buffer, *, limit: int | None = None) -> list[bytes]:
        """Append ``data`` and return the complete messages (at most ``limit`` of them)."""
        buffer = self._buffer
        if not buffer and type(data) is bytes:
            buffer = bytearray()  # keep self._buffer empty until we know we need it
            source: Buffer = data
        else:
            buffer += data
            source = buffer
        out: list[bytes] = []
        pos, end = 0, len(source)
        while end - pos >= 2 and (limit is None or len(out) < limit):
            (size,) = LENGTH.unpack_from(source, pos)
            stop = pos + 2 + size
            if stop > end:
                break
            out.append(bytes(source[pos + 2 : stop]))
            pos = stop
        if source is data:
            if pos < end:
                self._buffer = bytearray(memoryview(data)[pos:])
        elif pos:
            del buffer[:pos]
        return out

    def take_rest(self) -> bytes:
        """Everything buffered that is not yet a whole message (hands over to the next reader)."""
        rest = bytes(self._buffer)
        self._buffer = bytearray()
        return rest


def frame(message: bytes) -> bytes:
    if len(message) > 65535:
        raise ValueError("a Noise message is at most 65535 bytes")
    return LENGTH.pack(len(message)) + message


class SecureChannel:
    """Encrypts outgoing plaintext into framed Noise messages and decrypts incoming ones."""

    __slots__ = ("_reader", "_receive", "_send", "bytes_received", "bytes_sent",
                 "handshake_hash", "remote_static")

    def __init__(self, ciphers: TransportCiphers) -> None:
        self._send: CipherState = ciphers.send
        self._receive: CipherState = ciphers.receive
        self.handshake_hash = ciphers.handshake_hash
        self.remote_static = ciphers.remote_static
        self._reader = MessageReader()
        self.bytes_sent = 0
        self.bytes_received = 0

    def encrypt(self, data: Buffer) -> bytearray:
        """``data`` as one or more framed transport messages, ready for the socket."""
        encrypt = self._send.encrypt_with_ad
        size = len(data)
        if size <= MAX_PLAINTEXT:
            ciphertext = encrypt(None, bytes(data))
            out = bytearray(LENGTH.pack(len(ciphertext)))
            out += ciphertext
        else:
            view = memoryview(data)
            out = bytearray()
            for start in range(0, size, MAX_PLAINTEXT):
                ciphertext = encrypt(None, bytes(view[start : start + MAX_PLAINTEXT]))
                out += LENGTH.pack(len(ciphertext))
                out += ciphertext
        self.bytes_sent += size
        return out

    def encrypt_packets(self, packets: list[bytearray]) -> bytearray:
        """Packets of at most MAX_PLAINTEXT bytes each, one transport message each."""
        encrypt = self._send.encrypt_with_ad
        pack = LENGTH.pack
        out = bytearray()
        for packet in packets:
            ciphertext = encrypt(None, bytes(packet))
            out += pack(len(ciphertext))
            out += ciphertext
            self.bytes_sent += len(packet)
        return out

    def decrypt_message(self, message: bytes) -> bytes:
        """Decrypt one transport message already cut from the stream."""
        plaintext = self._receive.decrypt_with_ad(None, message)
        self.bytes_received += len(plaintext)
        return plaintext

    def decrypt(self, data: Buffer) -> list[bytes]:
        """Feed ciphertext; returns the plaintext of every message completed by it."""
        decrypt = self._receive.decrypt_with_ad
        out = []
        for message in self._reader.feed(data):
            plaintext = decrypt(None, message)
            self.bytes_received += len(plaintext)
            out.append(plaintext)
        return out
