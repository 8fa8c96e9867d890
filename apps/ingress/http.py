"""The HTTP ingress: every node answers HTTP/1.1 and routes by Host header and path prefix.

``meshcloud run NAME --domain shop.home[/prefix] --publish http`` routes requests for
``shop.home`` (under ``/prefix``, longest prefix first) to the workload's first endpoint;
a request no workload route matches goes to the host lookups of in-process services
(static sites, :mod:`apps.ingress.targets`), else gets a 404 page. A proxied request goes
to a replica (power of two choices) on a kept-alive upstream connection
(:mod:`apps.ingress.pool`) or a new one (a local replica by TCP, else a
``/meshcloud/forward/1`` stream); the client side keeps its connection alive. Bodies
stream both ways chunk by chunk. An idempotent request whose replica fails before any
response byte reached the client is retried on another replica (its body, up to
``RETRY_BODY``, is kept for that, and so is a response of at most that declared length,
until it is complete); a replica that does not answer within the route's
timeout gets the client a 504; no live replica: 503 with ``Retry-After``. A websocket
``Upgrade`` answered with 101 becomes a raw byte splice both ways.

The common case skips h11 altogether: a plain request to a route
(:func:`~apps.ingress.requesthead.plain_request`; anything else h11 parses from the
same bytes) is proxied by :func:`_plain_proxy`; for it and for a whole request h11
parsed (:func:`_fast_exchange`), the request is written upstream directly, and a plain
response (a final status, one ``Content-Length``:
:func:`~apps.ingress.httpcore.plain_response`) goes to the client with its hop-by-hop
headers dropped, in one write; any other response is handed to h11
with the bytes read so far. With ``MESHCLOUD_HTTP_DIRECT=1`` an upstream to a remote
replica is a :class:`~apps.ingress.sealed.SealedStream` to the target's forward relay
(its agent off the path) instead of the mesh stream.

Hostile clients: headers over 64 KiB get 431, headers not complete within the header
timeout get 408 and the connection closed (slowloris), connections beyond the limit get a
503 at once; Host tricks are refused (:func:`apps.ingress.httpcore.check_request`).

Built on h11 (sans-IO HTTP/1.1, already under hypercorn): a proxy needs the raw event
stream (its own framing, streaming, half-close) that an ASGI server hides.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import trio

from apps.ingress import fastpath
from apps.ingress.forward import _ERRORS as FORWARD_ERRORS
from apps.ingress.forward import send_now
from apps.ingress.httpcore import (
    IDEMPOTENT,
    BadRequest,
    Checked,
    HttpRoute,
    check_request,
    downstream_headers,
    host_of,
    not_found_page,
    plain_response,
    request_head,
    response_head,
    upstream_headers,
    wants_close,
)
from apps.ingress.requesthead import PlainRequest, plain_request
from apps.ingress.sealed import SealedStream
from apps.ingress.targets import HostRequest
from meshcloud.transport.base import Stream

if TYPE_CHECKING:
    from apps.ingress.service import IngressService

__all__ = ["HttpLimits", "downstream_headers", "host_of", "send_now", "serve_http",
           "upstream_headers"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_HEADERS = 64 * 1024
RETRY_AFTER = b"2"
ACME_PREFIX = "/.well-known/acme-challenge/"
"""Never redirected to HTTPS (the seam for an ACME client answering challenges)."""
RETRY_BODY = 64 * 1024
"""Request bodies up to this size are kept so that an idempotent request can be retried."""
STREAM_LIFE = 5.0
"""Seconds an upstream carried on its mesh stream is kept alive when the HTTP ingress
takes the direct path (``MESHCLOUD_HTTP_DIRECT=1``): the target's relay may not have
run when it was opened."""

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
        self.born = trio.current_time()

    def keep(self) -> bool:
        """Whether to keep this upstream for another request: for ``STREAM_LIFE``
        seconds when the direct path is on (then a new connection tries it again)."""
        return not fastpath.http_direct() or trio.current_time() - self.born < STREAM_LIFE

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


class Patient:
    """The client seen by a request: each read must bring bytes within ``seconds``
    (a client stalling mid-body is cut, as one stalling mid-headers is)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with trio.fail_after(self.seconds):
            return bytes(await self.inner.receive_some(max_bytes))

    async def send_all(self, data: bytes) -> None:
        await self.inner.send_all(data)

    async def send_eof(self) -> None:
        eof = getattr(self.inner, "send_eof", None)
        if eof is not None:
            await eof()


