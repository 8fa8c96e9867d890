"""Workloads in the simulator: the production reconciler on every workload node.

Each simulated node that runs the workload service (see *workload nodes* below) holds the
production :class:`~apps.workloads.core.ReconcilerCore`. A pass does what
:meth:`apps.workloads.reconciler.Reconciler.run_pass` does, on the simulator's clock:

* the placement view is :func:`apps.workloads.view.build_view` over the node's own
  membership view (the ids its SWIM core holds alive or suspect, plus itself) and every
  node's offer; the assignment is :func:`apps.workloads.reconciler.compute_assignment`
  (the planner: bounded-load rendezvous placement, sticky indices) over that view, the
  workloads and this node's copy of the ``replicas`` claims;
* the core's outputs are performed: claims are written to the node's copy of the
  ``replicas`` table and replicated (below); starts and stops go to a
  :class:`FakeRuntime`, which runs a replica ``start_delay`` seconds after the start and
  drops it ``stop_delay`` seconds after the stop; the replica's name is busy meanwhile,
  as in the driver.

A pass runs (``pass_delay`` after the trigger, coalesced) when the node's view changes, a
claim reaches it, a runtime operation ends, the node boots, or at the core's next
deadline (back-off, hand-off). The driver's periodic resync only notices replicas that
crashed on their own, which fake replicas never do, so it is left out.

**Claims** (the ``replicas`` table): every workload node keeps its own copy, last writer
wins by (time, writer). A write reaches every other workload node ``state_delay`` later
when the network lets the two talk; across a partition it waits for the heal (retried
every sample), as state anti-entropy does. A node's copy survives its crash (LMDB).

**Workload nodes**: computing the plan is ~60 ms over 1,000 nodes, so at 1,000 nodes every
node re-planning on every view change would not fit in minutes. A mesh of that size runs
workloads on a share of its nodes (the others publish no offer and run no reconciler,
as an agent without the workload service does): by default ``workload_nodes`` = 100 of
them, chosen by a hash of the node id (so a restarted node keeps its role, and joining
nodes get it with the same probability). Placement only ever sees those nodes, in the
real planner as here. Phones publish their battery (``on_ac`` false), so the planner's
``avoid_battery`` ranks them last.

**Truth**: a replica counts as running while its node is really alive (not crashed,
asleep or left). A crash or a leave ends the node's replicas and its core's memory; a
restarted node boots with an empty view (``startup_grace`` holds new starts while it is
alone, as the driver's rule does). Records written (read by
:class:`sim.availability.WorkloadAvailability`): ``workload_replicas`` rows
``{t, workload, running, wanted}`` at every change (``wanted`` = min(replicas, workload
nodes really alive)), the series ``workload_missing``, and ``workload_passes`` totals.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apps.runtimes.base import ReplicaState, ReplicaStatus
from apps.workloads.config import ReconcilerConfig
from apps.workloads.core import ReconcilerCore, WorkloadEntry
from apps.workloads.messages import NodeOffer
from apps.workloads.outputs import DeleteClaim, Output, StartReplica, StopReplica, WriteClaim
from apps.workloads.planner import ReplicaKey
from apps.workloads.reconciler import compute_assignment
from apps.workloads.spec import WorkloadSpec
from apps.workloads.tables import ReplicaClaim
from apps.workloads.view import build_view
from gossip.outputs import MemberFailed, MemberJoined, MemberLeft, MemberSuspected, MemberUpdated
from meshcloud.placement import NodeInfo

DEFAULT_WORKLOAD_NODES = 100
START_DELAY = 1.0
"""Seconds from a start to a running replica (podman start measured 0.2 s; 1 s leaves
room for a slow machine)."""
STOP_DELAY = 0.2
PASS_DELAY = 0.02
"""Seconds from a trigger to the pass (the driver's loop wakes on an event)."""
STATE_DELAY = 0.5
"""Seconds for a claim written on one node to reach the others (state replication)."""
PLAN_CACHE = 4096
"""Plans kept by (view, claims): converged nodes share one."""

_ALIVE_OUTPUTS = (MemberJoined, MemberUpdated, MemberSuspected)
_GONE_OUTPUTS = (MemberFailed, MemberLeft)


def default_specs(count: int = 20, replicas: int = 2) -> list[WorkloadSpec]:
    """Process workloads (every node has the process runtime; no image to hold)."""
    return [WorkloadSpec(name=f"w{i}", command=("/bin/sleep", "infinity"), replicas=replicas)
            for i in range(count)]


Stamp = tuple[float, bytes, int]


@dataclass
class FakeRuntime:
    """The replicas one node runs, as ``Runtime.list()`` would report them."""

    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)

    def running_workloads(self) -> set[str]:
        return {s.workload for s in self.replicas.values() if s.state is ReplicaState.RUNNING}


