"""The conformance suite every :class:`~meshcloud.transport.base.Transport` must pass.

Like trio's ``_check_streams.py``: the checks are product code, and each implementation's
tests run all of them (``tests/meshcloud/transport/test_conformance.py`` runs them on
:class:`~meshcloud.transport.memory.MemoryTransport` under trio's autojump clock and on
:class:`~meshcloud.transport.tcp.TcpTransport` over real loopback sockets). A future
libp2p transport passes the same list.

An implementation is described by a :class:`Harness`: how to start one transport for a
key and an authenticator. Every check builds its own mesh (real keys and certificates from
:class:`~meshcloud.testing.TestMesh`), starts what it needs in its own nursery, and stops
it; a failed expectation raises ``AssertionError``. Use :data:`CHECKS` or
:func:`run_all`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from meshcloud.auth import MeshAuthenticator
from meshcloud.errors import AuthError, StreamReset
from meshcloud.identity.certs import make_join_proof
from meshcloud.identity.invites import create_invite
from meshcloud.identity.keys import SigningKey
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.testing import TestMesh
from meshcloud.transport.base import (
    JOIN_PROTOCOLS,
    Authenticator,
    PeerConnected,
    PeerDisconnected,
    Stream,
    Transport,
    request,
)

ECHO = "/conformance/echo/1"
JOIN = sorted(JOIN_PROTOCOLS)[0]

StartTransport = Callable[[trio.Nursery, SigningKey, Authenticator], Awaitable[Transport]]


@dataclass(frozen=True)
class Harness:
    """How to run one implementation under the suite.

    ``start(nursery, key, authenticator)`` returns a running transport (already listening).
    ``block_timeout`` is how long a send must stay blocked to count as blocked by flow
    control (virtual seconds under an autojump clock, real ones over sockets).
    """

    name: str
    start: StartTransport
    block_timeout: float = 0.5
    time_limit: float = 20.0


async def echo(stream: Stream) -> None:
    while True:
        try:
            data = await stream.receive()
        except trio.EndOfChannel:
            break
        await stream.send(data)
    await stream.close()


async def _receive_all(stream: Stream) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(await stream.receive())
        except trio.EndOfChannel:
            return out


async def _members(harness: Harness, nursery: trio.Nursery, count: int
                   ) -> tuple[TestMesh, list[Transport]]:
    mesh = TestMesh.with_members(count)
    transports = []
    for member in mesh.members:
        transport = await harness.start(nursery, member.key, member.authenticator)
        transport.serve(ECHO, echo)
        transports.append(transport)
    return mesh, transports


def _address(transport: Transport) -> str:
    return transport.listen_addresses[0]


# --- checks -------------------------------------------------------------------------------


async def check_round_trip(harness: Harness, nursery: trio.Nursery) -> None:
    """Dial returns the authenticated peer; a stream carries messages both ways."""
    mesh, (a, b) = await _members(harness, nursery, 2)
    peer = await a.dial(_address(b))
    assert peer.node_id == b.local_id
    assert peer.node_public == mesh.members[1].key.public
    assert peer.cert == mesh.members[1].cert and not peer.joining
    stream = await a.open_stream(b.local_id, ECHO)
    assert stream.protocol == ECHO and stream.peer.node_id == b.local_id
    await stream.send(b"hello")
    assert await stream.receive() == b"hello"
    await stream.send(b"")
    assert await stream.receive() == b""
    await stream.close()
    assert await _receive_all(stream) == []
    # the listener can open streams back over the same connection
    back = await b.open_stream(a.local_id, ECHO)
    await back.send(b"back")
    assert await back.receive() == b"back"
    await back.close()
    from meshcloud.identity.certs import Binding

    msg = Binding(mesh_id=b"m", node_public=b"k", invite_id=b"i", issued_at=5)
    assert await request(a, b.local_id, ECHO, msg, Binding) == msg


async def check_ordering(harness: Harness, nursery: trio.Nursery) -> None:
    """Messages of every size arrive whole, once, in order, while the peer echoes them."""
    _, (a, b) = await _members(harness, nursery, 2)
    await a.dial(_address(b))
    stream = await a.open_stream(b.local_id, ECHO)
    sizes = [0, 1, 100, 65_000, 65_536, 70_000, 1_000, 300_000, 5, 1_100_000, 2, 64 * 1024 - 1]
    sent = [bytes([i % 251]) * size + i.to_bytes(2, "big") for i, size in enumerate(sizes * 3)]

    async def sender() -> None:
        for message in sent:
            await stream.send(message)
        await stream.close()

    async with trio.open_nursery() as inner:
        inner.start_soon(sender)
        got = await _receive_all(stream)
    assert got == sent


async def check_half_close(harness: Harness, nursery: trio.Nursery) -> None:
    """After our close the peer sees EndOfChannel and can still send to us."""
    _, (a, b) = await _members(harness, nursery, 2)
    seen = trio.Event()
    result: dict[str, object] = {}

    async def replier(stream: Stream) -> None:
        result["got"] = await _receive_all(stream)  # ends with the client's close
        seen.set()
        for i in range(3):
            await stream.send(b"after your close %d" % i)
        await stream.close()

    b.serve("/conformance/half/1", replier)
    await a.dial(_address(b))
    stream = await a.open_stream(b.local_id, "/conformance/half/1")
    await stream.send(b"one")
    await stream.send(b"two")
    await stream.close()
    await seen.wait()
    assert result["got"] == [b"one", b"two"]
    assert await _receive_all(stream) == [b"after your close %d" % i for i in range(3)]
    try:
        await stream.receive()
    except trio.EndOfChannel:
        pass
    else:
        raise AssertionError("a closed stream gave a message after EndOfChannel")
    try:
        await stream.send(b"too late")
    except trio.ClosedResourceError:
        pass
    else:
        raise AssertionError("send after close did not raise ClosedResourceError")


async def check_abort_vs_close(harness: Harness, nursery: trio.Nursery) -> None:
    """An abort reaches the peer as StreamReset with the reason, never as a clean end."""
    _, (a, b) = await _members(harness, nursery, 2)

    async def aborter(stream: Stream) -> None:
        await stream.receive()
        await stream.abort("no thanks")

    b.serve("/conformance/abort/1", aborter)
    await a.dial(_address(b))
    stream = await a.open_stream(b.local_id, "/conformance/abort/1")
    await stream.send(b"hi")
    try:
        await stream.receive()
    except StreamReset as exc:
        assert "no thanks" in str(exc), exc
    else:
        raise AssertionError("an aborted stream did not raise StreamReset")
    try:
        await stream.send(b"more")
        await stream.receive()
    except StreamReset:
        pass
    else:
        raise AssertionError("an aborted stream accepted more")
    # aborting our own side: the peer's handler sees StreamReset, we see it locally too
    outcome: dict[str, BaseException] = {}
    done = trio.Event()

    async def reader(stream: Stream) -> None:
        try:
            while True:
                await stream.receive()
        except (StreamReset, trio.EndOfChannel) as exc:
            outcome["exc"] = exc
        done.set()

    b.serve("/conformance/read/1", reader)
    stream = await a.open_stream(b.local_id, "/conformance/read/1")
    await stream.send(b"x")
    await stream.abort("changed my mind")
    await done.wait()
    assert isinstance(outcome["exc"], StreamReset), outcome
    try:
        await stream.receive()
    except StreamReset:
        pass
    else:
        raise AssertionError("our own aborted stream still receives")


async def check_unserved_protocol(harness: Harness, nursery: trio.Nursery) -> None:
    """A stream for a protocol the peer does not serve fails with StreamReset."""
    _, (a, b) = await _members(harness, nursery, 2)
    await a.dial(_address(b))
    try:
        stream = await a.open_stream(b.local_id, "/conformance/nobody/1")
        await stream.send(b"anyone?")
        await stream.receive()
    except StreamReset as exc:
        assert "serve" in str(exc), exc
    else:
        raise AssertionError("an unserved protocol did not reset the stream")
    # the connection is fine afterwards
    stream = await a.open_stream(b.local_id, ECHO)
    await stream.send(b"still here")
    assert await stream.receive() == b"still here"


async def check_flow_control(harness: Harness, nursery: trio.Nursery) -> None:
    """A reader that does not read blocks the writer after a bounded amount; nothing is
    lost when it catches up."""
    _, (a, b) = await _members(harness, nursery, 2)
    release, finished = trio.Event(), trio.Event()
    got: list[bytes] = []

    async def slow(stream: Stream) -> None:
        await release.wait()
        got.extend(await _receive_all(stream))
        finished.set()

    b.serve("/conformance/slow/1", slow)
    await a.dial(_address(b))
    stream = await a.open_stream(b.local_id, "/conformance/slow/1")
    chunk = 64 * 1024
    sent: list[bytes] = []
    blocked = False
    while len(sent) * chunk < 64 * 1024 * 1024:
        message = len(sent).to_bytes(4, "big") * (chunk // 4)
        with trio.move_on_after(harness.block_timeout) as scope:
            await stream.send(message)
        if scope.cancelled_caught:
            blocked = True
            break
        sent.append(message)
    assert blocked, "64 MiB went to a peer that reads nothing: no flow control"
    assert len(sent) * chunk <= 16 * 1024 * 1024, f"{len(sent) * chunk} bytes buffered"
    release.set()
    rest = [i.to_bytes(4, "big") * (chunk // 4) for i in range(len(sent), len(sent) + 20)]
    for message in rest:
        await stream.send(message)
    await stream.close()
    await finished.wait()
    assert got == sent + rest


async def check_datagrams(harness: Harness, nursery: trio.Nursery) -> None:
    """Datagrams arrive with the sender's id; sending never raises, even to nobody."""
    _, (a, b) = await _members(harness, nursery, 2)
    inbox = b.datagrams("/conformance/dgram/1")
    await a.dial(_address(b))
    for i in range(20):
        a.send_datagram(b.local_id, "/conformance/dgram/1", b"d%d" % i)
    received = []
    with trio.fail_after(harness.time_limit):
        while len(received) < 20:
            received.append(await inbox.receive())
    assert all(sender == a.local_id for sender, _ in received)
    assert sorted(data for _, data in received) == sorted(b"d%d" % i for i in range(20))
    a.send_datagram(SigningKey.generate().id, "/conformance/dgram/1", b"to nobody")
    a.send_datagram(b.local_id, "/conformance/unread/1", b"nobody listens")


