from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.chunker import Chunker, chunks
from meshcloud.errors import LocalProtocolError
from tests.blobstore.fakes import source


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=300),
    size=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 300), max_size=12),
)
def test_chunks_are_full_size_except_a_nonempty_last_and_rebuild_the_stream(data, size, cuts):
    chunker = Chunker(size)
    out = []
    points = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    for a, b in itertools.pairwise(points):
        out += chunker.feed(data[a:b])
        assert chunker.buffered < size  # never holds a whole chunk between calls
    out += chunker.finish()
    assert b"".join(out) == data
    assert all(len(c) == size for c in out[:-1])
    if out:
        assert 0 < len(out[-1]) <= size
    assert len(out) == -(-len(data) // size)
    assert chunker.total == len(data)


def test_empty_stream_gives_no_chunks():
    chunker = Chunker(4)
    assert chunker.feed(b"") == []
    assert chunker.finish() == []


def test_exact_multiple_has_no_short_tail():
    chunker = Chunker(4)
    assert chunker.feed(b"abcdefgh") == [b"abcd", b"efgh"]
    assert chunker.finish() == []


def test_feed_after_finish_is_refused():
    chunker = Chunker(4)
    chunker.finish()
    with pytest.raises(LocalProtocolError):
        chunker.feed(b"x")


@pytest.mark.parametrize("size", [0, -1, 65 * 1024 * 1024])
def test_chunk_size_bounds(size):
    with pytest.raises(ValueError):
        Chunker(size)


async def test_async_chunks_of_a_source():
    data = bytes(range(256)) * 40
    got = [c async for c in chunks(source(data, 333), 1024)]
    assert [len(c) for c in got] == [1024] * 10
    assert b"".join(got) == data
