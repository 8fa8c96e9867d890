"""StateConfig: timings and limits of replicated state, with presets.

One dataclass, a reason under each default; presets are edits of :func:`lan`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StateConfig:
    push_fanout_min: int = 3
    """Peers each piece of news is pushed to, at least. Push-on-first-receipt with fanout
    f reaches about 1 - e^-f of the nodes (f = 3: 95 %); anti-entropy finds the rest."""
    push_fanout_max: int = 8
    """Upper bound of the fanout formula ``ceil(ln(n + 1))`` (n = live peers): 7 for
    1,000 nodes, which leaves ~0.1 % to anti-entropy; 8 caps the cost per update."""
    datagram_budget: int = 60_000
    """Bytes of entries per datagram (under a 64 KiB UDP datagram, for a future UDP
    transport). An entry larger than this travels only by anti-entropy."""
    sync_interval: float = 30.0
    """Mean seconds between anti-entropy rounds started by this node (jittered ±50 %).
    Garage uses 10 min with a full sync per partition; ours is one random peer per round,
    so with N nodes each node is compared about twice per interval."""
    sync_explore: float = 0.25
    """Share of anti-entropy rounds whose partner is drawn from all candidates; the others
    go to a candidate this node already holds a connection to, if any, which saves the
    round a handshake (see :mod:`gossip.partners`)."""
    sync_timeout: float = 60.0
    """A session not reported closed by then is considered failed (lost driver task)."""
    sync_max_requests: int = 2000
    """Requests per session; a bigger difference finishes in the next rounds."""
    sync_concurrency: int = 2
    """Anti-entropy sessions this node runs at once as initiator, and as many it serves
    at once; more wait their turn (in order). A burst of 30 newcomers each asking every
    member for a full sync (and every member syncing with each newcomer it sees join)
    would otherwise interleave dozens of sessions' Merkle walks and merges on one event
    loop, which then stalls for hundreds of milliseconds again and again; its probes
    and acks wait behind them and starved peers declare it dead."""
    sync_nodes_per_request: int = 64
    """Merkle nodes asked per SyncNodes: a full intermediate node is 8.4 KiB, so replies
    stay under 540 KiB."""
    sync_keys_per_request: int = 512
    """Keys per SyncGet."""
    sync_batch_bytes: int = 256 * 1024
    """Bytes of entries per SyncPush or SyncEntries message."""
    merkle_batch: int = 1000
    """To-do items applied per Merkle worker step."""
    merkle_delay: float = 0.5
    """Seconds a write's Merkle to-do waits before the worker applies it, so a burst of
    writes shares one transaction (one fsync) instead of paying one each (anti-entropy
    applies what is pending before it compares trees)."""
    gc_delay: float = 24 * 3600.0
    """A tombstone is kept this long before GC (Garage: 24 h): a node partitioned for
    less than this cannot bring a deleted entry back."""
    gc_interval: float = 600.0
    """Seconds between GC passes."""
    gc_batch: int = 256
    """Tombstones per GC round."""
    gc_retry_interval: float = 2.0
    """Seconds before re-sending a GC phase to members that have not acknowledged it."""
    gc_round_timeout: float = 60.0
    """A GC round not acknowledged by every live member by then is abandoned (retried at
    the next pass): GC never deletes what a live member has not seen."""
    expiry_interval: float = 300.0
    """Seconds between purges of expired entries (tables with ``expires_after_ms``)."""
    tranquility: float = 2.0
    """Background workers rest this many times the CPU time they used."""
    flush_poll: float = 1.0
    """Seconds between background-sync checks for commits that no output announced
    (announced ones are flushed at once, and an acknowledged write waits for its flush)."""

    def __post_init__(self) -> None:
        if not 1 <= self.push_fanout_min <= self.push_fanout_max:
            raise ValueError("need 1 <= push_fanout_min <= push_fanout_max")
        for name in ("sync_interval", "sync_timeout", "gc_interval", "gc_retry_interval",
                     "gc_round_timeout", "expiry_interval", "flush_poll"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.gc_delay < 0 or self.tranquility < 0:
            raise ValueError("gc_delay and tranquility are >= 0")
        if not 0.0 <= self.sync_explore <= 1.0:
            raise ValueError("sync_explore must be within [0, 1]")
        if self.sync_concurrency < 1:
            raise ValueError("sync_concurrency must be at least 1")
        if not 1 <= self.sync_nodes_per_request <= 256:
            raise ValueError("sync_nodes_per_request is 1..256")
        if not 1 <= self.sync_keys_per_request <= 1024:
            raise ValueError("sync_keys_per_request is 1..1024")

    def fanout(self, peers: int) -> int:
        """Peers to push news to when ``peers`` others are alive."""
        want = math.ceil(math.log(peers + 1)) if peers > 0 else 0
        return min(peers, max(self.push_fanout_min, min(self.push_fanout_max, want)))


def lan() -> StateConfig:
    return StateConfig()


def wan() -> StateConfig:
    return dataclasses.replace(lan(), sync_interval=60.0, sync_timeout=120.0,
                               gc_retry_interval=5.0, gc_round_timeout=120.0)


def phone() -> StateConfig:
    """Phones sleep and pay for radio time: rarer rounds, more rest, rare flush polls."""
    return dataclasses.replace(lan(), sync_interval=120.0, sync_timeout=120.0,
                               tranquility=4.0, gc_interval=1800.0, flush_poll=15.0)


def local() -> StateConfig:
    """Tests and demos on one machine: fast rounds, short GC delay."""
    return dataclasses.replace(lan(), sync_interval=2.0, sync_timeout=10.0, gc_delay=5.0,
                               gc_interval=2.0, gc_retry_interval=0.5,
                               gc_round_timeout=5.0, expiry_interval=5.0, tranquility=0.0)