async def check_peer_events(harness: Harness, nursery: trio.Nursery) -> None:
    """Connect and disconnect are reported on both sides, once per peer."""
    _, (a, b) = await _members(harness, nursery, 2)
    a_events, b_events = a.peer_events(), b.peer_events()
    await a.dial(_address(b))
    await a.dial(_address(b))  # reused: no second event
    with trio.fail_after(harness.time_limit):
        first = await a_events.receive()
        other = await b_events.receive()
    assert isinstance(first, PeerConnected) and first.we_dialed
    assert first.peer.node_id == b.local_id
    assert isinstance(other, PeerConnected) and not other.we_dialed
    assert other.peer.node_id == a.local_id
    assert [p.node_id for p in a.connected_peers()] == [b.local_id]
    assert [p.node_id for p in b.connected_peers()] == [a.local_id]
    await a.disconnect(b.local_id, "testing")
    with trio.fail_after(harness.time_limit):
        gone = await a_events.receive()
        gone_there = await b_events.receive()
    assert isinstance(gone, PeerDisconnected) and gone.node_id == b.local_id
    assert isinstance(gone_there, PeerDisconnected) and gone_there.node_id == a.local_id
    assert a.connected_peers() == [] and b.connected_peers() == []


async def check_outsider_refused(harness: Harness, nursery: trio.Nursery) -> None:
    """A node without a certificate cannot connect, and leaves no trace."""
    mesh, (member,) = await _members(harness, nursery, 1)
    events = member.peer_events()
    key, auth = mesh.outsider()
    outsider = await harness.start(nursery, key, auth)
    try:
        await outsider.dial(_address(member))
    except AuthError as exc:
        assert "certificate" in str(exc), exc
    else:
        raise AssertionError("an outsider was let in")
    assert member.connected_peers() == [] and outsider.connected_peers() == []
    try:
        event = events.receive_nowait()
    except trio.WouldBlock:
        pass
    else:
        raise AssertionError(f"refused peer produced an event: {event}")


