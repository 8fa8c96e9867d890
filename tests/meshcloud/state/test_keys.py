"""Key encoding: round trips, order preserved, hostile bytes only raise CodecError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.errors import CodecError
from meshcloud.state.keys import (
    MAX_KEY_BYTES,
    decode_key,
    encode_key,
    encode_prefix,
    partition_of,
    prefix_end,
)

atoms_str = st.text(max_size=8)
atoms_bytes = st.binary(max_size=8)
atoms_int = st.integers(-(2**63), 2**63 - 1)
# Keys of one shape (as in a table): str, bytes, int.
shaped = st.tuples(atoms_str, atoms_bytes, atoms_int)


@given(shaped)
def test_round_trip(key):
    assert decode_key(encode_key(key)) == key


@settings(max_examples=300)
@given(shaped, shaped)
def test_byte_order_is_tuple_order(a, b):
    ea, eb = encode_key(a), encode_key(b)
    normal = lambda k: (k[0].encode(), k[1], k[2])  # noqa: E731  (str compares by UTF-8)
    assert (ea < eb) == (normal(a) < normal(b))
    assert (ea == eb) == (a == b)


@given(shaped, st.text(max_size=4))
def test_prefix_scan_bounds_cover_exactly_the_keys_with_that_prefix(key, prefix):
    low = encode_prefix((), prefix)
    high = prefix_end(low)
    inside = key[0].startswith(prefix)
    encoded = encode_key(key)
    assert (low <= encoded and (high is None or encoded < high)) == inside


@given(st.binary(max_size=64))
def test_hostile_bytes_decode_or_raise_codec_error(data):
    try:
        key = decode_key(data)
    except CodecError:
        return
    assert encode_key(key) == data


def test_limits():
    with pytest.raises(CodecError):
        encode_key(("x" * MAX_KEY_BYTES,))
    with pytest.raises(CodecError):
        encode_key((2**63,))
    with pytest.raises(CodecError):
        encode_key((1.5,))  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        decode_key(b"\x02\xff\xfe")  # invalid UTF-8, unterminated


def test_partition_spreads_keys():
    seen = {partition_of(encode_key((f"workload-{i}",))) for i in range(2000)}
    assert len(seen) > 240  # 256 partitions, ~2000 keys: nearly all used
