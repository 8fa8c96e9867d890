"""Idle upstream connections of the HTTP ingress, kept alive for the next request.

A request to a replica costs a forward open (a mesh round trip and the target's TCP
connect) and the replica's connection set-up; a kept-alive connection costs neither.
Connections are kept per replica (:data:`~apps.ingress.routing.RowKey`), most recent
first, for at most ``max_age`` seconds (below the common 5 s keep-alive timeout of
servers), at most ``per_target`` of them. Only requests that may be retried take a kept
connection: one the replica closed meanwhile fails before any response byte, and the
request goes again on a fresh one. Pure bookkeeping: the caller closes what it gets back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from apps.ingress.routing import RowKey

MAX_AGE = 3.0
PER_TARGET = 32


class UpstreamPool:
    def __init__(self, max_age: float = MAX_AGE, per_target: int = PER_TARGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.per_target = per_target
        self.clock = clock
        self.idle: dict[RowKey, list[tuple[float, Any]]] = {}
        self.stale: list[Any] = []
        """Expired connections for the caller to close."""
        self.reused = 0

    def take(self, key: RowKey) -> Any | None:
        """The most recently parked live connection to ``key``, or None."""
        entries = self.idle.get(key)
        now = self.clock()
        while entries:
            parked, item = entries.pop()
            if now - parked < self.max_age:
                if not entries:
                    del self.idle[key]
                self.reused += 1
                return item
            self.stale.append(item)
        self.idle.pop(key, None)
        return None

    def put(self, key: RowKey, item: Any) -> bool:
        """Park ``item``; False (the caller closes it) when ``key`` has enough."""
        entries = self.idle.setdefault(key, [])
        if len(entries) >= self.per_target:
            return False
        entries.append((self.clock(), item))
        return True

    def sweep(self, keep: Callable[[RowKey], bool] = lambda key: True) -> list[Any]:
        """Remove and return expired connections, and those of keys ``keep`` refuses
        (a replica no longer routable), with the stale ones."""
        now = self.clock()
        out, self.stale = self.stale, []
        for key in list(self.idle):
            entries = self.idle[key]
            alive = [(t, i) for t, i in entries if now - t < self.max_age and keep(key)]
            out += [i for t, i in entries if (t, i) not in alive]
            if alive:
                self.idle[key] = alive
            else:
                del self.idle[key]
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self.idle.values())
