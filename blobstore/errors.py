"""Blobstore errors: one class per way a put, a get or the shard store can fail.

They are :class:`~meshcloud.errors.MeshError`s with a stable ``code``. The S3 layer maps
the few a client can cause to S3 errors (:mod:`blobstore.s3.errors`); the rest are
reported as ``InternalError`` / ``ServiceUnavailable``.
"""

from __future__ import annotations

from meshcloud.errors import MeshError, NotFoundError


class BlobstoreError(MeshError):
    """Root of the blobstore's own errors."""

    code = "blobstore_error"


class IntegrityError(BlobstoreError):
    """Bytes that fail a check: wrong hash, bad shard header, AEAD open failure."""

    code = "integrity_error"


class ShardFormatError(IntegrityError):
    """A stored or received shard whose header cannot be parsed or does not add up."""

    code = "shard_format_error"


class NotEnoughShards(BlobstoreError):
    """Fewer than k good shards of a chunk could be found: the chunk cannot be decoded."""

    code = "not_enough_shards"


class NotEnoughHolders(BlobstoreError):
    """Too few distinct live nodes to place a chunk's shards."""

    code = "not_enough_holders"


class ShardNotFound(BlobstoreError, NotFoundError):
    """The node does not hold this shard."""

    code = "shard_not_found"


class StoreFullError(BlobstoreError):
    """The shard store cannot take more bytes (map at its limit or disk full).

    Raised only after the write transaction was aborted: nothing was half-written.
    """

    code = "store_full"


class WriteFailed(BlobstoreError):
    """A put could not store enough shards of some chunk; the object was not written."""

    code = "write_failed"


class IndexUnavailable(BlobstoreError):
    """Too few replicas of an index partition answered to reach the quorum."""

    code = "index_unavailable"
