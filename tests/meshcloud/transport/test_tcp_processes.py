"""Real processes on loopback: a peer killed with SIGKILL or frozen with SIGSTOP is noticed
within 5 s, and the node keeps serving others."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from meshcloud.errors import ConnectionLost
from meshcloud.testing import TestMesh
from meshcloud.transport.base import PeerConnected, PeerDisconnected
from meshcloud.transport.benchmark import ECHO, measure, spawn_peer, write_credentials
from meshcloud.transport.tcp import TcpTransport

pytestmark = pytest.mark.real

NOTICE_WITHIN = 5.0
"""The brief's bound for noticing a dead or frozen peer."""


async def start(nursery, member) -> TcpTransport:
    transport = TcpTransport(member.key, member.authenticator)
    await nursery.start(transport.run)
    return transport


async def spawn(tmp_path, mesh, member):
    path = tmp_path / f"creds-{member.id.hex()[:8]}"
    write_credentials(path, mesh, member)
    return await spawn_peer(path)


async def echo_once(transport, node, data=b"alive?"):
    stream = await transport.open_stream(node, ECHO)
    await stream.send(data)
    assert await stream.receive() == data
    return stream


async def test_sigkilled_peer_fails_its_streams_and_others_are_still_served(nursery, tmp_path):
    mesh = TestMesh.with_members(3)
    me = await start(nursery, mesh.members[0])
    events = me.peer_events()
    victim, address = await spawn(tmp_path, mesh, mesh.members[1])
    try:
        peer = await me.dial(address)
        stream = await echo_once(me, peer.node_id)
        victim.kill()  # SIGKILL: no GOAWAY, the kernel resets the socket
        with trio.fail_after(NOTICE_WITHIN):
            with pytest.raises(ConnectionLost):
                await stream.receive()
            assert isinstance(await events.receive(), PeerConnected)
            gone = await events.receive()
        assert isinstance(gone, PeerDisconnected) and gone.node_id == peer.node_id
    finally:
        victim.kill()
        await victim.wait()
    other, other_address = await spawn(tmp_path, mesh, mesh.members[2])
    try:
        with trio.fail_after(NOTICE_WITHIN):
            peer = await me.dial(other_address)
            stream = await echo_once(me, peer.node_id, b"still serving")
            await stream.close()
    finally:
        other.kill()
        await other.wait()


async def test_sigstopped_peer_is_declared_dead_by_the_keepalive(nursery, tmp_path):
    mesh = TestMesh.with_members(2)
    me = await start(nursery, mesh.members[0])
    events = me.peer_events()
    frozen, address = await spawn(tmp_path, mesh, mesh.members[1])
    try:
        peer = await me.dial(address)
        stream = await echo_once(me, peer.node_id)
        assert isinstance(await events.receive(), PeerConnected)
        os.kill(frozen.pid, signal.SIGSTOP)  # alive for the kernel: no FIN, no RST
        stopped = trio.current_time()
        with trio.fail_after(NOTICE_WITHIN):
            with pytest.raises(ConnectionLost, match="keepalive"):
                await stream.receive()
            gone = await events.receive()
        assert isinstance(gone, PeerDisconnected) and "keepalive" in gone.reason
        assert trio.current_time() - stopped < NOTICE_WITHIN
        assert me.connected_peers() == []
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()
        await frozen.wait()


async def test_benchmark_measures_a_peer_process(nursery, tmp_path):
    mesh = TestMesh.with_members(2)
    me = await start(nursery, mesh.members[0])
    process, address = await spawn(tmp_path, mesh, mesh.members[1])
    try:
        with trio.fail_after(60):
            figures = await measure(me, address, connects=3, rpcs=50,
                                    bulk_bytes=8 * 1024 * 1024, message_size=256 * 1024)
    finally:
        process.kill()
        await process.wait()
    assert figures["bulk_bytes"] == 8 * 1024 * 1024 and figures["rpcs"] == 50
    for key in ("connect_ms", "rpc_p50_ms", "rpc_p99_ms", "pingpong_p50_ms", "stream_mb_s"):
        assert figures[key] > 0, key
    assert figures["rpc_p50_ms"] <= figures["rpc_p99_ms"]
    assert 0 < figures["rpc_cpu_us"] < 1e6 and figures["load_avg"] >= 0


async def test_our_own_stall_does_not_kill_a_live_peer(nursery, tmp_path):
    """After this process stalls past dead_timeout, bytes the peer sent meanwhile are read
    before silence is judged: a live peer is not declared dead for our own pause."""
    import time

    import trio.testing

    from meshcloud.transport.mux import MuxConfig
    from meshcloud.transport.tcp import TcpConfig

    mesh = TestMesh.with_members(2)
    member = mesh.members[0]
    config = TcpConfig(mux=MuxConfig(keepalive_interval=0.1, dead_timeout=0.5))
    me = TcpTransport(member.key, member.authenticator, config=config)
    await nursery.start(me.run)
    events = me.peer_events()
    peer_process, address = await spawn(tmp_path, mesh, mesh.members[1])
    try:
        peer = await me.dial(address)
        stream = await me.open_stream(peer.node_id, ECHO)
        await stream.send(bytes(512 * 1024))
        await trio.testing.wait_all_tasks_blocked(0.01)  # our bytes are on their way
        time.sleep(1.0)  # the stall under test (a blocked event loop), not a wait
        with trio.fail_after(NOTICE_WITHIN):
            assert len(await stream.receive()) == 512 * 1024
        assert [type(e) for e in [events.receive_nowait()]] == [PeerConnected]
        with pytest.raises(trio.WouldBlock):
            events.receive_nowait()
    finally:
        peer_process.kill()
        await peer_process.wait()
