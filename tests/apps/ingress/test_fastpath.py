"""Forwards between two real TcpTransports over loopback: the bytes take the direct
path between the nodes' forward relays (a real helper process), half-close works, the
mesh stream is the lifeline, forgeries at the relay's port change nothing, and with the
direct path off on one side the forward stays on the stream."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from apps.ingress import fastpath
from apps.ingress.fastseal import HELLO, Sealer
from apps.ingress.forward import open_forward, serve_forward, splice_stream
from apps.ingress.messages import FORWARD_PROTOCOL
from meshcloud.testing import TestMesh
from meshcloud.transport.tcp import TcpTransport

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


async def echo_server(nursery) -> int:
    """A replica: echoes everything, then half-closes when the client did."""
    async def handle(stream):
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
            with trio.move_on_after(10):
                await stream.receive_some(1)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1]


class Pair:
    def __init__(self, a: TcpTransport, b: TcpTransport, port: int) -> None:
        self.a, self.b, self.port = a, b, port
        self.results: list[bool] = []
        self.done = trio.Event()
        self.target_streams: list = []
        self.served: list[BaseException | None] = []
        self.target_done = trio.Event()


async def setup(nursery) -> Pair:
    mesh = TestMesh.with_members(2)
    transports = []
    for member in mesh.members:
        t = TcpTransport(member.key, member.authenticator)
        await nursery.start(t.run)
        transports.append(t)
    a, b = transports
    pair = Pair(a, b, await echo_server(nursery))

    async def serve(stream):
        pair.target_streams.append(stream)
        try:
            await serve_forward(stream, lambda request: pair.port)
            pair.served.append(None)
        except BaseException as exc:
            pair.served.append(exc)
            raise
        finally:
            pair.target_done.set()

    b.serve(FORWARD_PROTOCOL, serve)
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    return pair


async def ingress(pair: Pair, nursery) -> int:
    """A listener on node a whose connections are forwarded to node b's replica."""
    async def handle(client):
        stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
        pair.results.append(await splice_stream(client, stream))
        pair.done.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1]


async def exchange(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        async def send():
            for i in range(0, len(payload), 65536):
                await stream.send_all(payload[i:i + 65536])
            await stream.send_eof()  # half-close: the echo still comes back

        received = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some(1 << 16):
                received += data
    return bytes(received)


async def test_direct_path_carries_the_bytes_with_half_close(nursery):
    pair = await setup(nursery)
    port = await ingress(pair, nursery)
    with trio.fail_after(60):
        got = await exchange(port, PAYLOAD)
        assert got == PAYLOAD
        await pair.done.wait()
    assert pair.results == [True]
    sent = pair.a.usage.by_protocol[FORWARD_PROTOCOL]
    assert sent.bytes_sent < 1024  # only the set-up went on the stream
    assert pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_received < 1024


async def test_direct_path_off_on_one_side_stays_on_the_stream(nursery, monkeypatch):
    monkeypatch.setenv(fastpath.ENV, "0")
    pair = await setup(nursery)
    port = await ingress(pair, nursery)
    with trio.fail_after(60):
        assert await exchange(port, PAYLOAD) == PAYLOAD
        await pair.done.wait()
    assert pair.results == [True]
    assert pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent >= len(PAYLOAD)


async def test_the_stream_is_the_lifeline_a_reset_cuts_the_client(nursery):
    pair = await setup(nursery)
    port = await ingress(pair, nursery)
    with trio.fail_after(60):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"hello")
        assert await client.receive_some(100) == b"hello"  # on the direct path now
        await pair.target_streams[0].abort("test cuts the forward")
        with pytest.raises(trio.BrokenResourceError):
            while await client.receive_some(100):
                pass
            raise trio.BrokenResourceError  # EOF: cut too
        await pair.done.wait()
    assert pair.results == [False]
    await client.aclose()


