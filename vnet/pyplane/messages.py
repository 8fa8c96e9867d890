"""The Python plane's UDP packets, and the typed error for a packet that is refused.

Every packet starts with a one-byte type and three zero bytes; integers are little-endian.

* ``INIT`` (112 bytes): sender index (4), initiator ephemeral key (32), initiator static
  key encrypted (32 + 16), timestamp encrypted (8 + 16).
* ``RESPONSE`` (60 bytes): sender index (4), receiver index (4), responder ephemeral key
  (32), an empty payload encrypted (16): the proof the responder holds the static key.
* ``DATA`` (16 + n + 16 bytes): receiver index (4), counter (8), one IP packet encrypted
  (an empty one is a keepalive).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vnet.plane import PlaneError

INIT = 1
RESPONSE = 2
DATA = 4

INIT_SIZE = 112
RESPONSE_SIZE = 60
DATA_HEADER = 16
MIN_DATA = DATA_HEADER + 16
MAX_PACKET = 65535

INIT_HEAD = struct.Struct("<B3xI")
RESPONSE_HEAD = struct.Struct("<B3xII")
DATA_HEAD = struct.Struct("<B3xIQ")

REASONS = ("short", "type", "index", "auth", "replay", "expired", "timestamp",
           "unknown_peer", "source", "no_route", "no_endpoint", "too_big")
"""Every :attr:`PacketError.reason` (the driver counts drops by reason)."""


class PacketError(PlaneError):
    """A packet was refused and dropped; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Init:
    sender: int
    ephemeral: bytes
    static_sealed: bytes
    timestamp_sealed: bytes

    def encode(self) -> bytes:
        return (INIT_HEAD.pack(INIT, self.sender) + self.ephemeral + self.static_sealed
                + self.timestamp_sealed)


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    empty_sealed: bytes

    def encode(self) -> bytes:
        return RESPONSE_HEAD.pack(RESPONSE, self.sender, self.receiver) + self.ephemeral \
            + self.empty_sealed


def packet_type(data: bytes) -> int:
    """The type of a UDP payload; PacketError if it cannot be one of ours."""
    if len(data) < 4:
        raise PacketError("short", f"{len(data)} bytes")
    kind = data[0]
    if data[1:4] != b"\x00\x00\x00":
        raise PacketError("type", "reserved bytes are not zero")
    if kind == DATA:
        if len(data) < MIN_DATA:
            raise PacketError("short", f"data packet of {len(data)} bytes")
    elif kind == INIT:
        if len(data) != INIT_SIZE:
            raise PacketError("short", f"init of {len(data)} bytes")
    elif kind == RESPONSE:
        if len(data) != RESPONSE_SIZE:
            raise PacketError("short", f"response of {len(data)} bytes")
    else:
        raise PacketError("type", f"unknown packet type {kind}")
    return kind


def parse_init(data: bytes) -> Init:
    _, sender = INIT_HEAD.unpack_from(data)
    return Init(sender, data[8:40], data[40:88], data[88:112])


def parse_response(data: bytes) -> Response:
    _, sender, receiver = RESPONSE_HEAD.unpack_from(data)
    return Response(sender, receiver, data[12:44], data[44:60])
