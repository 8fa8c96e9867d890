"""The HTTP ingress: every node answers HTTP/1.1 and routes by Host header and path prefix.

``meshcloud run NAME --domain shop.home[/prefix] --publish http`` routes requests for
``shop.home`` (under ``/prefix``, longest prefix first) to the workload's first endpoint;
a request no workload route matches goes to the host lookups of in-process services
(static sites, :mod:`apps.ingress.targets`), else gets a 404 page. Each proxied request
gets its own upstream connection (a local replica by TCP or a ``/meshcloud/forward/1``
stream, power of two choices) with ``Connection: close`` upstream; the client side keeps
its connection alive. Bodies stream both ways chunk by chunk. An idempotent request whose
replica fails before any response byte is retried on another replica (its body, up to
``RETRY_BODY``, is kept for that); a replica that does not answer within the route's
timeout gets the client a 504; no live replica: 503 with ``Retry-After``. A websocket
``Upgrade`` answered with 101 becomes a raw byte splice both ways.

Hostile clients: headers over 64 KiB get 431, headers not complete within the header
timeout get 408 and the connection closed (slowloris), connections beyond the limit get a
503 at once; Host tricks are refused (:func:`apps.ingress.httpcore.check_request`).

Built on h11 (sans-IO HTTP/1.1, already under hypercorn): a proxy needs the raw event
stream (its own framing, streaming, half-close) that an ASGI server hides.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import trio

from apps.ingress.forward import _ERRORS as FORWARD_ERRORS
from apps.ingress.httpcore import (
    IDEMPOTENT,
    BadRequest,
    Checked,
    HttpRoute,
    check_request,
    downstream_headers,
    host_of,
    not_found_page,
    upstream_headers,
)
from apps.ingress.targets import HostRequest
from meshcloud.transport.base import Stream

if TYPE_CHECKING:
    from apps.ingress.service import IngressService

__all__ = ["HttpLimits", "downstream_headers", "host_of", "serve_http", "upstream_headers"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_HEADERS = 64 * 1024
RETRY_AFTER = b"2"
RETRY_BODY = 64 * 1024
"""Request bodies up to this size are kept so that an idempotent request can be retried."""

Headers = list[tuple[bytes, bytes]]
_IO_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_timeout: float = 10.0
    """Seconds from a request's first byte to the end of its headers (slowloris)."""
    idle_timeout: float = 60.0
    """Seconds a kept-alive client connection may wait between requests."""
    max_clients: int = 1024
    """Client connections served at once; beyond, a 503 at once."""


# --- byte streams -----------------------------------------------------------------------------


class StreamBytes:
    """A forward stream seen as a byte stream (``receive_some`` / ``send_all``)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self.stream.receive()
        except trio.EndOfChannel:
            return b""

    async def send_all(self, data: bytes) -> None:
        await self.stream.send(bytes(data))

    async def send_eof(self) -> None:
        await self.stream.close()

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.abort("closed")


class Counted:
    """An upstream byte stream that counts what it received (retry only before a byte)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(CHUNK)
        self.received += len(data)
        return bytes(data)

    async def send_all(self, data: bytes) -> None:
        await self.inner.send_all(data)


async def _next_event(conn: h11.Connection, sock: Any) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await sock.receive_some(CHUNK)
        conn.receive_data(bytes(data) if data else b"")


async def _send(conn: h11.Connection, sock: Any, event: Any) -> None:
    data = conn.send(event)
    if data:
        await sock.send_all(data)


async def _simple(conn: h11.Connection, sock: Any, status: int, text: str | bytes,
                  extra: Headers | None = None, html: bool = False) -> None:
    body = text.encode() if isinstance(text, str) else text
    kind = b"text/html; charset=utf-8" if html else b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await _send(conn, sock, h11.Response(status_code=status, headers=headers))
    if conn.our_state is h11.SEND_BODY:
        await _send(conn, sock, h11.Data(data=body))
    await _send(conn, sock, h11.EndOfMessage())


async def _drain_request(conn: h11.Connection, sock: Any) -> None:
    while not isinstance(await _next_event(conn, sock),
                         h11.EndOfMessage | h11.ConnectionClosed):
        pass


