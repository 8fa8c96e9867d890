"""Reachability probes and the punch protocol over real loopback sockets. (The two-NAT
simultaneous open itself needs NATs: tests/netns/test_nat.py.)"""

from __future__ import annotations

import trio

from meshcloud.testing import TestMesh
from meshcloud.transport.punch import punch, serve_punch
from meshcloud.transport.reach import probe, serve_reach
from tests.meshcloud.transport.test_relay import relayed_trio, round_trip, start


async def test_a_member_reports_where_we_come_from_and_what_it_could_dial(nursery):
    mesh = TestMesh.with_members(2)
    a, _ = await start(nursery, mesh.members[0])
    b, _ = await start(nursery, mesh.members[1])
    serve_reach(b)
    await a.dial(b.listen_addresses[0], expect=b.local_id)
    (conn,) = a.connections_to(b.local_id)
    closed = "127.0.0.1:1"  # nothing listens there
    with trio.fail_after(10):
        report = await probe(a, b.local_id, [*a.listen_addresses, closed])
    assert report.dialable == tuple(a.listen_addresses)
    source = conn.sock.getsockname()
    assert report.observed == f"{source[0]}:{source[1]}"
    # asked over a connection the member dialled, it cannot tell where we come from
    serve_reach(a)
    with trio.fail_after(10):
        report = await probe(b, a.local_id, [closed])
    assert report.observed == "" and report.dialable == ()


async def test_a_punch_to_a_dialable_peer_replaces_the_relayed_connection(nursery):
    # B sits "behind NAT" (reached through R); A can be dialled: B connects to A directly
    _, a, _r, b, _ = await relayed_trio(nursery)
    directs: list[bytes] = []
    punched = trio.Event()

    def on_direct(peer: bytes) -> None:
        directs.append(peer)
        punched.set()

    serve_punch(b, lambda: (b.listen_addresses, False), on_direct=on_direct)
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, b"via relay") == b"via relay"
    (relayed,) = a.connections_to(b.local_id)
    assert relayed.relayed
    with trio.fail_after(15):
        assert await punch(a, b.local_id, a.listen_addresses, public=True) is None
        await punched.wait()
        await relayed.closed.wait()  # retired for the direct one, closed once drained
    assert directs == [a.local_id]
    direct = a._usable(b.local_id)
    assert direct is not None and not direct.relayed
    mine = b._usable(a.local_id)
    assert mine is not None and mine.punched and not mine.relayed
    with trio.fail_after(10):
        assert await round_trip(a, b.local_id, b"direct") == b"direct"
    assert [c for c in a.connections_to(b.local_id) if not c.lost] == [direct]


async def test_a_punch_between_two_dialable_nodes_changes_nothing(nursery):
    _, a, _r, b, _ = await relayed_trio(nursery)
    serve_punch(b, lambda: (b.listen_addresses, True))
    with trio.fail_after(10):
        assert await punch(a, b.local_id, a.listen_addresses, public=True) is None
    assert all(c.relayed for c in a.connections_to(b.local_id))


async def test_the_listening_port_admits_punch_sockets_but_not_a_second_listener(nursery):
    import pytest

    from meshcloud.errors import TransportError
    from meshcloud.transport.sockets import bind, bind_for_punch

    listener = await bind("127.0.0.1:0", reuse_port=True)
    try:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(TransportError, match="cannot listen"):
            await bind(address, reuse_port=True)
        punch_socket = bind_for_punch(address)  # connects from the listening port
        assert punch_socket.getsockname() == listener.getsockname()
        punch_socket.close()
    finally:
        listener.close()
