"""Sealed UDP datagrams of the TCP transport (meshcloud.transport.udp), over real loopback
sockets: members exchange datagrams with no connection once a handshake proved them; an
unknown sender is proven by a connection first; outsiders, forgeries, revoked members and
filtered UDP are handled without losing the transport's promises."""

from __future__ import annotations

import dataclasses
import socket

import trio

from meshcloud.testing import TestMesh
from meshcloud.transport import udp
from meshcloud.transport.base import PeerDisconnected, PeerUnreachable
from meshcloud.transport.sealed import SealCore
from meshcloud.transport.tcp import TcpConfig, TcpTransport

from .test_tcp import FAST, start_member

DG = "/test/dg/1"
IDLE = dataclasses.replace(FAST, idle_timeout=0.3)


async def until(predicate, what: str, within: float = 10.0) -> None:
    with trio.move_on_after(within):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def proven_pair(nursery, mesh: TestMesh, config: TcpConfig = IDLE
                      ) -> tuple[TcpTransport, TcpTransport]:
    """Two members that met once over a connection, which then closed as idle."""
    a = await start_member(nursery, mesh.members[0], config)
    b = await start_member(nursery, mesh.members[1], config)
    events, b_events = a.peer_events(), b.peer_events()
    await a.dial(b.listen_addresses[0])
    with trio.fail_after(10):
        for channel in (events, b_events):  # both ends call it an unused close
            while not isinstance(gone := await channel.receive(), PeerDisconnected):
                pass
            assert gone.unused and gone.reason.endswith("idle")
    assert a.udp is not None and b.udp is not None
    assert a.udp.knows(b.local_id) and b.udp.knows(a.local_id)
    return a, b


async def test_members_exchange_datagrams_without_a_connection(nursery):
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_a, at_b = a.datagrams(DG), b.datagrams(DG)
    opened = a.counters.connections_opened + b.counters.connections_opened
    with trio.fail_after(10):
        for i in range(20):
            a.send_datagram(b.local_id, DG, b"ping %d" % i)
            assert await at_b.receive() == (a.local_id, b"ping %d" % i)
            b.send_datagram(a.local_id, DG, b"ack %d" % i)
            assert await at_a.receive() == (b.local_id, b"ack %d" % i)
    assert a.connection_count == 0 and b.connection_count == 0
    assert a.counters.connections_opened + b.counters.connections_opened == opened
    assert a.usage.by_protocol[DG].messages_sent == 20
    assert b.usage.by_protocol[DG].messages_received == 20
    assert b.statistics()["datagram_peers"] == 1


async def test_a_forgotten_sender_is_proven_by_a_connection_then_delivered(nursery):
    """What a restart looks like to its peers: the receiver lost the sender's keys."""
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_b = b.datagrams(DG)
    b.udp.forget(a.local_id)
    opened = b.counters.connections_opened
    with trio.fail_after(10):
        a.send_datagram(b.local_id, DG, b"held, then delivered")
        assert await at_b.receive() == (a.local_id, b"held, then delivered")
    assert b.counters.connections_opened == opened + 1 and b.udp.knows(a.local_id)


async def test_outsiders_and_forgeries_are_refused_and_change_nothing(nursery):
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_b = b.datagrams(DG)
    outsider_key, _ = mesh.outsider()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = b.udp.sockets[0].getsockname()
    try:
        # a stranger's key, sealed for b as if b knew it: b does not, and the stranger's
        # source port is no member (the proof by connection fails)
        stranger = SealCore(outsider_key.id, outsider_key.to_curve25519_private(), 1)
        stranger.add_peer(b.local_id, mesh.members[1].key.public)
        raw.sendto(stranger.seal(b.local_id, DG, b"let me in"), target)
        # a member's id with the stranger's key: does not open
        forger = SealCore(a.local_id, outsider_key.to_curve25519_private(), 1)
        forger.add_peer(b.local_id, mesh.members[1].key.public)
        raw.sendto(forger.seal(b.local_id, DG, b"I am a"), target)
        raw.sendto(b"\x01garbage", target)
        await until(lambda: b.counters.udp_refused >= 3, "three refusals")
        # a genuine datagram sent after them is the only one delivered
        a.send_datagram(b.local_id, DG, b"genuine")
        with trio.fail_after(10):
            assert await at_b.receive() == (a.local_id, b"genuine")
    finally:
        raw.close()
    assert b.udp.knows(a.local_id) and not b.udp.knows(outsider_key.id)
    assert b.counters.udp_refused == 3


