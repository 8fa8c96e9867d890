"""The state core's background workers (:mod:`meshcloud.workers` protocol).

* ``merkle``: applies Merkle to-do items (``merkle_batch`` per step; BUSY while more wait);
* ``anti-entropy``: every ``sync_interval`` (jittered ±50 %, random first phase) starts
  one session with a random live peer, or, every other round when sharded tables exist, a
  peer sharing one of our partitions; one outgoing session at a time. The peer is
  preferably one we hold a connection to and ran no session with within
  ``sync_interval`` (``sync_explore``: :mod:`gossip.partners`);
* ``gc``: every ``gc_interval`` starts GC rounds for due tombstones we coordinate;
* ``expiry``: every ``expiry_interval`` purges expired rows.

They call the public methods of :class:`~.core.StateCore`, which return their outputs;
a step hands those to ``emit`` (given by the core), and the core returns them from its next
call (``on_timer``, a write, a message), so no worker touches the core's private state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gossip.partners import prefer_connected
from meshcloud.workers import Worker, WorkerState

if TYPE_CHECKING:
    from meshcloud.state.core import StateCore
    from meshcloud.state.outputs import Output

Emit = Callable[[list["Output"]], None]


def background_workers(core: StateCore, emit: Emit) -> list[Worker]:
    return [MerkleWorker(core), AntiEntropyWorker(core, emit), GcWorker(core, emit),
            ExpiryWorker(core)]


class MerkleWorker:
    name = "merkle"

    def __init__(self, core: StateCore) -> None:
        self.core = core

    def step(self, now: float) -> WorkerState:
        done = 0
        for table in self.core.tables.values():
            done += table.flush_merkle(self.core.config.merkle_batch - done)
            if done >= self.core.config.merkle_batch:
                return WorkerState.BUSY
        return WorkerState.IDLE

    def next_deadline(self) -> float | None:
        return None

    def queue_length(self) -> int | None:
        return sum(t.merkle.todo_count() for t in self.core.tables.values())


class AntiEntropyWorker:
    name = "anti-entropy"

    def __init__(self, core: StateCore, emit: Emit) -> None:
        self.core = core
        self.emit = emit
        self._next: float | None = None
        self._rounds = 0

    def step(self, now: float) -> WorkerState:
        core = self.core
        interval = core.config.sync_interval
        if self._next is None:  # first run: start at a random phase
            self._next = now + interval * core.rng.random()
            return WorkerState.IDLE
        if now < self._next:
            return WorkerState.IDLE
        self._next = now + interval * (0.5 + core.rng.random())
        if core.sessions:
            return WorkerState.IDLE  # one outgoing session at a time
        self._rounds += 1
        partners = core.shard_partners()
        full_copy = any(r.full_copy for r in core.replications.values())
        # Full-copy tables sync with any live peer; sharded ones need a peer sharing a
        # partition (at 1,000 nodes a random peer almost never does): alternate.
        if partners and (not full_copy or self._rounds % 2 == 0):
            peers = partners
        else:
            peers = core.sorted_peers()
        if not peers:
            return WorkerState.IDLE
        peer = None
        core.synced.prune(now, interval)
        if core.connected is not None:  # a connected partner saves a handshake
            candidates = set(peers)
            peer = prefer_connected(
                core.connected(),
                lambda p: p in candidates and core.synced.fresh(p, now, interval),
                core.rng, core.config.sync_explore)
        if peer is None:
            peer = core.rng.choice(peers)
        if not any(core.plan_for(peer).values()):
            return WorkerState.IDLE
        self.emit(core.begin_sync(peer, now))
        return WorkerState.IDLE

    def next_deadline(self) -> float | None:
        return self._next

    def queue_length(self) -> int | None:
        return len(self.core.sessions)


class GcWorker:
    name = "gc"

    def __init__(self, core: StateCore, emit: Emit) -> None:
        self.core = core
        self.emit = emit
        self._next: float | None = None

    def step(self, now: float) -> WorkerState:
        core = self.core
        if self._next is None:
            self._next = now + core.config.gc_interval * core.rng.random()
            return WorkerState.IDLE
        if now < self._next:
            return WorkerState.IDLE
        self._next = now + core.config.gc_interval
        self.emit(core.start_gc_rounds(now))
        return WorkerState.IDLE

    def next_deadline(self) -> float | None:
        return self._next

    def queue_length(self) -> int | None:
        return sum(t.gc_todo_count() for t in self.core.tables.values())


class ExpiryWorker:
    name = "expiry"

    def __init__(self, core: StateCore) -> None:
        self.core = core
        self._next: float | None = None

    def step(self, now: float) -> WorkerState:
        core = self.core
        if self._next is not None and now < self._next:
            return WorkerState.IDLE
        self._next = now + core.config.expiry_interval
        limit = core.config.merkle_batch
        removed = core.purge_expired(now, limit)
        if removed:
            core.workers.poke("merkle", now)
        return WorkerState.BUSY if removed >= limit else WorkerState.IDLE

    def next_deadline(self) -> float | None:
        return self._next

    def queue_length(self) -> int | None:
        return None
