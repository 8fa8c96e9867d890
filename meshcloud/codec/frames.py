"""Length-prefixed frames, sans-IO.

A frame on a byte stream is a 4-byte big-endian length followed by that many bytes.
:class:`FrameDecoder` is fed arbitrary slices of the stream (whole frames, single bytes,
several frames at once) and returns the complete frames it can cut. A length above the
decoder's limit is a :class:`~meshcloud.errors.CodecError` raised *before* any of the body
is buffered, so a hostile length cannot make us allocate; after an error the decoder stays
broken (the stream is out of sync and must be closed).
"""

from __future__ import annotations

import struct

from meshcloud.errors import CodecError, LocalProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 1024
"""16 MiB of CBOR plus headroom for the envelope (see cbor.MAX_MESSAGE_SIZE)."""


def encode_frame(payload: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds {max_frame}")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Cuts a byte stream into frames. Feed bytes in, get complete frames out."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken: CodecError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, start)
            if length > self.max_frame:
                self._broken = CodecError(
                    f"frame length {length} exceeds the {self.max_frame} byte limit"
                )
                self._buffer = bytearray()
                raise self._broken
            end = start + HEADER.size + length
            if end > len(buffer):
                break
            frames.append(bytes(buffer[start + HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return frames