async def _next_event(conn: h11.Connection, sock: Any) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await sock.receive_some(CHUNK)
        conn.receive_data(bytes(data) if data else b"")


async def _next_timed(conn: h11.Connection, sock: Any, seconds: float) -> Any:
    """The next event, each read within ``seconds`` (``h11.NEED_DATA`` when one is not):
    events already parsed cost no timer."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.move_on_after(seconds):
            data = await sock.receive_some(CHUNK)
            conn.receive_data(bytes(data) if data else b"")
            continue
        return h11.NEED_DATA


async def _send(conn: h11.Connection, sock: Any, event: Any) -> None:
    data = conn.send(event)
    if data:
        await sock.send_all(data)


async def _send_whole(conn: h11.Connection, sock: Any, response: h11.Response,
                      body: list[bytes]) -> None:
    """A whole response in one write (each write to a socket is a system call and a
    wake-up of the reader; a response in pieces costs several)."""
    out = [conn.send(response) or b""]
    if conn.our_state is h11.SEND_BODY:
        out += [conn.send(h11.Data(data=chunk)) or b"" for chunk in body if chunk]
    out.append(conn.send(h11.EndOfMessage()) or b"")
    await sock.send_all(b"".join(out))


async def _simple(conn: h11.Connection, sock: Any, status: int, text: str | bytes,
                  extra: Headers | None = None, html: bool = False) -> None:
    body = text.encode() if isinstance(text, str) else text
    kind = b"text/html; charset=utf-8" if html else b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await _send_whole(conn, sock, h11.Response(status_code=status, headers=headers), [body])


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
    eof = getattr(dst, "send_eof", None)  # TLS has no half-close
    if eof is not None:
        await eof()


# --- the driver -------------------------------------------------------------------------------


async def serve_http(client: Any, ingress: IngressService, proto: str = "http") -> None:
    """Serve one client connection (TCP, or TLS for ``proto="https"``): requests in
    turn, each routed and answered. A plain request to a workload's route is parsed and
    proxied without h11 (:func:`_plain_proxy`); any other request is parsed by h11 from
    the same bytes (:func:`_h11_request`)."""
    limits: HttpLimits = ingress.http_limits
    conn: h11.Connection | None = None
    try:
        peer = getattr(client, "transport_stream", client).socket.getpeername()
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
    except OSError:
        client_ip = "unknown"
    pending = b""
    """Bytes of the client's next request(s) read so far."""
    try:
        while True:
            conn = None
            if not pending:
                with trio.move_on_after(limits.idle_timeout) as idle:
                    pending = bytes(await client.receive_some(CHUNK))
                if idle.cancelled_caught or not pending:
                    break
            request = plain_request(pending)
            if request is not None and len(pending) >= request.size:
                try:
                    rest = await _plain_proxy(client, pending, request, client_ip, ingress,
                                              proto)
                except _ForH11:
                    pass
                else:
                    if rest is None:
                        break
                    pending = rest
                    continue
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
            conn.receive_data(pending)
            if not await _h11_request(conn, client, client_ip, ingress, proto):
                break
            pending, closed = conn.trailing_data
            if closed and not pending:
                break
    except h11.RemoteProtocolError as exc:
        ingress.http_refused += 1
        if conn is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await _simple(conn, client, exc.error_status_hint, f"bad request: {exc}\n",
                              [(b"connection", b"close")])
            except (h11.LocalProtocolError, *_IO_ERRORS):
                pass
    except (*_IO_ERRORS, h11.LocalProtocolError, trio.TooSlowError) as exc:
        log.debug("http client %s: %r", client_ip, exc)
    finally:
        with trio.move_on_after(1):
            await client.aclose()