async def test_a_revoked_member_can_no_longer_send_or_receive_datagrams(nursery, monkeypatch):
    monkeypatch.setattr(udp, "RECHECK", 0.0)
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_b = b.datagrams(DG)
    a.send_datagram(b.local_id, DG, b"before")
    with trio.fail_after(10):
        assert await at_b.receive() == (a.local_id, b"before")
    mesh.members[1].records.revoke_node(a.local_id, mesh.now_ms)
    refused = b.counters.udp_refused
    a.send_datagram(b.local_id, DG, b"after")
    await until(lambda: b.counters.udp_refused > refused, "the refusal")
    assert not b.udp.knows(a.local_id)
    assert at_b.statistics().current_buffer_used == 0
    b.send_datagram(a.local_id, DG, b"to the revoked")  # b no longer seals for a
    assert b.usage.by_protocol[DG].messages_sent == 0


async def test_datagrams_take_a_connection_when_udp_gets_no_answer(nursery, monkeypatch):
    monkeypatch.setattr(udp, "GIVE_UP", 0.0)  # give up at the 2nd datagram with no answer
    monkeypatch.setattr(udp, "UNANSWERED", 1)
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_b = b.datagrams(DG)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    try:
        a.udp._reply_to[b.local_id] = hole.getsockname()  # UDP to b goes nowhere
        a.send_datagram(b.local_id, DG, b"lost")
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(hole)  # the first one went to the hole
            a.send_datagram(b.local_id, DG, b"over a connection")
            assert await at_b.receive() == (a.local_id, b"over a connection")
    finally:
        hole.close()
    assert a.connection_count == 1


async def test_while_udp_seems_cut_datagrams_still_try_it_and_an_answer_ends_that(
        nursery, monkeypatch):
    """A peer that was only slow to answer (a starved loop) is not cut off from UDP:
    during the fallback each datagram goes over UDP as well as a connection (which may
    first have to be dialled), and the peer's first datagram back ends the fallback."""
    monkeypatch.setattr(udp, "GIVE_UP", 0.0)
    monkeypatch.setattr(udp, "UNANSWERED", 1)
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_a, at_b = a.datagrams(DG), b.datagrams(DG)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    try:
        a.udp._reply_to[b.local_id] = hole.getsockname()  # b's answers never come
        with trio.fail_after(10):
            a.send_datagram(b.local_id, DG, b"unanswered")
            await trio.lowlevel.wait_readable(hole)
            assert hole.recv(2048)
            a.send_datagram(b.local_id, DG, b"both ways")  # a gives up on UDP here
            assert await at_b.receive() == (a.local_id, b"both ways")  # the connection
            await trio.lowlevel.wait_readable(hole)  # and a copy over UDP
            assert hole.recv(2048)
            assert b.local_id in a.udp._fallback_until
            b.udp._reply_to[a.local_id] = a.udp.sockets[0].getsockname()
            sent = b.counters.packets_sent
            b.send_datagram(a.local_id, DG, b"an answer over udp")
            assert await at_a.receive() == (b.local_id, b"an answer over udp")
            assert b.counters.packets_sent == sent + 1
    finally:
        hole.close()
    assert not a.udp._fallback_until
    sent = a.counters.packets_sent
    a.send_datagram(b.local_id, DG, b"udp again")
    with trio.fail_after(10):
        assert await at_b.receive() == (a.local_id, b"udp again")
    assert a.counters.packets_sent == sent + 1


