"""The Range header of a GET (RFC 9110 §14.1-14.4, as S3 applies it).

S3 serves one byte range per request:

* ``bytes=a-b`` (b clamped to the last byte), ``bytes=a-`` (to the end), ``bytes=-n`` (the
  last n bytes, the whole object if n is larger);
* a range that is syntactically valid but starts at or beyond the end, ``bytes=-0``, or
  any range on an empty object, is unsatisfiable: ``InvalidRange`` (416), which names the
  object's size (``Content-Range: bytes */size``);
* anything not understood (another unit, several ranges, ``a-b`` with a > b, garbage) is
  ignored, as RFC 9110 §14.2 allows: the whole object is returned with 200.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from blobstore.s3.errors import InvalidRange

MAX_RANGE_HEADER = 200
_SPEC = re.compile(r"(\d{0,20})-(\d{0,20})")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int
    """Exclusive."""

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range to serve, None for the whole object; InvalidRange if unsatisfiable."""
    if header is None or len(header) > MAX_RANGE_HEADER:
        return None
    unit, eq, spec = header.strip().partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    match = _SPEC.fullmatch(spec)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return ByteRange(max(size - n, 0), size)
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # a-b with b < a: invalid, ignored
    if start >= size:
        raise _unsatisfiable(header, size)
    return ByteRange(start, min(end, size))


def _unsatisfiable(header: str, size: int) -> InvalidRange:
    return InvalidRange(RangeRequested=header.strip()[:MAX_RANGE_HEADER], ActualObjectSize=size)
