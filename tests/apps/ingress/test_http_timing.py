"""The ingress's read timers: one per read, none for events already parsed."""

from __future__ import annotations

import h11
import trio
import trio.testing

from apps.ingress.http import _next_timed

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"


async def test_each_read_gets_the_timeout_not_the_whole_response(autojump_clock):
    up = h11.Connection(h11.CLIENT)
    up.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    up.send(h11.EndOfMessage())
    replica, ingress_side = trio.testing.memory_stream_pair()
    events = []

    async def slow_replica() -> None:
        for piece in (RESPONSE, b"ab", b"cd"):
            await trio.sleep(0.8)  # each piece within 1 s, the whole over 2 s
            await replica.send_all(piece)
        await trio.sleep(5)  # then silence

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_replica)
        start = trio.current_time()
        while True:
            event = await _next_timed(up, ingress_side, 1.0)
            events.append(event)
            if isinstance(event, h11.EndOfMessage) or event is h11.NEED_DATA:
                break
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert [type(e) for e in events] == [h11.Response, h11.Data, h11.Data, h11.EndOfMessage]
    assert 2.3 < took < 2.5


async def test_a_read_stalled_past_the_timeout_gives_need_data(autojump_clock):
    up = h11.Connection(h11.CLIENT)
    up.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    up.send(h11.EndOfMessage())
    replica, ingress_side = trio.testing.memory_stream_pair()
    await replica.send_all(RESPONSE + b"ab")  # half the body, then nothing
    assert isinstance(await _next_timed(up, ingress_side, 1.0), h11.Response)
    assert isinstance(await _next_timed(up, ingress_side, 1.0), h11.Data)
    start = trio.current_time()
    assert await _next_timed(up, ingress_side, 1.0) is h11.NEED_DATA
    assert trio.current_time() - start == 1.0