async def test_without_sealed_datagrams_every_datagram_rides_a_connection(nursery):
    mesh = TestMesh.with_members(2)
    config = dataclasses.replace(FAST, sealed_datagrams=False)
    a = await start_member(nursery, mesh.members[0], config)
    b = await start_member(nursery, mesh.members[1], config)
    at_b = b.datagrams(DG)
    b_address = b.listen_addresses
    a.set_addresses(b.local_id, b_address)
    with trio.fail_after(10):
        a.send_datagram(b.local_id, DG, b"dialled")
        assert await at_b.receive() == (a.local_id, b"dialled")
    assert a.udp is None and a.connection_count == 1


async def test_a_close_that_is_not_the_pools_is_not_unused(nursery):
    mesh = TestMesh.with_members(2)
    a = await start_member(nursery, mesh.members[0], FAST)
    b = await start_member(nursery, mesh.members[1], FAST)
    events = b.peer_events()
    await a.dial(b.listen_addresses[0])
    await a.disconnect(b.local_id, "tests")
    with trio.fail_after(10):
        while not isinstance(gone := await events.receive(), PeerDisconnected):
            pass
    assert not gone.unused
    assert not a.udp.knows(b.local_id)  # datagrams need a new handshake too


async def test_probes_far_apart_do_not_count_as_unanswered(nursery, monkeypatch):
    """A healthy pair that talks rarely (each member probed once per N seconds): every
    datagram gets one back before the next, so UDP is never given up."""
    monkeypatch.setattr(udp, "GIVE_UP", 0.0)
    monkeypatch.setattr(udp, "UNANSWERED", 2)
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_a, at_b = a.datagrams(DG), b.datagrams(DG)
    with trio.fail_after(10):
        for _ in range(5):  # a probes b; later b probes a: b sends twice in a row
            a.send_datagram(b.local_id, DG, b"ping from a")
            await at_b.receive()
            b.send_datagram(a.local_id, DG, b"ack from b")
            await at_a.receive()
            b.send_datagram(a.local_id, DG, b"ping from b")
            await at_a.receive()
            a.send_datagram(b.local_id, DG, b"ack from a")
            await at_b.receive()
    assert a.connection_count == 0 and b.connection_count == 0


async def test_when_no_datagram_comes_from_anyone_connections_carry_them(nursery, monkeypatch):
    monkeypatch.setattr(udp, "GIVE_UP", 0.0)
    monkeypatch.setattr(udp, "QUIET_SENDS", 1)
    monkeypatch.setattr(udp, "UNANSWERED", 1000)
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_b = b.datagrams(DG)
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    try:
        a.udp._reply_to[b.local_id] = hole.getsockname()
        a.send_datagram(b.local_id, DG, b"lost")
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(hole)
            a.send_datagram(b.local_id, DG, b"over a connection")
            assert await at_b.receive() == (a.local_id, b"over a connection")
    finally:
        hole.close()
    assert a.udp._all_fallback_until > trio.current_time()


async def test_the_dialled_side_waits_to_hear_from_its_peer_before_using_udp(nursery):
    """b was dialled: the addresses it has for a may be private ones behind a NAT, so it
    does not guess; its datagram takes a connection, and once a has sent one over UDP
    (to the address it dialled), b answers over UDP too."""
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    at_a, at_b = a.datagrams(DG), b.datagrams(DG)
    opened = b.counters.connections_opened
    with trio.fail_after(10):
        b.send_datagram(a.local_id, DG, b"first, from the dialled side")
        assert await at_a.receive() == (b.local_id, b"first, from the dialled side")
        assert b.counters.connections_opened == opened + 1  # b dialled a for it
        a.send_datagram(b.local_id, DG, b"over udp")
        assert await at_b.receive() == (a.local_id, b"over udp")
    assert b.udp._destination(a.local_id) is not None


