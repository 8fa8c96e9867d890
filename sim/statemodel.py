"""The replicated cluster state in the simulator: real StateCores on the sim's network.

Each simulated host gets a :class:`~meshcloud.state.core.StateCore` (in-memory store) with
the cluster tables. Its view of live peers is **its own SWIM core's view**, so state
traffic follows what membership believes, as in a real node. Writes happen at random live
nodes (a steady trickle plus a burst on each side of a partition); news datagrams travel
through the simulated :class:`~sim.network.Network` (loss, partitions); anti-entropy
sessions run as request/reply hops that break across a cut. Every sample records how
many distinct Merkle roots the live nodes hold, and the :class:`StateConvergence` checker
decides whether they agree again within the scenario's ``state_convergence_bound`` after
the last fault.

Drive it like :mod:`sim.statemesh` does (the reference for driving StateCore):
``SendDatagram`` → ``on_datagram`` at the peer; ``StartSync`` → ``next_request`` /
``on_sync_request`` / ``on_sync_reply`` hops, ``on_sync_closed`` at the end or on a break;
``on_timer`` at ``next_deadline()``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from apps.workloads.tables import REPLICAS, WORKLOADS, WorkloadRecord
from gossip.member import MemberState
from meshcloud.state.config import StateConfig
from meshcloud.state.core import StateCore
from meshcloud.state.kv import MemoryKv
from meshcloud.state.outputs import SendDatagram, StartSync
from meshcloud.state.sync import SyncSession
from meshcloud.state.tables import EVENTS, MEMBERSHIP, NODES
from sim.checkers import CheckResult
from sim.scenario import Scenario
from sim.trace import Trace

EPOCH_MS = 1_767_225_600_000
WRITES_PER_MINUTE = 30.0
"""A steady trickle of workload edits at random live nodes."""
TABLE = WORKLOADS.name
ROOT_SAMPLE_EVERY = 2.0
"""Seconds between samples of the number of distinct roots (it costs N root reads)."""


@dataclass
class _Node:
    core: StateCore
    generation: int
    armed: float = math.inf


@dataclass
class StateSimModel:
    config: StateConfig = field(default_factory=StateConfig)
    writes_per_minute: float = WRITES_PER_MINUTE

    def attach(self, run: Any) -> None:
        self.run = run
        self.engine = run.engine
        self.cluster = run.cluster
        self.network = run.network
        self.trace: Trace = run.trace
        self.rng = self.engine.derive_random("state-model")
        self.nodes: dict[bytes, _Node] = {}
        self.writes = 0
        self._last_sample = -math.inf
        for host in self.cluster.by_index:
            self._ensure(host)
        scenario = run.scenario
        last_fault = max((f.at for f in scenario.faults), default=0.0)
        # writes go on through every fault, then stop so that agreement can be judged
        self.stop_writes = max(last_fault + 5.0, scenario.scenario.duration
                               - scenario.checks.state_convergence_bound)
        self.engine.at(self.rng.expovariate(self.writes_per_minute / 60), self._write)
        self.trace.records["state_model"].append({"table": TABLE,
                                                  "writes_stop": self.stop_writes})

    # --- nodes ----------------------------------------------------------------------------

    def _view(self, node: bytes) -> Any:
        def view() -> frozenset[bytes]:
            swim = self.cluster.hosts[node].swim
            return frozenset(m.node_id for m in swim.table.members.values()
                             if m.node_id != node and m.state in (MemberState.ALIVE,
                                                                  MemberState.SUSPECT))
        return view

    def _ensure(self, host: Any) -> _Node:
        """The host's state core. A restarted host keeps its disk (LMDB survives kill -9):
        the same core carries on, with its timers armed again."""
        node = self.nodes.get(host.node_id)
        if node is not None:
            if node.generation != host.generation:
                node.generation = host.generation
                node.armed = math.inf
                self._arm(host.node_id)
            return node
        rng = self.engine.derive_random(f"state/{host.index}/{host.generation}")
        core = StateCore(host.node_id, MemoryKv(), self._view(host.node_id), config=self.config,
                         rng=rng, wall_offset_ms=EPOCH_MS)
        for schema in (NODES, WORKLOADS, REPLICAS, EVENTS, MEMBERSHIP):
            core.open_table(schema)
        node = _Node(core, host.generation)
        self.nodes[host.node_id] = node
        self._arm(host.node_id)
        return node

    def _live(self, node_id: bytes) -> bool:
        host = self.cluster.hosts.get(node_id)
        return host is not None and host.reachable and not host.left

    # --- timers and outputs ---------------------------------------------------------------

    def _arm(self, node_id: bytes) -> None:
        node = self.nodes[node_id]
        deadline = node.core.next_deadline()
        if deadline is None or deadline >= node.armed:
            return
        node.armed = deadline
        self.engine.at(max(deadline, self.engine.now), self._fire, node_id, node.generation,
                       deadline)

    def _fire(self, node_id: bytes, generation: int, when: float) -> None:
        node = self.nodes[node_id]
        if node.generation != generation:
            return
        if node.armed == when:
            node.armed = math.inf
        if not self._live(node_id):
            self.engine.after(1.0, self._rearm_later, node_id, generation)
            return
        self._perform(node_id, node.core.on_timer(self.engine.now))

    def _rearm_later(self, node_id: bytes, generation: int) -> None:
        node = self.nodes[node_id]
        if node.generation == generation:
            self._arm(node_id)

    def _perform(self, node_id: bytes, outputs: list[Any]) -> None:
        for output in outputs:
            if isinstance(output, SendDatagram):
                self._send(node_id, output)
            elif isinstance(output, StartSync):
                self._hop(node_id, output.session)
        self._arm(node_id)

    def _send(self, sender: bytes, output: SendDatagram) -> None:
        now = self.engine.now
        delay = self.network.transit(sender, output.peer, 0, now)
        if delay is None:
            return
        self.engine.at(now + delay, self._arrive, sender, output.peer, output.msg)

    def _arrive(self, sender: bytes, peer: bytes, msg: Any) -> None:
        if not self._live(peer) or peer not in self.nodes:
            return
        self._perform(peer, self.nodes[peer].core.on_datagram(sender, msg, self.engine.now))

    def _hop(self, node_id: bytes, session: SyncSession) -> None:
        core = self.nodes[node_id].core
        request = session.next_request()
        if request is None:
            self._perform(node_id, core.on_sync_closed(session, self.engine.now))
            return
        peer = session.peer
        delay = self.network.default.sample_delay(self.network.rng)
        self.engine.after(delay, self._at_peer, node_id, peer, session, request)

    def _broken(self, a: bytes, b: bytes) -> bool:
        return not (self._live(a) and self._live(b) and self.network.reachable(a, b))

    def _at_peer(self, node_id: bytes, peer: bytes, session: SyncSession, request: Any) -> None:
        if not self._live(node_id):
            return
        core = self.nodes[node_id].core
        if self._broken(node_id, peer) or peer not in self.nodes:
            self._perform(node_id, core.on_sync_closed(session, self.engine.now,
                                                       "connection lost"))
            return
        reply, outputs = self.nodes[peer].core.on_sync_request(node_id, request,
                                                               self.engine.now)
        self._perform(peer, outputs)
        delay = self.network.default.sample_delay(self.network.rng)
        self.engine.after(delay, self._back, node_id, peer, session, reply)

    def _back(self, node_id: bytes, peer: bytes, session: SyncSession, reply: Any) -> None:
        if not self._live(node_id):
            return
        core = self.nodes[node_id].core
        if self._broken(node_id, peer):
            self._perform(node_id, core.on_sync_closed(session, self.engine.now,
                                                       "connection lost"))
            return
        self._perform(node_id, core.on_sync_reply(session, reply, self.engine.now))
        self._hop(node_id, session)

    # --- workload ---------------------------------------------------------------------------

    def _write(self) -> None:
        if self.engine.now > self.stop_writes:
            return
        live = [h for h in self.cluster.by_index if h.reachable and not h.left]
        if live:
            host = self.rng.choice(live)
            node = self._ensure(host)
            self.writes += 1
            key = f"app{self.rng.randrange(200)}"
            record = WorkloadRecord(kind="service", spec={"v": self.writes})
            if self.rng.random() < 0.1:
                outputs = node.core.delete(TABLE, key, self.engine.now)
            else:
                outputs = node.core.put(TABLE, key, record, self.engine.now)
            self._perform(host.node_id, outputs)
        self.engine.after(self.rng.expovariate(self.writes_per_minute / 60), self._write)

    # --- sampling ---------------------------------------------------------------------------

    def sample(self, now: float) -> None:
        for host in self.cluster.by_index:
            if host.reachable and not host.left:
                self._ensure(host)
        if now - self._last_sample < ROOT_SAMPLE_EVERY:
            return
        self._last_sample = now
        roots = {self.nodes[h.node_id].core.merkle_root(TABLE)
                 for h in self.cluster.by_index if h.reachable and not h.left}
        self.trace.record("state_roots", t=now, distinct=len(roots), writes=self.writes)

    def finish(self, now: float) -> None:
        self._last_sample = -math.inf
        self.sample(now)

    def checkers(self) -> list[Any]:
        return [StateConvergence()]


class StateConvergence:
    """After the last fault, every live node holds the same cluster-state Merkle root
    within ``state_convergence_bound`` (and keeps agreeing, apart from fresh writes)."""

    name = "state_convergence"

    def check(self, trace: Trace, scenario: Scenario) -> CheckResult:
        samples = trace.records.get("state_roots", [])
        if not samples:
            return CheckResult(self.name, True, "no state model in this run", {})
        bound = scenario.checks.state_convergence_bound
        writes_stop = max((r["writes_stop"] for r in trace.records.get("state_model", [])),
                          default=0.0)
        last_fault = max([t for t, _, _ in trace.faults] + [writes_stop])
        after = [s for s in samples if s["t"] >= last_fault] or samples[-1:]
        converged_at = next((s["t"] for s in after if s["distinct"] == 1), None)
        figures: dict[str, Any] = {
            "writes": samples[-1]["writes"],
            "max_distinct_roots": max(s["distinct"] for s in samples),
            "converged_after_last_fault_s": None if converged_at is None
            else round(converged_at - last_fault, 3),
            "fraction_of_samples_converged": round(
                statistics.fmean(1.0 if s["distinct"] == 1 else 0.0 for s in samples), 4),
        }
        if converged_at is None:
            if trace.end - last_fault < bound:
                return CheckResult(self.name, True, f"not judged: the run ended "
                                   f"{trace.end - last_fault:.0f}s after the last fault "
                                   f"(bound {bound:g}s)", figures)
            return CheckResult(self.name, False,
                               f"live nodes still hold {after[-1]['distinct']} different "
                               f"roots {trace.end - last_fault:.0f}s after the last fault",
                               figures, [f"at {s['t']:.0f}s: {s['distinct']} roots"
                                         for s in after[-5:]])
        took = converged_at - last_fault
        passed = took <= bound
        summary = (f"all live nodes reached one Merkle root {took:.1f}s after the last fault "
                   f"(bound {bound:g}s); {figures['writes']} writes")
        return CheckResult(self.name, passed, summary, figures)