async def _h11_request(conn: h11.Connection, client: Any, client_ip: str,
                       ingress: IngressService, proto: str) -> bool:
    """One request through h11 (``conn`` holds what was read of it): True when the
    client's connection goes on (its next bytes in ``conn.trailing_data``)."""
    limits: HttpLimits = ingress.http_limits
    event = conn.next_event()  # the whole head came in one read, usually
    if event is h11.NEED_DATA:
        with trio.move_on_after(limits.header_timeout):
            event = await _next_event(conn, client)
    if event is h11.NEED_DATA:  # the header timeout struck
        ingress.http_timeouts += 1
        if conn.our_state is h11.IDLE:
            await _simple(conn, client, 408, "request headers took too long\n",
                          [(b"connection", b"close")])
        return False
    if not isinstance(event, h11.Request):
        return False
    bypassed = await _one_request(conn, Patient(client, limits.idle_timeout), event,
                                  client_ip, ingress, proto)
    if bypassed:  # answered without h11: the client's next bytes are its trailing data
        return True
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _plain_proxy(client: Any, data: bytes, request: PlainRequest, client_ip: str,
                       ingress: IngressService, proto: str) -> bytes | None:
    """A plain request (its bytes at the start of ``data``) to a workload's route,
    proxied without h11: the client's next bytes (the rest of ``data``) when its
    connection goes on, else None. :class:`_ForH11`, having done nothing, for a request
    that is not for a route (refused, redirected, a host handler's, a 404, HEAD): h11
    takes it from the same bytes."""
    method = request.method.decode("ascii")
    if method == "HEAD":
        raise _ForH11
    target = request.target.decode("latin-1")
    try:
        checked = check_request(method, target, request.headers)
    except BadRequest:
        raise _ForH11 from None
    if proto == "http" and ingress.https_redirect(checked.host) is not None:
        raise _ForH11
    route = ingress.http_route(checked.host, checked.path)
    if route is None or checked.upgrade:
        raise _ForH11
    size = request.size
    replay = _Replay(data[:size])
    body = [data[request.head_size:size]] if request.length else []
    bypassed = await _proxy_route(replay, client, request, method, checked, route,
                                  client_ip, ingress, proto, body, True)
    if not bypassed:  # answered through h11, from a replay of the request
        conn = replay.conn
        if conn is None or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return None
    return data[size:]


class _ForH11(Exception):
    """Not a request :func:`_plain_proxy` answers: h11 parses it."""


