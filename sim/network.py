"""The simulated network: latency, jitter, loss, bandwidth caps, partitions (also one-way).

:meth:`Network.transit` decides the fate of one message from ``src`` to ``dst``: ``None``
if it is lost (random loss, a partition between their groups, a one-way cut in that
direction), otherwise the delay after which it arrives. Delay = queueing behind earlier
sends on the sender's uplink (when a bandwidth cap is set) + serialisation + the link's
one-way latency drawn from a log-normal distribution around its median.

Per-link overrides (``set_link``) model a slow Wi-Fi phone or a far-away node.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

RETRANSMIT_TIMEOUT = 0.2
"""Seconds TCP waits before its first retransmission (Linux's minimum RTO), doubling."""


@dataclass
class LinkModel:
    latency_ms: float = 2.0
    """Median one-way latency."""
    jitter: float = 0.3
    """Log-normal sigma: 0 is constant latency; 0.3 gives p99 ≈ 2× the median."""
    loss: float = 0.0
    """Probability that a message is lost (each message independently)."""
    spread_s: float = 0.0
    """With ``jitter`` 0: an extra delay drawn uniformly from 0..spread_s seconds."""
    latency_s: float | None = None
    """The median in seconds, when given exactly (overrides ``latency_ms``)."""

    def sample_delay(self, rng: random.Random) -> float:
        base = self.latency_ms / 1000.0 if self.latency_s is None else self.latency_s
        if self.jitter <= 0:
            return base + rng.random() * self.spread_s if self.spread_s else base
        return base * math.exp(rng.gauss(0.0, self.jitter))


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost_random: int = 0
    lost_partition: int = 0
    bytes_sent: int = 0


@dataclass
class Network:
    rng: random.Random
    default: LinkModel = field(default_factory=LinkModel)
    uplink_bytes_per_s: float | None = None
    """A bandwidth cap per node (None: unlimited)."""
    stats: NetworkStats = field(default_factory=NetworkStats)

    def __post_init__(self) -> None:
        self._links: dict[tuple[bytes, bytes], LinkModel] = {}
        self._node_links: dict[bytes, LinkModel] = {}
        self._group: dict[bytes, int] | None = None
        self._cuts: list[tuple[frozenset[bytes], frozenset[bytes]]] = []
        self._uplink_free: dict[bytes, float] = {}
        self._slow_nodes: dict[bytes, float] = {}
        self._isolate_rest = False

    # --- configuration --------------------------------------------------------------------

    def set_link(self, src: bytes, dst: bytes, model: LinkModel) -> None:
        self._links[(src, dst)] = model

    def set_node_link(self, node: bytes, model: LinkModel) -> None:
        """Every message to or from ``node`` uses ``model`` (a phone on bad Wi-Fi)."""
        self._node_links[node] = model

    def set_loss(self, loss: float) -> None:
        self.default = LinkModel(self.default.latency_ms, self.default.jitter, loss)

    def partition(self, groups: list[set[bytes]], *, isolate_rest: bool = False) -> None:
        """Nodes reach only nodes of their own group; nodes in no group form one more group
        (with ``isolate_rest``: reach no one)."""
        self._group = {}
        for index, group in enumerate(groups):
            for node in group:
                self._group[node] = index
        self._isolate_rest = isolate_rest

    def cut_one_way(self, src_group: set[bytes], dst_group: set[bytes]) -> None:
        """Messages from ``src_group`` to ``dst_group`` are lost; the reverse still flows."""
        self._cuts.append((frozenset(src_group), frozenset(dst_group)))

    def heal(self) -> None:
        self._group = None
        self._cuts.clear()

    @property
    def partitioned(self) -> bool:
        return self._group is not None or bool(self._cuts)

    def reachable(self, src: bytes, dst: bytes) -> bool:
        groups = self._group
        if groups is not None:
            a, b = groups.get(src, -1), groups.get(dst, -1)
            if a != b or (a == -1 and self._isolate_rest):
                return False
        if self._cuts:
            return not any(src in a and dst in b for a, b in self._cuts)
        return True

    # --- the fate of one message ----------------------------------------------------------

    def transit(self, src: bytes, dst: bytes, size: int, now: float, *,
                reliable: bool = False) -> float | None:
        """The delay of one message, or None if it is lost. ``reliable`` messages (on a
        stream: TCP retransmits) are never lost to random loss, only delayed by a
        retransmission timeout per lost attempt; a partition still stops them."""
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += size
        if not self.reachable(src, dst):
            stats.lost_partition += 1
            return None
        if self._links or self._node_links:
            link = self._links.get((src, dst)) or self._node_links.get(src) or \
                self._node_links.get(dst) or self.default
        else:
            link = self.default
        retransmit = 0.0
        if link.loss:
            if not reliable:
                if self.rng.random() < link.loss:
                    stats.lost_random += 1
                    return None
            else:
                rto = RETRANSMIT_TIMEOUT
                while self.rng.random() < link.loss and retransmit < 30.0:
                    retransmit += rto
                    rto *= 2
        delay = link.sample_delay(self.rng) + retransmit
        if self.uplink_bytes_per_s:
            start = max(now, self._uplink_free.get(src, 0.0))
            done = start + size / self.uplink_bytes_per_s
            self._uplink_free[src] = done
            delay += done - now
        stats.delivered += 1
        return delay
