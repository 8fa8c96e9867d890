"""``open_forward`` on a service's own forward protocol (the databases and Spark serve
theirs beside the ingress's): the request reaches that protocol's resolver, a refusal
comes back as ForwardError. Two real TcpTransports over loopback."""

from __future__ import annotations

import pytest
import trio

from apps.ingress.forward import ForwardError, open_forward, serve_forward
from apps.ingress.messages import FORWARD_PROTOCOL
from meshcloud.testing import TestMesh
from meshcloud.transport.tcp import TcpTransport

OWN = "/meshcloud/test-own-forward/1"


async def test_a_services_own_forward_protocol_reaches_its_resolver(nursery):
    mesh = TestMesh.with_members(2)
    a, b = (TcpTransport(m.key, m.authenticator) for m in mesh.members)
    await nursery.start(a.run)
    await nursery.start(b.run)
    asked: dict[str, list[tuple[str, str, int]]] = {"own": [], "ingress": []}

    def resolver(which: str):
        def resolve(request):
            asked[which].append((request.workload, request.endpoint, request.index))
            return None  # refused: nothing of that name runs here
        return resolve

    b.serve(OWN, lambda stream: serve_forward(stream, resolver("own")))
    b.serve(FORWARD_PROTOCOL, lambda stream: serve_forward(stream, resolver("ingress")))
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    with trio.fail_after(30), pytest.raises(ForwardError):
        await open_forward(a, b.local_id, "pg", "postgres", 0, protocol=OWN)
    assert asked == {"own": [("pg", "postgres", 0)], "ingress": []}
    with trio.fail_after(30), pytest.raises(ForwardError):
        await open_forward(a, b.local_id, "web", "http", 1)
    assert asked["ingress"] == [("web", "http", 1)]


async def test_connect_upstream_takes_the_local_port_here_a_forward_elsewhere(nursery):
    from apps.ingress.forward import connect_upstream, splice_upstream

    async def echo(stream):
        async with stream:
            while data := await stream.receive_some(4096):
                await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, echo, listeners)
    port = listeners[0].socket.getsockname()[1]
    opened: list[str] = []

    async def local():
        opened.append("local")
        return await trio.open_tcp_stream("127.0.0.1", port)

    async def remote():
        opened.append("remote")
        raise ForwardError("refused", "no such replica")

    assert await connect_upstream(False, local, remote, "test: refused") is None
    upstream = await connect_upstream(True, local, remote, "test")
    assert opened == ["remote", "local"] and isinstance(upstream, trio.SocketStream)
    # the client's bytes reach the replica and its answer comes back, then both close
    client_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    done = trio.Event()
    spliced: list[bool] = []

    async def serve(client):
        spliced.append(await splice_upstream(client, upstream))
        done.set()

    nursery.start_soon(trio.serve_listeners, serve, client_listeners)
    with trio.fail_after(30):
        user = await trio.open_tcp_stream(
            "127.0.0.1", client_listeners[0].socket.getsockname()[1])
        await user.send_all(b"ping")
        got = b""
        while len(got) < 4:
            got += await user.receive_some(4096)
        await user.send_eof()
        await done.wait()
    assert got == b"ping" and spliced == [True]
