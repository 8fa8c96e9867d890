"""Multipart uploads: the bookkeeping core (parts, completion rules, S3's ETag).

An upload fixes, at initiation, the object id, the object key and the erasure code; each
part is then written by the ordinary put pipeline with that id and key and with chunk
indexes under ``part_number << PART_INDEX_SHIFT`` (:mod:`blobstore.manifest`), so the AEAD
binds every chunk to its part and position, and completing an upload is pure bookkeeping:
the final manifest lists the chosen parts' chunks in order, nothing is re-encoded.

Rules (S3 API reference, UploadPart / CompleteMultipartUpload):

* part numbers are 1..10000; uploading a number again replaces that part;
* completion lists parts in ascending order (``InvalidPartOrder``), each of them uploaded
  and with the matching ETag (``InvalidPart``); a number listed twice stands for its last
  upload, which one of the listed ETags must match; every part but the last must be
  at least 5 MiB (``EntityTooSmall``); an empty list is ``MalformedXML``;
* the ETag of the object is ``hex(md5(md5(part 1) || ... || md5(part N)))-N``;
* parts uploaded but not listed are dropped (their shards become garbage for GC).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nacl.utils

from blobstore.erasure import Scheme
from blobstore.manifest import PART_INDEX_SHIFT, ChunkRef, Manifest
from blobstore.s3.errors import (
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    MalformedXML,
    TooManyParts,
)

MIN_PART_SIZE = 5 * 1024 * 1024
"""Every part but the last: at least 5 MiB."""

MAX_PART_SIZE = 5 * 1024**3
MAX_PART_NUMBER = 10_000
MAX_PARTS_LISTED = 1000


UPLOAD_SECRET_SIZE = 16


def new_upload_id(object_id: bytes = b"") -> str:
    """An unguessable upload id (it is the only capability needed to add parts): the
    upload's object id, then random bytes. The object id lets a repeated
    CompleteMultipartUpload recognise the object its first call made."""
    return base64.urlsafe_b64encode(object_id + nacl.utils.random(UPLOAD_SECRET_SIZE)).decode()


def object_id_of_upload(upload_id: str, object_id_size: int = 16) -> bytes | None:
    """The object id inside an upload id made by :func:`new_upload_id` (None: not one)."""
    if len(upload_id) > 128:
        return None
    try:
        raw = base64.urlsafe_b64decode(upload_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    if len(raw) != object_id_size + UPLOAD_SECRET_SIZE:
        return None
    return raw[:object_id_size]


def parse_part_number(value: str | None) -> int:
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 5 \
            or not 1 <= int(value) <= MAX_PART_NUMBER:
        raise TooManyParts(ArgumentName="partNumber", ArgumentValue=(value or "")[:20])
    return int(value)


def part_chunk_base(part_number: int) -> int:
    """First chunk index of a part: the writer's ``first_chunk_index``."""
    return part_number << PART_INDEX_SHIFT


def multipart_etag(part_md5_hex: Sequence[str]) -> str:
    """S3's ETag of a multipart object: md5 of the concatenated part digests, dash, count."""
    joined = b"".join(bytes.fromhex(h) for h in part_md5_hex)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5_hex)}"


