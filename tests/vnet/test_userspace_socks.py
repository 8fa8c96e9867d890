"""The SOCKS5 handshake parser, against well-formed and hostile input."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnet.userspace.socks import (
    MAX_BUFFER,
    ConnectRequest,
    Reply,
    SocksError,
    SocksHandshake,
    reply,
)

GREETING = b"\x05\x01\x00"


def request_bytes(host: str, port: int, kind: int) -> bytes:
    if kind == 1:
        addr = ipaddress.IPv4Address(host).packed
    elif kind == 4:
        addr = ipaddress.IPv6Address(host).packed
    else:
        addr = bytes([len(host)]) + host.encode()
    return b"\x05\x01\x00" + bytes([kind]) + addr + struct.pack("!H", port)


def feed_chunks(handshake: SocksHandshake, data: bytes, cuts: list[int]
                ) -> tuple[bytes, ConnectRequest | None]:
    out, request = b"", None
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        sent, got = handshake.feed(data[start:end])
        out += sent
        if got is not None:
            request = got
            break
    return out, request


targets = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.just(1)),
    st.tuples(st.ip_addresses(v=6).map(str), st.just(4)),
    st.tuples(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1,
                      max_size=255), st.just(3)),
)


@given(targets, st.integers(1, 65535), st.lists(st.integers(0, 400), max_size=6),
       st.lists(st.integers(0, 255), min_size=1, max_size=5), st.binary(max_size=50))
def test_any_well_formed_handshake_in_any_chunks(target, port, cuts, extra_methods,
                                                 early_data) -> None:
    host, kind = target
    methods = bytes(sorted({0, *extra_methods}))
    data = bytes([5, len(methods)]) + methods + request_bytes(host, port, kind) + early_data
    handshake = SocksHandshake()
    out, request = feed_chunks(handshake, data, cuts)
    if request is None:  # the last chunk held the rest
        more, request = handshake.feed(b"")
        out += more
    assert out == b"\x05\x00"
    assert request == ConnectRequest(str(ipaddress.ip_address(host)) if kind != 3 else host,
                                     port, kind)
    assert early_data.startswith(handshake.leftover)  # what came with the request's end


@given(st.binary(max_size=700), st.lists(st.integers(0, 700), max_size=8))
def test_hostile_bytes_get_a_request_more_wanted_or_a_socks_error(data, cuts) -> None:
    handshake = SocksHandshake()
    try:
        out, request = feed_chunks(handshake, data, cuts)
    except SocksError as exc:
        assert exc.reply == b"" or exc.reply[0] == 5
        return
    assert out in (b"", b"\x05\x00")
    if request is not None:
        assert 0 < request.port < 65536


def test_the_buffer_is_bounded() -> None:
    handshake = SocksHandshake()
    handshake.feed(GREETING)
    # a domain request that never completes: at most MAX_BUFFER bytes are held
    with pytest.raises(SocksError):
        for _ in range(MAX_BUFFER):
            handshake.feed(b"\x05")
    assert len(handshake._buffer) <= MAX_BUFFER + 1


@pytest.mark.parametrize("data, answer", [
    (b"\x04\x01\x00\x50", b""),  # SOCKS4
    (b"\x05\x00", b"\x05\xff"),  # no methods
    (b"\x05\x01\x02", b"\x05\xff"),  # username/password only
    (GREETING + b"\x05\x02\x00\x01" + bytes(6), b"\x05\x00" + reply(Reply.COMMAND_NOT_SUPPORTED)),
    (GREETING + b"\x05\x01\x00\x09" + bytes(6),
     b"\x05\x00" + reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)),
    (GREETING + b"\x05\x01\x01\x01" + bytes(6), b"\x05\x00" + reply(Reply.GENERAL_FAILURE)),
    (GREETING + b"\x04\x01\x00\x01" + bytes(6), b"\x05\x00" + reply(Reply.GENERAL_FAILURE)),
    (GREETING + b"\x05\x01\x00\x03\x00\x00\x50", b"\x05\x00" + reply(Reply.HOST_UNREACHABLE)),
    (GREETING + b"\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00" + reply(Reply.HOST_UNREACHABLE)),
    (GREETING + b"\x05\x01\x00\x01" + bytes(4) + b"\x00\x00",
     b"\x05\x00" + reply(Reply.CONNECTION_REFUSED)),
])
def test_refusals_carry_the_right_reply(data: bytes, answer: bytes) -> None:
    with pytest.raises(SocksError) as info:
        SocksHandshake().feed(data)
    assert info.value.reply == answer


def test_feeding_after_the_request_is_an_error() -> None:
    handshake = SocksHandshake()
    out, request = handshake.feed(GREETING + request_bytes("10.42.0.2", 80, 1) + b"GET /")
    assert out == b"\x05\x00" and request == ConnectRequest("10.42.0.2", 80, 1)
    assert handshake.leftover == b"GET /"
    with pytest.raises(SocksError):
        handshake.feed(b"more")


def test_reply_encoding() -> None:
    assert reply(Reply.SUCCEEDED, ("10.42.0.1", 1080)) == b"\x05\x00\x00\x01\x0a\x2a\x00\x01" \
        b"\x04\x38"
