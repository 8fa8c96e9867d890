"""The sealed records of a forward's direct connection: round trips however the bytes
are cut, and every forgery, replay, reordering or truncation refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.ingress.fastseal import (
    FIN,
    HEADER_SIZE,
    HELLO,
    MAX_RECORD,
    Sealer,
    SealError,
    Unsealer,
    derive_keys,
)

KEY = bytes(range(32))


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, start = [], 0
    for size in sizes:
        out.append(data[start:start + size])
        start += size
    out.append(data[start:])
    return out


@given(st.lists(st.binary(max_size=3000), max_size=8),
       st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_records_round_trip_however_the_bytes_are_cut(messages, sizes):
    sealer = Sealer(KEY)
    wire = sealer.seal(b"", HELLO) + b"".join(sealer.seal(m) for m in messages) + \
        sealer.seal(b"", FIN)
    unsealer = Unsealer(KEY)
    got = []
    for piece in cut(wire, sizes):
        got += unsealer.feed(piece)
    assert b"".join(got) == b"".join(messages)
    assert [g for g in got if g] == [m for m in messages if m]
    assert unsealer.finished and unsealer.hellos == 1 and unsealer.pending == 0


@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_flipped_bit_is_refused_and_the_error_is_final(message, data):
    sealer = Sealer(KEY)
    wire = bytearray(sealer.seal(message))
    index = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    wire[index] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    unsealer = Unsealer(KEY)
    with pytest.raises(SealError):  # (a longer length waits for bytes: the padding)
        unsealer.feed(bytes(wire) + bytes(MAX_RECORD + 64))
    with pytest.raises(SealError):  # nothing is accepted after an error
        unsealer.feed(Sealer(KEY).seal(b"x"))


def test_replayed_reordered_or_foreign_records_are_refused():
    sealer = Sealer(KEY)
    one, two = sealer.seal(b"one"), sealer.seal(b"two")
    unsealer = Unsealer(KEY)
    assert unsealer.feed(one) == [b"one"]
    with pytest.raises(SealError, match="authentication"):
        unsealer.feed(one)  # replayed
    reordered = Unsealer(KEY)
    with pytest.raises(SealError, match="authentication"):
        reordered.feed(two)
    other = Unsealer(os.urandom(32))
    with pytest.raises(SealError, match="authentication"):
        other.feed(Sealer(KEY).seal(b"one"))


def test_the_end_is_authenticated_and_final():
    sealer = Sealer(KEY)
    wire = sealer.seal(b"data") + sealer.seal(b"", FIN)
    unsealer = Unsealer(KEY)
    assert unsealer.feed(wire) == [b"data"] and unsealer.finished
    with pytest.raises(SealError, match="after the end"):
        unsealer.feed(b"\x00")
    with pytest.raises(SealError, match="ended"):
        sealer.seal(b"more")
    # a FIN flag added to a data record (a forged end) fails authentication
    forged = bytearray(Sealer(KEY).seal(b"data"))
    forged[0] |= FIN
    with pytest.raises(SealError):
        Unsealer(KEY).feed(bytes(forged))


def test_bad_headers_sizes_and_hellos_are_refused():
    with pytest.raises(SealError, match="malformed"):
        Unsealer(KEY).feed(b"\x80\x00\x00\x20" + bytes(32))  # unknown flag
    with pytest.raises(SealError, match="malformed"):
        Unsealer(KEY).feed(b"\x00\x00\x00\x05" + bytes(5))  # shorter than a tag
    with pytest.raises(SealError, match="malformed"):
        Unsealer(KEY).feed((MAX_RECORD + 17).to_bytes(4, "big"))
    with pytest.raises(SealError):
        Sealer(KEY).seal(bytes(MAX_RECORD + 1))
    late = Sealer(KEY)
    wire = late.seal(b"x") + late.seal(b"", HELLO)
    with pytest.raises(SealError, match="HELLO"):
        Unsealer(KEY).feed(wire)
    with pytest.raises(SealError):
        Sealer(b"short")
    assert Unsealer(KEY).feed(Sealer(KEY).seal(b"abc")[:HEADER_SIZE + 2]) == []


def test_keys_and_token_depend_on_both_shares_and_differ_by_direction():
    a, b, c = (bytes([i]) * 32 for i in range(3))
    ot, to, token = derive_keys(a, b)
    assert len({ot, to}) == 2 and len(token) == 16
    assert derive_keys(a, c)[0] != ot and derive_keys(c, b)[0] != ot
    assert derive_keys(b, a)[0] != ot
    with pytest.raises(SealError):
        derive_keys(a, b"short")
