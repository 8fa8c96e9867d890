"""TcpTransport under faults: crossed dials, damaged handshakes, handshake floods. One
broken connection must end that connection only: the transport keeps serving others."""

from __future__ import annotations

import trio
import trio.testing

from meshcloud.errors import AuthError, TransportError
from meshcloud.testing import TestMesh
from meshcloud.transport.base import PeerDisconnected
from meshcloud.transport.conformance import echo
from meshcloud.transport.tcp import TcpConfig, TcpTransport

ECHO = "/test/echo/1"
GOSSIP = "/test/gossip/1"


async def start(nursery, member, config=None) -> TcpTransport:
    transport = TcpTransport(member.key, member.authenticator, config=config)
    transport.serve(ECHO, echo)
    await nursery.start(transport.run)
    return transport


async def round_trip(transport: TcpTransport, peer: bytes, data: bytes = b"ping") -> bytes:
    stream = await transport.open_stream(peer, ECHO)
    await stream.send(data)
    reply = await stream.receive()
    await stream.close()
    return reply


async def wait_disconnected(events, peer: bytes) -> None:
    async for event in events:
        if isinstance(event, PeerDisconnected) and event.node_id == peer:
            return


# --- crossed dials ------------------------------------------------------------------------------


async def test_crossed_dials_never_break_a_handshake_or_the_transport(nursery):
    """A node drops a peer and dials it again while the peer, which keeps gossiping to it,
    dials back at once (a background dial): the dials cross, many times. Every handshake
    completes, the transports keep running, and the datagrams keep arriving."""
    mesh = TestMesh.with_members(3)
    a = await start(nursery, mesh.members[0])
    b = await start(nursery, mesh.members[1])
    inbox_a, inbox_b = a.datagrams(GOSSIP), b.datagrams(GOSSIP)
    a.set_addresses(b.local_id, b.listen_addresses)
    b.set_addresses(a.local_id, a.listen_addresses)
    stop = trio.Event()

    async def gossip() -> None:
        while not stop.is_set():
            b.send_datagram(a.local_id, GOSSIP, b"b")
            await trio.lowlevel.checkpoint()

    await a.dial(b.listen_addresses[0])
    nursery.start_soon(gossip)
    for _ in range(150):
        await a.disconnect(b.local_id, "again")
        await a.dial(b.listen_addresses[0], expect=b.local_id)
    stop.set()
    for side in (a, b):
        assert side.running
        assert side.counters.handshake_errors == 0, side.counters
    drained = 0
    while True:
        try:
            inbox_a.receive_nowait()
            drained += 1
        except trio.WouldBlock:
            break
    assert drained > 0
    with trio.fail_after(5):
        a.send_datagram(b.local_id, GOSSIP, b"after")
        assert await inbox_b.receive() == (a.local_id, b"after")
    c = await start(nursery, mesh.members[2])
    await c.dial(a.listen_addresses[0])
    assert await round_trip(c, a.local_id) == b"ping"
    assert await round_trip(a, b.local_id) == b"ping"


# --- damaged handshakes ---------------------------------------------------------------------------


