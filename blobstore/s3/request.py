"""The plain view of an HTTP request that the S3 pieces work on.

The HTTP layer builds one :class:`S3Request` from the ASGI scope: the method, the path and
query *exactly as sent* (still percent-encoded: SigV4 and key parsing both need the raw
form), and the headers as (name, value) pairs in arrival order, repeated names allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from blobstore.s3.errors import InvalidArgument

MAX_QUERY_PARAMS = 200
"""S3 requests use a handful of parameters; hundreds mean abuse."""


@dataclass(frozen=True, slots=True)
class S3Request:
    method: str
    raw_path: str
    """Path as sent, percent-encoded, without the query (``/bucket/my%20key``)."""
    raw_query: str = ""
    """Query as sent, without the ``?``."""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, method: str, target: str, headers: Iterable[tuple[str, str]] = ()
              ) -> S3Request:
        """From a request target (``/path?query``) and headers."""
        path, _, query = target.partition("?")
        return cls(method.upper(), path or "/", query, tuple(headers))

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive); repeated ones joined by ','."""
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ",".join(values) if values else None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def query_pairs(self) -> list[tuple[str, str]]:
        """Decoded (name, value) pairs in order; a bare ``name`` has value ``""``."""
        return [(n.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
                for n, v in self.query_pairs_bytes()]

    def query_pairs_bytes(self) -> list[tuple[bytes, bytes]]:
        if not self.raw_query:
            return []
        parts = [p for p in self.raw_query.split("&") if p]
        if len(parts) > MAX_QUERY_PARAMS:
            raise InvalidArgument(f"more than {MAX_QUERY_PARAMS} query parameters")
        out = []
        for part in parts:
            name, _, value = part.partition("=")
            out.append((unquote_to_bytes(name), unquote_to_bytes(value)))
        return out

    def query(self) -> dict[str, str]:
        """Decoded query as a dict (first value of a repeated name wins)."""
        out: dict[str, str] = {}
        for name, value in self.query_pairs():
            out.setdefault(name, value)
        return out
