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

from meshcloud.transport.noise import MAX_PLAINTEXT, TAG_SIZE, CipherState, TransportCiphers

LENGTH = struct.Struct(">H")
OVERHEAD = LENGTH.size + TAG_SIZE
"""Bytes each transport message adds: its length prefix and its authentication tag."""

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
    """Encrypts outgoing plaintext into framed Noise messages and decrypts incoming ones.

    The hot path copies as little as it can: :meth:`encrypt_packets` encrypts each packet
    straight into one output buffer; :meth:`decrypt` decrypts straight out of the received
    bytes, copying only a message that straddles two reads.
    """

    __slots__ = ("_pending", "_receive", "_send", "bytes_received", "bytes_sent",
                 "handshake_hash", "remote_static")

    def __init__(self, ciphers: TransportCiphers) -> None:
        self._send: CipherState = ciphers.send
        self._receive: CipherState = ciphers.receive
        self.handshake_hash = ciphers.handshake_hash
        self.remote_static = ciphers.remote_static
        self._pending = bytearray()  # the start of a message whose end has not arrived
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def pending(self) -> int:
        """Bytes received that belong to a message not yet complete (not yet decrypted)."""
        return len(self._pending)

    def encrypt(self, data: Buffer) -> bytearray:
        """``data`` as one or more framed transport messages, ready for the socket."""
        view = memoryview(data)
        return self.encrypt_packets([view[start:start + MAX_PLAINTEXT]
                                     for start in range(0, len(view), MAX_PLAINTEXT)]
                                    or [view])

    def encrypt_packets(self, packets: list[bytearray] | list[memoryview]) -> bytearray:
        """One framed transport message per packet (each at most MAX_PLAINTEXT bytes)."""
        out = bytearray(sum(len(packet) for packet in packets) + OVERHEAD * len(packets))
        encrypt_into = self._send.encrypt_into
        pack_into = LENGTH.pack_into
        pos = 0
        for packet in packets:
            size = len(packet) + TAG_SIZE
            pack_into(out, pos, size)
            encrypt_into(out, pos + 2, packet)
            pos += 2 + size
            self.bytes_sent += size - TAG_SIZE
        return out

    def decrypt_message(self, message: bytes) -> bytes | bytearray:
        """Decrypt one transport message already cut from the stream."""
        plaintext = self._receive.decrypt_buffer(message)
        self.bytes_received += len(plaintext)
        return plaintext

    def decrypt(self, data: bytes) -> list[bytes | bytearray]:
        """Feed ciphertext as received; returns the plaintext of every message it completes.

        ``data`` must not change afterwards (plaintexts never alias it, but decryption
        reads it in place).
        """
        decrypt = self._receive.decrypt_buffer
        out: list[bytes | bytearray] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        pending = self._pending
        if pending:  # finish the message that straddled the previous read
            if len(pending) < 2:
                take = min(2 - len(pending), end)
                pending += view[:take]
                pos = take
                if len(pending) < 2:
                    return out
            need = 2 + LENGTH.unpack_from(pending)[0] - len(pending)
            if need > end - pos:
                pending += view[pos:]
                return out
            pending += view[pos:pos + need]
            pos += need
            self._pending = bytearray()
            out.append(decrypt(bytes(pending[2:])))
        while end - pos >= 2:
            stop = pos + 2 + LENGTH.unpack_from(view, pos)[0]
            if stop > end:
                break
            out.append(decrypt(view[pos + 2:stop]))
            pos = stop
        if pos < end:
            self._pending = bytearray(view[pos:])
        self.bytes_received += sum(len(p) for p in out)
        return out
