"""Conditional requests: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.

Evaluated in RFC 9110 §13.2.2's order, which also gives S3's documented combinations:

1. If-Match present: fails (412) unless the object exists and one listed ETag matches it
   strongly (or ``*``). Otherwise, If-Unmodified-Since: fails (412) if the object changed
   after that date. (If-Match true + If-Unmodified-Since false -> served, as S3.)
2. If-None-Match present: if the object exists and an ETag matches weakly (or ``*``), a GET
   or HEAD gets 304 Not Modified, any other method 412. Otherwise, for GET/HEAD only,
   If-Modified-Since: 304 if the object has not changed since. (If-None-Match false +
   If-Modified-Since true -> 304, as S3.)

A date that does not parse is ignored (RFC 9110 §13.1.3-4). Last-Modified has one-second
precision on the wire, so comparisons use whole seconds. ETags are compared without
quotes, and unquoted ones from careless clients are accepted. Writes use the same rules:
``If-None-Match: *`` on a PUT is "create only" (412 if the key exists), ``If-Match`` on a
PUT is "replace only this version".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from blobstore.s3.errors import NotModified, PreconditionFailed
from blobstore.s3.request import S3Request

MAX_CONDITION_HEADER = 8192


@dataclass(frozen=True, slots=True)
class Current:
    """The object a condition is evaluated against."""

    etag: str
    """Without quotes."""
    last_modified: float
    """Wall-clock seconds."""


def parse_http_date(value: str) -> float | None:
    """Seconds since the epoch, or None if ``value`` is not an HTTP date."""
    try:
        parsed = parsedate_to_datetime(value.strip())
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a huge field
        return None


def _tags(value: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque) pairs of an ETag list; None for ``*``."""
    if value.strip() == "*":
        return None
    out = []
    for item in value.split(","):
        item = item.strip()
        weak = item.startswith("W/")
        if weak:
            item = item[2:]
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        if item:
            out.append((weak, item))
    return out


def _matches(header: str, etag: str, *, strong: bool) -> bool:
    tags = _tags(header)
    if tags is None:
        return True
    return any(opaque == etag and not (strong and weak) for weak, opaque in tags)


def check_conditions(request: S3Request, current: Current | None) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as the headers demand."""
    method = request.method.upper()
    safe = method in ("GET", "HEAD")
    if_match = _header(request, "if-match")
    if_none_match = _header(request, "if-none-match")
    if_unmodified = _header(request, "if-unmodified-since")
    if_modified = _header(request, "if-modified-since")
    seconds = math.floor(current.last_modified) if current is not None else None

    if if_match is not None:
        if current is None or not _matches(if_match, current.etag, strong=True):
            raise PreconditionFailed(Condition="If-Match")
    elif if_unmodified is not None and current is not None:
        limit = parse_http_date(if_unmodified)
        if limit is not None and seconds is not None and seconds > limit:
            raise PreconditionFailed(Condition="If-Unmodified-Since")

    if if_none_match is not None:
        if current is not None and _matches(if_none_match, current.etag, strong=False):
            if safe:
                raise NotModified(ETag=f'"{current.etag}"')
            raise PreconditionFailed(Condition="If-None-Match")
    elif if_modified is not None and safe and current is not None:
        since = parse_http_date(if_modified)
        if since is not None and seconds is not None and seconds <= since:
            raise NotModified(ETag=f'"{current.etag}"')


def _header(request: S3Request, name: str) -> str | None:
    value = request.header(name)
    if value is not None and len(value) > MAX_CONDITION_HEADER:
        return None
    return value


def check_copy_source(request: S3Request, source: Current) -> None:
    """x-amz-copy-source-if-* on a copy (CopyObject, UploadPartCopy): any that fails is
    412 PreconditionFailed (a copy never answers 304). As S3: if-match true makes
    if-unmodified-since irrelevant, and if-none-match false makes if-modified-since so."""
    if_match = _header(request, "x-amz-copy-source-if-match")
    if_none_match = _header(request, "x-amz-copy-source-if-none-match")
    if_unmodified = _header(request, "x-amz-copy-source-if-unmodified-since")
    if_modified = _header(request, "x-amz-copy-source-if-modified-since")
    seconds = math.floor(source.last_modified)
    if if_match is not None:
        if not _matches(if_match, source.etag, strong=True):
            raise PreconditionFailed(Condition="x-amz-copy-source-If-Match")
    elif if_unmodified is not None:
        limit = parse_http_date(if_unmodified)
        if limit is not None and seconds > limit:
            raise PreconditionFailed(Condition="x-amz-copy-source-If-Unmodified-Since")
    if if_none_match is not None:
        if _matches(if_none_match, source.etag, strong=False):
            raise PreconditionFailed(Condition="x-amz-copy-source-If-None-Match")
    elif if_modified is not None:
        since = parse_http_date(if_modified)
        if since is not None and seconds <= since:
            raise PreconditionFailed(Condition="x-amz-copy-source-If-Modified-Since")
