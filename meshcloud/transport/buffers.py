"""The node-wide bound on received bytes not yet read by the application.

Every connection's :class:`~meshcloud.transport.mux.MuxCore` adds the message bytes it
holds (reassembled or waiting in a stream) to one shared :class:`BufferBudget` and takes
them off as the application reads them. Connections consult it before granting stream
credit (soft: ``credit_limit``) and before reading their socket (hard: ``limit``), so a
node holds at most ``limit`` bytes however many peers and streams send to it at once.
"""

from __future__ import annotations


class BufferBudget:
    """Received bytes held across a node's connections, against a hard and a soft limit."""

    def __init__(self, limit: int, credit_limit: int | None = None) -> None:
        if limit < 1:
            raise ValueError("the buffer limit must be positive")
        self.limit = limit
        self.credit_limit = limit if credit_limit is None else min(credit_limit, limit)
        self.used = 0
        self.peak = 0
        """The most bytes ever held at once (for tests and status)."""

    def __repr__(self) -> str:
        return f"<BufferBudget {self.used}/{self.limit} bytes, peak {self.peak}>"

    @property
    def room(self) -> int:
        """Bytes that may still be read from sockets before the hard limit."""
        return self.limit - self.used

    def add(self, size: int) -> None:
        self.used += size
        if self.used > self.peak:
            self.peak = self.used