class _Replay:
    """The h11 state of a request parsed without h11, made only when an answer needs it
    (a response h11 frames, an error page): the request's bytes fed to a new h11
    connection, read to its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.conn: h11.Connection | None = None

    def __call__(self) -> h11.Connection:
        if self.conn is None:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
            conn.receive_data(self.data)
            for _ in range(4):  # Request, Data, EndOfMessage: a plain request is whole
                if isinstance(conn.next_event(), h11.EndOfMessage):
                    break
            self.conn = conn
        return self.conn


async def _one_request(conn: h11.Connection, client: Any, request: h11.Request,
                       client_ip: str, ingress: IngressService, proto: str = "http"
                       ) -> bool:
    """Answer ``request``: True when the answer bypassed ``conn`` (the proxy's fast
    path: ``conn`` is left as the request left it)."""
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
        return False
    if conn.they_are_waiting_for_100_continue:  # curl waits a second for this otherwise
        await _send(conn, client, h11.InformationalResponse(status_code=100, headers=[]))
    if proto == "http" and not checked.path.startswith(ACME_PREFIX):
        base = ingress.https_redirect(checked.host)
        if base is not None:
            await _drain_request(conn, client)
            await _simple(conn, client, 308, f"moved to {base}\n",
                          [(b"location", (base + target if target.startswith("/")
                                          else base + "/").encode("latin-1"))])
            return False
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
                return False
            body = b"".join(chunks)
        else:
            await _drain_request(conn, client)
        if handler is None:
            ingress.http_not_found += 1
            await _simple(conn, client, 404, not_found_page(checked.host), html=True)
            return False
        await _serve_handler(conn, client, handler, HostRequest(
            method=method, target=target,
            headers=[(n.lower(), v) for n, v in request.headers], client_ip=client_ip,
            host=checked.host, body=body))
        return False
    idempotent = method in IDEMPOTENT
    chunks, complete = await _read_body(conn, client, RETRY_BODY if idempotent else 0)
    return await _proxy_route(lambda: conn, client, request, method, checked, route,
                              client_ip, ingress, proto, chunks, complete)


async def _serve_handler(conn: h11.Connection, client: Any, handler: Any,
                         request: HostRequest) -> None:
    try:
        response = await handler.respond(request)
    except Exception:
        log.exception("host handler for %s failed", request.host)
        await _simple(conn, client, 500, "internal error\n")
        return
    body = response.body
    head = h11.Response(status_code=response.status, headers=list(response.headers))
    if isinstance(body, bytes | bytearray | memoryview):
        await _send_whole(conn, client, head, [] if request.method == "HEAD" else [bytes(body)])
        return
    try:
        await _send(conn, client, head)
        if request.method != "HEAD" and conn.our_state is h11.SEND_BODY:
            async for chunk in body:
                if chunk:
                    await _send(conn, client, h11.Data(data=chunk))
        await _send(conn, client, h11.EndOfMessage())
    finally:
        closer = getattr(body, "aclose", None)
        if closer is not None:
            with trio.move_on_after(1):
                await closer()


class _Retry(Exception):
    """The replica failed before any response byte: another may take the request."""


async def _proxy_route(conn_of: Callable[[], h11.Connection], client: Any, request: Any,
                       method: str, checked: Checked, route: HttpRoute, client_ip: str,
                       ingress: IngressService, proto: str, body: list[bytes],
                       complete: bool) -> bool:
    """Proxy ``request`` (an ``h11.Request`` or a
    :class:`~apps.ingress.requesthead.PlainRequest`; ``body`` read so far, ``complete``
    if that is all of it) to a replica of ``route``: True when the answer bypassed the
    client's h11 state (``conn_of()``, made only when an answer needs it)."""
    retryable = method in IDEMPOTENT and complete
    headers = upstream_headers(request.headers, client_ip, proto, upgrade=checked.upgrade)
    # the fast path: a whole request to pass on, a client that keeps its connection, a
    # response that may have a body (not HEAD) and is no upgrade
    fast = complete and not checked.upgrade and method != "HEAD" and \
        request.http_version == b"1.1" and not wants_close(request.headers)
    if complete:  # one declared length upstream, whatever the client's framing was
        whole = b"".join(body)
        length = any(n == b"content-length" for n, _ in headers)
        headers = [(n, v) for n, v in headers if n != b"content-length"]
        if whole or length:
            headers.append((b"content-length", str(len(whole)).encode()))
        body = [whole] if whole else []
    elif not any(n == b"content-length" for n, _ in headers):  # streamed as it came
        headers.append((b"transfer-encoding", b"chunked"))
    def head() -> h11.Request:  # (built only for h11: it validates, at a cost)
        return h11.Request(method=request.method, target=request.target, headers=headers)

    wire = request_head(request.method, request.target, headers) + b"".join(body) \
        if fast else b""
    tried: set[Any] = set()
    use_pool = retryable and not checked.upgrade
    pool = ingress.pool
    while True:
        kept = None
        if use_pool:
            target = ingress.pick_target(route.workload, route.endpoint, tried)
            kept = pool.take(target.key) if target is not None else None
        if kept is not None:
            upstream, up = kept
        else:
            connected = await ingress.connect(route.workload, route.endpoint, exclude=tried,
                                              pipe=True)
            if connected is None:
                ingress.failed += 1
                conn = conn_of()
                if not complete:
                    await _drain_request(conn, client)
                await _simple(conn, client, 503, f"{route.workload}: no live replica, try "
                              "again\n", [(b"retry-after", RETRY_AFTER)])
                return False
            target, raw = connected
            upstream = raw if isinstance(raw, trio.SocketStream | SealedStream) \
                else StreamBytes(raw)
            up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        assert target is not None
        ingress.open[target.key] += 1
        ingress.forwarded += 1
        parked = False
        bypassed = False
        try:
            if fast:
                reusable, bypassed = await _fast_exchange(conn_of, client, head, body, wire,
                                                          upstream, up, route, checked,
                                                          retryable)
            else:
                reusable = await _exchange(conn_of(), client, head(), body, complete,
                                           upstream, up, route, checked, retryable)
            if reusable and (not isinstance(upstream, StreamBytes) or upstream.keep()):
                if up.our_state is not h11.IDLE:
                    up.start_next_cycle()
                parked = pool.put(target.key, (upstream, up))
            return bypassed
        except _Retry as exc:
            if kept is not None:  # the replica closed a kept connection: a fresh one
                log.debug("a kept connection to %s failed (%s)", route.workload, exc)
                use_pool = False
                continue
            tried.add(target.key)
            ingress.retries += 1
            log.info("%s replica %d failed before answering (%s): retrying",
                     route.workload, target.index, exc)
        finally:
            ingress.open[target.key] -= 1
            doomed = pool.stale
            pool.stale = []
            if not parked:
                doomed.append((upstream, up))
            for stream, _ in doomed:
                with trio.move_on_after(1):
                    await stream.aclose()