def clean_etag(etag: str) -> str:
    etag = etag.strip()
    if len(etag) >= 2 and etag[0] == etag[-1] == '"':
        etag = etag[1:-1]
    return etag


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str
    """Hex MD5 of the part's bytes (no quotes)."""
    size: int
    last_modified: float
    chunks: tuple[ChunkRef, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.number <= MAX_PART_NUMBER:
            raise InvalidArgument(f"part number {self.number} outside 1..{MAX_PART_NUMBER}")
        base, top = part_chunk_base(self.number), part_chunk_base(self.number + 1)
        if any(not base <= c.index < top for c in self.chunks):
            raise InvalidArgument(f"part {self.number} has chunks outside its index range")
        if sum(c.length for c in self.chunks) != self.size:
            raise InvalidArgument(f"part {self.number}: size is not the sum of its chunks")


@dataclass
class MultipartUpload:
    upload_id: str
    bucket: str
    key: str
    object_id: bytes
    object_key: bytes = field(repr=False)
    scheme: Scheme
    k: int
    m: int
    initiated: float
    parts: dict[int, Part] = field(default_factory=dict)

    def add_part(self, part: Part) -> Part | None:
        """Record an uploaded part; returns the part it replaced (now garbage), if any."""
        previous = self.parts.get(part.number)
        self.parts[part.number] = part
        return previous

    def list_parts(self, *, marker: int = 0, max_parts: int = MAX_PARTS_LISTED
                   ) -> tuple[list[Part], bool]:
        """Parts numbered above ``marker``, at most ``max_parts``; and whether more follow."""
        numbers = sorted(n for n in self.parts if n > marker)
        chosen = numbers[: max(0, min(max_parts, MAX_PARTS_LISTED))]
        return [self.parts[n] for n in chosen], len(numbers) > len(chosen)

    def complete(self, requested: Sequence[tuple[int, str]], *,
                 min_part_size: int = MIN_PART_SIZE) -> Manifest:
        """Check the client's part list and build the object's manifest (module docstring)."""
        if not requested:
            raise MalformedXML("CompleteMultipartUpload lists no parts")
        if len(requested) > MAX_PART_NUMBER:
            raise MalformedXML(f"more than {MAX_PART_NUMBER} parts listed")
        numbers = [number for number, _ in requested]
        if any(b < a for a, b in itertools.pairwise(numbers)):
            raise InvalidPartOrder()
        listed: dict[int, set[str]] = {}
        for number, etag in requested:
            listed.setdefault(number, set()).add(clean_etag(etag))
        chosen: list[Part] = []
        for number, etags in listed.items():  # a number listed twice: its last upload
            part = self.parts.get(number)
            if part is None or part.etag not in etags:
                raise InvalidPart(PartNumber=number, ETag=sorted(etags)[-1][:64])
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < min_part_size:
                raise EntityTooSmall(ProposedSize=part.size, MinSizeAllowed=min_part_size,
                                     PartNumber=part.number, ETag=part.etag)
        return Manifest(
            object_id=self.object_id,
            size=sum(p.size for p in chosen),
            etag=multipart_etag([p.etag for p in chosen]),
            scheme=self.scheme, k=self.k, m=self.m, key=self.object_key,
            chunks=tuple(c for p in chosen for c in p.chunks),
            part_sizes=tuple(p.size for p in chosen),
        )

    def unused_parts(self, used: Iterable[int]) -> list[Part]:
        """Parts not among the ``used`` part numbers (their shards become garbage)."""
        keep = set(used)
        return [p for n, p in sorted(self.parts.items()) if n not in keep]


def part_range(manifest: Manifest, part_number: int) -> tuple[int, int]:
    """Byte range [start, end) of part ``part_number`` (1-based) of a multipart object."""
    if not manifest.part_sizes:
        if part_number == 1:
            return 0, manifest.size
        raise InvalidPart("the object has one part", PartNumber=part_number)
    if not 1 <= part_number <= len(manifest.part_sizes):
        raise InvalidPart("partNumber is past the object's last part",
                          PartNumber=part_number)
    start = sum(manifest.part_sizes[: part_number - 1])
    return start, start + manifest.part_sizes[part_number - 1]


@dataclass(frozen=True, slots=True)
class UploadEntry:
    key: str
    upload_id: str
    initiated: float


@dataclass(slots=True)
class UploadsPage:
    uploads: list[UploadEntry] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    is_truncated: bool = False
    next_key_marker: str = ""
    next_upload_id_marker: str = ""


def list_uploads(
    uploads: Iterable[UploadEntry], *, prefix: str = "", delimiter: str | None = None,
    key_marker: str = "", upload_id_marker: str = "", max_uploads: int = 1000,
) -> UploadsPage:
    """ListMultipartUploads: by key, then initiation time; resuming after a (key, id)."""
    page = UploadsPage()
    max_uploads = max(0, min(max_uploads, 1000))
    ordered = sorted(uploads, key=lambda u: (u.key, u.initiated, u.upload_id))
    seen_prefixes: set[str] = set()
    passed_id = not upload_id_marker
    for entry in ordered:
        if not entry.key.startswith(prefix):
            continue
        if entry.key < key_marker:
            continue
        if entry.key == key_marker and key_marker:
            if not upload_id_marker:
                continue
            if not passed_id:
                passed_id = entry.upload_id == upload_id_marker
                continue
        if delimiter:
            cut = entry.key.find(delimiter, len(prefix))
            if cut >= 0:
                common = entry.key[: cut + len(delimiter)]
                if common in seen_prefixes or common == key_marker:
                    continue
                if len(page.uploads) + len(page.common_prefixes) >= max_uploads:
                    page.is_truncated = True
                    return page
                seen_prefixes.add(common)
                page.common_prefixes.append(common)
                page.next_key_marker, page.next_upload_id_marker = common, ""
                continue
        if len(page.uploads) + len(page.common_prefixes) >= max_uploads:
            page.is_truncated = True
            return page
        page.uploads.append(entry)
        page.next_key_marker, page.next_upload_id_marker = entry.key, entry.upload_id
    return page
