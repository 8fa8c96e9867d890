"""A sans-IO parser of the SOCKS5 handshake, server side, CONNECT only, no authentication
(RFC 1928; the server listens on loopback).

Feed it the client's bytes with :meth:`SocksHandshake.feed`; it answers with the bytes to
send back and, once the request is complete, the :class:`ConnectRequest`. Any other
command, address type or malformed input raises :class:`SocksError` carrying the reply to
send (if the protocol has one at that point) before closing. Input is bounded: a client
cannot make it buffer more than :data:`MAX_BUFFER` bytes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from vnet.plane import PlaneError

VERSION = 5
NO_AUTH = 0
NO_ACCEPTABLE = 0xFF
CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
MAX_BUFFER = 600


class Reply(int, Enum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class SocksError(PlaneError):
    """The client sent something we refuse; ``reply`` is what to send before closing."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    host: str
    """An IPv4 or IPv6 address in text, or a domain name (ASCII, as sent)."""
    port: int
    address_type: int


def reply(code: Reply, bind: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """The server's reply to a CONNECT request."""
    return (bytes([VERSION, int(code), 0, ATYP_IPV4]) + ipaddress.IPv4Address(bind[0]).packed
            + bind[1].to_bytes(2, "big"))


class SocksHandshake:
    """One client's handshake: greeting, method choice, request."""

    def __init__(self) -> None:
        self._buffer = b""
        self._greeted = False
        self.request: ConnectRequest | None = None
        self.leftover = b""
        """Bytes the client sent after its request (its first payload, if it did not wait)."""

    def feed(self, data: bytes) -> tuple[bytes, ConnectRequest | None]:
        """(bytes to send, the request once complete). SocksError on bad input."""
        if self.request is not None:
            raise SocksError("the handshake is already complete")
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER:
            raise SocksError("handshake too long", reply(Reply.GENERAL_FAILURE)
                             if self._greeted else b"")
        out = b""
        if not self._greeted:
            greeting = self._greeting()
            if greeting is None:
                return b"", None
            out = greeting
        try:
            request = self._request()
        except SocksError as exc:  # the method choice still goes out before the refusal
            exc.reply = out + exc.reply
            raise
        return out, request

    def _greeting(self) -> bytes | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        if buf[0] != VERSION:
            raise SocksError(f"not SOCKS5 (version byte {buf[0]})")
        count = buf[1]
        if count == 0:
            raise SocksError("no authentication methods offered", bytes([VERSION,
                                                                       NO_ACCEPTABLE]))
        if len(buf) < 2 + count:
            return None
        methods = buf[2:2 + count]
        self._buffer = buf[2 + count:]
        if NO_AUTH not in methods:
            raise SocksError("the client wants authentication; only no-auth is offered",
                             bytes([VERSION, NO_ACCEPTABLE]))
        self._greeted = True
        return bytes([VERSION, NO_AUTH])

    def _request(self) -> ConnectRequest | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        if buf[0] != VERSION:
            raise SocksError(f"bad request version {buf[0]}", reply(Reply.GENERAL_FAILURE))
        if buf[2] != 0:
            raise SocksError("reserved byte is not zero", reply(Reply.GENERAL_FAILURE))
        command, kind = buf[1], buf[3]
        if kind == ATYP_IPV4:
            end = 4 + 4
        elif kind == ATYP_IPV6:
            end = 4 + 16
        elif kind == ATYP_DOMAIN:
            end = 5 + buf[4]
        else:
            raise SocksError(f"address type {kind}", reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        if len(buf) < end + 2:
            return None
        if command != CONNECT:
            raise SocksError(f"command {command}: only CONNECT",
                             reply(Reply.COMMAND_NOT_SUPPORTED))
        raw = buf[4:end]
        if kind == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(raw))
        elif kind == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(raw))
        else:
            name = raw[1:]
            if not name or not all(0x21 <= c < 0x7F for c in name):
                raise SocksError("bad domain name", reply(Reply.HOST_UNREACHABLE))
            host = name.decode("ascii")
        port = int.from_bytes(buf[end:end + 2], "big")
        if port == 0:
            raise SocksError("port 0", reply(Reply.CONNECTION_REFUSED))
        self.leftover = buf[end + 2:]
        self._buffer = b""
        self.request = ConnectRequest(host, port, kind)
        return self.request
