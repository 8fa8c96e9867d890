"""The multiplexer's wire layout: binary frame headers and their payloads.

Every frame is an 8-byte header followed by ``length`` bytes of payload::

     0        1        2                 4                                  8
    +--------+--------+-----------------+----------------------------------+
    |  type  | flags  | length (u16 BE) |        stream id (u32 BE)        |  payload...
    +--------+--------+-----------------+----------------------------------+

Frame types (append-only: a number once used keeps its meaning; unknown types are skipped
so that newer peers can add frames, as HTTP/2 §4.1 does):

=================  ====  ==========  =====================================================
type               code  stream id   payload
=================  ====  ==========  =====================================================
DATA               0     ≠ 0         (part of) one message; flags MSG, MORE, FIN
OPEN               1     new, ≠ 0    u8 name length, protocol name (UTF-8), then
                                     optionally the first part of the first message
                                     (flag MSG); MORE and FIN as for DATA
WINDOW_UPDATE      2     ≠ 0         u32 BE credit increment (> 0)
RESET              3     ≠ 0         reason, UTF-8 (at most 256 bytes)
DATAGRAM           4     0           u8 name length, protocol name, data
PING               5     0           8 opaque bytes
PONG               6     0           the 8 bytes of the PING it answers
GOAWAY             7     0           reason, UTF-8 (at most 256 bytes)
=================  ====  ==========  =====================================================

Flags of DATA and OPEN: ``MSG`` (0x04) the frame carries message bytes (an empty message is
MSG with length 0); ``MORE`` (0x02) the message continues in the stream's next frame;
``FIN`` (0x01) the sender sends nothing more on this stream (half-close). A DATA frame
without MSG is a bare FIN and must be empty; MORE without MSG, or MORE with FIN, is illegal.

Streams opened by the dialer have odd ids, by the listener even ids, each side's ids
strictly increasing. A full DATA frame (:data:`MAX_CHUNK` bytes of payload) plus its header
is exactly one Noise plaintext (65519 bytes), so bulk data costs one AEAD call per frame.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from meshcloud.transport.noise import MAX_PLAINTEXT

HEADER = struct.Struct(">BBHI")
HEADER_SIZE = HEADER.size  # 8
U32 = struct.Struct(">I")

MAX_PAYLOAD = 0xFFFF
"""The length field is 16 bits."""

MAX_CHUNK = MAX_PLAINTEXT - HEADER_SIZE
"""Largest DATA payload we send: header + payload fill one Noise message (65511 bytes)."""

MAX_NAME = 255
"""Protocol names are at most 255 bytes of UTF-8 (one length byte)."""

MAX_REASON = 256
"""Reset and goaway reasons are truncated to this many bytes."""

MAX_STREAM_ID = 0xFFFFFFFF


class FrameType(IntEnum):
    DATA = 0
    OPEN = 1
    WINDOW_UPDATE = 2
    RESET = 3
    DATAGRAM = 4
    PING = 5
    PONG = 6
    GOAWAY = 7


class Flag:
    FIN = 0x01
    MORE = 0x02
    MSG = 0x04


def header(frame_type: int, flags: int, length: int, stream_id: int) -> bytes:
    return HEADER.pack(frame_type, flags, length, stream_id)


def encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_NAME:
        raise ValueError(f"protocol name must be 1 to {MAX_NAME} bytes of UTF-8")
    return bytes((len(raw),)) + raw


def encode_reason(reason: str) -> bytes:
    raw = reason.encode("utf-8")[:MAX_REASON]
    return raw.decode("utf-8", "ignore").encode("utf-8")  # never cut a character in half


def decode_text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace")
