"""Slow HTTP clients: the body budget (properties) and both servers (the S3 server's
hypercorn set-up with a body-reading app, the node's API) over real sockets.

Each stalled connection is waited on with a trio deadline far above the configured bound
(the bound is what closes it; the deadline only stops a broken test from hanging)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from blobstore.s3http.server import serve_s3
from meshcloud.errors import ConfigError
from meshcloud.kit.limits import BodyBudget, HttpLimits

DEADLINE = 30.0
"""Seconds a test waits for what a short bound must cause (a busy machine is slow)."""

SHORT = HttpLimits(header_timeout=1.0, body_timeout=0.5, body_min_rate=1000.0)


# -- the budget (sans-IO) ---------------------------------------------------------------

waits = st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10_000)), max_size=40)


def run_budget(limits: HttpLimits, events: list[tuple[float, int]]) -> tuple[BodyBudget, int]:
    """Feed (gap, bytes) waits as a driver would; returns the budget and how many waits
    were accepted before a cut (len(events) when none)."""
    budget = BodyBudget(limits)
    for n, (gap, size) in enumerate(events):
        allowance = budget.allowance()
        if gap >= allowance:
            budget.on_timeout(allowance)
            return budget, n
        budget.on_wait(gap, size)
    return budget, len(events)


@given(waits, st.floats(0.1, 10), st.floats(1, 1e6))
def test_budget_never_waits_past_its_credit_nor_one_body_timeout_at_once(events, timeout,
                                                                         rate):
    limits = HttpLimits(body_timeout=timeout, body_min_rate=rate)
    budget = BodyBudget(limits)
    for gap, size in events:
        allowance = budget.allowance()
        assert 0 <= allowance <= timeout
        assert budget.waited + allowance <= budget.credit() + 1e-9
        if gap >= allowance:
            budget.on_timeout(allowance)
            assert budget.expired and budget.allowance() == 0
            break
        budget.on_wait(gap, size)
    assert budget.waited <= timeout + budget.received / rate + 1e-9


@given(st.lists(st.tuples(st.floats(0, 0.99), st.floats(1, 100)), max_size=40),
       st.floats(0.1, 10), st.floats(1, 1e6))
def test_a_client_at_the_minimum_rate_is_never_cut(steps, timeout, rate):
    """Gaps under body_timeout, each followed by at least gap * min_rate bytes."""
    limits = HttpLimits(body_timeout=timeout, body_min_rate=rate)
    events = [(fraction * timeout, int(fraction * timeout * rate * factor) + 1)
              for fraction, factor in steps]
    budget, accepted = run_budget(limits, events)
    assert accepted == len(events) and not budget.expired


@given(st.integers(1, 50), st.floats(0.1, 10))
def test_a_trickling_client_is_cut_after_about_one_body_timeout(drops, timeout):
    """One byte per 90% of body_timeout: each gap is allowed, the average rate is not."""
    limits = HttpLimits(body_timeout=timeout, body_min_rate=100.0)
    budget, accepted = run_budget(limits, [(0.9 * timeout, 1)] * (drops + 2))
    assert budget.expired and accepted <= 2
    assert budget.waited <= 2 * timeout


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5"])
def test_limits_refuse_nonsense(bad):
    for name in ("header_timeout", "body_timeout", "body_min_rate"):
        with pytest.raises(ConfigError, match=name):
            HttpLimits(**{name: bad})


# -- real sockets -----------------------------------------------------------------------

async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with trio.fail_after(DEADLINE):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data  # reset: closed too
            if not chunk:
                return data
            data += chunk


async def request(url: str, raw: bytes) -> bytes:
    """One complete request on its own connection; the whole reply."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(raw)
        return await read_until_closed(stream)


async def open_conn(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def body_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app that reads the body as the S3 app does (a disconnect ends it) and
    answers with its size; ``/wait`` then also waits for the client to go away (as an
    event stream does), at most 4 body timeouts."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    size, complete = 0, True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            complete = False
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    if scope["path"] == "/wait" and complete:
        with trio.move_on_after(4 * SHORT.body_timeout):
            await receive()
    status = 200 if complete else 400
    body = f"{'got' if complete else 'incomplete'} {size}".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


PUT = (b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
FULL = PUT + b"x" * 100


async def test_s3_server_closes_a_stalled_body_and_serves_others(nursery):
    (url,) = await nursery.start(lambda task_status: serve_s3(
        body_echo, "127.0.0.1:0", limits=SHORT, task_status=task_status))
    stalled = await open_conn(url)
    await stalled.send_all(PUT + b"x" * 10)  # headers + 10 of 100 bytes, then nothing

    # others are served while it hangs, and after it is gone
    assert (await request(url, FULL)).endswith(b"got 100")
    reply = await read_until_closed(stalled)
    assert reply.startswith(b"HTTP/1.1 400") and reply.endswith(b"incomplete 10")
    assert (await request(url, FULL)).endswith(b"got 100")


async def test_s3_server_closes_stalled_headers(nursery):
    (url,) = await nursery.start(lambda task_status: serve_s3(
        body_echo, "127.0.0.1:0", limits=SHORT, task_status=task_status))
    stalled = await open_conn(url)
    await stalled.send_all(b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert await read_until_closed(stalled) == b""
    assert (await request(url, FULL)).endswith(b"got 100")


async def test_a_complete_request_may_wait_longer_than_the_body_bound(nursery):
    """The bound is for bodies only: a handler that waits on the connection after the body
    (an event stream) is not cut, nor is a client that reads a long answer."""
    (url,) = await nursery.start(lambda task_status: serve_s3(
        body_echo, "127.0.0.1:0", limits=SHORT, task_status=task_status))
    reply = await request(url, FULL.replace(b"PUT /b/k", b"PUT /wait"))
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"got 100")


async def test_the_guard_answers_408_when_the_app_does_not(nursery, caplog):
    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while (await receive())["type"] != "http.disconnect":
            pass

    (url,) = await nursery.start(lambda task_status: serve_s3(
        silent, "127.0.0.1:0", limits=SHORT, task_status=task_status))
    caplog.set_level(logging.INFO)
    stalled = await open_conn(url)
    await stalled.send_all(PUT + b"x" * 10)
    reply = await read_until_closed(stalled)
    assert reply.startswith(b"HTTP/1.1 408")
    cut = [r for r in caplog.records if r.name == "meshcloud.kit.guard"]
    assert len(cut) == 1 and cut[0].levelno == logging.INFO and cut[0].exc_info is None
    assert "10 bytes" in cut[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
