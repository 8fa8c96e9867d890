"""TcpTransport in one process over real loopback sockets: admission and refusals (with
the state of both sides unchanged), connection reuse, duplicates, keepalive, bad input."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import trio
import trio.testing

from meshcloud.auth import MeshAuthenticator
from meshcloud.errors import (
    AuthError,
    ConnectionLost,
    LocalProtocolError,
    StreamReset,
    TransportError,
)
from meshcloud.identity.keys import SigningKey
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.testing import TestMesh, forge_issuer_signature
from meshcloud.transport.base import PeerConnected, PeerDisconnected
from meshcloud.transport.conformance import echo
from meshcloud.transport.handshake import HandshakeCore, HandshakeStatus
from meshcloud.transport.mux import MuxConfig
from meshcloud.transport.tcp import TcpConfig, TcpTransport

ECHO = "/test/echo/1"
FAST = TcpConfig(mux=MuxConfig(keepalive_interval=0.1, dead_timeout=0.5),
                 handshake_timeout=0.5, connect_timeout=0.5)


async def start(nursery, key, authenticator, config=None) -> TcpTransport:
    transport = TcpTransport(key, authenticator, config=config)
    transport.serve(ECHO, echo)
    await nursery.start(transport.run)
    return transport


async def start_member(nursery, member, config=None) -> TcpTransport:
    return await start(nursery, member.key, member.authenticator, config)


async def round_trip(transport: TcpTransport, peer: bytes, data: bytes = b"ping") -> bytes:
    stream = await transport.open_stream(peer, ECHO)
    await stream.send(data)
    reply = await stream.receive()
    await stream.close()
    return reply


def drain(channel) -> list:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


# --- admission ------------------------------------------------------------------------------


async def test_members_connect_and_learn_each_others_addresses(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    peer = await a.dial(b.listen_addresses[0], expect=b.local_id)
    assert peer.node_id == b.local_id and peer.cert == mesh.members[1].cert
    assert peer.listen_addresses == tuple(b.listen_addresses)
    assert peer.agent_version.startswith("meshcloud/")
    assert a.addresses_of(b.local_id) == b.listen_addresses
    assert b.addresses_of(a.local_id) == a.listen_addresses  # announced in the handshake
    assert await round_trip(b, a.local_id, b"from the listener") == b"from the listener"
    assert len(a.connections_to(b.local_id)) == 1 and len(b.connections_to(a.local_id)) == 1


def lenient_stranger(mesh: TestMesh) -> tuple[SigningKey, MeshAuthenticator]:
    """A member of another mesh whose own node would let us in (so our side decides)."""
    stranger = TestMesh.with_members(1).members[0]
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms,
                             stranger.cert)
    return stranger.key, auth


def forged(mesh: TestMesh) -> tuple[SigningKey, MeshAuthenticator]:
    """A real member's key with its certificate's issuer signature forged."""
    member = mesh.add_member()
    cert = forge_issuer_signature(member.cert)
    return member.key, MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(),
                                         mesh.wall_ms, cert)


def revoked(mesh: TestMesh) -> tuple[SigningKey, MeshAuthenticator]:
    member = mesh.add_member()
    mesh.members[0].records.revoke_node(member.id, mesh.now_ms)
    return member.key, member.authenticator


REFUSALS = {
    "outsider without certificate": (lambda mesh: mesh.outsider(), "no membership certificate"),
    "forged certificate": (forged, "not signed by its issuer"),
    "certificate of another mesh": (lenient_stranger, "another mesh"),
    "revoked node": (revoked, "revoked"),
}


@pytest.mark.parametrize("make, reason", REFUSALS.values(), ids=REFUSALS.keys())
async def test_refused_peers_leave_both_sides_unchanged(nursery, make, reason):
    mesh = TestMesh.with_members(2)
    listener = await start_member(nursery, mesh.members[0])
    key, auth = make(mesh)
    intruder = await start(nursery, key, auth)
    listener_events, intruder_events = listener.peer_events(), intruder.peer_events()
    with pytest.raises(AuthError, match=reason):
        await intruder.dial(listener.listen_addresses[0])
    assert mesh.members[0].authenticator.refused == 1
    for side, events in ((listener, listener_events), (intruder, intruder_events)):
        assert side.connected_peers() == []
        assert side._connections == {} and side._dials == {}
        assert drain(events) == []
    assert listener.addresses_of(key.id) == []
    assert intruder.addresses_of(listener.local_id) == []
    # and the listener still serves members
    friend = await start_member(nursery, mesh.members[1])
    await friend.dial(listener.listen_addresses[0])
    assert await round_trip(friend, listener.local_id) == b"ping"


async def test_dialer_refuses_a_listener_of_another_mesh_before_showing_itself(nursery):
    mesh, other = TestMesh.with_members(1), TestMesh.with_members(1)
    a = await start_member(nursery, mesh.members[0])
    stranger = await start_member(nursery, other.members[0])
    events = stranger.peer_events()
    with pytest.raises(AuthError, match="another mesh"):
        await a.dial(stranger.listen_addresses[0])
    assert a.connected_peers() == [] and stranger.connected_peers() == []
    assert drain(events) == []


async def test_dialling_ourselves_is_refused(nursery):
    mesh = TestMesh.with_members(1)
    a = await start_member(nursery, mesh.members[0])
    with pytest.raises(AuthError, match="our own node"):
        await a.dial(a.listen_addresses[0])
    assert a.connected_peers() == [] and a.addresses_of(a.local_id) == []


async def test_expecting_another_node_at_an_address_is_refused(nursery):
    mesh = TestMesh.with_members(3)
    a, b = [await start_member(nursery, m) for m in mesh.members[:2]]
    with pytest.raises(AuthError, match="another node than the one expected"):
        await a.dial(b.listen_addresses[0], expect=mesh.members[2].id)
    assert a.connected_peers() == [] and a.addresses_of(b.local_id) == []


# --- connections ----------------------------------------------------------------------------


async def test_dials_are_shared_and_connections_reused(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    events = a.peer_events()
    peers = []

    async def dial():
        peers.append(await a.dial(b.listen_addresses[0]))

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(dial)
    assert {p.node_id for p in peers} == {b.local_id}
    assert len(a.connections_to(b.local_id)) == 1
    assert len(drain(events)) == 1
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    assert len(a.connections_to(b.local_id)) == 1


async def test_a_dial_its_caller_abandons_does_not_fail_those_sharing_it(nursery):
    """A caller's deadline (a sync giving up) cancels its dial; another task waiting on
    the same attempt (a background dial holding queued datagrams) dials again instead of
    failing with it."""
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    address = b.listen_addresses[0]
    impatient, got = trio.CancelScope(), []

    async def dial_impatiently():
        with impatient:
            await a.dial(address)

    async def dial():
        got.append(await a.dial(address, expect=b.local_id))

    async with trio.open_nursery() as inner:
        inner.start_soon(dial_impatiently)
        while address not in a._dials:
            await trio.lowlevel.checkpoint()
        inner.start_soon(dial)
        while a._dials[address].done.statistics().tasks_waiting < 1:
            await trio.lowlevel.checkpoint()
        impatient.cancel()  # the shared attempt is still in flight
    assert impatient.cancelled_caught
    assert [p.node_id for p in got] == [b.local_id]
    assert len(a.connections_to(b.local_id)) == 1


async def test_open_stream_dials_from_the_address_book(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    with pytest.raises(TransportError, match="no known address"):
        await a.open_stream(b.local_id, ECHO)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: connection refused
    a.set_addresses(b.local_id, [dead_address, *b.listen_addresses])
    assert await round_trip(a, b.local_id) == b"ping"


async def test_simultaneous_dials_leave_one_connection_and_cut_no_stream(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    a.set_addresses(b.local_id, b.listen_addresses)
    b.set_addresses(a.local_id, a.listen_addresses)
    streams = {}

    async def open_from(side, other):
        await side.dial(other.listen_addresses[0])
        stream = await side.open_stream(other.local_id, ECHO)
        await stream.send(b"opened on the first connection")
        streams[side] = stream

    async with trio.open_nursery() as inner:
        inner.start_soon(open_from, a, b)
        inner.start_soon(open_from, b, a)
    everyone = a.connections_to(b.local_id) + b.connections_to(a.local_id)
    with trio.fail_after(5):
        for stream in streams.values():  # streams on a retired connection still work
            assert await stream.receive() == b"opened on the first connection"
            await stream.send(b"still")
            assert await stream.receive() == b"still"
            await stream.close()
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
        retired = [c for c in everyone if c.retiring]
        for conn in retired:
            await conn.closed.wait()
    assert len(a.connections_to(b.local_id)) == 1 == len(b.connections_to(a.local_id))
    kept = a.connections_to(b.local_id)[0]
    smaller = min(a.local_id, b.local_id)
    if len(everyone) == 4:  # the race produced two connections: the rule chose one
        assert kept.dialer_id == smaller
    assert await round_trip(a, b.local_id) == b"ping"
    assert await round_trip(b, a.local_id) == b"ping"


async def test_disconnect_and_shutdown_are_reported_with_a_reason(nursery):
    mesh = TestMesh.with_members(3)
    a, b = [await start_member(nursery, m) for m in mesh.members[:2]]
    events = b.peer_events()
    await a.dial(b.listen_addresses[0])
    assert isinstance(await events.receive(), PeerConnected)
    stream = await b.open_stream(a.local_id, ECHO)
    await a.disconnect(b.local_id, "maintenance")
    with trio.fail_after(5):
        gone = await events.receive()
        with pytest.raises(ConnectionLost, match="maintenance"):
            await stream.receive()
    assert isinstance(gone, PeerDisconnected) and "maintenance" in gone.reason
    # a transport that stops says GOAWAY before closing
    async with trio.open_nursery() as inner:
        c = await start_member(inner, mesh.members[2])
        await b.dial(c.listen_addresses[0])
        assert isinstance(await events.receive(), PeerConnected)
        inner.cancel_scope.cancel()
    with trio.fail_after(5):
        gone = await events.receive()
    assert isinstance(gone, PeerDisconnected) and "shutting down" in gone.reason


async def test_dial_errors_are_transport_errors(nursery):
    mesh = TestMesh.with_members(1)
    a = await start_member(nursery, mesh.members[0], FAST)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(TransportError, match="refused"):
        await a.dial(f"127.0.0.1:{port}")
    with pytest.raises(TransportError, match="address"):
        await a.dial("not an address")
    silent = socket.socket()  # accepts TCP, never answers the handshake
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    with trio.fail_after(5), pytest.raises(TransportError, match="timed out"):
        await a.dial(f"127.0.0.1:{silent.getsockname()[1]}")
    silent.close()
    assert a.connected_peers() == []


# --- streams and datagrams ------------------------------------------------------------------


async def test_datagrams_wait_for_a_background_dial_and_never_raise(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0], FAST)
    b = await start_member(nursery, mesh.members[1])
    inbox = b.datagrams("/test/gossip/1")
    a.set_addresses(b.local_id, b.listen_addresses)
    for i in range(100):  # not connected yet: 64 wait for the dial, the rest are dropped
        a.send_datagram(b.local_id, "/test/gossip/1", b"%d" % i)
    got = []
    with trio.fail_after(5):
        while len(got) < 64:
            got.append((await inbox.receive())[1])
    assert got == [b"%d" % i for i in range(64)]
    a.send_datagram(b.local_id, "/test/gossip/1", b"x" * 70_000)  # too big: dropped
    a.send_datagram(SigningKey.generate().id, "/test/gossip/1", b"nobody")
    unreachable = SigningKey.generate().id
    a.set_addresses(unreachable, ["127.0.0.1:1"])
    a.send_datagram(unreachable, "/test/gossip/1", b"refused")
    a.send_datagram(b.local_id, "/test/gossip/1", b"last")
    with trio.fail_after(5):
        assert (await inbox.receive())[1] == b"last"


async def test_oversize_message_is_refused_locally(nursery):
    mesh = TestMesh.with_members(2)
    config = TcpConfig(mux=MuxConfig(max_message=1000))
    a = await start_member(nursery, mesh.members[0], config)
    b = await start_member(nursery, mesh.members[1])
    await a.dial(b.listen_addresses[0])
    stream = await a.open_stream(b.local_id, ECHO)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        await stream.send(bytes(1001))
    await stream.send(bytes(1000))
    assert len(await stream.receive()) == 1000


async def test_a_failing_handler_aborts_its_stream_only(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])

    async def broken(stream):
        await stream.receive()
        raise RuntimeError("bug in a handler")

    b.serve("/test/broken/1", broken)
    await a.dial(b.listen_addresses[0])
    stream = await a.open_stream(b.local_id, "/test/broken/1")
    await stream.send(b"x")
    with pytest.raises(StreamReset, match="handler failed"):
        await stream.receive()
    assert await round_trip(a, b.local_id) == b"ping"


async def test_joiner_cannot_open_members_protocols_even_bypassing_its_own_check(nursery):
    from meshcloud.identity.certs import make_join_proof
    from meshcloud.identity.invites import create_invite

    mesh = TestMesh.with_members(1)
    member = await start_member(nursery, mesh.members[0])
    token = create_invite(mesh.root, now=mesh.now_ms, ttl_ms=60_000, uses=1, bootstrap=(),
                          ledger=(mesh.members[0].id,))
    key = SigningKey.generate()
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms, None,
                             make_join_proof(token, key, now=mesh.now_ms))
    joiner = await start(nursery, key, auth)
    await joiner.dial(member.listen_addresses[0])
    (conn,) = joiner.connections_to(member.local_id)
    stream = conn.open_stream(ECHO)  # what a modified joiner could send
    await stream.send(b"let me gossip")
    with pytest.raises(StreamReset, match="join protocols"):
        await stream.receive()


# --- liveness and bad input -----------------------------------------------------------------


async def handshake_only_peer(mesh: TestMesh, listener_address: str) -> socket.socket:
    """A member that completes the handshake over a raw socket, then never says a word."""
    member = mesh.add_member()
    core = HandshakeCore(initiator=True, key=member.key, authenticator=member.authenticator)
    host, port = listener_address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setblocking(False)
    sock.sendall(core.data_to_send())
    while core.status is not HandshakeStatus.DONE:
        await trio.lowlevel.wait_readable(sock)
        data = sock.recv(65536)
        assert data, "listener closed during the handshake"
        core.receive_data(data)
        out = core.data_to_send()
        if out:
            sock.sendall(out)
    return sock


async def echo_once(transport: TcpTransport, peer: bytes, data: bytes) -> bytes:
    stream = await transport.open_stream(peer, ECHO)
    await stream.send(data)
    await stream.close()
    reply = await stream.receive()
    with pytest.raises(trio.EndOfChannel):
        await stream.receive()
    return reply


async def test_silent_peer_is_declared_dead_by_the_keepalive_while_a_stream_is_open(nursery):
    mesh = TestMesh.with_members(1)
    listener = await start_member(nursery, mesh.members[0], FAST)
    events = listener.peer_events()
    sock = await handshake_only_peer(mesh, listener.listen_addresses[0])
    try:
        with trio.fail_after(5):
            connected = await events.receive()
            assert isinstance(connected, PeerConnected)
            stream = await listener.open_stream(connected.peer.node_id, ECHO)
            started = trio.current_time()
            gone = await events.receive()
        assert isinstance(gone, PeerDisconnected)
        assert "keepalive" in gone.reason
        assert trio.current_time() - started < FAST.mux.dead_timeout + 0.5
        with pytest.raises(ConnectionLost):
            await stream.receive()
    finally:
        sock.close()


async def test_idle_connection_sends_nothing_then_is_retired(nursery):
    """No stream: no keepalive at all; after idle_timeout the connection is retired, and a
    peer that does not answer the GOAWAY is dropped by the keepalive of the retirement."""
    mesh = TestMesh.with_members(1)
    config = dataclasses.replace(FAST, idle_timeout=1.0)
    listener = await start_member(nursery, mesh.members[0], config)
    events = listener.peer_events()
    sock = await handshake_only_peer(mesh, listener.listen_addresses[0])
    try:
        with trio.fail_after(10):
            assert isinstance(await events.receive(), PeerConnected)
            started = trio.current_time()
            await trio.lowlevel.wait_readable(sock)  # the first byte since the handshake
            first_byte = trio.current_time() - started
            assert listener.connection_count == 0  # being retired: no longer counted
            assert listener.connected_peers() == []  # nor offered as a connected peer
            gone = await events.receive()
        # a keepalive would have pinged after 0.1 s; the idle connection said nothing
        # until its GOAWAY at idle_timeout
        assert first_byte >= 1.0 - 0.05
        assert isinstance(gone, PeerDisconnected)
        elapsed = trio.current_time() - started
        assert elapsed < 1.0 + FAST.mux.dead_timeout + 0.5
        assert listener.counters.idle_closes == 1
    finally:
        sock.close()


async def test_idle_connections_close_gracefully_and_redial_on_demand(nursery):
    mesh = TestMesh.with_members(2)
    config = dataclasses.replace(FAST, idle_timeout=0.3)
    a = await start_member(nursery, mesh.members[0], config)
    b = await start_member(nursery, mesh.members[1], config)
    events = a.peer_events()
    await a.dial(b.listen_addresses[0])
    with trio.fail_after(10):
        assert await echo_once(a, b.local_id, b"one") == b"one"
        assert isinstance(await events.receive(), PeerConnected)
        gone = await events.receive()
        assert isinstance(gone, PeerDisconnected) and "idle" in gone.reason
        assert a.connection_count == 0 and a.counters.connection_errors == 0
        # dialled again on demand, from the address book
        assert await echo_once(a, b.local_id, b"two") == b"two"
        got = b.datagrams("/test/dg/1")
        await a.disconnect(b.local_id)
        a.send_datagram(b.local_id, "/test/dg/1", b"short-lived")  # dials in the background
        assert await got.receive() == (a.local_id, b"short-lived")


async def test_connection_cap_retires_the_least_recently_used_idle_connection(nursery):
    mesh = TestMesh.with_members(5)
    config = dataclasses.replace(FAST, max_connections=3, idle_timeout=None)
    hub = await start_member(nursery, mesh.members[0], config)
    events = hub.peer_events()
    others = [await start_member(nursery, m, FAST) for m in mesh.members[1:]]
    with trio.fail_after(10):
        for other in others[:3]:
            await hub.dial(other.listen_addresses[0])
        busy = await hub.open_stream(others[0].local_id, ECHO)  # streams are never cut
        await busy.send(b"held")
        assert await busy.receive() == b"held"
        # (a datagram would not do: it goes sealed over UDP, not on the connection)
        assert await echo_once(hub, others[1].local_id, b"x") == b"x"  # others[2]: least recent
        await hub.dial(others[3].listen_addresses[0])
        # over the cap: the least recently used idle connection is retired gracefully
        while not isinstance(event := await events.receive(), PeerDisconnected):
            pass
        assert event.node_id == others[2].local_id
        assert hub.counters.evictions == 1 and hub.counters.connection_errors == 0
        assert hub.connection_count == 3
        await busy.send(b"still open")
        assert await busy.receive() == b"still open"


async def test_counters_count_bytes_and_packets_both_ways(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    await a.dial(b.listen_addresses[0])
    with trio.fail_after(10):
        assert await echo_once(a, b.local_id, bytes(10_000)) == bytes(10_000)
    assert a.counters.bytes_sent > 10_000 and a.counters.bytes_received > 10_000
    assert b.counters.bytes_sent > 10_000 and b.counters.bytes_received > 10_000
    # handshake (two messages from the dialer) and the request
    assert a.counters.packets_sent >= 3 and b.counters.packets_received >= 3
    assert a.counters.connections_opened == b.counters.connections_opened == 1
    echo_usage = a.usage.by_protocol[ECHO]
    assert (echo_usage.streams_opened, echo_usage.bytes_sent, echo_usage.bytes_received) == (
        1, 10_000, 10_000)
    assert b.usage.by_protocol[ECHO].bytes_received == 10_000
    assert a.statistics()["protocols"][ECHO]["messages_sent"] == 1


async def test_dials_are_counted_for_the_protocol_that_needed_them(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    a.set_addresses(b.local_id, b.listen_addresses)
    with trio.fail_after(10):
        assert await echo_once(a, b.local_id, b"first") == b"first"  # dials
        assert await echo_once(a, b.local_id, b"again") == b"again"  # reuses it
        assert await echo_once(b, a.local_id, b"back") == b"back"  # b reuses it too
    assert a.usage.by_protocol[ECHO].dials == 1
    assert a.statistics()["protocols"][ECHO]["dials"] == 1
    assert b.usage.by_protocol[ECHO].dials == 0
    assert a.counters.connections_opened == b.counters.connections_opened == 1


async def test_silent_sockets_cannot_exhaust_the_listener(nursery):
    mesh = TestMesh.with_members(2)
    config = TcpConfig(handshake_timeout=0.5, first_message_timeout=0.5, max_silent=2)
    listener = await start_member(nursery, mesh.members[0], config)
    port = int(listener.listen_addresses[0].rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    for sock in silent:
        sock.setblocking(False)
    await trio.testing.wait_all_tasks_blocked(0.05)  # both accepted, waiting for msg 1
    assert listener._handshaking == 2
    extra = socket.create_connection(("127.0.0.1", port))
    extra.setblocking(False)
    with trio.fail_after(0.4):  # the oldest silent one is shed at once for the newcomer
        await trio.lowlevel.wait_readable(silent[0])
        assert silent[0].recv(100) == b""
    assert listener._handshaking == 2 and listener.counters.handshakes_shed == 1
    with trio.fail_after(5):  # the others are dropped after first_message_timeout
        for sock in (silent[1], extra):
            await trio.lowlevel.wait_readable(sock)
            assert sock.recv(100) == b""
    friend = await start_member(nursery, mesh.members[1])
    await friend.dial(listener.listen_addresses[0])
    assert await round_trip(friend, listener.local_id) == b"ping"
    assert listener.counters.handshakes_shed == 3
    for sock in [*silent, extra]:
        sock.close()


async def test_garbage_after_the_handshake_drops_only_that_connection(nursery):
    mesh = TestMesh.with_members(2)
    listener = await start_member(nursery, mesh.members[0])
    events = listener.peer_events()
    sock = await handshake_only_peer(mesh, listener.listen_addresses[0])
    try:
        sock.send(b"\x00\x20" + bytes(32))  # a Noise message that fails authentication
        with trio.fail_after(5):
            await events.receive()
            gone = await events.receive()
        assert isinstance(gone, PeerDisconnected) and "protocol error" in gone.reason
    finally:
        sock.close()
    junk = socket.create_connection(("127.0.0.1", int(listener.listen_addresses[0].split(":")[1])))
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
    friend = await start_member(nursery, mesh.members[1])
    await friend.dial(listener.listen_addresses[0])
    assert await round_trip(friend, listener.local_id) == b"ping"
    junk.close()


async def test_busy_peer_is_not_declared_dead(nursery):
    """A bulk transfer lasting several dead_timeouts keeps the connection alive."""
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0], FAST)
    b = await start_member(nursery, mesh.members[1], FAST)
    events = a.peer_events()
    await a.dial(b.listen_addresses[0])
    stream = await a.open_stream(b.local_id, ECHO)
    chunk = bytes(1024 * 1024)
    started = trio.current_time()
    rounds = 0
    while trio.current_time() - started < 3 * FAST.mux.dead_timeout:
        await stream.send(chunk)
        assert len(await stream.receive()) == len(chunk)
        rounds += 1
    assert rounds > 1
    assert [type(e) for e in drain(events)] == [PeerConnected]


async def test_handler_that_returns_early_resets_the_peers_side(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])

    async def one_and_done(stream):
        await stream.send(b"bye")  # returns without reading or closing

    b.serve("/test/once/1", one_and_done)
    await a.dial(b.listen_addresses[0])
    stream = await a.open_stream(b.local_id, "/test/once/1")
    await stream.send(b"are you there?")
    assert await stream.receive() == b"bye"
    with pytest.raises(trio.EndOfChannel):  # the handler's side ended cleanly...
        await stream.receive()
    with trio.fail_after(5), pytest.raises(StreamReset, match="handler finished"):
        while True:  # ...and ours is refused: nobody reads it any more
            await stream.send(b"more")


async def test_dials_start_from_the_loopback_address_the_node_listens_on(nursery):
    """Nodes on their own 127.x addresses connect from them (iptables can cut them apart)."""
    mesh = TestMesh.with_members(2)
    a = TcpTransport(mesh.members[0].key, mesh.members[0].authenticator,
                     listen=["127.0.0.21:0"])
    b = TcpTransport(mesh.members[1].key, mesh.members[1].authenticator,
                     listen=["127.0.0.22:0"])
    b.serve(ECHO, echo)
    events = b.peer_events()
    await nursery.start(a.run)
    await nursery.start(b.run)
    await a.dial(b.listen_addresses[0])
    with trio.fail_after(5):
        event = await events.receive()
    assert isinstance(event, PeerConnected) and event.address.startswith("127.0.0.21:")
    assert await round_trip(a, b.local_id) == b"ping"


def test_source_address_rule():
    from meshcloud.transport.sockets import source_for

    assert source_for(["127.0.0.11:7946"], "127.0.0.12") == "127.0.0.11"
    assert source_for(["0.0.0.0:7946", "127.0.0.11:1"], "127.0.0.12") == "127.0.0.11"
    assert source_for(["127.0.0.11:7946"], "192.168.1.9") is None  # routing decides
    assert source_for(["0.0.0.0:7946"], "127.0.0.12") is None
    assert source_for(["[::1]:7946"], "127.0.0.12") is None
    assert source_for(["[::1]:7946"], "::1") is None  # the kernel's own choice
    assert source_for(["127.0.0.1:7946"], "127.0.0.12") is None


def test_node_config_sets_the_connection_cap(tmp_path):
    from meshcloud.agent.net import tcp_transport
    from meshcloud.config import load_config
    from meshcloud.errors import ConfigError

    member = TestMesh.with_members(1).members[0]
    path = tmp_path / "config.toml"
    path.write_text("max_connections = 5\n")
    transport = tcp_transport(member.key, member.authenticator, load_config(path))
    assert transport.config.max_connections == 5
    assert TcpConfig().max_connections == 64 and TcpConfig().idle_timeout == 30.0
    path.write_text("max_connections = 0\n")
    with pytest.raises(ConfigError, match="max_connections"):
        load_config(path)
    with pytest.raises(ValueError):
        TcpConfig(idle_timeout=0)


class _TimerSteps(trio.abc.Instrument):
    """Counts the task steps of the connections' timer tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Connection._timer"):
            self.steps += 1


