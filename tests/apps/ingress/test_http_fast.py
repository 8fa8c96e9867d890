"""The proxy's fast path (a plain response passed on without h11) and its fallbacks, on
one kept-alive client connection: :func:`apps.ingress.http.serve_http` between a real
client socket and real replica sockets; the ingress service around it is a small fake
(routes, targets, connect)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import h11
import pytest
import trio

from apps.ingress.http import HttpLimits, send_now, serve_http
from apps.ingress.httpcore import HttpRoute, plain_response, response_head
from apps.ingress.pool import UpstreamPool
from apps.ingress.routing import Target


async def replica(nursery, behaviour: str = "ok") -> tuple[int, list[int]]:
    """A replica on a local port: ``ok`` answers each request (plain JSON, ``/chunked``
    chunked, ``/extra`` with bytes past its length, POST echoes); ``close`` closes
    without a word; ``silent`` never answers. Returns (port, connections accepted)."""
    accepted: list[int] = []

    async def handle(stream):
        accepted.append(1)
        if behaviour == "close":
            await stream.aclose()
            return
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data and behaviour == "silent":
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                assert isinstance(event, h11.Request)
                body = b""
                while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                if behaviour == "silent":
                    await trio.sleep_forever()
                target = event.target.decode()
                if target == "/chunked":
                    out = conn.send(h11.Response(status_code=200, headers=[
                        (b"transfer-encoding", b"chunked")]))
                    out += conn.send(h11.Data(data=b"part1;")) + conn.send(
                        h11.Data(data=b"part2;")) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                elif target == "/extra":
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE")
                    return
                else:
                    reply = body if event.method == b"POST" else json.dumps({
                        "path": target, "headers": {n.decode(): v.decode()
                                                    for n, v in event.headers}}).encode()
                    out = conn.send(h11.Response(status_code=200, headers=[
                        (b"content-length", str(len(reply)).encode()),
                        (b"x-replica", b"yes"), (b"connection", b"keep-alive, x-replica")]))
                    await stream.send_all(out + conn.send(h11.Data(data=reply)) +
                                          conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1], accepted


class FakeIngress:
    """What serve_http asks of the ingress service: one route, local replicas."""

    def __init__(self, ports: list[int], timeout: float = 60.0) -> None:
        self.http_limits = HttpLimits()
        self.route = HttpRoute("shop.home", "", "shop", "http", timeout)
        self.targets = [Target("shop", "http", i, b"n", port) for i, port in enumerate(ports)]
        self.pool = UpstreamPool()
        self.open: defaultdict[Any, int] = defaultdict(int)
        self.forwarded = self.failed = self.retries = 0
        self.http_refused = self.http_timeouts = self.http_not_found = 0

    def https_redirect(self, host: str) -> None:
        return None

    def http_route(self, host: str, path: str) -> HttpRoute | None:
        return self.route if host == "shop.home" else None

    def host_handler(self, host: str, path: str) -> None:
        return None

    def pick_target(self, workload, endpoint, exclude):
        """The first target not excluded (deterministic, unlike the service's)."""
        return next((t for t in self.targets if t.key not in exclude), None)

    async def connect(self, workload, endpoint, exclude=None, *, pipe=False):
        tried = set(exclude or ())
        for _ in range(3):
            target = self.pick_target(workload, endpoint, tried)
            if target is None:
                return None
            tried.add(target.key)
            try:
                return target, await trio.open_tcp_stream("127.0.0.1", target.port)
            except OSError:
                self.retries += 1
        return None


async def ingress(nursery, fake: FakeIngress) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, lambda s: serve_http(s, fake), listeners)
    return listeners[0].socket.getsockname()[1]


