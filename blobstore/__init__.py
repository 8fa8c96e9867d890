"""The blobstore: objects as encrypted, erasure-coded shards spread over distinct nodes.

An object is cut into chunks (:mod:`.chunker`), each chunk sealed with the object's own key
(:mod:`.crypto`), coded into k data + m parity shards (:mod:`.erasure`), each shard
prefixed by a small header and named by the hash of its bytes (:mod:`.shards`), and each
shard stored on a different node's LMDB (:mod:`.shardstore`). The object's
:class:`~blobstore.manifest.Manifest` (size, ETag, key, where every shard lives) is what
the object index keeps. Reads fetch any k shards per chunk (:mod:`.reader`); repair,
scrub and GC plan their work from manifests and shard listings (:mod:`.repair`,
:mod:`.scrub`, :mod:`.gc`). :mod:`blobstore.s3` holds the S3 protocol pieces.

This ``__init__`` imports nothing, so importing a sans-IO core never pulls in trio.
"""