async def test_requests_on_fresh_streams_do_not_wake_the_timer(nursery):
    """Opening and releasing a stream on an idle connection moves the timer's deadline
    instead of waking it: requests cost the timer no task step (it used to take two per
    request on each side, a quarter of a request's CPU)."""
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    assert await echo_once(a, b.local_id, b"warm") == b"warm"
    steps = _TimerSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        started = trio.current_time()
        for index in range(200):
            assert await echo_once(a, b.local_id, b"%d" % index) == b"%d" % index
        elapsed = trio.current_time() - started
    finally:
        trio.lowlevel.remove_instrument(steps)
    # the keepalive looks once per interval and side while requests come; never per request
    allowed = 4 * (2 + elapsed / MuxConfig().keepalive_interval)
    assert steps.steps <= allowed, (steps.steps, elapsed)


class _StepsAfterReturn(trio.abc.Instrument):
    """Counts the steps of handler tasks that begin after the handler itself returned."""

    def __init__(self) -> None:
        self.returned: set[trio.lowlevel.Task] = set()
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.returned:
            self.steps += 1


async def test_a_handler_that_closed_its_stream_costs_no_step_after_it_returns(nursery):
    """The transport finishes a returned handler's stream; a handler that closed it itself
    (most do) leaves nothing to queue, and its task ends in the step the handler returned
    in (a second close used to take one more task step per request)."""
    counter = _StepsAfterReturn()
    served = []
    all_served = trio.Event()

    async def echo_and_close(stream):
        data = await stream.receive()
        await stream.send(data)
        with pytest.raises(trio.EndOfChannel):
            await stream.receive()
        await stream.close()
        served.append(data)
        counter.returned.add(trio.lowlevel.current_task())
        if len(served) == 20:
            all_served.set()

    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0])
    b = await start_member(nursery, mesh.members[1])
    b.serve("/test/echo-close/1", echo_and_close)
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    trio.lowlevel.add_instrument(counter)
    try:
        for index in range(20):
            stream = await a.open_stream(b.local_id, "/test/echo-close/1")
            await stream.send(b"%d" % index)
            await stream.close()
            assert await stream.receive() == b"%d" % index
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
        with trio.fail_after(10):
            await all_served.wait()
        await trio.testing.wait_all_tasks_blocked()  # a step due after the last return runs
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert len(counter.returned) == 20
    assert counter.steps == 0
