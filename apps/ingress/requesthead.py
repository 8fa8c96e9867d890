"""A plain HTTP/1.1 request head, parsed without h11: the ingress's common case. Sans-IO.

Parsing a request with h11 costs the ingress more than everything else it does for a
proxied request (its events, state machine and header validation: ≈ 35 µs, and 17 µs
more to build the upstream request as an h11 event). Most requests are plain: a
request line in origin form, ``HTTP/1.1``, one ``Host``, visible ASCII, no body or one
of a declared length. :func:`plain_request` parses exactly those, strictly, and
*declines* (None) everything else — another version, ``Transfer-Encoding``, several or
malformed ``Content-Length``, ``Expect``, ``Upgrade``, ``Connection: close``, a field
h11 might read differently (obs-fold, bare LF, control or non-ASCII bytes, space
before the colon), a head not complete yet or over the size limit — so that h11 parses
those as before, with all its refusals (request smuggling gets h11's 400). What it
accepts, h11 accepts with the same method, target, headers and body length (a property
test holds it to that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 64 * 1024
"""Bytes of a head (request line and fields) parsed here; a longer one goes to h11."""
MAX_BODY = 64 * 1024
"""A declared body longer than this goes to h11 (it is streamed, not kept whole)."""

_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*"
                    rb"([\x21-\x7e](?:[\x20\t\x21-\x7e]*[\x21-\x7e])?)?[ \t]*")
_DECLINED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"})
"""Fields that make a request not plain: h11 frames, answers or refuses those."""


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """A request head h11 would accept, as h11 reports it (``method``, ``target``,
    ``headers`` with lower-case names, ``http_version``) and where its body lies."""

    method: bytes
    target: bytes
    headers: Headers
    head_size: int
    """Bytes of the head with its blank line: the body starts there."""
    length: int
    """The body's declared length (0 without ``Content-Length``)."""
    http_version: bytes = b"1.1"

    @property
    def size(self) -> int:
        """Bytes of the whole request, head and body."""
        return self.head_size + self.length


def plain_request(data: bytes) -> PlainRequest | None:
    """The request at the start of ``data`` if its head is complete in ``data`` and
    plain (see the module's text), else None: h11 takes it then."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return None
    headers: Headers = []
    hosts = 0
    length = -1
    field = _FIELD.fullmatch
    for line in lines[1:]:
        match = field(line)
        if match is None:
            return None
        name = match.group(1).lower()
        value = match.group(2) or b""
        if name in _DECLINED:
            return None
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 12:
                return None
            length = int(value)
        elif name == b"connection" and any(
                token.strip().lower() not in (b"keep-alive", b"")
                for token in value.split(b",")):
            return None
        headers.append((name, value))
    if hosts != 1 or length > MAX_BODY:
        return None
    return PlainRequest(first.group(1), first.group(2), headers, end + 4, max(length, 0))
