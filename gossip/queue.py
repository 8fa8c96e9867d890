"""TransmitQueue: the piggyback queue of SWIM's infection-style dissemination.

Every outgoing datagram (ping, ack, ping-req, nack, gossip) carries as many queued
broadcasts as fit its byte budget. Ordering (memberlist ``queue.go``): **fewest sends
first** (fresh news spreads fastest), then **newest first**. Each broadcast is sent at most
``retransmit_limit(mult, N)`` times (:func:`gossip.formulas.retransmit_limit`, evaluated
with the member count at send time), then dropped.

Data structure: one heap per send count, ordered newest first, with lazy deletion (an
entry whose broadcast was replaced or moved on is skipped when it surfaces; the heaps are
rebuilt when stale entries outnumber live ones). Filling one packet looks at no more than
:data:`MAX_SCAN` live items, so its cost does not grow with the queue: a 5,000-node mesh
after a mass join holds thousands of items.

A broadcast bigger than the whole budget (an Alive with a certificate and many labels)
is sent alone when nothing else fits, so it cannot block the queue.

Invariants: at most one broadcast per key; every queued broadcast has ``transmits <
limit``; the queue never holds more than ``max_items`` (the most-sent, then oldest, are
dropped first).
"""

from __future__ import annotations

import heapq

from gossip.broadcast import Broadcast
from gossip.formulas import retransmit_limit
from gossip.messages import Broadcastable

MAX_SCAN = 64
"""Items examined per packet: enough to find small items when big ones do not fit."""

MIN_ITEM = 16
"""No broadcast is smaller than this; below this much room the packet is full."""

_Entry = tuple[int, bytes]  # (-order, key): the newest on top of a min-heap


class TransmitQueue:
    def __init__(self, retransmit_mult: int, max_items: int) -> None:
        if retransmit_mult < 1 or max_items < 1:
            raise ValueError("retransmit_mult and max_items must be positive")
        self.retransmit_mult = retransmit_mult
        self.max_items = max_items
        self._by_key: dict[bytes, Broadcast] = {}
        self._heaps: dict[int, list[_Entry]] = {}
        self._entries = 0
        self._order = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __contains__(self, key: bytes) -> bool:
        return key in self._by_key

    def get(self, key: bytes) -> Broadcast | None:
        return self._by_key.get(key)

    def queue(self, key: bytes, msg: Broadcastable, size: int) -> Broadcast:
        """Queue news about ``key``, replacing any older news about it."""
        self._order += 1
        item = Broadcast(key, msg, size, self._order)
        self._by_key[key] = item  # the replaced one's heap entry is now stale
        self._push(item)
        if len(self._by_key) > self.max_items:
            self._prune()
        if self._entries > 2 * len(self._by_key) + 64:
            self._rebuild()
        return item

    def remove(self, key: bytes) -> Broadcast | None:
        return self._by_key.pop(key, None)

    def take(self, n_nodes: int, budget: int) -> list[Broadcastable]:
        """Broadcasts for one packet: at most ``budget`` bytes, fewest sends first.

        Each one taken counts one more send; those that reach the retransmit limit for a
        mesh of ``n_nodes`` leave the queue.
        """
        if not self._by_key or budget < MIN_ITEM:
            return []
        limit = retransmit_limit(self.retransmit_mult, n_nodes)
        by_key = self._by_key
        taken: list[Broadcast] = []
        oversize: Broadcast | None = None
        scanned = 0
        room = budget
        for sends in sorted(self._heaps):
            if sends >= limit or room < MIN_ITEM or scanned >= MAX_SCAN:
                break
            heap = self._heaps[sends]
            kept: list[_Entry] = []
            while heap and room >= MIN_ITEM and scanned < MAX_SCAN:
                entry = heapq.heappop(heap)
                self._entries -= 1
                item = by_key.get(entry[1])
                if item is None or item.order != -entry[0] or item.transmits != sends:
                    continue  # stale
                scanned += 1
                if item.size <= room:
                    taken.append(item)
                    room -= item.size
                else:
                    if oversize is None and item.size > budget:
                        oversize = item
                    kept.append(entry)
            for entry in kept:
                heapq.heappush(heap, entry)
                self._entries += 1
            if not heap:
                del self._heaps[sends]
        if not taken and oversize is not None:
            taken.append(oversize)  # bigger than any packet: it travels alone
        for item in taken:
            item.transmits += 1
            if item.transmits >= limit:
                del by_key[item.key]
            else:
                self._push(item)
        self._drop_over(limit)
        return [item.msg for item in taken]

    def items(self) -> list[Broadcast]:
        """Every queued broadcast, in send order (for tests and statistics)."""
        return sorted(self._by_key.values(), key=lambda b: (b.transmits, -b.order))

    def _push(self, item: Broadcast) -> None:
        heap = self._heaps.get(item.transmits)
        if heap is None:
            heap = self._heaps[item.transmits] = []
        heapq.heappush(heap, (-item.order, item.key))
        self._entries += 1

    def _drop_over(self, limit: int) -> None:
        """Drop what the limit no longer allows (the mesh shrank since it was queued)."""
        for sends in [s for s in self._heaps if s >= limit]:
            for _, key in self._heaps.pop(sends):
                self._entries -= 1
                item = self._by_key.get(key)
                if item is not None and item.transmits == sends:
                    del self._by_key[key]

    def _prune(self) -> None:
        """Over capacity: drop the most-sent, then oldest, broadcasts, down to 90 % of
        ``max_items`` (so a storm of news does not sort the queue on every insert)."""
        excess = len(self._by_key) - (self.max_items - self.max_items // 10)
        victims = sorted(self._by_key.values(), key=lambda b: (-b.transmits, b.order))
        for item in victims[:excess]:
            del self._by_key[item.key]

    def _rebuild(self) -> None:
        self._heaps = {}
        self._entries = 0
        for item in self._by_key.values():
            self._push(item)