async def exchange(port: int, requests: list[list[Any]], *, pipelined: bool = False
                   ) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send requests on one client connection (all in one write when ``pipelined``) and
    read each response in turn."""
    def wire(request: list[Any]) -> bytes:
        return b"".join(h11.Connection(h11.CLIENT).send(e) or b"" for e in [request[0]]) + \
            _body(request)

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = []
    leftover = b""
    async with stream:
        if pipelined:
            await stream.send_all(b"".join(wire(r) for r in requests))
        for request in requests:
            if not pipelined:
                await stream.send_all(wire(request))
            conn = h11.Connection(h11.CLIENT)
            for event in request:
                conn.send(event)
            if leftover:
                conn.receive_data(leftover)
            status, headers, body = 0, {}, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    status, headers = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            leftover = conn.trailing_data[0]
            out.append((status, headers, body))
    return out


def _body(request: list[Any]) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    conn.send(request[0])
    return b"".join(conn.send(e) or b"" for e in request[1:])


def get(path: str, host: bytes = b"shop.home") -> list[Any]:
    return [h11.Request(method="GET", target=path, headers=[(b"host", host)]),
            h11.EndOfMessage()]


def post(path: str, body: bytes) -> list[Any]:
    return [h11.Request(method="POST", target=path, headers=[
        (b"host", b"shop.home"), (b"transfer-encoding", b"chunked")]),
        h11.Data(data=body), h11.EndOfMessage()]


async def test_fast_and_h11_responses_alternate_on_one_client_connection(nursery):
    port, accepted = await replica(nursery)
    fake = FakeIngress([port])
    address = await ingress(nursery, fake)
    big = bytes(range(256)) * 1024
    with trio.fail_after(30):
        results = await exchange(address, [
            get("/a?b=1"), get("/chunked"), post("/upload", big), get("/again"),
            get("/", b"other.home"), get("/last")])
    (s1, h1, b1), (s2, h2, b2), (s3, _, b3), (s4, _, b4), (s5, _, _), (s6, _, b6) = results
    seen = json.loads(b1)
    assert s1 == 200 and seen["path"] == "/a?b=1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == "shop.home"
    assert b"x-replica" not in h1 and b"connection" not in h1  # hop-by-hop dropped
    assert s2 == 200 and b2 == b"part1;part2;" and h2[b"transfer-encoding"] == b"chunked"
    assert s3 == 200 and b3 == big  # a chunked upload goes on with its length declared
    assert s4 == 200 and json.loads(b4)["path"] == "/again"
    assert s5 == 404
    assert s6 == 200 and json.loads(b6)["path"] == "/last"
    assert len(accepted) <= 2  # the upstream connection kept (the POST may take its own)
    assert fake.pool.reused >= 3


async def test_pipelined_requests_are_answered_in_order(nursery):
    port, _ = await replica(nursery)
    address = await ingress(nursery, FakeIngress([port]))
    with trio.fail_after(30):
        results = await exchange(address, [get("/one"), get("/two"), get("/three")],
                                 pipelined=True)
    assert [json.loads(b)["path"] for _, _, b in results] == ["/one", "/two", "/three"]


async def test_bytes_past_the_declared_length_are_not_kept(nursery):
    port, accepted = await replica(nursery)
    fake = FakeIngress([port])
    address = await ingress(nursery, fake)
    with trio.fail_after(30):
        results = await exchange(address, [get("/extra"), get("/after")])
    assert results[0][0] == 200 and results[0][2] == b"ok"
    assert results[1][0] == 200 and json.loads(results[1][2])["path"] == "/after"
    assert len(accepted) == 2  # the garbage never reached the next response


async def test_a_replica_closing_before_its_answer_is_retried_on_another(nursery):
    bad, tried_bad = await replica(nursery, "close")
    good, _ = await replica(nursery)
    fake = FakeIngress([bad, good])  # each request tries the bad one first
    address = await ingress(nursery, fake)
    with trio.fail_after(30):
        results = await exchange(address, [get("/x") for _ in range(3)] + [
            [h11.Request(method="POST", target="/p", headers=[
                (b"host", b"shop.home"), (b"content-length", b"0")]), h11.EndOfMessage()]])
    assert [s for s, _, _ in results] == [200, 200, 200, 502]  # a POST is not retried
    assert len(tried_bad) == 4 and fake.retries == 3


async def test_a_silent_replica_gets_the_client_a_504(nursery):
    port, _ = await replica(nursery, "silent")
    address = await ingress(nursery, FakeIngress([port], timeout=0.5))
    with trio.fail_after(30):
        results = await exchange(address, [get("/x")])
    assert results[0][0] == 504


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 0",
    b"HTTP/1.0 200 OK\r\ncontent-length: 1",
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 1",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n folded",
    b"HTTP/1.1 200 OK\r\ncontent-length: +1",
    b"HTTP/1.1 200 OK\r\nbad header: 1\r\ncontent-length: 1",
    b"HTTP/1.1 200 OK\r\nx: a\nb\r\ncontent-length: 1",
])
def test_anything_but_a_plain_response_goes_to_h11(head):
    assert plain_response(head) is None


def test_a_plain_response_keeps_its_length_and_loses_hop_by_hop_headers():
    response = plain_response(b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n"
                              b"Connection: close, x-a\r\nx-a: 1\r\nx-b:  two words \r\n"
                              b"keep-alive: timeout=5")
    assert response is not None and response.length == 12 and response.close
    assert response_head(response) == (b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\n"
                                       b"x-b: two words\r\n\r\n")


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on one client connection and read until the ingress closes it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    async with stream:
        await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


PLAIN = b"GET /first HTTP/1.1\r\nHost: shop.home\r\n\r\n"


@pytest.mark.parametrize("hostile, status", [
    (b"POST /p HTTP/1.1\r\nHost: shop.home\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
     b"GET /smuggled HTTP/1.1\r\nHost: shop.home\r\n\r\n",
     b"400"),
    (b"POST /p HTTP/1.1\r\nHost: shop.home\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
     b"hello!", b"400"),
    (b"POST /p HTTP/1.1\r\nHost: shop.home\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nhello\r\n0\r\n\r\n", b"400"),
    (b"GET /p HTTP/1.1\r\nHost: shop.home\r\nX: " + b"x" * 70000 + b"\r\n\r\n", b"431"),
    (b"GET /p HTTP/1.1\r\nHost : shop.home\r\n\r\n", b"400"),
    (b"GET /p HTTP/1.1\r\nHost: shop.home\r\nHost: shop.home\r\n\r\n", b"400"),
])
async def test_a_hostile_request_after_a_plain_one_gets_one_error_and_the_close(
        nursery, hostile, status):
    port, _ = await replica(nursery)
    fake = FakeIngress([port])
    address = await ingress(nursery, fake)
    with trio.fail_after(30):
        out = await raw_exchange(address, PLAIN + hostile)
    first, _, rest = out.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
    assert first.startswith(b"200 ") and b'"path": "/first"' in out
    assert rest.startswith(status + b" ") and b"connection: close" in rest.lower()
    assert rest.count(b"HTTP/1.1 ") == 0  # one error, then the connection closed
    assert fake.forwarded == 1  # nothing of it reached the replica


async def test_send_now_writes_what_the_socket_takes_and_the_rest_when_it_can(nursery):
    """A write larger than the socket's buffer: part written at once, the rest through
    trio's send_all once the reader drains; every byte arrives, in order."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted: list[trio.SocketStream] = []
    ready = trio.Event()

    async def keep(stream):
        accepted.append(stream)
        ready.set()
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, keep, listeners)
    writer = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
    writer.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than the buffers hold
    with trio.fail_after(30):
        await ready.wait()
        reader = accepted[0]
        received = bytearray()

        async def read_all():
            while len(received) < len(data):
                received.extend(await reader.receive_some(65536))

        async with trio.open_nursery() as inner:
            inner.start_soon(send_now, writer, data)
            inner.start_soon(read_all)
    assert bytes(received) == data
    await writer.aclose()