async def _timed_read(upstream: Any, seconds: float) -> bytes | None:
    """The next bytes of ``upstream``, None if none came within ``seconds``."""
    with trio.move_on_after(seconds):
        return bytes(await upstream.receive_some(CHUNK))
    return None


async def _fast_exchange(conn_of: Callable[[], h11.Connection], client: Any,
                         head: Callable[[], h11.Request], body: list[bytes], wire: bytes,
                         raw_upstream: Any, up: h11.Connection, route: HttpRoute,
                         checked: Checked, retryable: bool) -> tuple[bool, bool]:
    """One whole request (``wire``) and a plain response passed on without h11 (a
    status line, headers, a declared length: :func:`plain_response`); any other
    response goes on through h11 (``up`` is told of the request then), and so do error
    pages (the client's h11 state from ``conn_of()``). (Whether the upstream connection
    may be reused, whether the answer bypassed the client's h11 state.)"""
    upstream = raw_upstream
    try:
        await send_now(upstream, wire)
    except (*_IO_ERRORS, *FORWARD_ERRORS) as exc:
        if retryable:
            raise _Retry(repr(exc)) from None
        await _simple(conn_of(), client, 502, "the replica went away\n")
        return False, False
    buffer = b""
    end = -1
    while end < 0 and len(buffer) <= MAX_HEADERS:
        try:
            data = await _timed_read(upstream, route.timeout)
        except (*_IO_ERRORS, *FORWARD_ERRORS) as exc:
            data = b""
            why = repr(exc)
        else:
            why = "the replica closed without a response"
        if data is None:
            await _simple(conn_of(), client, 504, f"{route.workload} did not answer within "
                          f"{route.timeout:g} s\n", [(b"connection", b"close")])
            return False, False
        if not data:
            if retryable:
                raise _Retry(why)
            await _simple(conn_of(), client, 502, "the replica closed without a response\n")
            return False, False
        buffer += data
        end = buffer.find(b"\r\n\r\n")
    response = plain_response(buffer[:end]) if end >= 0 else None
    if response is None:  # h11 takes it from here, with what came so far
        up.send(head())
        for chunk in body:
            up.send(h11.Data(data=chunk))
        up.send(h11.EndOfMessage())
        up.receive_data(buffer)
        return await _response(conn_of(), client, up, upstream, raw_upstream, route,
                               checked, retryable), False
    rest = buffer[end + 4:]
    length = response.length
    reply = response_head(response)
    if length <= RETRY_BODY:  # kept whole: a replica dying mid-body costs a retry
        while len(rest) < length:
            try:
                data = await _timed_read(upstream, route.timeout)
            except (*_IO_ERRORS, *FORWARD_ERRORS):
                data = b""
            if not data:
                if retryable:
                    raise _Retry("the replica ended mid-response")
                await _simple(conn_of(), client, 502, "the replica ended mid-response\n")
                return False, False
            rest += data
        await send_now(client, reply + rest[:length])
        extra = len(rest) > length
    else:  # streamed: from its first byte on, the client has the response
        await send_now(client, reply + rest[:length])
        sent = min(len(rest), length)
        extra = len(rest) > length
        while sent < length:
            try:
                data = await _timed_read(upstream, route.timeout)
            except (*_IO_ERRORS, *FORWARD_ERRORS) as exc:
                raise trio.BrokenResourceError("upstream failed mid-response") from exc
            if data is None:
                raise trio.BrokenResourceError("upstream stalled mid-response")
            if not data:
                raise trio.BrokenResourceError("upstream ended mid-response")
            piece = data[:length - sent]
            await client.send_all(piece)
            sent += len(piece)
            extra = len(data) > len(piece)
    # bytes past the declared length, or a replica that closes: not kept
    return not (response.close or extra), True


