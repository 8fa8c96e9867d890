"""HealthCore rules as tables, a model-based property, and the trio loop on a mock clock."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.runtimes.base import HealthCheck, HealthKind, HealthState
from apps.runtimes.health import HealthCore
from apps.runtimes.probes import health_loop, probe_http, probe_tcp


def check(**kw) -> HealthCheck:
    return HealthCheck(**{"kind": HealthKind.COMMAND, "command": ("true",), "interval": 1.0,
                          "retries": 3, **kw})


def feed(core: HealthCore, results: list[bool], *, start: float = 0.0) -> list[HealthState]:
    now, states = start, []
    for ok in results:
        now = core.next_deadline()
        core.on_probe_started(now)
        core.on_probe_result(ok, "x", now + 0.01)
        states.append(core.state)
    return states


@pytest.mark.parametrize(("results", "expected"), [
    ([True], HealthState.HEALTHY),
    ([False, False], HealthState.STARTING),
    ([False, False, False], HealthState.UNHEALTHY),
    ([True, False, False], HealthState.HEALTHY),
    ([True, False, False, False], HealthState.UNHEALTHY),
    ([False, False, False, True], HealthState.HEALTHY),
    ([False, False, True, False, False], HealthState.HEALTHY),
])
def test_verdicts(results, expected):
    assert feed(HealthCore(check(), 0.0), results)[-1] is expected


def test_first_probe_is_immediate_then_interval_after_the_end():
    core = HealthCore(check(interval=2.0), 10.0)
    assert core.next_deadline() == 10.0
    core.on_probe_started(10.0)
    core.on_probe_result(True, "ok", 10.5)
    assert core.next_deadline() == 12.5


def test_start_period_failures_do_not_count_but_success_does():
    core = HealthCore(check(interval=1.0, start_period=5.0, retries=1), 0.0)
    assert feed(core, [False, False, False]) == [HealthState.STARTING] * 3
    core2 = HealthCore(check(interval=1.0, start_period=5.0, retries=1), 0.0)
    assert feed(core2, [True])[-1] is HealthState.HEALTHY
    # past the start period a single failure (retries=1) is enough
    assert feed(core, [False, False, False])[-1] is HealthState.UNHEALTHY


def test_change_is_reported_once():
    core = HealthCore(check(retries=1), 0.0)
    core.on_probe_started(0.0)
    assert core.on_probe_result(True, "ok", 0.0) is HealthState.HEALTHY
    core.on_probe_started(1.0)
    assert core.on_probe_result(True, "ok", 1.0) is None
    assert core.detail == "ok: ok"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), max_size=30), st.integers(1, 5))
def test_matches_naive_model(results, retries):
    core = HealthCore(check(retries=retries), 0.0)
    states = feed(core, results)
    for i, state in enumerate(states):
        seen = results[:i + 1]
        streak = len(seen) - (max(k for k, ok in enumerate(seen) if ok) + 1
                              if any(seen) else 0)
        if seen[-1]:
            assert state is HealthState.HEALTHY
        elif streak >= retries:
            assert state is HealthState.UNHEALTHY
        elif any(seen):
            assert state is HealthState.HEALTHY
        else:
            assert state is HealthState.STARTING


async def test_loop_times_out_slow_probes(autojump_clock):
    core = HealthCore(check(interval=1.0, timeout=0.5, retries=2), trio.current_time())
    calls = []

    async def hanging_probe() -> tuple[bool, str]:
        calls.append(trio.current_time())
        await trio.sleep(100)
        return True, "never"

    changes: list[HealthState] = []
    with trio.move_on_after(2.9):
        await health_loop(core, hanging_probe, changes.append)
    assert changes == [HealthState.UNHEALTHY]
    assert "timed out" in core.detail
    assert calls == pytest.approx([0.0, 1.5])


async def test_tcp_and_http_probes_on_real_sockets():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    replies = [b"HTTP/1.0 204 No Content\r\n\r\n", b"HTTP/1.0 503 Busy\r\n\r\n", b"garbage\r\n"]

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(1024)
            if replies:
                await stream.send_all(replies.pop(0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        assert (await probe_http("127.0.0.1", port, "/"))[0] is True
        ok, detail = await probe_http("127.0.0.1", port, "/")
        assert not ok and "503" in detail
        ok, detail = await probe_http("127.0.0.1", port, "/")
        assert not ok and "not an HTTP response" in detail
        assert (await probe_tcp("127.0.0.1", port))[0] is True
        nursery.cancel_scope.cancel()
    ok, detail = await probe_tcp("127.0.0.1", port)
    assert not ok
