from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.listing import (
    After,
    ContinuationTokens,
    Position,
    SortedKeys,
    list_page,
    parse_max_keys,
    prefix_successor,
)

TOKENS = ContinuationTokens(b"k" * 32)


def reference(keys, prefix, delimiter):
    contents, prefixes = [], []
    for key in sorted(set(keys)):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if common not in prefixes:
                prefixes.append(common)
        else:
            contents.append(key)
    return contents, prefixes


def walk_v2(source, prefix, delimiter, max_keys):
    contents, prefixes, pages, token = [], [], 0, None
    while True:
        assert pages <= len(source.items) + 1, "paging does not terminate"
        after = TOKENS.decode(token, bucket="b", prefix=prefix, delimiter=delimiter) \
            if token else None
        page = list_page(source, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                         after=after)
        pages += 1
        assert page.key_count <= max_keys
        contents += [k for k, _ in page.contents]
        prefixes += page.common_prefixes
        if not page.is_truncated:
            return contents, prefixes, pages
        assert page.key_count == max_keys
        token = TOKENS.encode(page.last, bucket="b", prefix=prefix, delimiter=delimiter)


def walk_v1(source, prefix, delimiter, max_keys):
    """V1: the client resumes from NextMarker (or the last key) as a plain marker."""
    contents, prefixes, marker = [], [], None
    for _ in range(len(source.items) + 2):
        page = list_page(source, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                         after=Position(After.KEY, marker) if marker is not None else None)
        contents += [k for k, _ in page.contents]
        prefixes += page.common_prefixes
        if not page.is_truncated:
            return contents, prefixes
        marker = page.last.value
    raise AssertionError("v1 paging does not terminate")


KEYS = st.lists(st.text(alphabet="ab/é", max_size=6), max_size=40)


@settings(max_examples=150, deadline=None)
@given(keys=KEYS, prefix=st.text(alphabet="ab/", max_size=2),
       delimiter=st.sampled_from([None, "/", "b", "ab"]), max_keys=st.integers(1, 7))
def test_paging_with_tokens_matches_a_naive_listing(keys, prefix, delimiter, max_keys):
    source = SortedKeys((k, None) for k in set(keys))
    want = reference(keys, prefix, delimiter)
    contents, prefixes, _ = walk_v2(source, prefix, delimiter, max_keys)
    assert (contents, prefixes) == want
    assert (list(walk_v1(source, prefix, delimiter, max_keys))) == list(want)


def test_common_prefix_with_many_keys_costs_one_seek():
    source = SortedKeys([(f"big/{i:05d}", None) for i in range(10_000)] + [("z", None)])
    yielded = 0
    original = source.scan

    def counting(start):
        nonlocal yielded
        for item in original(start):
            yielded += 1
            yield item

    source.scan = counting
    page = list_page(source, delimiter="/", max_keys=10)
    assert page.common_prefixes == ["big/"] and [k for k, _ in page.contents] == ["z"]
    assert yielded <= 3


def test_max_keys_zero_and_truncation_flag():
    source = SortedKeys([("a", 1), ("b", 2)])
    assert list_page(source, max_keys=0).is_truncated is False
    assert list_page(source, max_keys=2).is_truncated is False
    page = list_page(source, max_keys=1)
    assert page.is_truncated and page.last == Position(After.KEY, "a")


def test_start_after_and_marker_equal_to_a_common_prefix():
    source = SortedKeys([(k, None) for k in ["a/1", "a/2", "b", "c/1"]])
    page = list_page(source, delimiter="/", after=Position(After.KEY, "a/"))
    assert page.common_prefixes == ["c/"] and [k for k, _ in page.contents] == ["b"]
    page = list_page(source, after=Position(After.KEY, "a/1"))
    assert [k for k, _ in page.contents] == ["a/2", "b", "c/1"]


@pytest.mark.parametrize(("value", "expect"), [(None, 1000), ("0", 0), ("5", 5),
                                               ("1000", 1000), ("5000", 1000)])
def test_max_keys_parsing(value, expect):
    assert parse_max_keys(value) == expect


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "9" * 30])
def test_bad_max_keys(value):
    with pytest.raises(e.InvalidArgument):
        parse_max_keys(value)


def test_prefix_successor():
    assert prefix_successor("a/") == "a0"
    assert prefix_successor("a\U0010ffff") == "b"
    assert prefix_successor("\U0010ffff") is None
    assert prefix_successor("a\ud7ff") == "a\ue000"


def test_tokens_round_trip_and_refuse_tampering_and_replay():
    pos = Position(After.PREFIX, "photos/2026/ünï/")
    token = TOKENS.encode(pos, bucket="b", prefix="photos/", delimiter="/")
    assert TOKENS.decode(token, bucket="b", prefix="photos/", delimiter="/") == pos
    assert "photos" not in token  # opaque
    for ctx in [dict(bucket="other", prefix="photos/", delimiter="/"),
                dict(bucket="b", prefix="", delimiter="/"),
                dict(bucket="b", prefix="photos/", delimiter=None)]:
        with pytest.raises(e.InvalidArgument):
            TOKENS.decode(token, **ctx)
    chars = list(token)
    for i in range(len(chars)):
        forged = chars.copy()
        forged[i] = "A" if forged[i] != "A" else "B"
        try:
            got = TOKENS.decode("".join(forged), bucket="b", prefix="photos/", delimiter="/")
        except e.InvalidArgument:
            continue
        assert got == pos  # only base64 padding-bit changes can survive
    with pytest.raises(e.InvalidArgument):
        ContinuationTokens(b"x" * 32).decode(token, bucket="b", prefix="photos/", delimiter="/")


@pytest.mark.parametrize("token", ["", "!!!", "AAAA", "x" * 5000, "AQ"])
def test_garbage_tokens(token):
    with pytest.raises(e.InvalidArgument):
        TOKENS.decode(token, bucket="b", prefix="", delimiter=None)
