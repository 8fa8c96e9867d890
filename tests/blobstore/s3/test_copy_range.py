"""x-amz-copy-source-range of UploadPartCopy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3http.handlers import parse_copy_range


def test_absent_range_is_the_whole_object():
    assert parse_copy_range(None, 10) == (0, 10)


@pytest.mark.parametrize(("value", "want"), [("bytes=0-0", (0, 1)), ("bytes=2-9", (2, 10)),
                                             (" bytes=5-5 ", (5, 6))])
def test_ranges_are_inclusive(value, want):
    assert parse_copy_range(value, 10) == want


@pytest.mark.parametrize("value", ["bytes=5-", "bytes=-5", "5-9", "bytes=a-b", "bytes=1-2,4-5",
                                   "bytes=" + "9" * 30 + "-1", ""])
def test_malformed_ranges_are_invalid_argument(value):
    with pytest.raises(e.InvalidArgument):
        parse_copy_range(value, 10)


@pytest.mark.parametrize("value", ["bytes=0-10", "bytes=9-3", "bytes=10-12"])
def test_ranges_outside_the_object_are_invalid_range(value):
    with pytest.raises(e.InvalidRange) as info:
        parse_copy_range(value, 10)
    assert info.value.status == 416


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 1000))
def test_any_valid_range_stays_inside_the_object(first, last, size):
    value = f"bytes={first}-{last}"
    if first <= last < size:
        start, end = parse_copy_range(value, size)
        assert (start, end) == (first, last + 1) and 0 <= start < end <= size
    else:
        with pytest.raises(e.InvalidRange):
            parse_copy_range(value, size)