async def _read_body(conn: h11.Connection, sock: Any, limit: int) -> tuple[list[bytes], bool]:
    """Up to ``limit`` bytes of the request body: (chunks, complete)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        event = await _next_event(conn, sock)
        if isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
            size += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return chunks, True
        else:
            raise trio.BrokenResourceError("client went away mid-request")
    return chunks, False


async def _pump(src: Any, dst: Any) -> None:
    while data := await src.receive_some(CHUNK):
        await dst.send_all(data)
    await dst.send_eof()


# --- the driver -------------------------------------------------------------------------------


async def serve_http(client: trio.SocketStream, ingress: IngressService) -> None:
    """Serve one client connection: requests in turn, each routed and answered."""
    limits: HttpLimits = ingress.http_limits
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    try:
        peer = client.socket.getpeername()
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
    except OSError:
        client_ip = "unknown"
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(limits.idle_timeout) as idle:
                    data = await client.receive_some(CHUNK)
                if idle.cancelled_caught:
                    break
                conn.receive_data(bytes(data))
                with trio.move_on_after(limits.header_timeout) as slow:
                    event = await _next_event(conn, client)
                if slow.cancelled_caught:
                    ingress.http_timeouts += 1
                    if conn.our_state is h11.IDLE:
                        await _simple(conn, client, 408, "request headers took too long\n",
                                      [(b"connection", b"close")])
                    break
            if not isinstance(event, h11.Request):
                break
            await _one_request(conn, client, event, client_ip, ingress)
            if conn.our_state is h11.SWITCHED_PROTOCOL:
                break
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        ingress.http_refused += 1
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await _simple(conn, client, exc.error_status_hint, f"bad request: {exc}\n")
            except (h11.LocalProtocolError, *_IO_ERRORS):
                pass
    except (*_IO_ERRORS, h11.LocalProtocolError) as exc:
        log.debug("http client %s: %r", client_ip, exc)
    finally:
        with trio.move_on_after(1):
            await client.aclose()


async def _one_request(conn: h11.Connection, client: Any, request: h11.Request,
                       client_ip: str, ingress: IngressService) -> None:
    method = request.method.decode("ascii", "replace").upper()
    target = request.target.decode("latin-1")
    size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
    try:
        if size > MAX_HEADERS:  # h11 bounds only what arrives in pieces
            raise BadRequest(431, "request headers too large")
        checked = check_request(method, target, list(request.headers))
    except BadRequest as exc:
        ingress.http_refused += 1
        await _simple(conn, client, exc.status, exc.reason + "\n",
                      [(b"connection", b"close")])
        return
    route = ingress.http_route(checked.host, checked.path)
    if route is None:
        handler = ingress.host_handler(checked.host, checked.path)
        body_limit = int(getattr(handler, "max_body", 0))
        body = b""
        if body_limit:
            chunks, complete = await _read_body(conn, client, body_limit)
            if not complete:
                await _simple(conn, client, 413, "request body too large\n",
                              [(b"connection", b"close")])
                return
            body = b"".join(chunks)
        else:
            await _drain_request(conn, client)
        if handler is None:
            ingress.http_not_found += 1
            await _simple(conn, client, 404, not_found_page(checked.host), html=True)
            return
        await _serve_handler(conn, client, handler, HostRequest(
            method=method, target=target,
            headers=[(n.lower(), v) for n, v in request.headers], client_ip=client_ip,
            host=checked.host, body=body))
        return
    await _proxy_route(conn, client, request, method, checked, route, client_ip, ingress)


async def _serve_handler(conn: h11.Connection, client: Any, handler: Any,
                         request: HostRequest) -> None:
    try:
        response = await handler.respond(request)
    except Exception:
        log.exception("host handler for %s failed", request.host)
        await _simple(conn, client, 500, "internal error\n")
        return
    body = response.body
    if isinstance(body, bytes | bytearray | memoryview):
        # one write for a whole small response: head, body and end in one segment
        head = h11.Response(status_code=response.status, headers=list(response.headers))
        data = conn.send(head) or b""
        if request.method != "HEAD" and conn.our_state is h11.SEND_BODY and body:
            data += conn.send(h11.Data(data=bytes(body))) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await client.send_all(data)
        return
    try:
        await _send(conn, client, h11.Response(status_code=response.status,
                                               headers=list(response.headers)))
        if request.method != "HEAD" and conn.our_state is h11.SEND_BODY:
            if isinstance(body, bytes | bytearray | memoryview):
                if body:
                    await _send(conn, client, h11.Data(data=bytes(body)))
            else:
                async for chunk in body:
                    if chunk:
                        await _send(conn, client, h11.Data(data=chunk))
        await _send(conn, client, h11.EndOfMessage())
    finally:
        if not isinstance(body, bytes | bytearray | memoryview):
            closer = getattr(body, "aclose", None)
            if closer is not None:
                with trio.move_on_after(1):
                    await closer()


class _Retry(Exception):
    """The replica failed before any response byte: another may take the request."""


async def _proxy_route(conn: h11.Connection, client: Any, request: h11.Request, method: str,
                       checked: Checked, route: HttpRoute, client_ip: str,
                       ingress: IngressService) -> None:
    idempotent = method in IDEMPOTENT
    body, complete = await _read_body(conn, client, RETRY_BODY if idempotent else 0)
    retryable = idempotent and complete
    headers = upstream_headers(request.headers, client_ip, upgrade=checked.upgrade)
    head = h11.Request(method=request.method, target=request.target, headers=headers)
    tried: set[Any] = set()
    while True:
        connected = await ingress.connect(route.workload, route.endpoint, exclude=tried)
        if connected is None:
            ingress.failed += 1
            if not complete:
                await _drain_request(conn, client)
            await _simple(conn, client, 503, f"{route.workload}: no live replica, try "
                          "again\n", [(b"retry-after", RETRY_AFTER)])
            return
        target, raw = connected
        tried.add(target.key)
        upstream = raw if isinstance(raw, trio.SocketStream) else StreamBytes(raw)
        ingress.open[target.key] += 1
        ingress.forwarded += 1
        try:
            await _exchange(conn, client, head, body, complete, upstream, route, checked,
                            retryable)
            return
        except _Retry as exc:
            ingress.retries += 1
            log.info("%s replica %d failed before answering (%s): retrying",
                     route.workload, target.index, exc)
        finally:
            ingress.open[target.key] -= 1
            with trio.move_on_after(1):
                await upstream.aclose()


async def _exchange(conn: h11.Connection, client: Any, head: h11.Request, body: list[bytes],
                    complete: bool, raw_upstream: Any, route: HttpRoute, checked: Checked,
                    retryable: bool) -> None:
    upstream = Counted(raw_upstream)
    up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
    try:
        await _send(up, upstream, head)
        for chunk in body:
            await _send(up, upstream, h11.Data(data=chunk))
        if complete:
            await _send(up, upstream, h11.EndOfMessage())
    except (*_IO_ERRORS, *FORWARD_ERRORS) as exc:
        if retryable:
            raise _Retry(repr(exc)) from None
        await _answer_failure(conn, client, 502, "the replica went away\n", complete)
        return
    if not complete:  # stream the rest of the body
        try:
            while True:
                event = await _next_event(conn, client)
                if isinstance(event, h11.Data):
                    await _send(up, upstream, h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await _send(up, upstream, h11.EndOfMessage())
                    break
                else:
                    raise trio.BrokenResourceError("client went away mid-request")
        except FORWARD_ERRORS as exc:
            if conn.their_state is h11.SEND_BODY:
                raise trio.BrokenResourceError("upstream failed mid-request") from exc
    responded = False
    while True:  # the response, chunk by chunk, each read within the route's timeout
        with trio.move_on_after(route.timeout) as waited:
            try:
                event = await _next_event(up, upstream)
            except (h11.RemoteProtocolError, *FORWARD_ERRORS) as exc:
                event = exc
        if waited.cancelled_caught:
            if not responded:
                await _simple(conn, client, 504, f"{route.workload} did not answer within "
                              f"{route.timeout:g} s\n", [(b"connection", b"close")])
                return
            raise trio.BrokenResourceError("upstream stalled mid-response")
        if isinstance(event, Exception | h11.ConnectionClosed):
            if not responded:
                if upstream.received == 0 and retryable:
                    raise _Retry(repr(event))
                await _simple(conn, client, 502, "the replica closed without a response\n")
                return
            raise trio.BrokenResourceError("upstream ended mid-response")
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101 and checked.upgrade:
                await _switch(conn, client, up, upstream, raw_upstream, event)
                return
            continue
        if isinstance(event, h11.Response):
            responded = True
            await _send(conn, client, h11.Response(
                status_code=event.status_code, reason=event.reason,
                headers=downstream_headers(event.headers)))
        elif isinstance(event, h11.Data):
            if conn.our_state is h11.SEND_BODY:
                await _send(conn, client, h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await _send(conn, client, h11.EndOfMessage())
            return


async def _answer_failure(conn: h11.Connection, client: Any, status: int, text: str,
                          complete: bool) -> None:
    if not complete:
        await _drain_request(conn, client)
    await _simple(conn, client, status, text)


async def _switch(conn: h11.Connection, client: Any, up: h11.Connection, upstream: Counted,
                  raw_upstream: Any, response: h11.InformationalResponse) -> None:
    """A 101: tell the client, then carry bytes both ways until both sides end."""
    await _send(conn, client, h11.InformationalResponse(
        status_code=101, reason=response.reason,
        headers=downstream_headers(response.headers, upgrade=True)))
    from_client, _ = conn.trailing_data
    from_replica, _ = up.trailing_data
    if from_replica:
        await client.send_all(from_replica)
    if from_client:
        await raw_upstream.send_all(from_client)

    async def guard(src: Any, dst: Any, scope: trio.CancelScope) -> None:
        try:
            await _pump(src, dst)
        except (*_IO_ERRORS, *FORWARD_ERRORS):
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard, client, raw_upstream, nursery.cancel_scope)
        nursery.start_soon(guard, raw_upstream, client, nursery.cancel_scope)


async def aiter_bytes(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """An async iterator over ``chunks`` (for handlers that have their body in parts)."""
    for chunk in chunks:
        yield chunk
