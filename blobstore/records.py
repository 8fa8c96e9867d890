"""The blobstore's metadata: buckets, access keys and the object index, as CRDT tables.

Model: Garage's ``bucket_table``, ``key_table``, ``object_table`` and ``block_ref_table``,
on :mod:`meshcloud.state`. Every record is a registered message dataclass (tags 620-639),
so a stored row carries its version and evolves by the codec's rules.

=========  ==============================  ==================  =====================
table      key (partition | sort)          value               replication
=========  ==============================  ==================  =====================
buckets    name                            BucketRecord        full copy
s3keys     access key id                   AccessKeyRecord     full copy
objects    bucket id | folded object key   ObjectRecord        Sharded(3, 2, 2)
uploads    bucket id | upload id           UploadRecord        Sharded(3, 2, 2)
parts      bucket id | upload id, part     PartRecord          Sharded(3, 2, 2)
blobrefs   object id                       BlobRef             Sharded(3, 2, 2)
=========  ==============================  ==================  =====================

The sharded tables are partitioned by bucket id, so one bucket's objects, uploads and
parts live on one replica set (3 nodes) and a listing is one range scan there. Their
writes and reads go through :mod:`blobstore.index` (quorum 2 of 3, read repair).

``blobrefs`` maps an object id (the id every shard header names) back to the record that
owns it, so a node's GC can ask, for a shard it stores, whether its object still exists
and still lists that shard on this node (:mod:`blobstore.maintenance`).

``ObjectRecord.generation`` is the first field on purpose: repair rewrites a record with
the *same* HLC stamp and writer and ``generation + 1``; canonical CBOR puts that integer
first among the bytes the register compares on a tie, so the repaired record beats the one
it repairs but never a newer write (a client's overwrite keeps winning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blobstore.manifest import ChunkRef, Manifest
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.state.replication import FullCopy, Sharded
from meshcloud.state.schema import TableSchema, record_codec

RECORDS = TagBlock.BLOBSTORE + 20

INDEX_REPLICATION = Sharded(rf=3, read_quorum=2, write_quorum=2)
"""Every read quorum meets every write quorum (2 + 2 > 3), and one holder may be down."""

INLINE_MAX = 4096
"""Objects up to this many bytes live inside their index record (no shards)."""

MAX_RECORD_BYTES = 4 * 1024 * 1024
"""An object record holds its manifest: ~470 bytes per 4 MiB chunk with 4+2, so 4 MiB
covers objects of ~35 GiB (a single PUT is at most 5 GiB)."""


class Permission:
    READ = "read"
    WRITE = "write"
    ALL = ("read", "write")


@message(RECORDS + 0, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class BucketRecord:
    bucket_id: bytes
    """16 bytes: the index partition key, derived from the name and the generation
    (:func:`blobstore.objects.bucket_id_for`), so nodes that create the same bucket at
    once agree on it; buckets made before version 2 have a random one. A bucket deleted
    and created again is a new generation with a new id, so rows of the old one can
    never reappear in it."""
    created_ms: int
    code: str = ""
    """Erasure code for new objects: "" (automatic: 4+2 from 6 nodes, else 3 copies),
    "k+m" (e.g. "4+2"), or "rN" (N plain copies)."""
    owner: str = ""
    """Access key that created it through S3 ("" when made with the CLI or API)."""
    generation: int = 0
    """How many times a bucket of this name was deleted before this one was made."""
    deleted: bool = False
    """The bucket is gone: the row stays (instead of a tombstone, which is collected) so
    that the next creation knows the generation to take."""


@message(RECORDS + 1, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class AccessKeyRecord:
    name: str
    secret: str = field(repr=False)
    created_ms: int
    buckets: dict[str, str] = field(default_factory=dict)
    """bucket name -> "read", "write" or "read,write"; "*" applies to every bucket."""
    create_buckets: bool = False
    """May create buckets through S3 (and then has read,write on them)."""
    creator: bytes = b""
    """Node id of the member whose API created it: the key dies if that node is revoked."""

    def allows(self, bucket: str, permission: str) -> bool:
        for name in (bucket, "*"):
            granted = self.buckets.get(name, "")
            if permission in granted.split(","):
                return True
        return False

    def can_see(self, bucket: str) -> bool:
        return bool(self.buckets.get(bucket) or self.buckets.get("*"))


@message(RECORDS + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRecord:
    generation: int = 0
    """Bumped by repair (see the module docstring). Keep it the first field."""
    key: str
    """The full S3 key (the table's sort key may be a folded form of it)."""
    manifest: Manifest
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    """User metadata (x-amz-meta-*, lowercase names without the prefix) and a few standard
    headers kept as given (cache-control, content-disposition, content-encoding...)."""
    modified_ms: int = 0
    inline: bytes | None = None
    """The bytes of a small object (at most ``INLINE_MAX``), kept in the record itself
    instead of in shards (Garage inlines objects under 3 KiB the same way): one quorum
    write per PUT, and the index's three copies are its redundancy."""

    @property
    def size(self) -> int:
        return len(self.inline) if self.inline is not None else self.manifest.size

    @property
    def etag(self) -> str:
        return self.manifest.etag


@message(RECORDS + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class UploadRecord:
    key: str
    object_id: bytes
    object_key: bytes = field(repr=False)
    scheme: int
    k: int
    m: int
    initiated_ms: int
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


@message(RECORDS + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class PartRecord:
    etag: str
    size: int
    modified_ms: int
    chunks: tuple[ChunkRef, ...]


@message(RECORDS + 5)
@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """Who owns the shards of an object id: an object row, or an upload (``upload_id``)."""

    bucket_id: bytes
    sort_key: bytes = b""
    """The object row's sort key (folded key), when the owner is an object."""
    upload_id: str = ""


def _schema(name: str, cls: type, partition: tuple[type, ...], sort: tuple[type, ...] = (),
            max_bytes: int = 64 * 1024) -> TableSchema:  # type: ignore[type-arg]
    encode, decode = record_codec(cls)
    return TableSchema(name, partition=partition, sort=sort, encode=encode, decode=decode,
                       max_value_bytes=max_bytes)


BUCKETS = _schema("buckets", BucketRecord, (str,))
S3KEYS = _schema("s3keys", AccessKeyRecord, (str,))
OBJECTS = _schema("objects", ObjectRecord, (bytes,), (bytes,), MAX_RECORD_BYTES)
UPLOADS = _schema("uploads", UploadRecord, (bytes,), (str,))
PARTS = _schema("parts", PartRecord, (bytes,), (str, int), MAX_RECORD_BYTES)
BLOBREFS = _schema("blobrefs", BlobRef, (bytes,))

FULL_COPY_TABLES = (BUCKETS, S3KEYS)
INDEX_TABLES = (OBJECTS, UPLOADS, PARTS, BLOBREFS)


def open_tables(state: object) -> None:
    """Open every blobstore table on a :class:`~meshcloud.state.driver.StateDriver` (or
    core): full copy for buckets and keys, the index tables sharded."""
    for schema in FULL_COPY_TABLES:
        state.open_table(schema, FullCopy())  # type: ignore[attr-defined]
    for schema in INDEX_TABLES:
        state.open_table(schema, INDEX_REPLICATION)  # type: ignore[attr-defined]
