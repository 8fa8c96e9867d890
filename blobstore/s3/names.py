"""Bucket names, object keys, and which bucket/key a request addresses.

**Buckets** follow S3's general-purpose naming rules (S3 user guide, "Bucket naming
rules"): 3-63 characters of lowercase letters, digits, ``.`` and ``-``; starting and ending
with a letter or digit; no ``..``; not shaped like an IPv4 address; not starting with
``xn--``/``sthree-`` or ending with ``-s3alias``/``--ol-s3``. Anything else is
``InvalidBucketName``. Names are DNS-safe so virtual-host addressing always works.

**Keys** are UTF-8 text of at most 1024 bytes (``KeyTooLongError`` past that). S3 itself
allows almost any bytes, but keys here also become paths (static sites, the web UI, file
exports) and appear in XML listings, so these are refused with ``InvalidArgument``:

* invalid UTF-8 after percent-decoding, NUL and every control character (C0, DEL, C1),
  and U+FFFE/U+FFFF (not allowed in XML 1.0);
* a ``.`` or ``..`` path segment (``a/../b``, ``./x``, ``..``): the classic traversal.
  Empty segments (``a//b``, a leading ``/``) are fine, as in S3.

**Addressing**: virtual-host style (``bucket.s3.example``, for each configured base
domain) or path style (``/bucket/key``), per S3's "Virtual hosting of buckets". The key is
the percent-decoded rest of the path (decoded exactly once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from blobstore.s3.errors import (
    InvalidArgument,
    InvalidBucketName,
    InvalidObjectKey,
    KeyTooLongError,
)

MAX_KEY_BYTES = 1024
"""S3's limit on a key's UTF-8 length."""

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_FORBIDDEN_KEY_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")


def validate_bucket_name(name: str) -> str:
    """``name`` if it is a valid bucket name, else InvalidBucketName."""
    def bad(why: str) -> InvalidBucketName:
        return InvalidBucketName(f"The specified bucket is not valid: {why}.",
                                 BucketName=name[:80])

    if not 3 <= len(name) <= 63:
        raise bad("a bucket name has 3 to 63 characters")
    if not _BUCKET.fullmatch(name):
        raise bad("use lowercase letters, digits, '.' and '-', starting and ending with a "
                  "letter or digit")
    if ".." in name:
        raise bad("two adjacent periods")
    if _IPV4.fullmatch(name):
        raise bad("it must not look like an IP address")
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        raise bad("reserved prefix or suffix")
    return name


def validate_key(key: str) -> str:
    """``key`` if it is an acceptable object key (see the module docstring)."""
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise KeyTooLongError(Size=size, MaxSizeAllowed=MAX_KEY_BYTES)
    if not key:
        raise InvalidObjectKey("Object key must not be empty")
    bad = _FORBIDDEN_KEY_CHARS.search(key)
    if bad is not None:
        raise InvalidObjectKey(f"Object key contains the control character "
                               f"U+{ord(bad.group()):04X}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise InvalidObjectKey("Object key is not valid UTF-8")
    if any(segment in (".", "..") for segment in key.split("/")):
        raise InvalidObjectKey("Object key must not contain '.' or '..' path segments")
    return key


def decode_key(raw: str) -> str:
    """A percent-encoded key (from a path or query) decoded once and validated."""
    data = unquote_to_bytes(raw)
    if len(data) > MAX_KEY_BYTES:
        raise KeyTooLongError(Size=len(data), MaxSizeAllowed=MAX_KEY_BYTES)
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidObjectKey("Object key is not valid UTF-8") from None
    return validate_key(key)


@dataclass(frozen=True, slots=True)
class Target:
    """What a request addresses: nothing (the service), a bucket, or an object."""

    bucket: str | None
    key: str | None
    virtual_host: bool


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:9000
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def parse_target(host: str | None, raw_path: str, *, base_domains: Sequence[str] = ()
                 ) -> Target:
    """Bucket and key from the Host header and the raw (still encoded) path.

    ``base_domains`` are the service's own names (``s3.mesh.local``): a Host of
    ``photos.s3.mesh.local`` addresses bucket ``photos`` with the whole path as the key.
    Any other Host means path style.
    """
    if not raw_path.startswith("/"):
        raise InvalidArgument("the request path must start with '/'")
    name = _host_name(host or "")
    for base in base_domains:
        base = base.lower().rstrip(".")
        if name.endswith("." + base):
            bucket = validate_bucket_name(name[: -len(base) - 1])
            rest = raw_path[1:]
            return Target(bucket, decode_key(rest) if rest else None, True)
    bucket_raw, _, rest = raw_path[1:].partition("/")
    if not bucket_raw:
        if rest:
            raise InvalidBucketName("The specified bucket is not valid: empty bucket name.")
        return Target(None, None, False)
    try:
        bucket_name = unquote_to_bytes(bucket_raw).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidBucketName(BucketName=bucket_raw[:80]) from None
    bucket = validate_bucket_name(bucket_name)
    return Target(bucket, decode_key(rest) if rest else None, False)
