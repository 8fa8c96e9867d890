from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.ranges import ByteRange, parse_range


@pytest.mark.parametrize(("header", "size", "expect"), [
    ("bytes=0-499", 1000, (0, 500)),
    ("bytes=500-999", 1000, (500, 1000)),
    ("bytes=500-", 1000, (500, 1000)),
    ("bytes=-500", 1000, (500, 1000)),
    ("bytes=-5000", 1000, (0, 1000)),  # suffix longer than the object: all of it
    ("bytes=900-5000", 1000, (900, 1000)),  # end clamped
    ("bytes=0-0", 1, (0, 1)),
    ("BYTES = 1-2", 10, (1, 3)),
    ("bytes=999-", 1000, (999, 1000)),
])
def test_satisfiable_ranges(header, size, expect):
    r = parse_range(header, size)
    assert (r.start, r.end) == expect


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=1000-", 1000), ("bytes=1000-2000", 1000), ("bytes=-0", 1000),
    ("bytes=0-", 0), ("bytes=-1", 0), ("bytes=99999999999999999999-", 10),
])
def test_unsatisfiable_ranges_are_416(header, size):
    with pytest.raises(e.InvalidRange) as info:
        parse_range(header, size)
    assert (info.value.code, info.value.status) == ("InvalidRange", 416)
    assert info.value.extra["ActualObjectSize"] == str(size)


@pytest.mark.parametrize("header", [None, "", "bytes=", "bytes=-", "items=0-1", "bytes=5-1",
                                    "bytes=0-1,5-6", "bytes=a-b", "bytes=1-2-3",
                                    "bytes=" + "1" * 30 + "-", "bytes=0-1" + " " * 300])
def test_ignored_ranges_mean_the_whole_object(header):
    assert parse_range(header, 1000) is None


def test_content_range():
    assert ByteRange(0, 500).content_range(1000) == "bytes 0-499/1000"


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 50), a=st.integers(0, 60), b=st.integers(0, 60),
       form=st.sampled_from(["ab", "a-", "-b"]))
def test_ranges_never_leave_the_object(size, a, b, form):
    header = {"ab": f"bytes={a}-{b}", "a-": f"bytes={a}-", "-b": f"bytes=-{b}"}[form]
    try:
        r = parse_range(header, size)
    except e.InvalidRange:
        return
    if r is not None:
        assert 0 <= r.start < r.end <= size
        data = bytes(range(size))
        if form == "ab":
            assert data[r.start:r.end] == data[a:b + 1]
        elif form == "a-":
            assert data[r.start:r.end] == data[a:]
        else:
            assert data[r.start:r.end] == data[-b:]