def closed_port() -> tuple[str, int]:
    """A loopback UDP address where nothing listens (as after a kill -9)."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    address = hole.getsockname()
    hole.close()
    return address


async def test_a_datagram_to_a_closed_port_hints_that_the_peer_is_gone(nursery):
    """What a killed peer's sockets do to datagrams: ICMP port unreachable, which the
    transport turns into a PeerUnreachable hint for membership (no connection needed)."""
    mesh = TestMesh.with_members(2)
    a, b = await proven_pair(nursery, mesh)
    events = a.peer_events()
    at_b = b.datagrams(DG)
    real = a.udp._destination(b.local_id)
    a.udp._reply_to[b.local_id] = closed_port()
    a.send_datagram(b.local_id, DG, b"to nobody")
    with trio.fail_after(10):
        while not isinstance(hint := await events.receive(), PeerUnreachable):
            pass
    assert hint.node_id == b.local_id and hint.reason == "port unreachable"
    assert a.counters.udp_unreachable == 1 and a.counters.udp_dropped == 0
    # the dead address is forgotten: the next datagram goes where a dialled b
    assert b.local_id not in a.udp._reply_to and a.udp._destination(b.local_id) == real
    a.send_datagram(b.local_id, DG, b"where it was dialled")
    with trio.fail_after(10):
        assert await at_b.receive() == (a.local_id, b"where it was dialled")
    # with no address left, a connection carries it (dialled at b's announced address)
    a.udp._dialled[b.local_id] = a.udp._reply_to[b.local_id] = closed_port()
    a.send_datagram(b.local_id, DG, b"to nobody again")
    await until(lambda: a.udp._destination(b.local_id) is None, "the dead address forgotten")
    opened = a.counters.connections_opened
    a.send_datagram(b.local_id, DG, b"over a connection")
    with trio.fail_after(10):
        assert await at_b.receive() == (a.local_id, b"over a connection")
    assert a.counters.connections_opened == opened + 1


async def test_an_earlier_datagrams_error_does_not_cost_the_next_one(nursery):
    """The kernel reports an ICMP error on the socket's next call: a send right after a
    datagram to a closed port must still go out (and the hint still be given)."""
    mesh = TestMesh.with_members(3)
    a, b = await proven_pair(nursery, mesh)
    c = await start_member(nursery, mesh.members[2], IDLE)
    await a.dial(c.listen_addresses[0])
    events = a.peer_events()
    at_b = b.datagrams(DG)
    a.udp._reply_to[c.local_id] = closed_port()
    for i in range(5):  # no checkpoint in between: the receive loop cannot read the error
        a.send_datagram(c.local_id, DG, b"to nobody")
        a.send_datagram(b.local_id, DG, b"to b %d" % i)
    with trio.fail_after(10):
        for i in range(5):
            assert await at_b.receive() == (a.local_id, b"to b %d" % i)
        while not isinstance(hint := await events.receive(), PeerUnreachable):
            pass
    assert hint.node_id == c.local_id
    assert a.counters.udp_dropped == 0 and a.counters.udp_unreachable >= 1


def test_icmp_errors_are_read_from_the_kernels_extended_error():
    err = udp._EXTENDED_ERR.pack(111, udp.SO_EE_ORIGIN_ICMP, 3, 3, 0, 0, 0) + bytes(16)
    assert udp.icmp_error([(socket.IPPROTO_IP, udp.IP_RECVERR, err)]) == 111
    err6 = udp._EXTENDED_ERR.pack(113, udp.SO_EE_ORIGIN_ICMP6, 1, 0, 0, 0, 0)
    assert udp.icmp_error([(socket.IPPROTO_IPV6, udp.IPV6_RECVERR, err6)]) == 113
    local = udp._EXTENDED_ERR.pack(90, 1, 0, 0, 0, 0, 0)  # SO_EE_ORIGIN_LOCAL: not ICMP
    assert udp.icmp_error([(socket.IPPROTO_IP, udp.IP_RECVERR, local)]) is None
    assert udp.icmp_error([(socket.IPPROTO_IP, udp.IP_RECVERR, b"short")]) is None
    assert udp.icmp_error([(socket.SOL_SOCKET, 1, err)]) is None
