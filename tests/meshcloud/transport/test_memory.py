"""The in-memory transport under a virtual clock: streams, datagrams, faults, admission."""

from __future__ import annotations

import pytest
import trio

from meshcloud.errors import AuthError, ConnectionLost, StreamReset, TransportError
from meshcloud.testing import TestMesh
from meshcloud.transport.base import PeerConnected, PeerDisconnected, request
from meshcloud.transport.memory import MemoryNetwork

ECHO = "/test/echo/1"


async def echo(stream):
    async with stream:
        while True:
            try:
                data = await stream.receive()
            except trio.EndOfChannel:
                return
            await stream.send(data)


async def start(nursery, network, member):
    transport = network.add(member.key, member.authenticator)
    transport.serve(ECHO, echo)
    await nursery.start(transport.run)
    return transport


async def test_stream_round_trip_and_half_close(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork(latency=0.01)
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    peer = await a.dial(b.listen_addresses[0])
    assert peer.node_id == b.local_id
    stream = await a.open_stream(b.local_id, ECHO)
    for i in range(100):
        await stream.send(b"x%d" % i)
    await stream.close()
    got = []
    with pytest.raises(trio.EndOfChannel):
        while True:
            got.append(await stream.receive())
    assert got == [b"x%d" % i for i in range(100)]


async def test_outsider_and_wrong_mesh_are_refused(nursery, autojump_clock):
    mesh = TestMesh.with_members(1)
    network = MemoryNetwork()
    a = await start(nursery, network, mesh.members[0])
    key, auth = mesh.outsider()
    intruder = network.add(key, auth)
    await nursery.start(intruder.run)
    with pytest.raises(AuthError, match="no membership certificate"):
        await intruder.dial(a.listen_addresses[0])
    other_mesh = TestMesh.with_members(1)
    stranger = network.add(other_mesh.members[0].key, other_mesh.members[0].authenticator)
    await nursery.start(stranger.run)
    with pytest.raises(AuthError, match="another mesh"):
        await stranger.dial(a.listen_addresses[0])
    assert a.connected_peers() == []


async def test_crash_breaks_streams_with_connection_lost(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    events = a.peer_events()
    await a.dial(b.listen_addresses[0])
    assert isinstance(await events.receive(), PeerConnected)
    stream = await a.open_stream(b.local_id, ECHO)
    network.crash(b.local_id)
    with pytest.raises(ConnectionLost):
        await stream.receive()
    event = await events.receive()
    assert isinstance(event, PeerDisconnected) and event.node_id == b.local_id
    with pytest.raises(TransportError):
        await a.dial(b.listen_addresses[0])


async def test_partition_kills_connections_after_dead_after(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork(dead_after=4.0)
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    await a.dial(b.listen_addresses[0])
    stream = await a.open_stream(b.local_id, ECHO)
    start_time = trio.current_time()
    network.partition({a.local_id}, {b.local_id})
    with pytest.raises(ConnectionLost):
        await stream.receive()
    assert trio.current_time() - start_time == pytest.approx(4.0)


async def test_a_partition_cuts_a_handshake_in_flight(nursery, autojump_clock):
    """A dial whose handshake is under way when the partition comes times out, and no
    connection crosses the partition."""
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork(latency=0.5, dial_timeout=3.0)
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    outcome: list[BaseException] = []

    async def dial() -> None:
        try:
            await a.dial(b.listen_addresses[0])
        except TransportError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as inner:
        inner.start_soon(dial)
        await trio.sleep(0.1)  # the handshake is in flight (1.5 round trips of 0.5 s)
        network.partition({a.local_id}, {b.local_id})
    assert len(outcome) == 1 and "timed out" in str(outcome[0])
    assert a.connected_peers() == [] and b.connected_peers() == []


async def test_datagrams_respect_loss_and_partitions(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork(seed=3, loss=0.5, latency=0.005)
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    inbox = b.datagrams("/test/dgram/1")
    await a.dial(b.listen_addresses[0])
    for i in range(1000):
        a.send_datagram(b.local_id, "/test/dgram/1", b"%d" % i)
    await trio.sleep(1)
    received = []
    while True:
        try:
            received.append(inbox.receive_nowait())
        except trio.WouldBlock:
            break
    assert 400 < len(received) < 600
    assert all(sender == a.local_id for sender, _ in received)
    network.loss = 0
    network.partition({a.local_id}, {b.local_id})
    a.send_datagram(b.local_id, "/test/dgram/1", b"lost")
    await trio.sleep(1)
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_unserved_protocol_and_abort(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    a.set_addresses(b.local_id, b.listen_addresses)
    with pytest.raises(StreamReset, match="does not serve"):
        await a.open_stream(b.local_id, "/nope/1")

    async def aborter(stream):
        await stream.receive()
        await stream.abort("no thanks")

    b.serve("/test/abort/1", aborter)
    stream = await a.open_stream(b.local_id, "/test/abort/1")
    await stream.send(b"hi")
    with pytest.raises(StreamReset, match="no thanks"):
        await stream.receive()


async def test_request_helper(nursery, autojump_clock):
    from meshcloud.identity.certs import Binding

    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    a = await start(nursery, network, mesh.members[0])
    b = await start(nursery, network, mesh.members[1])
    a.set_addresses(b.local_id, b.listen_addresses)
    msg = Binding(mesh_id=b"m", node_public=b"k", invite_id=b"i", issued_at=5)
    assert await request(a, b.local_id, ECHO, msg, Binding) == msg
