"""Table keys: tuples of atoms, encoded to bytes that sort like the tuples.

A key is a tuple of atoms (``str``, ``bytes`` or ``int``). A schema splits it into a
*partition key* (the leading atoms: what replication and the Merkle tree's first level
hash) and a *sort key* (the rest: ordered inside a partition, for range scans).

The encoding is order-preserving, in the spirit of FoundationDB's tuple layer: comparing
two encodings byte-wise gives the same answer as comparing the tuples atom by atom (for
atoms of the same type). Each atom is a type byte then a body:

* ``bytes``: ``0x01``, the bytes with ``00`` escaped as ``00 FF``, then ``00``;
* ``str``: ``0x02``, its UTF-8 escaped the same way, then ``00``;
* ``int``: ``0x03``, then 8 bytes big-endian of ``value + 2**63`` (signed 64-bit range).

Invariant: ``decode_key(encode_key(k)) == k`` and distinct keys give distinct bytes; a
prefix of atoms encodes to a byte prefix (so a partition is one contiguous range).
Decoding bytes from a peer is bounded and every failure is a :class:`CodecError`.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Union

from meshcloud.errors import CodecError

Atom = Union[str, bytes, int]  # noqa: UP007 (used at runtime in isinstance checks)
Key = tuple[Atom, ...]

MAX_KEY_BYTES = 500
"""Longest encoded key. LMDB keys are at most 511 bytes and the GC and expiry trees put
an 8-byte timestamp in front. (S3 allows 1024-byte object keys: the object index will
need to fold longer ones, e.g. a prefix plus a hash.)"""

_BYTES, _STR, _INT = 0x01, 0x02, 0x03
_INT_OFFSET = 1 << 63
_U64 = struct.Struct(">Q")


def _escape(data: bytes) -> bytes:
    return data.replace(b"\x00", b"\x00\xff")


def encode_atom(atom: Atom) -> bytes:
    # exact types: a bool (an int subclass) or a str subclass is not an atom
    if type(atom) is bytes:
        return b"\x01" + _escape(atom) + b"\x00"
    if type(atom) is str:
        return b"\x02" + _escape(atom.encode()) + b"\x00"
    if type(atom) is int:
        if not -_INT_OFFSET <= atom < _INT_OFFSET:
            raise CodecError(f"key integer {atom} outside the signed 64-bit range")
        return b"\x03" + _U64.pack(atom + _INT_OFFSET)
    raise CodecError(f"a key atom is str, bytes or int, not {type(atom).__name__}")


def encode_key(key: Key) -> bytes:
    out = b"".join(encode_atom(atom) for atom in key)
    if len(out) > MAX_KEY_BYTES:
        raise CodecError(f"key of {len(out)} bytes exceeds the {MAX_KEY_BYTES} byte limit")
    return out


def encode_prefix(atoms: Key, last_prefix: str | bytes | None = None) -> bytes:
    """Bytes that every key starting with ``atoms`` (and whose next atom starts with
    ``last_prefix``, if given) begins with."""
    out = b"".join(encode_atom(atom) for atom in atoms)
    if last_prefix is not None:
        if type(last_prefix) is str:
            out += b"\x02" + _escape(last_prefix.encode())
        elif type(last_prefix) is bytes:
            out += b"\x01" + _escape(last_prefix)
        else:
            raise CodecError("a scan prefix is str or bytes")
    return out


def decode_key(data: bytes) -> Key:
    if len(data) > MAX_KEY_BYTES:
        raise CodecError(f"key of {len(data)} bytes exceeds the {MAX_KEY_BYTES} byte limit")
    atoms: list[Atom] = []
    i, n = 0, len(data)
    while i < n:
        kind = data[i]
        i += 1
        if kind == _INT:
            if i + 8 > n:
                raise CodecError("truncated integer in key")
            atoms.append(_U64.unpack_from(data, i)[0] - _INT_OFFSET)
            i += 8
        elif kind in (_BYTES, _STR):
            body = bytearray()
            while True:
                j = data.find(b"\x00", i)
                if j < 0:
                    raise CodecError("unterminated atom in key")
                body += data[i:j]
                if j + 1 < n and data[j + 1] == 0xFF:
                    body += b"\x00"
                    i = j + 2
                    continue
                i = j + 1
                break
            if kind == _BYTES:
                atoms.append(bytes(body))
            else:
                try:
                    atoms.append(body.decode())
                except UnicodeDecodeError:
                    raise CodecError("key text is not valid UTF-8") from None
        else:
            raise CodecError(f"unknown key atom type {kind}")
    return tuple(atoms)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``
    (None: no upper bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


PARTITION_BITS = 8
"""256 partitions: the first level of every Merkle tree and the unit of sharding. Fixed
forever: changing it changes every stored Merkle path (Garage uses 2**8 too)."""

PARTITIONS = 1 << PARTITION_BITS


def partition_of(partition_key: bytes) -> int:
    """The partition (0..255) of an encoded partition key: first byte of its BLAKE2b."""
    return hashlib.blake2b(partition_key, digest_size=8).digest()[0]
