"""ASGI plumbing for the S3 app: requests in, bodies streamed, replies out.

Memory: a request body is never gathered whole unless it is an XML document (at most
:data:`~blobstore.s3.xml.MAX_XML_BODY`); an upload flows ASGI message by message through
the aws-chunked decoder and the payload checks into the put pipeline, which holds at
most a couple of chunks. hypercorn stops reading the socket while its small queue of
body messages is full, so a fast client cannot fill our memory either. The payload's
hashes (SHA-256, Content-MD5, checksums) are computed a megabyte at a time in a bulk
worker thread, not on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

from blobstore.s3.chunked import ChunkedDecoder
from blobstore.s3.errors import IncompleteBody, MalformedXML
from blobstore.s3.payload import PayloadCheck
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import Authorization
from blobstore.s3.xml import MAX_XML_BODY
from meshcloud.bulk import released, run_bulk

DRAIN_TIMEOUT = 1.0
"""Seconds spent reading the rest of a refused request's body before answering anyway."""

Receive = Any
Send = Any


def request_of(scope: dict[str, Any]) -> S3Request:
    """The request exactly as received: raw path and query, headers in order."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = raw_path.decode("latin-1").partition("?")[0]
    query = scope.get("query_string", b"").decode("latin-1")
    headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in scope.get("headers", ()))
    return S3Request(scope["method"].upper(), path or "/", query, headers)


class Body:
    """The request body as verified payload bytes (see the module docstring)."""

    def __init__(self, receive: Receive, request: S3Request, auth: Authorization | None,
                 check: PayloadCheck) -> None:
        self.receive = receive
        self.check = check
        mode = auth.payload_mode if auth is not None else None
        self.decoder = None
        if mode is not None and mode.chunked:
            self.decoder = ChunkedDecoder(mode=mode, decoded_length=check.length, auth=auth,
                                          trailer_names=check.trailer_names)
        self.consumed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.consumed = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise IncompleteBody("the client closed the connection before the body "
                                     "was complete")
            data = message.get("body", b"")
            if data:
                pieces = self.decoder.feed(data) if self.decoder is not None else [data]
                for piece in pieces:
                    self.check.feed(piece)
                    if self.check.hash_due:  # a megabyte or more: off the event loop
                        await run_bulk(released(self.check.hash), self.check.take_pending())
                    yield piece
            if not message.get("more_body", False):
                break
        trailers = self.decoder.finish() if self.decoder is not None else None
        self.check.finish(trailers)

    async def read_all(self, limit: int = MAX_XML_BODY) -> bytes:
        """The whole (small) body; MalformedXML past ``limit``."""
        parts: list[bytes] = []
        size = 0
        async for piece in self:
            size += len(piece)
            if size > limit:
                raise MalformedXML(f"the request body is larger than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterable[bytes] = b""
    length: int | None = None
    """Content-Length of a streamed body."""


async def send_reply(send: Send, reply: Reply, *, head: bool = False) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if reply.length is not None:
        headers.append((b"content-length", str(reply.length).encode()))
    elif isinstance(reply.body, bytes):
        headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if head or reply.status in (204, 304):
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if isinstance(reply.body, bytes):
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        return
    async for piece in reply.body:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain(receive: Receive, limit: int = 1 << 20) -> None:
    """Read and drop what is left of a refused request's body (up to ``limit`` bytes), so
    the connection can carry the error reply and the next request."""
    seen = 0
    with trio.move_on_after(DRAIN_TIMEOUT):  # a client that declared more than it sends
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