class FlippingProxy:
    """A man in the middle on 127.0.0.1: forwards each connection to ``upstream`` and flips
    one byte, at ``offset`` of the direction ``towards`` ("listener" or "dialer"), in the
    next connection only (later ones pass unharmed until it is armed again)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.armed: tuple[str, int] | None = None
        self.forwarded = {"listener": 0, "dialer": 0}
        self.address = ""

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, downstream: trio.SocketStream) -> None:
        armed, self.armed = self.armed, None
        host, port = self.upstream.rsplit(":", 1)
        self.forwarded = {"listener": 0, "dialer": 0}
        try:
            upstream = await trio.open_tcp_stream(host, int(port))
        except OSError:
            await downstream.aclose()
            return
        async with upstream, downstream, trio.open_nursery() as pumps:
            pumps.start_soon(self._pump, downstream, upstream, "listener", armed, pumps)
            pumps.start_soon(self._pump, upstream, downstream, "dialer", armed, pumps)

    async def _pump(self, source, sink, towards, armed, pumps) -> None:
        try:
            while data := await source.receive_some(65536):
                start = self.forwarded[towards]
                self.forwarded[towards] += len(data)
                if armed is not None and armed[0] == towards:
                    index = armed[1] - start
                    if 0 <= index < len(data):
                        data = bytearray(data)
                        data[index] ^= 0x40
                await sink.send_all(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        pumps.cancel_scope.cancel()


async def test_a_damaged_byte_anywhere_in_a_handshake_ends_that_connection_only(nursery):
    """Every byte of a handshake, either way, flipped in turn by a man in the middle: each
    such dial fails with one clear, typed error (a background dial, started by a datagram,
    shares it), and both ends keep serving everyone else."""
    mesh = TestMesh.with_members(3)
    config = TcpConfig(handshake_timeout=0.5)  # a damaged length prefix waits for this
    a = await start(nursery, mesh.members[0], config)
    b = await start(nursery, mesh.members[1], config)
    proxy = FlippingProxy(b.listen_addresses[0])
    await nursery.start(proxy.run)
    await a.dial(proxy.address)  # a clean handshake through the proxy: how long it is
    sizes = dict(proxy.forwarded)
    assert sizes["listener"] > 34 and sizes["dialer"] > 34
    await a.disconnect(b.local_id)
    a.set_addresses(b.local_id, [proxy.address])
    outcomes = {"failed": 0, "connected": 0}
    for towards in ("listener", "dialer"):
        for offset in range(sizes[towards]):
            proxy.armed = (towards, offset)
            a.send_datagram(b.local_id, GOSSIP, b"gossip")  # a background dial, queued
            try:
                with trio.fail_after(5):
                    await a.dial(proxy.address, expect=b.local_id)
            except (TransportError, AuthError):
                outcomes["failed"] += 1
            else:
                outcomes["connected"] += 1
            await a.disconnect(b.local_id)
            assert a.running and b.running
    assert outcomes == {"failed": sizes["listener"] + sizes["dialer"], "connected": 0}
    assert a.counters.handshake_errors + b.counters.handshake_errors > 0
    c = await start(nursery, mesh.members[2])
    await c.dial(b.listen_addresses[0])
    assert await round_trip(c, b.local_id) == b"ping"
    await c.dial(a.listen_addresses[0])
    assert await round_trip(c, a.local_id) == b"ping"
    assert await round_trip(a, b.local_id) == b"ping"  # directly, not through the proxy


# --- handshake floods ---------------------------------------------------------------------------


async def keep_silent_socket(port: int, opened: list[int], all_open: trio.Event) -> None:
    """One flooder: a connection that never says a word, reopened whenever it is closed
    (until cancelled)."""
    while True:
        sock = trio.socket.socket()
        try:
            await sock.connect(("127.0.0.1", port))
            opened[0] += 1
            if opened[0] == 80:
                all_open.set()
            await sock.recv(1)  # b"" (or a reset) once the listener closed it
        except OSError:
            await trio.lowlevel.checkpoint()
        finally:
            sock.close()


async def test_a_member_and_a_joiner_get_in_through_a_flood_of_silent_sockets(nursery):
    """80 silent sockets from 127.0.0.1, reopened as soon as the listener closes them,
    more than every slot of the old design (64): a member on the same address connects
    and a joiner joins meanwhile."""
    from meshcloud.auth import MeshAuthenticator
    from meshcloud.identity.certs import make_join_proof
    from meshcloud.identity.keys import SigningKey
    from meshcloud.join import JOIN_PROTOCOL, request_certificate
    from meshcloud.membership import MemoryMembershipRecords

    mesh = TestMesh.with_members(2)
    host = mesh.members[0]
    listener = await start(nursery, host)
    service = host.join_service(mesh, listener)
    listener.serve(JOIN_PROTOCOL, service.handle)
    port = int(listener.listen_addresses[0].rsplit(":", 1)[1])
    opened, all_open = [0], trio.Event()
    async with trio.open_nursery() as flood:
        for _ in range(80):
            flood.start_soon(keep_silent_socket, port, opened, all_open)
        with trio.fail_after(10):
            await all_open.wait()
        member = await start(nursery, mesh.members[1])
        with trio.fail_after(10):
            await member.dial(listener.listen_addresses[0])
            assert await round_trip(member, listener.local_id) == b"ping"
        token = mesh.invite(ttl_ms=60_000)
        key = SigningKey.generate()
        joiner = TcpTransport(key, MeshAuthenticator(
            mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms, None,
            make_join_proof(token, key, now=mesh.now_ms)))
        await nursery.start(joiner.run)
        with trio.fail_after(20):
            accepted = await request_certificate(joiner, listener.listen_addresses)
        assert accepted.cert.node_public == key.public
        # the flood held its whole share of slots throughout, and was shed, not served
        assert listener._slots.silent == listener.config.max_silent_per_source
        assert listener.counters.handshakes_shed > 0
        flood.cancel_scope.cancel()
    assert listener.running and listener.counters.handshakes_shed > 0
    assert service.admitted == 1
