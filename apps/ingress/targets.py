"""What the HTTP ingress can route a host to besides a workload's endpoint: an in-process
handler, such as a static site served from a bucket (``apps/sites``).

The seam between the ingress (which owns the client connection, HTTP/1.1 framing, the
routing table and hostile-input limits) and the services that answer requests in the
node itself. A service registers a :data:`HostLookup` with the ingress; for each request
whose host and path match no workload route, the ingress asks the lookups in turn and
hands the request to the first handler returned. Handlers see a parsed request with its
body already drained (they answer GET/HEAD-like requests) and return a response whose
body the ingress streams to the client; the ingress adds nothing but framing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HostRequest:
    """One request as the ingress received it (header names lower case)."""

    method: str
    target: str
    """The raw request target: path and query, still percent-encoded."""
    headers: Headers
    client_ip: str
    host: str
    """Lower case, without port or trailing dot."""
    body: bytes = b""
    """The request body, for a handler with a ``max_body`` attribute (bytes it accepts;
    a longer body is refused with 413); empty (drained) for the others."""


@dataclass(slots=True)
class HostResponse:
    """What a handler answers. ``body`` is bytes or an async iterator of chunks; for HEAD
    the ingress sends the headers only. Give ``content-length`` when known."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""


class HostHandler(Protocol):
    async def respond(self, request: HostRequest) -> HostResponse: ...


HostLookup = Callable[[str, str], HostHandler | None]
"""``(host, path) -> handler`` or None when this service does not serve that host."""