async def _exchange(conn: h11.Connection, client: Any, head: h11.Request, body: list[bytes],
                    complete: bool, raw_upstream: Any, up: h11.Connection, route: HttpRoute,
                    checked: Checked, retryable: bool) -> bool:
    """One request and its response; True if the upstream connection may be reused."""
    upstream = raw_upstream
    try:  # the head and the body read so far in one write
        out = [up.send(head) or b""]
        out += [up.send(h11.Data(data=chunk)) or b"" for chunk in body]
        if complete:
            out.append(up.send(h11.EndOfMessage()) or b"")
        await upstream.send_all(b"".join(out))
    except (*_IO_ERRORS, *FORWARD_ERRORS) as exc:
        if retryable:
            raise _Retry(repr(exc)) from None
        await _answer_failure(conn, client, 502, "the replica went away\n", complete)
        return False
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
    return await _response(conn, client, up, upstream, raw_upstream, route, checked,
                           retryable)


async def _response(conn: h11.Connection, client: Any, up: h11.Connection, upstream: Any,
                    raw_upstream: Any, route: HttpRoute, checked: Checked, retryable: bool
                    ) -> bool:
    """The replica's response through h11, to the client; True if the upstream
    connection may be reused."""
    responded = False  # nothing of the response has reached the client yet
    held: list[Any] | None = None  # a small response kept whole while it may be retried
    while True:  # the response, chunk by chunk, each read within the route's timeout
        try:
            event = await _next_timed(up, upstream, route.timeout)
        except (h11.RemoteProtocolError, *FORWARD_ERRORS) as exc:
            event = exc
        if event is h11.NEED_DATA:  # timed out
            if not responded:
                await _simple(conn, client, 504, f"{route.workload} did not answer within "
                              f"{route.timeout:g} s\n", [(b"connection", b"close")])
                return False
            raise trio.BrokenResourceError("upstream stalled mid-response")
        if isinstance(event, Exception | h11.ConnectionClosed):
            if not responded:
                if retryable:
                    raise _Retry(repr(event))
                await _simple(conn, client, 502, "the replica closed without a response\n")
                return False
            raise trio.BrokenResourceError("upstream ended mid-response")
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101 and checked.upgrade:
                await _switch(conn, client, up, upstream, raw_upstream, event)
                return False
            continue
        if isinstance(event, h11.Response):
            response = h11.Response(status_code=event.status_code, reason=event.reason,
                                    headers=downstream_headers(event.headers))
            if retryable and _small(event.headers):
                held = [response]
            else:
                responded = True
                await _send(conn, client, response)
        elif isinstance(event, h11.Data):
            if held is not None:
                held.append(h11.Data(data=event.data))
            elif conn.our_state is h11.SEND_BODY:
                await _send(conn, client, h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            responded = True
            if held is not None:
                await _send_whole(conn, client, held[0], [d.data for d in held[1:]])
            else:
                await _send(conn, client, h11.EndOfMessage())
            return up.our_state is h11.DONE and up.their_state is h11.DONE


def _small(headers: Any) -> bool:
    """A response whose declared length fits in ``RETRY_BODY`` (kept whole, so that a
    replica dying mid-body costs a retry rather than a broken response)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return value.isdigit() and int(value) <= RETRY_BODY
    return False


async def _answer_failure(conn: h11.Connection, client: Any, status: int, text: str,
                          complete: bool) -> None:
    if not complete:
        await _drain_request(conn, client)
    await _simple(conn, client, status, text)


async def _switch(conn: h11.Connection, client: Any, up: h11.Connection, upstream: Any,
                  raw_upstream: Any, response: h11.InformationalResponse) -> None:
    """A 101: tell the client, then carry bytes both ways until both sides end."""
    await _send(conn, client, h11.InformationalResponse(
        status_code=101, reason=response.reason,
        headers=downstream_headers(response.headers, upgrade=True)))
    if isinstance(client, Patient):  # an upgraded connection may idle as long as it likes
        client = client.inner
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
