"""The node's event feed: what happened, for `meshcloud events`, the API and the UI.

Events are small dicts (``kind``, ``at`` wall ms, ``node`` id, and facts). The feed keeps
the last :data:`RETAIN` in memory and hands each new one to every subscriber (a bounded
channel per subscriber: a subscriber that does not keep up loses the oldest events and is
told how many it missed, instead of slowing the node down).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

RETAIN = 2000
"""Events kept for new subscribers and `GET /v1/events` (a few hours of a busy mesh)."""

SUBSCRIBER_BUFFER = 256


class EventFeed:
    def __init__(self, wall_ms: Callable[[], int], node_id: str) -> None:
        self.wall_ms = wall_ms
        self.node_id = node_id
        self._recent: deque[dict[str, Any]] = deque(maxlen=RETAIN)
        self._subscribers: list[trio.MemorySendChannel[dict[str, Any]]] = []
        self._seq = 0

    def emit(self, kind: str, **facts: Any) -> dict[str, Any]:
        self._seq += 1
        # a service's facts never shadow the feed's own keys (subscribers rely on them)
        event = {**facts, "seq": self._seq, "kind": kind, "at": self.wall_ms(),
                 "node": self.node_id}
        self._recent.append(event)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                pass  # a slow subscriber misses events; it sees the gap in `seq`
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)
        return event

    def recent(self, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        events = [e for e in self._recent if kind is None or e["kind"].startswith(kind)]
        return events[-limit:]

    def subscribe(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](SUBSCRIBER_BUFFER)
        self._subscribers.append(send)
        return receive
