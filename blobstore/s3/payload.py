"""Checks on a request body as it streams: length, SHA-256, Content-MD5, x-amz-checksum-*.

:class:`PayloadCheck` is built once per upload from the request headers (and the
:class:`~blobstore.s3.sigv4.Authorization`), fed every body byte (after aws-chunked
decoding), and asked to :meth:`~PayloadCheck.finish`. The writer stores bytes as they
come, but commits the object's manifest only after ``finish`` passes, so a body that
fails any check leaves nothing visible (its shards fall to GC).

Refused, by S3 code:

* ``MissingContentLength`` (411): neither Content-Length (nor Transfer-Encoding: chunked)
  nor, for aws-chunked bodies, x-amz-decoded-content-length;
* ``EntityTooLarge``: a declared or actual size above ``max_size`` (5 GiB for one PUT, as
  S3), found before reading when declared, at the first byte over when not;
* ``IncompleteBody``: fewer bytes than declared;
* ``InvalidDigest``: a Content-MD5 that is not base64 of 16 bytes; ``BadDigest``: one
  that does not match; ``XAmzContentSHA256Mismatch``: a signed SHA-256 that does not match;
* ``InvalidRequest`` / ``BadDigest``: an x-amz-checksum-* value malformed / wrong.
  CRC32, SHA-1 and SHA-256 are checked; CRC32C and CRC64NVME need native code we do not
  ship yet and are refused (``NotImplemented``) rather than stored unchecked.

Hashing is kept off the event loop for large bodies: :meth:`~PayloadCheck.feed` checks
sizes at once but only queues the bytes for the hashes; once :data:`BULK_HASH_MIN` bytes
are queued (:attr:`~PayloadCheck.hash_due`), the caller hands
:meth:`~PayloadCheck.take_pending` to :meth:`~PayloadCheck.hash` in a bulk worker thread
(hashlib releases the GIL on large buffers). What is left (less than that) is hashed
in :meth:`~PayloadCheck.finish`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from blobstore.s3.errors import (
    BadDigest,
    ChecksumMismatch,
    ContentSha256Mismatch,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    MissingContentLength,
    NotImplementedS3,
)
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import Authorization, PayloadMode

MAX_PUT_SIZE = 5 * 1024**3
"""Largest single PUT (and part) S3 accepts: 5 GiB."""

CHECKSUM_HEADERS = {
    "x-amz-checksum-crc32": 4,
    "x-amz-checksum-sha1": 20,
    "x-amz-checksum-sha256": 32,
}
UNSUPPORTED_CHECKSUMS = {"x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme"}

BULK_HASH_MIN = 1 << 20
"""Queued body bytes worth hashing in a worker thread (below, a thread hop costs about
as much as the hashing it would move)."""


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


def _hasher(name: str) -> _Digest:
    if name == "x-amz-checksum-crc32":
        return _Crc32()
    return hashlib.new(name.removeprefix("x-amz-checksum-"))


def parse_content_md5(value: str) -> bytes:
    """The 16-byte digest of a Content-MD5 header, or InvalidDigest."""
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDigest() from None
    if len(digest) != 16:
        raise InvalidDigest()
    return digest


def _parse_length(value: str, name: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise InvalidArgument(f"{name} must be a non-negative integer", ArgumentName=name)
    return int(value)


def declared_length(request: S3Request, mode: PayloadMode | None) -> int | None:
    """The payload size the client declared (decoded size for aws-chunked bodies); None
    for an HTTP body sent with Transfer-Encoding: chunked and no length."""
    if mode is not None and mode.chunked:
        value = request.header("x-amz-decoded-content-length")
        if value is None:
            raise MissingContentLength("aws-chunked uploads need x-amz-decoded-content-length")
        return _parse_length(value, "x-amz-decoded-content-length")
    value = request.header("content-length")
    if value is None:
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            return None  # the HTTP server de-chunks; the size limit still holds
        raise MissingContentLength()
    return _parse_length(value, "Content-Length")


@dataclass
class PayloadCheck:
    """Feed decoded body bytes; :meth:`finish` raises if any promise was broken."""

    length: int | None = None
    sha256: str | None = None
    content_md5: bytes | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    """x-amz-checksum-* header -> base64 value (from headers; trailers come at finish)."""
    trailer_names: frozenset[str] = frozenset()
    max_size: int = MAX_PUT_SIZE
    received: int = 0

    def __post_init__(self) -> None:
        if self.length is not None and self.length > self.max_size:
            raise EntityTooLarge(ProposedSize=self.length, MaxSizeAllowed=self.max_size)
        # MD5 only when a Content-MD5 must be checked: the put pipeline computes the
        # object's ETag itself, and hashing every byte twice costs ~10 % of a PUT.
        self._md5 = hashlib.md5() if self.content_md5 is not None else None
        self._sha256 = hashlib.sha256() if self.sha256 is not None else None
        names = set(self.checksums) | set(self.trailer_names)
        for name in names:
            if name in UNSUPPORTED_CHECKSUMS:
                raise NotImplementedS3(f"{name} is not supported here; use CRC32, SHA1 or "
                                       "SHA256")
            if name not in CHECKSUM_HEADERS:
                raise InvalidRequest(f"unknown checksum {name}")
        if len(names) > 1:
            raise InvalidRequest("Expecting a single x-amz-checksum- header. Multiple "
                                 "checksum Types are not allowed.")
        self._checksums = {name: _hasher(name) for name in names}
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._hashing = (self._md5 is not None or self._sha256 is not None
                         or bool(self._checksums))

    @classmethod
    def for_request(cls, request: S3Request, auth: Authorization | None,
                    *, max_size: int = MAX_PUT_SIZE) -> PayloadCheck:
        """Everything the request's headers promise about its body."""
        mode = auth.payload_mode if auth is not None else None
        length = declared_length(request, mode)
        md5_header = request.header("content-md5")
        checksums = {k.lower(): v for k, v in request.headers
                     if k.lower().startswith("x-amz-checksum-")
                     and k.lower() != "x-amz-checksum-algorithm"}
        trailer = request.header("x-amz-trailer")
        trailer_names = frozenset(t.strip().lower() for t in trailer.split(",")) \
            if trailer else frozenset()
        if trailer_names and not (mode and mode in (PayloadMode.STREAMING_SIGNED_TRAILER,
                                                    PayloadMode.STREAMING_UNSIGNED_TRAILER)):
            raise InvalidRequest("x-amz-trailer needs a STREAMING-*-TRAILER payload")
        return cls(
            length=length,
            sha256=auth.payload_sha256 if auth is not None else None,
            content_md5=parse_content_md5(md5_header) if md5_header is not None else None,
            checksums=checksums, trailer_names=trailer_names, max_size=max_size,
        )

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_size:
            raise EntityTooLarge(MaxSizeAllowed=self.max_size)
        if self.length is not None and self.received > self.length:
            raise IncompleteBody(f"body longer than the declared {self.length} bytes")
        if self._hashing and data:
            self._pending.append(data)
            self._pending_bytes += len(data)

    @property
    def hash_due(self) -> bool:
        """Enough bytes are queued to hash them in a worker thread."""
        return self._pending_bytes >= BULK_HASH_MIN

    def take_pending(self) -> list[bytes]:
        """The queued bytes, in order, for :meth:`hash` (the queue starts over)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        return pending

    def hash(self, pieces: list[bytes]) -> None:
        """Hash ``pieces`` into every digest, in order. May run in a worker thread, as long
        as nothing else uses this check until it returns."""
        md5, sha256, checksums = self._md5, self._sha256, list(self._checksums.values())
        for data in pieces:
            if md5 is not None:
                md5.update(data)
            if sha256 is not None:
                sha256.update(data)
            for hasher in checksums:
                hasher.update(data)

    @property
    def md5_hex(self) -> str | None:
        """Hex MD5 of the body (only when a Content-MD5 was given)."""
        if self._md5 is None:
            return None
        self.hash(self.take_pending())
        return self._md5.hexdigest()

    def finish(self, trailers: dict[str, str] | None = None) -> None:
        if self.length is not None and self.received != self.length:
            raise IncompleteBody(f"declared {self.length} bytes, received {self.received}")
        self.hash(self.take_pending())
        if self.sha256 is not None:
            assert self._sha256 is not None
            if self._sha256.hexdigest() != self.sha256:
                raise ContentSha256Mismatch(ClientComputedContentSHA256=self.sha256,
                                            S3ComputedContentSHA256=self._sha256.hexdigest())
        if self._md5 is not None and self._md5.digest() != self.content_md5:
            raise BadDigest(CalculatedDigest=base64.b64encode(self._md5.digest()).decode())
        claimed = dict(self.checksums)
        claimed.update(trailers or {})
        for name, hasher in self._checksums.items():
            value = claimed.get(name)
            if value is None:
                raise IncompleteBody(f"{name} was declared but never sent")
            try:
                want = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest(f"Value for {name} header is invalid.") from None
            if len(want) != CHECKSUM_HEADERS[name]:
                raise InvalidRequest(f"Value for {name} header is invalid.")
            if hasher.digest() != want:
                raise ChecksumMismatch(f"The {name.removeprefix('x-amz-checksum-').upper()} "
                                       "you specified did not match the calculated checksum.")
