"""Object keys as index sort keys: S3's 1,024-byte keys under the state's 500-byte limit.

The object index is a table keyed by (bucket id, sort key), and table keys are at most
500 encoded bytes (:data:`meshcloud.state.keys.MAX_KEY_BYTES`). S3 keys may be 1,024 bytes
of UTF-8. So a key is *folded*:

* a key of at most :data:`FOLD_AT` (384) UTF-8 bytes is its own sort key (its bytes);
* a longer key becomes its first 384 bytes followed by a 16-byte BLAKE2b of the whole key
  (400 bytes: distinct from every short key, which is at most 384).

The record keeps the full key. Byte order of sort keys equals S3's order (UTF-8 byte
order) except among long keys sharing their first 384 bytes, which are ordered by hash;
those form one contiguous run in the table, so :func:`unfold_sorted` reorders each run by
the full key. Proof sketch: truncation is monotone, a short key that is a prefix of a long
one sorts before it in both orders, and keys differing within the first 384 bytes compare
the same way folded or not.

A listing that resumes at key ``start`` begins its table scan at :func:`scan_start`
(the first 384 bytes of ``start``): every key >= ``start`` has a sort key >= that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

FOLD_AT = 384
"""Longest key stored as itself. 384 + 16 hash bytes + a 16-byte bucket id and the atom
framing (NUL bytes in the hash are escaped) stays under 500 bytes."""

HASH_SIZE = 16

T = TypeVar("T")


def sort_key(key: str) -> bytes:
    data = key.encode("utf-8")
    if len(data) <= FOLD_AT:
        return data
    return data[:FOLD_AT] + hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


def is_folded(sk: bytes) -> bool:
    return len(sk) > FOLD_AT


def scan_start(key: str) -> bytes:
    """Where a scan for keys >= ``key`` must begin."""
    return key.encode("utf-8")[:FOLD_AT]


def fold_group(sk: bytes) -> bytes | None:
    """The shared prefix of a folded sort key's run, None for a short key."""
    return sk[:FOLD_AT] if is_folded(sk) else None


def unfold_sorted(rows: Iterable[tuple[bytes, T]], full_key: Callable[[T], str]
                  ) -> list[tuple[bytes, T]]:
    """Rows in table order -> the same rows in S3 key order (runs of folded keys with one
    prefix sorted by their full key). ``full_key`` gives a row's full key."""
    out: list[tuple[bytes, T]] = []
    run: list[tuple[bytes, T]] = []
    run_prefix: bytes | None = None
    for sk, value in rows:
        prefix = fold_group(sk)
        if run and prefix != run_prefix:
            out.extend(sorted(run, key=lambda r: full_key(r[1]).encode("utf-8")))
            run = []
        if prefix is None:
            out.append((sk, value))
        else:
            run.append((sk, value))
        run_prefix = prefix
    out.extend(sorted(run, key=lambda r: full_key(r[1]).encode("utf-8")))
    return out
