"""256-bit identifiers, the XOR metric and bucket indices (Kademlia §2.1).

Node ids are BLAKE2b-256 of the node's Ed25519 public key
(:func:`meshcloud.identity.keys.key_id`); content keys (what provider records announce)
are BLAKE2b-256 of whatever names the content (:func:`content_key`). Both live in the
same 256-bit space, so "the k nodes closest to a key" means the same thing for both.

* ``distance(a, b) = a XOR b`` read as a big-endian unsigned integer. It is a metric:
  ``d(a, a) = 0``, symmetric, and obeys the triangle inequality; for a given ``a`` and a
  distance there is exactly one ``b`` (unidirectional), which is why lookups for the same
  key converge on the same nodes.
* ``bucket_index(local, other)`` is the position of the highest bit in which they differ
  (255 for the far half of the space, 0 for the single nearest sibling): the k-bucket
  ``i`` of a node holds contacts at distance in ``[2**i, 2**(i+1))``.

Ids are ``bytes`` at every boundary; the hot paths (routing table, lookups) carry the
integer form alongside so a distance is one XOR.
"""

from __future__ import annotations

import hashlib
import random

ID_BYTES = 32
ID_BITS = ID_BYTES * 8


def id_to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def int_to_id(value: int) -> bytes:
    return value.to_bytes(ID_BYTES, "big")


def is_id(value: object) -> bool:
    """True for a well-formed id: exactly 32 bytes."""
    return type(value) is bytes and len(value) == ID_BYTES


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance between two ids."""
    return id_to_int(a) ^ id_to_int(b)


def bucket_index(local: bytes, other: bytes) -> int:
    """The k-bucket of ``local`` that ``other`` falls in: 0..255. Equal ids have none."""
    d = distance(local, other)
    if d == 0:
        raise ValueError("an id has no bucket for itself")
    return d.bit_length() - 1


def common_prefix_length(a: bytes, b: bytes) -> int:
    """How many leading bits ``a`` and ``b`` share (256 when equal)."""
    return ID_BITS - distance(a, b).bit_length()


def random_id_in_bucket(local: bytes, index: int, rng: random.Random) -> bytes:
    """A uniformly random id that falls in ``local``'s bucket ``index`` (for refreshes)."""
    if not 0 <= index < ID_BITS:
        raise ValueError(f"bucket index {index} outside 0..{ID_BITS - 1}")
    low = rng.getrandbits(index) if index else 0
    return int_to_id(id_to_int(local) ^ ((1 << index) | low))


def random_id(rng: random.Random) -> bytes:
    return int_to_id(rng.getrandbits(ID_BITS))


def content_key(name: bytes) -> bytes:
    """The DHT key for a piece of content or a service name (BLAKE2b-256)."""
    return hashlib.blake2b(name, digest_size=ID_BYTES, person=b"meshcloud-dhtkey").digest()
