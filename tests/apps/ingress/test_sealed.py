"""The HTTP ingress's upstream on the direct path: the agent dials the target's forward
relay itself (:func:`apps.ingress.fastpath.open_sealed`) and seals the records in its
loop. Real TcpTransports over loopback and a real relay process; the records' own
checks over a socket pair."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.ingress import fastpath
from apps.ingress.fastseal import Sealer, Unsealer
from apps.ingress.forward import open_forward
from apps.ingress.messages import FORWARD_PROTOCOL
from apps.ingress.sealed import SealedStream
from tests.apps.ingress.test_fastpath import setup

PAYLOAD = os.urandom(700 * 1024 + 5)


async def read_all(stream) -> bytes:
    got = bytearray()
    while data := await stream.receive_some(65536):
        got += data
    return bytes(got)


async def sealed_upstream(pair, nursery):
    """An upstream on the direct path (the first open starts the target's relay and
    stays on the stream, as an ingress's first request does)."""
    stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
    first = await fastpath.open_sealed(stream, nursery)
    assert first is None  # the relay was not running: declined at once, started
    await stream.send(b"on the stream")
    await stream.close()
    got = b""
    try:
        while True:
            got += await stream.receive()
    except trio.EndOfChannel:
        pass
    assert got == b"on the stream"
    assert await fastpath.relay() is not None
    stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
    sealed = await fastpath.open_sealed(stream, nursery)
    assert isinstance(sealed, SealedStream)
    return sealed


@pytest.fixture(autouse=True)
def http_direct(monkeypatch):
    monkeypatch.setenv(fastpath.HTTP_ENV, "1")


async def test_a_sealed_upstream_carries_the_bytes_off_the_stream(nursery):
    pair = await setup(nursery)
    with trio.fail_after(60):
        sealed = await sealed_upstream(pair, nursery)
        before = pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent

        async def send():
            for i in range(0, len(PAYLOAD), 100_000):
                await sealed.send_all(PAYLOAD[i:i + 100_000])
            await sealed.send_eof()  # half-close: the echo still comes back

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            assert await read_all(sealed) == PAYLOAD
        await sealed.aclose()
        while len(pair.served) < 2:  # the target's side ends cleanly, its stream closed
            await pair.target_done.wait()
            pair.target_done = trio.Event()
    assert pair.served == [None, None]
    assert pair.a.usage.by_protocol[FORWARD_PROTOCOL].bytes_sent - before < 1024


async def test_closing_a_kept_sealed_upstream_ends_the_forward(nursery):
    """An upstream closed without a half-close (a kept connection expiring): our FIN
    record ends the forward at the target's relay, the lifeline closes the stream."""
    pair = await setup(nursery)
    with trio.fail_after(60):
        sealed = await sealed_upstream(pair, nursery)
        await sealed.send_all(b"ping")
        assert await sealed.receive_some(100) == b"ping"
        await sealed.aclose()
        while len(pair.served) < 2:
            await pair.target_done.wait()
            pair.target_done = trio.Event()
    assert pair.served == [None, None]


async def test_a_lost_lifeline_cuts_the_sealed_upstream(nursery):
    pair = await setup(nursery)
    with trio.fail_after(60):
        sealed = await sealed_upstream(pair, nursery)
        await sealed.send_all(b"hello")
        assert await sealed.receive_some(100) == b"hello"
        await pair.target_streams[-1].abort("test cuts the forward")
        with pytest.raises(trio.BrokenResourceError):
            await sealed.receive_some(100)
    await sealed.aclose()


@pytest.mark.parametrize("switch", [fastpath.ENV, fastpath.HTTP_ENV])
async def test_the_direct_path_off_keeps_the_upstream_on_the_stream(nursery, monkeypatch,
                                                                   switch):
    monkeypatch.setenv(switch, "0")
    pair = await setup(nursery)
    with trio.fail_after(60):
        stream = await open_forward(pair.a, pair.b.local_id, "echo", "echo", 0)
        assert await fastpath.open_sealed(stream, nursery) is None
        await stream.send(b"x")
        assert await stream.receive() == b"x"
    with pytest.raises(LookupError):
        fastpath._RELAY.get()  # no relay process started


# --- the records, over a socket pair -----------------------------------------------------


def sealed_pair() -> tuple[SealedStream, trio.SocketStream, bytes, bytes]:
    a, b = socket.socketpair()
    key_out, key_in = os.urandom(32), os.urandom(32)
    ours = SealedStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)),
                        Sealer(key_out), Unsealer(key_in))
    return ours, trio.SocketStream(trio.socket.from_stdlib_socket(b)), key_out, key_in


@settings(max_examples=30, deadline=None)
@given(pieces=st.lists(st.binary(max_size=3000), max_size=8),
       split=st.integers(min_value=1, max_value=5000))
def test_records_arrive_whole_in_any_split(pieces, split):
    """What one side seals the other opens byte-exact, whatever the reads' sizes; FIN
    is the end."""
    async def main():
        with trio.fail_after(20):
            await exchange()

    async def exchange():
        ours, peer, key_out, key_in = sealed_pair()
        sealer = Sealer(key_in)
        wire = b"".join(sealer.seal(p) for p in pieces) + sealer.seal(b"", 0x01)
        for i in range(0, len(wire), split):
            await peer.send_all(wire[i:i + split])
        got = await read_all(ours)
        assert got == b"".join(pieces)
        for p in pieces:
            await ours.send_all(p)
        await ours.send_eof()  # a FIN record (the socket stays open)
        unsealer = Unsealer(key_out)
        opened = b""
        while not unsealer.finished:
            data = await peer.receive_some(65536)
            assert data
            opened += b"".join(unsealer.feed(data))
        assert opened == b"".join(pieces)
        await ours.aclose()
        await peer.aclose()

    trio.run(main)


@pytest.mark.parametrize("wire", ["cut", "forged", "tampered"])
async def test_a_bad_record_or_a_cut_is_a_broken_stream(wire):
    ours, peer, _key_out, key_in = sealed_pair()
    record = Sealer(key_in).seal(b"some bytes")
    if wire == "forged":
        record = Sealer(os.urandom(32)).seal(b"some bytes")
    elif wire == "tampered":
        record = record[:-1] + bytes([record[-1] ^ 1])
    await peer.send_all(record[:-3] if wire == "cut" else record)
    await peer.aclose()
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await ours.receive_some(100)
    await ours.aclose()
