"""The trio side of :mod:`meshcloud.kit.limits`: hypercorn options for the header bound,
and an ASGI middleware that holds a request body to its :class:`BodyBudget`.

When a body runs out of time the application's next ``receive()`` returns
``http.disconnect``, exactly what it sees when a client goes away mid-body, so every
application already knows how to stop; if it then answers, hypercorn sends the answer and
closes the connection (the request was not read to its end); if it does not, the guard
answers ``408`` itself. The guard logs one INFO line per cut request.

hypercorn's own ``read_timeout`` is not used: it also cuts a connection whose client is
quietly reading a long response (an event stream, a large download).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config

from meshcloud.kit.limits import DEFAULT_LIMITS, BodyBudget, HttpLimits

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]


def server_config(bind: str, limits: HttpLimits = DEFAULT_LIMITS) -> Config:
    """hypercorn settings shared by our servers (each adds its own on top)."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn's idle timer runs from the connection's start (or the end of the previous
    # response) until a request's headers are complete: it is our header bound
    config.keep_alive_timeout = limits.header_timeout
    config.graceful_timeout = 2
    config.h11_max_incomplete_size = 64 * 1024  # headers; bodies stream
    config.include_server_header = False
    return config


def peer_of(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


class BodyDeadline:
    """ASGI middleware: a request body that does not arrive in time ends the request."""

    def __init__(self, app: Any, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.app = app
        self.limits = limits
        self.cut = 0
        """Requests cut so far (for tests and status)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        budget = BodyBudget(self.limits)
        body_done = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()  # after the body: waiting for a disconnect is fine
            allowance = budget.allowance()
            began = trio.current_time()
            message: Message | None = None
            with trio.move_on_after(allowance):
                message = await receive()
            waited = trio.current_time() - began
            if message is None:
                budget.on_timeout(waited)
                body_done = True
                self.cut += 1
                log.info("HTTP %s %s from %s: request body too slow (%d bytes in %.1f s), "
                         "closing the connection", scope.get("method"), scope.get("path"),
                         peer_of(scope), budget.received, budget.waited)
                return {"type": "http.disconnect"}
            budget.on_wait(waited, len(message.get("body", b"")))
            if message.get("type") != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, guarded_receive, tracked_send)
        if budget.expired and not started:
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body",
                        "body": b"request body too slow\n", "more_body": False})
