"""The HTTP ingress: every node answers HTTP/1.1 and routes by Host header.

``meshcloud run NAME --domain shop.home --publish http`` routes ``Host: shop.home`` to
the workload's first endpoint. Each request gets its own upstream connection (a local
replica by TCP or a ``/meshcloud/forward/1`` stream, chosen like exposed ports: power of
two choices, retried on another replica), with ``Connection: close`` upstream; the client
side keeps its connection alive. Bodies stream both ways chunk by chunk (nothing is
buffered whole). Unknown host: 404; no live replica: 503 with ``Retry-After``.

Built on h11 (sans-IO HTTP/1.1, already under hypercorn): a proxy needs the raw event
stream (its own framing, streaming, half-close) that an ASGI server hides.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import h11
import trio

from meshcloud.transport.base import Stream

if TYPE_CHECKING:
    from apps.ingress.service import IngressService

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_HEADERS = 64 * 1024
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
              b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
RETRY_AFTER = b"2"
IDLE_TIMEOUT = 60.0
"""Seconds a kept-alive client connection may wait between requests."""

Headers = list[tuple[bytes, bytes]]


# --- pure parts -------------------------------------------------------------------------------


def host_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's host name, lower case, without port or trailing dot."""
    for name, value in headers:
        if name.lower() == b"host":
            text = value.decode("latin-1").strip().lower()
            if text.startswith("["):
                return text.split("]")[0] + "]"
            return text.rsplit(":", 1)[0].rstrip(".") if ":" in text else text.rstrip(".")
    return ""


def _strip(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    named = set(HOP_BY_HOP)
    for name, value in headers:  # headers a Connection header names are hop-by-hop too
        if name.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",") if t.strip()}
    return [(n, v) for n, v in headers if n.lower() not in named]


def upstream_headers(headers: Iterable[tuple[bytes, bytes]], client_ip: str,
                     proto: str = "http") -> Headers:
    """Request headers for the replica: hop-by-hop ones dropped, X-Forwarded-For appended
    to, X-Forwarded-Proto/Host set, ``Connection: close``."""
    headers = list(headers)
    out = [(n, v) for n, v in _strip(headers)
           if n.lower() not in (b"x-forwarded-proto", b"x-forwarded-host")]
    prior = [v for n, v in headers if n.lower() == b"x-forwarded-for"]
    out = [(n, v) for n, v in out if n.lower() != b"x-forwarded-for"]
    chain = b", ".join([*prior, client_ip.encode()])
    host = next((v for n, v in headers if n.lower() == b"host"), b"")
    out += [(b"x-forwarded-for", chain), (b"x-forwarded-proto", proto.encode()),
            (b"x-forwarded-host", host), (b"connection", b"close")]
    return out


def downstream_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Response headers for the client: hop-by-hop ones dropped (h11 frames the body)."""
    return _strip(headers)


def route_table(entries: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{domain: (workload, endpoint)} from the workloads' specs: each domain goes to its
    workload's first published endpoint."""
    table: dict[str, tuple[str, str]] = {}
    for name in sorted(entries):
        spec = entries[name].spec
        if spec.domains and spec.publish:
            for domain in spec.domains:
                table.setdefault(domain, (name, spec.publish[0][0]))
    return table


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

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.abort("closed")


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


async def _simple(conn: h11.Connection, sock: Any, status: int, text: str,
                  extra: Headers | None = None) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await _send(conn, sock, h11.Response(status_code=status, headers=headers))
    await _send(conn, sock, h11.Data(data=body))
    await _send(conn, sock, h11.EndOfMessage())


async def _drain_request(conn: h11.Connection, sock: Any) -> None:
    while not isinstance(await _next_event(conn, sock),
                         h11.EndOfMessage | h11.ConnectionClosed):
        pass


# --- the driver -------------------------------------------------------------------------------


async def serve_http(client: trio.SocketStream, ingress: IngressService) -> None:
    """Serve one client connection: requests in turn, each proxied to a replica."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    try:
        peer = client.socket.getpeername()
        client_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
    except OSError:
        client_ip = "unknown"
    try:
        while True:
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                event = await _next_event(conn, client)
            if idle.cancelled_caught or not isinstance(event, h11.Request):
                break
            await _one_request(conn, client, event, client_ip, ingress)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await _simple(conn, client, exc.error_status_hint, f"bad request: {exc}\n")
            except (h11.LocalProtocolError, OSError, trio.BrokenResourceError):
                pass
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
            h11.LocalProtocolError) as exc:
        log.debug("http client %s: %r", client_ip, exc)
    finally:
        await client.aclose()


async def _one_request(conn: h11.Connection, client: Any, request: h11.Request,
                       client_ip: str, ingress: IngressService) -> None:
    host = host_of(request.headers)
    route = route_table(ingress._entries()).get(host)
    if route is None:
        await _drain_request(conn, client)
        await _simple(conn, client, 404, f"no site for host {host!r}\n")
        return
    connected = await ingress.connect(*route)
    if connected is None:
        ingress.failed += 1
        await _drain_request(conn, client)
        await _simple(conn, client, 503, f"{route[0]}: no live replica, try again\n",
                      [(b"retry-after", RETRY_AFTER)])
        return
    target, raw = connected
    upstream = raw if isinstance(raw, trio.SocketStream) else StreamBytes(raw)
    ingress.open[target.key] += 1
    ingress.forwarded += 1
    try:
        await _proxy(conn, client, request, client_ip, upstream)
    finally:
        ingress.open[target.key] -= 1
        await upstream.aclose()


async def _proxy(conn: h11.Connection, client: Any, request: h11.Request, client_ip: str,
                 upstream: Any) -> None:
    up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
    await _send(up, upstream, h11.Request(
        method=request.method, target=request.target,
        headers=upstream_headers(request.headers, client_ip)))
    while True:  # the request body, chunk by chunk
        event = await _next_event(conn, client)
        if isinstance(event, h11.Data):
            await _send(up, upstream, h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await _send(up, upstream, h11.EndOfMessage())
            break
        else:
            raise trio.BrokenResourceError("client went away mid-request")
    try:
        while True:  # the response, chunk by chunk
            event = await _next_event(up, upstream)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                await _send(conn, client, h11.Response(
                    status_code=event.status_code, reason=event.reason,
                    headers=downstream_headers(event.headers)))
            elif isinstance(event, h11.Data):
                await _send(conn, client, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await _send(conn, client, h11.EndOfMessage())
                return
            else:
                break
    except (h11.RemoteProtocolError, OSError, trio.BrokenResourceError) as exc:
        log.info("upstream failed mid-response: %r", exc)
    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
        await _simple(conn, client, 502, "the replica closed without a response\n")
    else:
        raise trio.BrokenResourceError("upstream ended mid-response")
