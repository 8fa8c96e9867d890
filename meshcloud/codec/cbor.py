"""Bounded CBOR encoding and decoding.

Every byte string that reaches :func:`decode` may come from a hostile peer, so decoding is
bounded (input size, nesting depth, integer size) and *every* failure becomes one
:class:`~meshcloud.errors.CodecError`. Decoded values are restricted to the plain data
model the wire uses: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``
and ``dict`` with ``str``/``int``/``bytes`` keys. CBOR semantic tags (dates, sets, regexes,
decimals...) are refused: no message of ours uses them, and each is attack surface.

:func:`encode_canonical` gives deterministic bytes (RFC 8949 §4.2.1 core deterministic
encoding) for anything that is signed or hashed.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from meshcloud.errors import CodecError

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Default decode limit (16 MiB): above a blobstore shard write (4 MiB chunk) with headroom."""

MAX_DEPTH = 32
"""Nesting limit: our deepest message nests 5 levels; 32 leaves room and stops stack abuse."""

MAX_INT_BITS = 256
"""Integers above 256 bits have no use here (ids are bytes) and are refused."""

_PLAIN_SCALARS = (str, bytes, bool, float, type(None))
_KEY_TYPES = (str, int, bytes)


def encode(value: Any) -> bytes:
    """Encode plain data to CBOR. Raises CodecError for values outside the data model."""
    try:
        return cbor2.dumps(value)
    except Exception as exc:  # cbor2 raises CBOREncodeError, TypeError, ValueError...
        raise CodecError(f"cannot encode {type(value).__name__}: {exc}") from None


def encode_canonical(value: Any) -> bytes:
    """Deterministic CBOR (sorted map keys, shortest forms): use for signed or hashed data."""
    try:
        return cbor2.dumps(value, canonical=True)
    except Exception as exc:
        raise CodecError(f"cannot encode {type(value).__name__}: {exc}") from None


def decode(data: bytes | bytearray | memoryview, *, max_size: int = MAX_MESSAGE_SIZE) -> Any:
    """Decode exactly one CBOR item from ``data``; anything wrong raises CodecError."""
    if len(data) > max_size:
        raise CodecError(f"message of {len(data)} bytes exceeds the {max_size} byte limit")
    if not data:
        raise CodecError("empty message")
    buffer = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(buffer).decode()
    except Exception as exc:  # cbor2 raises CBORDecodeError, ValueError, OverflowError...
        raise CodecError(f"malformed CBOR: {_short(exc)}") from None
    if buffer.tell() != len(data):
        raise CodecError(f"malformed CBOR: {len(data) - buffer.tell()} bytes after the item")
    _check_plain(value, 0)
    return value


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _check_plain(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CodecError(f"message nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is int:
        if value.bit_length() > MAX_INT_BITS:
            raise CodecError(f"integer wider than {MAX_INT_BITS} bits")
        return
    if kind in _PLAIN_SCALARS:
        return
    if kind is list:
        for item in value:
            _check_plain(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _KEY_TYPES:
                raise CodecError(f"map key of type {type(key).__name__} is not allowed")
            if type(key) is int and key.bit_length() > 64:
                raise CodecError("map key integer wider than 64 bits")
            _check_plain(item, depth + 1)
        return
    raise CodecError(f"CBOR item of type {kind.__name__} is not allowed on the wire")
