from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.crypto import SEAL_OVERHEAD
from blobstore.erasure import Scheme
from blobstore.manifest import ChunkRef, Manifest, ShardRef
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import CodecError


def make(lengths: list[int]) -> Manifest:
    chunks = tuple(
        ChunkRef(index=i, length=n, sealed_length=n + SEAL_OVERHEAD, shards=tuple(
            ShardRef(index=j, shard_id=bytes([i, j]) * 16, node=bytes([j]) * 32)
            for j in range(6)))
        for i, n in enumerate(lengths)
    )
    return Manifest(object_id=b"o" * 16, size=sum(lengths), etag="abc", scheme=Scheme.ZFEC,
                    k=4, m=2, key=bytes(32), chunks=chunks)


def test_manifest_round_trips_on_the_wire():
    m = make([5, 5, 2])
    assert decode_message(encode_message(m), Manifest) == m


def test_key_is_not_in_repr():
    m = dataclasses.replace(make([1]), key=b"K" * 32)
    assert "KKKK" not in repr(m)


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(1, 20), max_size=6), data=st.data())
def test_chunks_in_range_cover_exactly_the_range(lengths, data):
    m = make(lengths)
    start = data.draw(st.integers(0, m.size))
    end = data.draw(st.integers(start, m.size))
    whole = b"".join(bytes([i]) * n for i, n in enumerate(lengths))
    got = b"".join(
        (bytes([c.index]) * c.length)[lo:hi] for c, lo, hi in m.chunks_in_range(start, end)
    )
    assert got == whole[start:end]


def test_range_outside_object_is_refused():
    with pytest.raises(ValueError):
        make([5]).chunks_in_range(0, 6)


@pytest.mark.parametrize(
    "change",
    [
        dict(size=99),
        dict(key=b"short"),
        dict(k=0),
        dict(scheme=Scheme.REPLICATION),  # k=4 with replication
        dict(part_sizes=(1, 2)),
    ],
)
def test_inconsistent_manifests_are_refused(change):
    with pytest.raises(ValueError):
        dataclasses.replace(make([5, 5]), **change)


def test_decoding_an_inconsistent_manifest_is_codec_error():
    from meshcloud.codec.cbor import encode
    from meshcloud.codec.messages import to_wire

    wire = to_wire(make([5]))
    wire[3] = 6  # size
    with pytest.raises(CodecError):
        decode_message(encode(wire), Manifest)


def test_chunk_refuses_duplicate_shard_index_and_bad_lengths():
    ref = ShardRef(index=0, shard_id=bytes(32), node=bytes(32))
    with pytest.raises(ValueError):
        ChunkRef(index=0, length=1, sealed_length=1 + SEAL_OVERHEAD, shards=(ref, ref))
    with pytest.raises(ValueError):
        ChunkRef(index=0, length=1, sealed_length=2, shards=())


def test_with_shards_replaces_same_index():
    m = make([5, 5])
    new = ShardRef(index=2, shard_id=b"n" * 32, node=b"z" * 32)
    m2 = m.with_shards(1, [new])
    assert m2.chunks[1].shard(2) == new
    assert m2.chunks[0] == m.chunks[0]
    assert len(m2.chunks[1].shards) == 6
    with pytest.raises(KeyError):
        m.with_shards(9, [new])


shard_refs = st.builds(ShardRef, index=st.integers(0, 5), shard_id=st.binary(min_size=32,
                       max_size=32), node=st.binary(min_size=1, max_size=64))


@st.composite
def manifests(draw):
    lengths = draw(st.lists(st.integers(0, 2**40), max_size=5))
    chunks = tuple(
        ChunkRef(index=i * 7, length=n, sealed_length=n + SEAL_OVERHEAD,
                 shards=tuple({r.index: r for r in draw(st.lists(shard_refs, max_size=6))}
                              .values()))
        for i, n in enumerate(lengths)
    )
    return Manifest(object_id=draw(st.binary(min_size=1, max_size=64)), size=sum(lengths),
                    etag=draw(st.text(max_size=40)), scheme=Scheme.ZFEC, k=4, m=2,
                    key=draw(st.binary(min_size=32, max_size=32)), chunks=chunks,
                    part_sizes=draw(st.sampled_from([(), tuple(lengths)])) if lengths else ())


@settings(max_examples=60, deadline=None)
@given(manifests())
def test_any_valid_manifest_round_trips(manifest):
    assert decode_message(encode_message(manifest), Manifest) == manifest
