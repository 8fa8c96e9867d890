"""ListObjects (v1 and v2) paging over a sorted key source.

The object index gives keys in UTF-8 byte order (= code point order for valid keys) from
any starting point (:class:`KeySource`). One page is computed by :func:`list_page`:

* only keys starting with ``prefix``;
* with a ``delimiter``, a key with the delimiter after the prefix is rolled up into the
  common prefix ``key[:i + len(delimiter)]``, reported once; the source is then re-scanned
  from just past that prefix, so a prefix holding a million keys costs one seek, not a
  million steps;
* keys and common prefixes together count towards ``max_keys`` (0..1000; larger values
  are clamped to 1000, as S3); ``is_truncated`` is true only if something really follows;
* resuming: after a key (v1 ``marker``, v2 ``start-after``, or a token) or after a common
  prefix (a token, or a v1 ``marker`` equal to a prefix S3 returned as NextMarker).

v2 continuation tokens are opaque and tamper-evident (:class:`ContinuationTokens`): the
resume position plus an HMAC over it *and* the listing's bucket, prefix and delimiter, so
a token cannot be edited, nor replayed against another bucket or listing
(``InvalidArgument``, as S3 answers for a bad token).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from blobstore.s3.errors import InvalidArgument

V = TypeVar("V")
V_co = TypeVar("V_co", covariant=True)

MAX_KEYS = 1000
"""S3 returns at most 1000 entries per page."""

MAX_TOKEN = 4096
"""A token carries one key (<= 1024 bytes) and a MAC: anything longer is forged."""

MAX_CHAR = 0x10FFFF


class KeySource(Protocol[V_co]):
    def scan(self, start: str) -> Iterator[tuple[str, V_co]]:
        """(key, value) pairs with key >= ``start``, in ascending key order."""
        ...


class SortedKeys(Generic[V]):
    """A KeySource over an in-memory sorted list (tests; small buckets)."""

    def __init__(self, items: Iterable[tuple[str, V]]) -> None:
        self.items = sorted(items)
        self.keys = [k for k, _ in self.items]
        self.scans = 0

    def scan(self, start: str) -> Iterator[tuple[str, V]]:
        self.scans += 1
        for i in range(bisect_left(self.keys, start), len(self.items)):
            yield self.items[i]


class After(enum.Enum):
    KEY = "k"  # resume strictly after this key
    PREFIX = "p"  # resume after every key under this common prefix


@dataclass(frozen=True, slots=True)
class Position:
    kind: After
    value: str


@dataclass(slots=True)
class ListPage(Generic[V]):
    contents: list[tuple[str, V]] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    is_truncated: bool = False
    last: Position | None = None
    """The last entry returned: where the next page resumes (NextMarker, token)."""

    @property
    def key_count(self) -> int:
        return len(self.contents) + len(self.common_prefixes)


def parse_max_keys(value: str | None, *, name: str = "max-keys") -> int:
    if value is None:
        return MAX_KEYS
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise InvalidArgument(f"Provided {name} not an integer or within integer range",
                              ArgumentName=name, ArgumentValue=value[:40])
    return min(int(value), MAX_KEYS)


def prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code < MAX_CHAR:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates are not text: skip them
                code = 0xE000
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def list_page(
    source: KeySource[V],
    *,
    prefix: str = "",
    delimiter: str | None = None,
    max_keys: int = MAX_KEYS,
    after: Position | None = None,
) -> ListPage[V]:
    """One page of a listing (see the module docstring)."""
    page: ListPage[V] = ListPage()
    if max_keys <= 0:
        return page
    delimiter = delimiter or None
    start = prefix
    skip_key: str | None = None
    marker_prefix: str | None = None
    if after is not None:
        if after.kind is After.KEY:
            if after.value >= start:
                start, skip_key = after.value, after.value
            marker_prefix = after.value
        else:
            successor = prefix_successor(after.value)
            if successor is None:
                return page
            start = max(start, successor)
    while True:
        reseek: str | None = None
        for key, value in source.scan(start):
            if not key.startswith(prefix):
                if key > prefix:
                    return page  # past every key with the prefix
                continue
            if key == skip_key:
                continue
            if delimiter is not None:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common != marker_prefix:
                        if page.key_count >= max_keys:
                            page.is_truncated = True
                            return page
                        page.common_prefixes.append(common)
                        page.last = Position(After.PREFIX, common)
                    reseek = prefix_successor(common)
                    break
            if page.key_count >= max_keys:
                page.is_truncated = True
                return page
            page.contents.append((key, value))
            page.last = Position(After.KEY, key)
        else:
            return page
        if reseek is None:
            return page
        start = reseek


class ContinuationTokens:
    """Opaque, tamper-evident v2 continuation tokens (see the module docstring)."""

    VERSION = 1

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, kind: After, value: bytes, context: Sequence[str]) -> bytes:
        material = b"\x00".join([bytes([self.VERSION]), kind.value.encode(), value,
                                 *(c.encode("utf-8", "surrogatepass") for c in context)])
        return hmac.new(self._secret, material, hashlib.sha256).digest()[:16]

    def encode(self, position: Position, *, bucket: str, prefix: str, delimiter: str | None
               ) -> str:
        value = position.value.encode("utf-8")
        mac = self._mac(position.kind, value, (bucket, prefix, delimiter or ""))
        raw = bytes([self.VERSION]) + position.kind.value.encode() + mac + value
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, token: str, *, bucket: str, prefix: str, delimiter: str | None
               ) -> Position:
        bad = InvalidArgument("The continuation token provided is incorrect",
                              ArgumentName="continuation-token")
        if not token or len(token) > MAX_TOKEN:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        if len(raw) < 18 or raw[0] != self.VERSION:
            raise bad
        try:
            kind = After(raw[1:2].decode())
        except (ValueError, UnicodeDecodeError):
            raise bad from None
        mac, value = raw[2:18], raw[18:]
        if not hmac.compare_digest(mac, self._mac(kind, value, (bucket, prefix,
                                                                delimiter or ""))):
            raise bad
        try:
            return Position(kind, value.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad from None
