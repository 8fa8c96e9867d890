"""The TCP transport's bound on received bytes: a peer opening many streams with large
messages cannot make the receiver hold more than its configured limit, and everything
still arrives once the application reads."""

from __future__ import annotations

import hashlib
import os

import trio
import trio.testing

from meshcloud.testing import TestMesh
from meshcloud.transport.mux import INITIAL_WINDOW, MuxConfig
from meshcloud.transport.tcp import TcpConfig, TcpTransport

KiB, MiB = 1024, 1024 * 1024
UPLOAD = "/test/upload/1"
MUX = MuxConfig(stream_window=INITIAL_WINDOW, max_message=MiB + 64 * KiB,
                max_buffered=12 * MiB)
CONFIG = TcpConfig(mux=MUX, max_buffered=12 * MiB)
STREAMS, MESSAGES = 16, 4


async def test_many_large_streams_stay_within_the_buffer_limit_and_all_arrive(nursery):
    mesh = TestMesh.with_members(2)
    gate = trio.Event()

    async def upload(stream) -> None:  # reads only once the gate opens
        await gate.wait()
        digests = []
        for _ in range(MESSAGES):
            digests.append(hashlib.sha256(await stream.receive()).digest())
        await stream.send(b"".join(digests))
        await stream.close()

    receiver = TcpTransport(mesh.members[0].key, mesh.members[0].authenticator, config=CONFIG)
    receiver.serve(UPLOAD, upload)
    await nursery.start(receiver.run)
    sender = TcpTransport(mesh.members[1].key, mesh.members[1].authenticator, config=CONFIG)
    await nursery.start(sender.run)
    await sender.dial(receiver.listen_addresses[0])
    payloads = [[os.urandom(MiB - i) for i in range(MESSAGES)] for _ in range(STREAMS)]
    replies = {}

    async def send_all(index: int) -> None:
        stream = await sender.open_stream(receiver.local_id, UPLOAD)
        for payload in payloads[index]:
            await stream.send(payload)
        await stream.close()
        replies[index] = await stream.receive()

    async with trio.open_nursery() as senders:
        for index in range(STREAMS):
            senders.start_soon(send_all, index)
        with trio.fail_after(20):  # nobody reads: the senders stall on back-pressure
            await trio.testing.wait_all_tasks_blocked(0.2)
        (conn,) = receiver.connections_to(sender.local_id)
        held = receiver.buffered
        assert 4 * MiB < held <= MUX.max_buffered, held
        assert conn.mux.buffered == held and conn.mux.peak_buffered <= MUX.max_buffered
        assert len(replies) == 0
        gate.set()  # the application reads: everything flows through the bounded buffer
        with trio.fail_after(60):
            while len(replies) < STREAMS:
                await trio.testing.wait_all_tasks_blocked()
    for index in range(STREAMS):
        assert replies[index] == b"".join(hashlib.sha256(p).digest() for p in payloads[index])
    assert receiver.buffer_budget.peak <= CONFIG.max_buffered
    assert conn.mux.peak_buffered <= MUX.max_buffered
    assert receiver.buffered == 0
    assert receiver.counters.buffer_resets == 0
    assert sum(len(p) for ps in payloads for p in ps) > 4 * MUX.max_buffered
