from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.erasure import Scheme, ZfecCode
from blobstore.errors import IntegrityError, ShardFormatError
from blobstore.shards import ShardHeader, pack_shard, shard_id, unpack_shard


def header(**kw) -> ShardHeader:
    base = dict(object_id=b"oid", chunk_index=3, shard_index=1, scheme=Scheme.ZFEC, k=4, m=2,
                chunk_length=10)
    base.update(kw)
    return ShardHeader(**base)


@settings(max_examples=60, deadline=None)
@given(
    oid=st.binary(min_size=1, max_size=64),
    chunk_index=st.integers(0, 2**64 - 1),
    length=st.integers(0, 3000),
    shard_index=st.integers(0, 5),
)
def test_header_round_trip(oid, chunk_index, length, shard_index):
    h = header(object_id=oid, chunk_index=chunk_index, chunk_length=length,
               shard_index=shard_index)
    payload = bytes(ZfecCode(4, 2).shard_size(length))
    blob = pack_shard(h, payload)
    got, got_payload = unpack_shard(blob, expect_id=shard_id(blob))
    assert got == h
    assert bytes(got_payload) == payload


def test_id_covers_header_and_payload():
    a = pack_shard(header(), b"abc")
    assert shard_id(a) != shard_id(pack_shard(header(shard_index=2), b"abc"))
    assert shard_id(a) != shard_id(pack_shard(header(), b"abd"))
    assert len(shard_id(a)) == 32


def test_wrong_id_is_integrity_error():
    blob = pack_shard(header(), b"abc")
    with pytest.raises(IntegrityError):
        unpack_shard(blob, expect_id=bytes(32))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:3],  # shorter than a header
        lambda b: b"XXXX" + b[4:],  # magic
        lambda b: b[:4] + bytes([2]) + b[5:],  # unknown version
        lambda b: b[:5] + bytes([9]) + b[6:],  # unknown scheme
        lambda b: b[:8] + bytes([7]) + b[9:],  # shard index >= k+m
        lambda b: b[:9] + bytes([0]) + b[10:],  # empty object id
        lambda b: b[:20],  # truncated in header
        lambda b: b + b"x",  # payload longer than the header implies
        lambda b: b[:-1],  # payload shorter
    ],
)
def test_malformed_shards_are_one_format_error(mutate):
    blob = pack_shard(header(), b"abc")
    with pytest.raises(ShardFormatError):
        unpack_shard(mutate(blob))


def test_pack_refuses_payload_of_wrong_size():
    with pytest.raises(ShardFormatError):
        pack_shard(header(), b"abcd")


def test_replication_header_needs_k_1():
    with pytest.raises(ShardFormatError):
        header(scheme=Scheme.REPLICATION, k=2, m=1)