async def check_joiner_limited(harness: Harness, nursery: trio.Nursery) -> None:
    """A node holding only an invite gets in as a joiner, for the join protocols only."""
    mesh, (member,) = await _members(harness, nursery, 1)
    member.serve(JOIN, echo)
    token = create_invite(mesh.root, now=mesh.now_ms, ttl_ms=600_000, uses=1, bootstrap=(),
                          ledger=(mesh.members[0].id,))
    key = SigningKey.generate()
    proof = make_join_proof(token, key, now=mesh.now_ms)
    auth = MeshAuthenticator(mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms,
                             None, proof)
    joiner = await harness.start(nursery, key, auth)
    peer = await joiner.dial(_address(member))
    assert peer.node_id == member.local_id
    stream = await joiner.open_stream(member.local_id, JOIN)
    await stream.send(b"let me in")
    assert await stream.receive() == b"let me in"
    await stream.close()
    seen = member.connected_peers()
    assert [p.node_id for p in seen] == [key.id] and seen[0].joining
    try:
        await joiner.open_stream(member.local_id, ECHO)
    except AuthError:
        pass
    else:
        raise AssertionError("a joiner opened a members-only protocol")


CHECKS: list[Callable[[Harness, trio.Nursery], Awaitable[None]]] = [
    check_round_trip,
    check_ordering,
    check_half_close,
    check_abort_vs_close,
    check_unserved_protocol,
    check_flow_control,
    check_datagrams,
    check_peer_events,
    check_outsider_refused,
    check_joiner_limited,
]


async def run_check(harness: Harness,
                    check: Callable[[Harness, trio.Nursery], Awaitable[None]]) -> None:
    """Run one check in its own nursery, within the harness's time limit."""
    with trio.fail_after(harness.time_limit):
        async with trio.open_nursery() as nursery:
            await check(harness, nursery)
            nursery.cancel_scope.cancel()


async def run_all(harness: Harness) -> None:
    for check in CHECKS:
        await run_check(harness, check)
