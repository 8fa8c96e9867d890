"""Helpers shared by the runtime tests: waiting on conditions with deadlines, free ports."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

POLL = 0.02
"""Seconds between checks while waiting for a real process or container to change."""


async def wait_for(check: Callable[[], Awaitable[T]], *, within: float = 10.0,
                   what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    with trio.move_on_after(within):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(POLL)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
