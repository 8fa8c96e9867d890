"""The bucket data source's pure half: locations, partition planning, line ranges, SigV4
(checked against the blobstore's own verifier), part names."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.spark.source import (
    ObjectRef,
    Piece,
    SourceError,
    canonical_query,
    fetch_range,
    lines_of,
    parse_location,
    part_key,
    plan,
    sign,
)
from meshcloud.errors import MeshError


def test_locations():
    assert parse_location("s3://books/in/") == ("books", "in/")
    assert parse_location("books/in") == ("books", "in")
    assert parse_location("books") == ("books", "")
    assert parse_location("s3a://b/x/y") == ("b", "x/y")
    for bad in ("", "  ", "http://b/x", "Books/x", "b/../x", "/x", 42):
        with pytest.raises(SourceError):
            parse_location(bad)  # type: ignore[arg-type]


def test_plan_one_partition_per_object_skips_markers_and_empties():
    refs = [ObjectRef("in/b.txt", 5), ObjectRef("in/a.txt", 7), ObjectRef("in/", 0),
            ObjectRef("in/empty", 0), ObjectRef("in/_SUCCESS", 20)]
    assert plan(refs) == [Piece("in/a.txt"), Piece("in/b.txt")]


def test_plan_cuts_large_text_but_not_csv():
    refs = [ObjectRef("big.txt", 10)]
    assert plan(refs, split=4) == [Piece("big.txt", 0, 4), Piece("big.txt", 4, 8),
                                   Piece("big.txt", 8, -1)]
    assert plan(refs, split=4, fmt="csv") == [Piece("big.txt")]
    assert plan(refs, split=10) == [Piece("big.txt")]
    with pytest.raises(SourceError):
        plan(refs, split=0)


def read_all(data: bytes, split: int) -> list[str]:
    """Every line, read range by range as executors do."""
    out: list[str] = []
    for piece in plan([ObjectRef("k", len(data))], split=split):
        begin, end = fetch_range(piece)
        chunk = data[begin:] if end < 0 else data[begin:end]
        out += list(lines_of(chunk, begin, piece))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab \r", max_size=12), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=40), st.booleans())
def test_ranges_read_every_line_exactly_once(lines, split, trailing):
    data = "\n".join(lines).encode() + (b"\n" if trailing else b"")
    if not data:
        return
    want = data.decode().split("\n")
    if want[-1] == "":  # a final newline ends the last line; it does not start one
        want.pop()
    want = [w.rstrip("\r") for w in want]
    assert read_all(data, split) == want


def test_part_keys():
    assert part_key("out/run1", 3, 17, "csv") == "out/run1/part-00003-17.csv"
    assert part_key("out/run1/", 0, 1, "text") == "out/run1/part-00000-1.txt"
    assert part_key("", 2, 5, "json") == "part-00002-5.json"


def test_sigv4_is_accepted_by_the_blobstore_verifier():
    from blobstore.s3.request import S3Request
    from blobstore.s3.sigv4 import StaticCredentials, verify_request

    now = datetime.datetime(2026, 12, 7, 4, 0, 0, tzinfo=datetime.UTC)
    query = {"list-type": "2", "prefix": "in/a b"}
    headers = sign("GET", "127.0.0.1:9000", "/books", query, b"", "AKID", "s3cr3t", now,
                   {"range": "bytes=0-9"})
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/20261207/")
    keys = StaticCredentials({"AKID": "s3cr3t"})
    request = S3Request("GET", "/books", canonical_query(query), tuple(headers.items()))
    auth = verify_request(request, keys, now.timestamp())
    assert auth is not None and auth.access_key == "AKID"
    bad = sign("GET", "127.0.0.1:9000", "/books", query, b"", "AKID", "wrong", now, {})
    with pytest.raises(MeshError, match="signature"):
        verify_request(S3Request("GET", "/books", canonical_query(query),
                                 tuple(bad.items())), keys, now.timestamp())
