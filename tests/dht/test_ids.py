"""Ids: the XOR metric and bucket indices (Kademlia §2.1)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dht.ids import (
    ID_BYTES,
    bucket_index,
    common_prefix_length,
    content_key,
    distance,
    id_to_int,
    int_to_id,
    is_id,
    random_id_in_bucket,
)

ids = st.binary(min_size=ID_BYTES, max_size=ID_BYTES)


@given(ids, ids, ids)
def test_xor_is_a_metric(a, b, c):
    assert distance(a, a) == 0
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, ids)
def test_bucket_index_is_the_highest_differing_bit(a, b):
    if a == b:
        with pytest.raises(ValueError):
            bucket_index(a, b)
        return
    index = bucket_index(a, b)
    assert 2**index <= distance(a, b) < 2 ** (index + 1)
    assert common_prefix_length(a, b) == 255 - index


@pytest.mark.parametrize(("other", "index"), [
    (bytes([0x80]) + bytes(31), 255),  # differs in the first bit: the far half
    (bytes([0x01]) + bytes(31), 248),
    (bytes(31) + b"\x01", 0),  # the single nearest sibling
    (bytes(31) + b"\x03", 1),
])
def test_bucket_index_table(other, index):
    assert bucket_index(bytes(32), other) == index


@given(ids, st.integers(0, 255), st.integers(0, 2**32))
def test_random_id_lands_in_the_requested_bucket(local, index, seed):
    target = random_id_in_bucket(local, index, random.Random(seed))
    assert bucket_index(local, target) == index


def test_random_id_in_bucket_refuses_a_bad_index():
    with pytest.raises(ValueError):
        random_id_in_bucket(bytes(32), 256, random.Random(1))


@given(ids)
def test_int_round_trip(a):
    assert int_to_id(id_to_int(a)) == a
    assert is_id(a)


def test_is_id_and_content_key():
    assert not is_id(b"short") and not is_id("x" * 32)
    key = content_key(b"bucket/photos")
    assert is_id(key) and key == content_key(b"bucket/photos") != content_key(b"bucket/photo")