async def test_forgeries_at_the_relay_port_do_not_take_a_forward(nursery):
    """A stranger dialing the relay (no token, a wrong one, a right token with a wrong
    key) is closed; the forward then still opens and carries its bytes."""
    pair = await setup(nursery)
    relay = await fastpath.relay()
    assert relay is not None
    stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
    share = os.urandom(32)
    await stream.send(fastpath.encode_message(fastpath.ForwardPath(kind="request",
                                                                   share=share)))
    with trio.fail_after(20):
        answer = fastpath.decode_message(await stream.receive(), fastpath.ForwardPath)
    assert answer.kind == "accept" and answer.port > 0
    key_ot, key_to, token = fastpath.derive_keys(share, answer.share)

    def forge(first: bytes) -> bytes:
        with socket.create_connection((answer.host, answer.port), timeout=10) as sock:
            sock.sendall(first)
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(100)

    for first in (b"", os.urandom(16), token + Sealer(os.urandom(32)).seal(b"", HELLO)):
        assert await trio.to_thread.run_sync(forge, first) == b""  # closed, nothing said
    # the real opener's relay still takes it
    a_side, b_side = socket.socketpair()
    client = trio.SocketStream(trio.socket.from_stdlib_socket(a_side))
    pair_id, waiter = relay.new()
    await relay.send("dial", fd=client.socket.fileno(), id=pair_id, host=answer.host,
                     port=answer.port, token=token, key_in=key_to, key_out=key_ot)
    with trio.fail_after(20):
        assert (await waiter.next("dialed"))["ok"]
        await client.aclose()
        b_side.sendall(b"still works")
        b_side.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := await trio.to_thread.run_sync(b_side.recv, 100):
            got += chunk
    assert got == b"still works"
    b_side.close()


async def test_an_opener_that_speaks_first_stays_on_the_stream(nursery):
    """The HTTP ingress writes its request on the stream at once: the target takes it as
    data (not as a path request) and the answer comes back on the stream."""
    pair = await setup(nursery)
    stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
    request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    with trio.fail_after(20):
        await stream.send(request)
        await stream.close()
        got = b""
        try:
            while True:
                got += await stream.receive()
        except trio.EndOfChannel:
            pass
    assert got == request


async def test_a_dead_relay_cuts_its_forwards_and_the_next_stays_on_the_stream(nursery):
    pair = await setup(nursery)
    port = await ingress(pair, nursery)
    with trio.fail_after(60):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"hello")
        assert await client.receive_some(100) == b"hello"
        relay = await fastpath.relay()
        assert relay is not None and relay.process is not None
        relay.process.kill()
        with pytest.raises(trio.BrokenResourceError):
            while await client.receive_some(100):
                pass
            raise trio.BrokenResourceError  # EOF: cut too
        await pair.done.wait()
        assert pair.results == [False]
        await client.aclose()
        pair.done = trio.Event()
        before = pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent
        assert await exchange(port, PAYLOAD[:65536]) == PAYLOAD[:65536]
        await pair.done.wait()
    assert pair.results == [False, True]
    assert pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent - before >= 65536


@pytest.mark.parametrize("then", ["abort", "garbage"])
async def test_an_opener_that_vanishes_after_the_offer_ends_the_target_cleanly(nursery, then):
    """The opener resets the stream (or sends what is no path message) after the target
    registered the forward with its relay: the target ends its side without an error
    escaping its handler."""
    pair = await setup(nursery)
    stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
    await stream.send(fastpath.encode_message(fastpath.ForwardPath(kind="request",
                                                                   share=os.urandom(32))))
    with trio.fail_after(20):
        answer = fastpath.decode_message(await stream.receive(), fastpath.ForwardPath)
        assert answer.kind == "accept"
        if then == "abort":
            await stream.abort("gone")
        else:
            await stream.send(b"not a path message")
        await pair.target_done.wait()
    assert pair.served == [None]


async def test_a_target_without_a_direct_address_declines_and_no_relay_starts(
        nursery, monkeypatch):
    """A relayed or hole-punched mesh connection (no direct address): the target declines,
    the forward stays on the stream, and neither side starts a relay process."""
    monkeypatch.setattr(fastpath, "direct_host", lambda stream: None)
    pair = await setup(nursery)
    port = await ingress(pair, nursery)
    with trio.fail_after(60):
        assert await exchange(port, PAYLOAD[:65536]) == PAYLOAD[:65536]
        await pair.done.wait()
    assert pair.results == [True]
    assert pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent >= 65536
    with pytest.raises(LookupError):
        fastpath._RELAY.get()
