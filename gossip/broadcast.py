"""Broadcast: one piece of news waiting in the transmit queue.

Every broadcast has an **invalidation key**: the node the news is about. Queuing news
about a node replaces whatever older news about that node is still queued (memberlist
``broadcast.go`` ``Invalidates``): the core only queues news that won its precedence check
(:mod:`gossip.member`), so the newest always wins and a node's queue holds at most one
item per member.

``size`` is the encoded size of the message in bytes (computed once, when queued), so the
queue can fill a packet to its byte budget without encoding anything again.
"""

from __future__ import annotations

from gossip.messages import Broadcastable


class Broadcast:
    __slots__ = ("key", "msg", "order", "size", "transmits")

    def __init__(self, key: bytes, msg: Broadcastable, size: int, order: int) -> None:
        self.key = key
        self.msg = msg
        self.size = size
        self.order = order
        """Queue insertion counter: higher is newer."""
        self.transmits = 0

    def invalidates(self, other: Broadcast) -> bool:
        return self.key == other.key

    def __repr__(self) -> str:
        return (f"<Broadcast {type(self.msg).__name__} about {self.key.hex()[:12]} "
                f"sent {self.transmits}x>")
