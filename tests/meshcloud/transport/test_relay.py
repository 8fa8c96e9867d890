"""Relay circuits over real loopback sockets: a node reachable only through a relay, the
end-to-end session running through it (the relay forwards ciphertext only), limits, and
what is refused."""

from __future__ import annotations

import pytest
import trio

from meshcloud.errors import TransportError
from meshcloud.testing import TestMesh
from meshcloud.transport.addresses import relay_address
from meshcloud.transport.conformance import echo
from meshcloud.transport.relay import RelayService
from meshcloud.transport.relaylimits import RelayConfig
from meshcloud.transport.tcp import TcpTransport

ECHO = "/test/echo/1"
SECRET = b"the plaintext the relay must never see " * 4


class TappedRelay(RelayService):
    """A relay that records every byte it forwards (to show it is ciphertext)."""

    seen: bytearray

    async def _forward(self, src, dst, source, nursery):  # type: ignore[override]
        outer = self

        class Tap:
            peer = src.peer
            protocol = src.protocol

            async def receive(self) -> bytes:
                data = await src.receive()
                outer.seen += data
                return data

            async def abort(self, reason: str = "") -> None:
                await src.abort(reason)

        await super()._forward(Tap(), dst, source, nursery)  # type: ignore[arg-type]


async def start(nursery, member, relay_cls=RelayService, config=None):
    transport = TcpTransport(member.key, member.authenticator)
    transport.serve(ECHO, echo)
    service = relay_cls(transport, config)
    service.install()
    await nursery.start(transport.run)
    return transport, service


async def relayed_trio(nursery, relay_cls=RelayService, config=None):
    mesh = TestMesh.with_members(3)
    a, _ = await start(nursery, mesh.members[0])
    r, relay = await start(nursery, mesh.members[1], relay_cls, config)
    b, b_relays = await start(nursery, mesh.members[2])
    # B cannot be dialled (A never learns where it listens); B reserves with R
    b.set_addresses(r.local_id, r.listen_addresses)
    await nursery.start(b_relays.reserve, r.local_id)
    a.set_addresses(r.local_id, r.listen_addresses)
    a.set_addresses(b.local_id, [relay_address(r.local_id)])
    return mesh, a, r, b, relay


async def round_trip(transport: TcpTransport, peer: bytes, data: bytes) -> bytes:
    stream = await transport.open_stream(peer, ECHO)
    await stream.send(data)
    reply = await stream.receive()
    await stream.close()
    return reply


async def test_a_node_behind_a_relay_is_reached_end_to_end(nursery):
    _, a, r, b, relay = await relayed_trio(nursery, TappedRelay)
    relay.seen = bytearray()
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, SECRET) == SECRET
    (conn,) = a.connections_to(b.local_id)
    assert conn.relayed and conn.peer.node_id == b.local_id
    assert b.connections_to(a.local_id)[0].relayed
    # the relay carried the session but never the plaintext
    assert len(relay.seen) > len(SECRET) and SECRET[:20] not in relay.seen
    assert relay.limits.relayed_bytes == len(relay.seen)
    # and B can open streams back over the same relayed connection
    with trio.fail_after(10):
        assert await round_trip(b, a.local_id, b"back") == b"back"
    assert a.addresses_of(b.local_id) == [relay_address(r.local_id)]


async def test_a_large_transfer_goes_through(nursery):
    _, a, _, b, _ = await relayed_trio(nursery)
    data = bytes(range(256)) * 8192  # 2 MiB
    with trio.fail_after(30):
        stream = await a.open_stream(b.local_id, ECHO)
        got = bytearray()
        async with trio.open_nursery() as inner:
            async def send() -> None:
                for i in range(0, len(data), 65536):
                    await stream.send(data[i:i + 65536])
                await stream.close()
            inner.start_soon(send)
            while len(got) < len(data):
                got += await stream.receive()
    assert bytes(got) == data


async def test_relay_refuses_targets_without_a_reservation(nursery):
    mesh = TestMesh.with_members(3)
    a, _ = await start(nursery, mesh.members[0])
    r, relay = await start(nursery, mesh.members[1])
    b, _ = await start(nursery, mesh.members[2])
    await b.dial(r.listen_addresses[0], expect=r.local_id)  # connected, but no reservation
    a.set_addresses(r.local_id, r.listen_addresses)
    a.set_addresses(b.local_id, [relay_address(r.local_id)])
    with trio.fail_after(10), pytest.raises(TransportError, match="no reservation"):
        await a.open_stream(b.local_id, ECHO)
    assert relay.limits.refused == 1 and relay.limits.total_circuits == 0
    assert not a.connections_to(b.local_id)


async def test_circuits_per_peer_are_limited(nursery):
    config = RelayConfig(max_circuits_per_peer=1)
    _, a, r, b, relay = await relayed_trio(nursery, config=config)
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, b"one") == b"one"
    # the one circuit is in use: a second connection from A through R is refused
    with trio.fail_after(10), pytest.raises(TransportError, match="at most 1 circuits"):
        await a._dial_relayed(relay_address(r.local_id), b.local_id)
    assert relay.limits.refused == 1 and relay.limits.total_circuits == 1


async def test_when_the_relay_goes_the_relayed_connection_ends(nursery):
    _, a, r, b, _relay = await relayed_trio(nursery)
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, b"x") == b"x"
    (conn,) = a.connections_to(b.local_id)
    await r.disconnect(b.local_id, "relay going down")
    with trio.fail_after(10):
        await conn.closed.wait()
    assert not b.connections_to(a.local_id) or all(c.lost for c in b.connections_to(a.local_id))


async def test_relay_addresses_need_the_node_expected(nursery):
    mesh = TestMesh.with_members(1)
    a, _ = await start(nursery, mesh.members[0])
    with pytest.raises(TransportError, match="needs the node id"):
        await a.dial(relay_address(bytes(32)))
    with pytest.raises(TransportError, match="not a relay address"):
        await a.dial("relay://zz", expect=bytes(32))


async def test_when_a_relay_dies_peers_come_through_the_next_one(nursery):
    mesh = TestMesh.with_members(4)
    a, _ = await start(nursery, mesh.members[0])
    b, b_relays = await start(nursery, mesh.members[1])
    relays = []
    for member in mesh.members[2:]:
        relay = TcpTransport(member.key, member.authenticator)
        RelayService(relay).install()
        scope = trio.CancelScope()

        async def run(transport=relay, scope=scope, task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await transport.run(task_status=task_status)

        await nursery.start(run)
        relays.append((relay, scope))
        b.set_addresses(relay.local_id, relay.listen_addresses)
        a.set_addresses(relay.local_id, relay.listen_addresses)
        await nursery.start(b_relays.reserve, relay.local_id)
    (r1, r1_scope), (r2, _) = relays
    a.set_addresses(b.local_id, [relay_address(r1.local_id), relay_address(r2.local_id)])
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, b"one") == b"one"
    (first,) = a.connections_to(b.local_id)
    assert first.relayed and first.address == relay_address(r1.local_id)
    r1_scope.cancel()  # the first relay dies
    with trio.fail_after(10):
        await first.closed.wait()
        assert await round_trip(a, b.local_id, b"two") == b"two"
    (second,) = a.connections_to(b.local_id)
    assert second.relayed and second.address == relay_address(r2.local_id)