@dataclass
class Agent:
    """One workload node's reconciler and what it sees."""

    node_id: bytes
    core: ReconcilerCore
    booted_at: float
    believed: set[bytes] = field(default_factory=set)
    runtime: FakeRuntime = field(default_factory=FakeRuntime)
    busy: set[str] = field(default_factory=set)
    generation: int = 0
    pass_due: float = float("inf")
    alive: bool = True


class WorkloadSim:
    """The workload service on the simulated nodes (a model of ``sim.runner.Run``)."""

    name = "workloads"

    def __init__(self, specs: Sequence[WorkloadSpec] | None = None, *,
                 workload_nodes: int | None = DEFAULT_WORKLOAD_NODES,
                 config: ReconcilerConfig | None = None, start_delay: float = START_DELAY,
                 stop_delay: float = STOP_DELAY, state_delay: float = STATE_DELAY) -> None:
        self.specs = list(specs if specs is not None else default_specs())
        self.workloads = {s.name: WorkloadEntry(s, s.replicas) for s in self.specs}
        self.workload_nodes = workload_nodes
        self.config = config or ReconcilerConfig()
        self.start_delay = start_delay
        self.stop_delay = stop_delay
        self.state_delay = state_delay
        self.share = 1.0
        self.agents: dict[bytes, Agent] = {}
        self.offers: dict[bytes, NodeOffer] = {}
        self.capacity: dict[bytes, dict[str, Any]] = {}
        self.claims: dict[bytes, dict[ReplicaKey, tuple[Stamp, ReplicaClaim | None]]] = {}
        self._backlog: list[tuple[bytes, bytes, ReplicaKey, Stamp, ReplicaClaim | None]] = []
        self._plans: dict[tuple[frozenset[bytes], tuple[Any, ...]],
                          dict[str, dict[int, bytes]]] = {}
        self._views: dict[frozenset[bytes], list[NodeInfo]] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.counted: dict[bytes, set[str]] = {}
        self.running = dict.fromkeys(self.workloads, 0)
        self.truth: dict[bytes, str] = {}
        self._last_row: dict[str, tuple[int, int]] = {}
        self._last_missing: float | None = None
        self.passes = 0
        self.plans_computed = 0
        self.run: Any = None

    # --- wiring -----------------------------------------------------------------------------

    def attach(self, run: Any) -> None:
        self.run = run
        cluster = run.cluster
        hosts = list(cluster.by_index)
        if self.workload_nodes is not None and hosts:
            self.share = min(1.0, self.workload_nodes / len(hosts))
        now = run.engine.now
        initial = [h for h in hosts if h.up and not h.left and self._serves(h.node_id)]
        for host in hosts:
            self.truth[host.node_id] = "alive" if host.reachable else "crashed"
        for host in initial:
            self._enrol(host)
        ids = {h.node_id for h in initial}
        for host in initial:
            agent = self._new_agent(host.node_id, now)
            agent.believed = ids - {host.node_id}
            agent.booted_at = now - self.config.startup_grace  # a mesh already running
        cluster.listeners.append(self.on_membership)
        run.trace.truth_listeners.append(self.on_truth)
        for node in sorted(self.agents):
            self._poke(node)
        self._emit(now)

    def _serves(self, node: bytes) -> bool:
        """Whether the node runs the workload service (a stable hash draw)."""
        if self.share >= 1.0:
            return True
        draw = int.from_bytes(hashlib.blake2b(b"workload-node/" + node, digest_size=8)
                              .digest(), "big") / 2**64
        return draw < self.share

    def _enrol(self, host: Any) -> None:
        node = host.node_id
        arch = "aarch64" if host.phone else "x86_64"
        self.offers[node] = NodeOffer(runtimes=("process",), arch=arch, cpus=4.0,
                                      ram_mb=8192, metered=host.phone)
        self.capacity[node] = {"cpu_cores": 4, "ram_total": 8 << 30, "on_ac": not host.phone,
                               "metered": host.phone, "arch": arch}
        self.claims.setdefault(node, {})

    def _new_agent(self, node: bytes, now: float) -> Agent:
        old = self.agents.get(node)
        agent = Agent(node, ReconcilerCore(node, self.config), booted_at=now,
                      generation=(old.generation + 1) if old else 0)
        self.agents[node] = agent
        return agent

    # --- inputs ---------------------------------------------------------------------------

    def on_truth(self, t: float, node: bytes, state: str) -> None:
        before = self.truth.get(node)
        self.truth[node] = state
        agent = self.agents.get(node)
        if agent is None:
            if state == "alive" and before is None and self._serves(node):
                host = self.run.cluster.hosts[node]  # a new machine joins
                self._enrol(host)
                self._boot(node, t)
            return
        if state == "alive":
            if before in ("crashed", "gone", "left"):
                self._boot(node, t)
            else:  # woke up: the same process, its replicas still there
                agent.alive = True
                self._recount(node, t)
                self._poke(node)
        elif before == "alive":
            agent.alive = False
            if state in ("crashed", "gone", "left"):
                agent.runtime = FakeRuntime()  # the process and its replicas are gone
                agent.busy.clear()
                agent.generation += 1
            self._recount(node, t)

    def _boot(self, node: bytes, t: float) -> None:
        agent = self._new_agent(node, t)  # empty view, empty runtime, a fresh core
        self._recount(node, t)
        self._poke(node)
        self._poke(node, self.config.startup_grace)
        assert agent.alive

    def on_membership(self, t: float, observer: bytes, output: Any) -> None:
        agent = self.agents.get(observer)
        if agent is None or not agent.alive:
            return
        kind = type(output)
        if kind in _ALIVE_OUTPUTS:
            alive = True
        elif kind in _GONE_OUTPUTS:
            alive = False
        else:
            return
        subject = output.member.node_id
        if subject == observer or subject not in self.offers:
            return
        if alive == (subject in agent.believed):
            return
        if alive:
            agent.believed.add(subject)
        else:
            agent.believed.discard(subject)
        self._poke(observer)

    # --- passes ---------------------------------------------------------------------------

    def _poke(self, node: bytes, delay: float = PASS_DELAY) -> None:
        agent = self.agents[node]
        engine = self.run.engine
        when = engine.now + delay
        if when < agent.pass_due:
            agent.pass_due = when
            engine.at(when, self._pass, node, agent.generation, when)

    def _pass(self, node: bytes, generation: int, when: float) -> None:
        agent = self.agents[node]
        if agent.generation != generation or agent.pass_due != when:
            return
        agent.pass_due = float("inf")
        if not agent.alive:
            return
        now = self.run.engine.now
        self.passes += 1
        claims = {key: claim for key, (_, claim) in self.claims[node].items()
                  if claim is not None}
        members = frozenset(agent.believed | {node})
        assignment = self._assignment(members, claims)
        hold = now - agent.booted_at < self.config.startup_grace and not agent.believed
        outputs = agent.core.step(now, int(now * 1000), workloads=self.workloads,
                                  assignment=assignment, claims=claims,
                                  observed=list(agent.runtime.replicas.values()),
                                  busy=set(agent.busy), hold_new=hold)
        self._perform(agent, outputs)
        deadline = agent.core.next_deadline()
        if deadline is not None:
            self._poke(node, max(0.0, deadline - now))

    def _assignment(self, members: frozenset[bytes], claims: Mapping[ReplicaKey, ReplicaClaim]
                    ) -> dict[str, dict[int, bytes]]:
        holders = tuple(sorted((key, claim.node) for key, claim in claims.items()))
        cache_key = (members, holders)
        plan = self._plans.get(cache_key)
        if plan is None:
            view = self._views.get(members)
            if view is None:
                view = build_view(members, self.offers, self.capacity)
                if len(self._views) >= PLAN_CACHE:
                    self._views.clear()
                self._views[members] = view
            plan = compute_assignment(view, self.workloads, claims, self.offers,
                                      self.config.load_factor)
            self.plans_computed += 1
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            self._plans[cache_key] = plan
        return plan

    def _perform(self, agent: Agent, outputs: list[Output]) -> None:
        node = agent.node_id
        engine = self.run.engine
        for out in outputs:
            if isinstance(out, WriteClaim):
                self._write(node, out.key, out.claim)
            elif isinstance(out, DeleteClaim):
                current = self.claims[node].get(out.key)
                if current is not None and current[1] is not None \
                        and current[1].node == out.node:
                    self._write(node, out.key, None)
            elif isinstance(out, StartReplica):
                if out.spec.name in agent.busy:
                    continue
                agent.busy.add(out.spec.name)
                engine.after(self.start_delay, self._started, node, agent.generation, out)
            elif isinstance(out, StopReplica):
                if out.name in agent.busy:
                    continue
                agent.busy.add(out.name)
                engine.after(self.stop_delay, self._stopped, node, agent.generation, out)

    def _started(self, node: bytes, generation: int, op: StartReplica) -> None:
        agent = self.agents[node]
        if agent.generation != generation:
            return
        spec = op.spec
        current = agent.runtime.replicas.get(spec.name)
        if current is not None and current.alive and current.spec_hash == spec.spec_hash():
            status = ReplicaStatus(**{**_fields(current), "fencing_token": spec.fencing_token})
        else:
            restarts = current.restarts + 1 if current is not None else 0
            status = ReplicaStatus(name=spec.name, runtime=op.runtime,
                                   state=ReplicaState.RUNNING, id=f"r{next(self._ids)}",
                                   started_at=self.run.engine.now, restarts=restarts,
                                   workload=op.key[0], replica=op.key[1],
                                   fencing_token=spec.fencing_token,
                                   spec_hash=spec.spec_hash())
        agent.runtime.replicas[spec.name] = status
        agent.busy.discard(spec.name)
        self._recount(node, self.run.engine.now)
        self._poke(node)

    def _stopped(self, node: bytes, generation: int, op: StopReplica) -> None:
        agent = self.agents[node]
        if agent.generation != generation:
            return
        current = agent.runtime.replicas.get(op.name)
        if op.remove:
            agent.runtime.replicas.pop(op.name, None)
        elif current is not None:
            agent.runtime.replicas[op.name] = ReplicaStatus(
                **{**_fields(current), "state": ReplicaState.EXITED, "exit_code": 0})
        agent.busy.discard(op.name)
        self._recount(node, self.run.engine.now)
        self._poke(node)

    # --- claims replication ---------------------------------------------------------------

    def _write(self, node: bytes, key: ReplicaKey, claim: ReplicaClaim | None) -> None:
        stamp: Stamp = (self.run.engine.now, node, next(self._seq))
        self._apply(node, key, stamp, claim)
        for other in self.claims:
            if other != node:
                self._replicate(node, other, key, stamp, claim)

    def _replicate(self, src: bytes, dst: bytes, key: ReplicaKey, stamp: Stamp,
                   claim: ReplicaClaim | None) -> None:
        if self.run.network.reachable(src, dst) and self.truth.get(dst) == "alive":
            self.run.engine.after(self.state_delay, self._arrive, dst, key, stamp, claim)
        else:
            self._backlog.append((src, dst, key, stamp, claim))

    def _arrive(self, dst: bytes, key: ReplicaKey, stamp: Stamp,
                claim: ReplicaClaim | None) -> None:
        if self.truth.get(dst) != "alive":
            self._backlog.append((stamp[1], dst, key, stamp, claim))
            return
        if self._apply(dst, key, stamp, claim) and dst in self.agents:
            self._poke(dst)

    def _apply(self, node: bytes, key: ReplicaKey, stamp: Stamp,
               claim: ReplicaClaim | None) -> bool:
        table = self.claims[node]
        current = table.get(key)
        if current is not None and current[0] >= stamp:
            return False
        table[key] = (stamp, claim)
        return True

    def _retry_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        for src, dst, key, stamp, claim in backlog:
            current = self.claims[dst].get(key)
            if current is not None and current[0] >= stamp:
                continue  # superseded: nothing to send
            self._replicate(src, dst, key, stamp, claim)

    # --- what really runs -----------------------------------------------------------------

    def _recount(self, node: bytes, t: float) -> None:
        agent = self.agents[node]
        now_running = agent.runtime.running_workloads() if agent.alive else set()
        before = self.counted.get(node, set())
        if now_running == before:
            return
        for workload in before - now_running:
            if workload in self.running:
                self.running[workload] -= 1
        for workload in now_running - before:
            if workload in self.running:
                self.running[workload] += 1
        self.counted[node] = now_running
        self._emit(t)

    def _alive_nodes(self) -> int:
        return sum(1 for node, agent in self.agents.items()
                   if agent.alive and self.truth.get(node) == "alive")

    def _emit(self, t: float) -> None:
        alive = self._alive_nodes()
        missing = 0
        trace = self.run.trace
        for name, entry in self.workloads.items():
            wanted = min(entry.replicas, alive)
            running = self.running[name]
            missing += max(0, wanted - running)
            if self._last_row.get(name) != (running, wanted):
                self._last_row[name] = (running, wanted)
                trace.record("workload_replicas", t=round(t, 6), workload=name,
                             running=running, wanted=wanted)
        if self._last_missing != missing:
            self._last_missing = missing
            trace.sample("workload_missing", t, float(missing))

    # --- the runner's plug-in protocol ----------------------------------------------------

    def sample(self, now: float) -> None:
        if self._backlog:
            self._retry_backlog()
        self._emit(now)

    def finish(self, now: float) -> None:
        self._emit(now)
        self.run.trace.record("workload_passes", passes=self.passes,
                              plans_computed=self.plans_computed,
                              workload_nodes=len(self.agents))

    def checkers(self) -> list[object]:
        from sim.availability import WorkloadAvailability

        return [WorkloadAvailability()]

    def running_on(self) -> dict[bytes, set[str]]:
        """Workloads each live node really runs (for tests)."""
        return {node: set(names) for node, names in self.counted.items() if names}


def _fields(status: ReplicaStatus) -> dict[str, Any]:
    return {name: getattr(status, name) for name in ReplicaStatus.__dataclass_fields__}
