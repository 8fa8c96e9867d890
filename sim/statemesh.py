"""StateMesh: many StateCores on the simulator's engine and network (tests, benches).

No trio, no sockets: the one event queue of :class:`sim.engine.Engine` and the link model
of :class:`sim.network.Network` (latency with a uniform spread, loss), the way ``sim/``
drives cores (ARCHITECTURE §3). It is the reference for driving
:class:`~meshcloud.state.core.StateCore` without the trio driver:

* datagrams (``SendDatagram``) arrive ``latency`` (+ jitter) later, unless lost (``loss``)
  or the two nodes are cut apart (:meth:`partition`) or one has crashed;
* a ``StartSync`` session runs as request/reply hops, each taking ``latency``; a hop
  across a cut or to a crashed node ends the session with an error (what a broken
  stream does);
* each core's timer fires at its ``next_deadline()``.

Views: by default each node's view is the live members it can reach (what gossip
converges to during a partition); ``views_follow_partitions=False`` keeps everyone in
every view (the moments before failure detection).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshcloud.state.config import StateConfig
from meshcloud.state.core import StateCore
from meshcloud.state.kv import MemoryKv
from meshcloud.state.outputs import Output, SendDatagram, StartSync
from meshcloud.state.replication import Replication
from meshcloud.state.schema import TableSchema
from meshcloud.state.sync import SyncSession
from sim.engine import Engine
from sim.network import LinkModel, Network

NodeId = bytes

EPOCH_MS = 1_767_225_600_000
"""Virtual wall clock at t = 0 (2026-01-01)."""


@dataclass(slots=True)
class MeshStatistics:
    datagrams: int = 0
    lost: int = 0
    cut: int = 0
    sync_hops: int = 0
    sync_broken: int = 0
    events: int = 0


class StateMesh:
    """N state cores on a virtual network. See the module docstring."""

    def __init__(self, n: int, tables: Iterable[tuple[TableSchema[Any], Replication | None]],
                 *, seed: int = 0, loss: float = 0.0, latency: float = 0.01,
                 jitter: float = 0.005, config: StateConfig | None = None,
                 views_follow_partitions: bool = True,
                 on_output: Callable[[NodeId, Output], None] | None = None) -> None:
        self.random = random.Random(seed)
        self.engine = Engine(seed)
        self.network = Network(self.random, LinkModel(latency_s=latency, jitter=0.0,
                                                      loss=loss, spread_s=jitter))
        self.latency = latency
        self.jitter = jitter
        self.config = config or StateConfig()
        self.views_follow_partitions = views_follow_partitions
        self.on_output = on_output
        self.stats = MeshStatistics()
        self.ids = [hashlib.blake2b(b"node%d/%d" % (seed, i), digest_size=32).digest()
                    for i in range(n)]
        self.crashed: set[NodeId] = set()
        self._group: dict[NodeId, int] | None = None
        self._views: dict[int, frozenset[NodeId]] = {}
        self._timer_version: dict[NodeId, int] = {}
        self._armed: dict[NodeId, float | None] = {}
        self.cores: dict[NodeId, StateCore] = {}
        tables = list(tables)
        for i, node in enumerate(self.ids):
            core = StateCore(node, MemoryKv(), self._view_of(node), config=self.config,
                             rng=random.Random(seed * 1_000_003 + i), wall_offset_ms=EPOCH_MS)
            for schema, replication in tables:
                core.open_table(schema, replication)
            self.cores[node] = core
        for node in self.ids:
            self._arm(node)

    # --- topology -------------------------------------------------------------------------

    def _view_of(self, node: NodeId) -> Callable[[], frozenset[NodeId]]:
        def view() -> frozenset[NodeId]:
            if not self.views_follow_partitions or self._group is None:
                key = -1
            else:
                key = self._group.get(node, -2)
            cached = self._views.get(key)
            if cached is None:
                cached = frozenset(n for n in self.ids if n not in self.crashed and (
                    key < 0 or self._group is None or self._group.get(n) == key))
                self._views[key] = cached
            return cached

        return view

    def reachable(self, a: NodeId, b: NodeId) -> bool:
        if a in self.crashed or b in self.crashed:
            return False
        if self._group is None:
            return True
        return self._group.get(a, -1) == self._group.get(b, -2)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        self._group = {node: i for i, group in enumerate(groups) for node in group}
        self._views.clear()

    def heal(self) -> None:
        self._group = None
        self._views.clear()

    def crash(self, node: NodeId) -> None:
        self.crashed.add(node)
        self._views.clear()

    def revive(self, node: NodeId) -> None:
        self.crashed.discard(node)
        self._views.clear()
        self._arm(node, force=True)

    # --- event loop -----------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.engine.now

    @property
    def loss(self) -> float:
        return self.network.default.loss

    @loss.setter
    def loss(self, value: float) -> None:
        self.network.set_loss(value)

    def _at(self, at: float, action: Callable[[], None]) -> None:
        self.engine.at(at, self._tick, action)

    def _tick(self, action: Callable[[], None]) -> None:
        self.stats.events += 1
        action()

    def _delay(self) -> float:
        return self.network.default.sample_delay(self.random)

    def _arm(self, node: NodeId, *, force: bool = False) -> None:
        deadline = self.cores[node].next_deadline()
        if not force and node in self._armed and self._armed[node] == deadline:
            return  # that timer is already in the queue
        self._armed[node] = deadline
        version = self._timer_version.get(node, 0) + 1
        self._timer_version[node] = version
        if deadline is None:
            return

        def fire() -> None:
            if self._timer_version.get(node) != version or node in self.crashed:
                return
            self._armed.pop(node, None)
            self._perform(node, self.cores[node].on_timer(self.now))

        self._at(max(deadline, self.now), fire)

    def run_until(self, t: float) -> None:
        self.engine.run_until(t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # --- commands -------------------------------------------------------------------------

    def put(self, node: NodeId, table: str, key: Any, value: Any) -> None:
        self._perform(node, self.cores[node].put(table, key, value, self.now))

    def delete(self, node: NodeId, table: str, key: Any) -> None:
        self._perform(node, self.cores[node].delete(table, key, self.now))

    def patch(self, node: NodeId, table: str, key: Any, fields: dict[str, Any]) -> None:
        self._perform(node, self.cores[node].patch(table, key, fields, self.now))

    # --- outputs --------------------------------------------------------------------------

    def _perform(self, node: NodeId, outputs: list[Output]) -> None:
        for output in outputs:
            if self.on_output is not None:
                self.on_output(node, output)
            if isinstance(output, SendDatagram):
                self._send(node, output)
            elif isinstance(output, StartSync):
                self._hop(node, output.session)
        self._arm(node)

    def _send(self, sender: NodeId, output: SendDatagram) -> None:
        self.stats.datagrams += 1
        peer, msg = output.peer, output.msg
        # the fate on the link (loss, delay); a cut or a crash is judged on arrival
        delay = self.network.transit(sender, peer, 0, self.now)
        if delay is None:
            self.stats.lost += 1
            return

        def arrive() -> None:
            if not self.reachable(sender, peer):
                self.stats.cut += 1
                return
            self._perform(peer, self.cores[peer].on_datagram(sender, msg, self.now))

        self._at(self.now + delay, arrive)

    def _hop(self, node: NodeId, session: SyncSession) -> None:
        """Send the session's next request; its reply comes back one hop later."""
        core = self.cores[node]
        request = session.next_request()
        if request is None:
            self._perform(node, core.on_sync_closed(session, self.now))
            return
        peer = session.peer

        def at_peer() -> None:
            self.stats.sync_hops += 1
            if not self.reachable(node, peer):
                self.stats.sync_broken += 1
                self._perform(node, core.on_sync_closed(session, self.now, "connection lost"))
                return
            reply, outputs = self.cores[peer].on_sync_request(node, request, self.now)
            self._perform(peer, outputs)

            def back() -> None:
                if node in self.crashed:
                    return
                if not self.reachable(node, peer):
                    self.stats.sync_broken += 1
                    self._perform(node, core.on_sync_closed(session, self.now,
                                                            "connection lost"))
                    return
                self._perform(node, core.on_sync_reply(session, reply, self.now))
                self._hop(node, session)

            self._at(self.now + self._delay(), back)

        self._at(self.now + self._delay(), at_peer)

    # --- observation ----------------------------------------------------------------------

    def roots(self, table: str, nodes: Iterable[NodeId] | None = None) -> dict[NodeId, bytes]:
        chosen = self.ids if nodes is None else list(nodes)
        return {n: self.cores[n].merkle_root(table) for n in chosen if n not in self.crashed}

    def converged(self, table: str, nodes: Iterable[NodeId] | None = None) -> bool:
        return len(set(self.roots(table, nodes).values())) <= 1

    def run_until_converged(self, tables: Iterable[str], *, step: float = 1.0,
                            limit: float = 3600.0) -> float | None:
        """Run until every live node has the same root for every table; returns the
        virtual time it took, or None if ``limit`` seconds passed first."""
        names = list(tables)
        start = self.now
        while self.now - start <= limit:
            if all(self.converged(name) for name in names):
                return self.now - start
            self.run_for(step)
        return None
