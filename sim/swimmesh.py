"""A deterministic multi-node harness for SwimCore (tests and benches), on the simulator's
engine.

:class:`SwimCluster` runs many :class:`~gossip.core.SwimCore` objects on the one event
queue of :class:`sim.engine.Engine` and the one network model of :class:`sim.network.Network`
(latency with a uniform spread, loss, partitions): no trio, no threads, one seeded
``random.Random`` for the network and one per core. The same seed gives the same run. It
is a thin adapter: the engine orders events, the network decides each datagram's fate,
this module only wires SwimCore's inputs and outputs to them.

How it drives a core (the whole contract):

* construct ``SwimCore(node_id, config, hooks, random.Random(seed), now=t, addresses=...,
  capacity=...)``; hooks from :func:`gossip.hooks.fake_hooks` (cheap signatures);
* after *every* call into a core, read ``core.next_deadline()`` and (re)arm one timer
  for it; when it comes due call ``core.on_timer(now)``;
* perform each output: :class:`~gossip.outputs.Send` — deliver ``msg`` to ``to`` after a
  latency, unless lost, by ``core.on_message(sender, msg, now)``;
  :class:`~gossip.outputs.Sync` — reliable exchange: ``reply, outs =
  peer.on_push_pull(sender, msg, now)`` then, one latency later,
  ``core.on_push_pull_reply(peer, reply, now)`` (or ``on_push_pull_failed``). A
  non-join Sync runs digest-first as the driver does (``digest_syncs``): ``peer.on_sync_digest(
  sender, core.sync_digest(), now)``, one latency later ``core.on_sync_delta``, one more
  ``peer.on_sync_entries``. Membership events are recorded;
* crash = stop delivering to and from the node and never call it again; restart = a new
  core with the same id (incarnation 0) that joins through a live seed.

Large meshes start converged with :meth:`SwimCluster.populate` (``SwimCore.preload``),
skipping N full-state joins. Memory is the limit: every node holds every member, about
0.14 KB per (node, member) pair, so 1,000 nodes take ~140 MB and 5,000 take ~3 GB (and a
minute of steady state at 5,000 nodes runs in about 5 s).
"""

from __future__ import annotations

import hashlib
import random
import statistics as stats
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import GossipHooks, fake_hooks
from gossip.member import MemberState
from gossip.messages import PACKET_TYPES, PushPull, SyncDelta, SyncDigest
from gossip.outputs import MemberFailed, Output, Send, Sync
from meshcloud.codec.messages import decode_message, encode_message
from sim.engine import Engine
from sim.network import LinkModel, Network


def sim_node_id(index: int) -> bytes:
    """A stable 32-byte node id for simulated node ``index``."""
    return hashlib.blake2b(b"gossip-sim-%d" % index, digest_size=32).digest()


@dataclass(slots=True)
class SimNode:
    node_id: bytes
    index: int
    core: SwimCore
    generation: int = 0
    up: bool = True
    scheduled: float | None = None
    sent: int = 0
    """Datagrams sent by this node (all generations)."""
    sent_bytes: int = 0
    frozen_until: float = 0.0
    """Its loop is stalled until then: what reaches it waits, its timers fire late."""
    deaf_until: float = 0.0
    """Datagrams to it are lost until then (it still sends, and syncs still work)."""


@dataclass(slots=True)
class Observation:
    time: float
    observer: bytes
    kind: str
    subject: bytes


@dataclass
class SwimCluster:
    """Many SwimCores, one virtual clock, a lossy network with latency. Deterministic."""

    config: GossipConfig = field(default_factory=GossipConfig)
    seed: int = 0
    latency: float = 0.002
    """Seconds every datagram takes (one way)."""
    jitter: float = 0.003
    """Extra uniform random delay, 0..jitter seconds."""
    loss: float = 0.0
    """Probability that a datagram is lost (syncs are reliable, like TCP)."""
    encode: bool = False
    """Round-trip every datagram through the codec (slower; counts bytes)."""
    record: bool = True
    """Keep every membership event in ``observations``."""
    hooks_factory: Callable[[bytes], GossipHooks] = fake_hooks
    digest_syncs: bool = True
    """Run periodic syncs digest-first, as the driver does (False: full push-pull)."""

    def __post_init__(self) -> None:
        self.engine = Engine(self.seed)
        self.random = random.Random(self.seed)
        self.network = Network(self.random, LinkModel(latency_s=self.latency, jitter=0.0,
                                                      loss=self.loss, spread_s=self.jitter))
        self.nodes: dict[bytes, SimNode] = {}
        self.observations: list[Observation] = []
        self.crashed_at: dict[bytes, float] = {}
        self.false_deaths: list[Observation] = []
        self.first_failure: dict[bytes, float] = {}
        """Crashed subject -> time the first node declared it DEAD."""
        self.failure_seen: dict[bytes, dict[bytes, float]] = {}
        """Crashed subject -> observer -> time that observer marked it DEAD."""
        self.delivered = 0
        self.listeners: list[Callable[[float, bytes, Output], None]] = []

    # --- building -------------------------------------------------------------------------

    def _new_core(self, node_id: bytes, index: int, generation: int,
                  capacity: Capacity | None, incarnation: int) -> SwimCore:
        rng = random.Random(self.seed * 1_000_003 + index * 7919 + generation)
        return SwimCore(node_id, self.config, self.hooks_factory(node_id), rng, now=self.now,
                        addresses=(f"sim://{index}",), capacity=capacity,
                        incarnation=incarnation)

    def add(self, *, seeds: Iterable[bytes] = (), capacity: Capacity | None = None) -> bytes:
        """Start a new node now and join it through ``seeds``."""
        index = len(self.nodes)
        node_id = sim_node_id(index)
        node = SimNode(node_id, index, self._new_core(node_id, index, 0, capacity, 0))
        self.nodes[node_id] = node
        self._run_outputs(node, node.core.join(list(seeds), self.now))
        self._arm(node)
        return node_id

    def populate(self, n: int) -> list[bytes]:
        """Start ``n`` nodes that already know each other (a converged mesh)."""
        start = len(self.nodes)
        ids = []
        for index in range(start, start + n):
            node_id = sim_node_id(index)
            self.nodes[node_id] = SimNode(node_id, index,
                                          self._new_core(node_id, index, 0, None, 0))
            ids.append(node_id)
        alives = [self.nodes[i].core.table.members[i].alive for i in ids]
        for node_id in ids:
            core = self.nodes[node_id].core
            core.preload(alives, self.now, verified=True)
            core.queue.remove(node_id)  # our own first Alive is old news to a warm mesh
            core._next_gossip = None
            self._arm(self.nodes[node_id])
        return ids

    # --- faults ---------------------------------------------------------------------------

    def crash(self, node_id: bytes, *, hint: bool = False) -> None:
        """Kill a node (kill -9). With ``hint``, every live node gets ``on_peer_lost``."""
        node = self.nodes[node_id]
        node.up = False
        node.generation += 1
        self.crashed_at[node_id] = self.now
        self.failure_seen.setdefault(node_id, {})
        if hint:
            for other in self.live_nodes():
                self._run_outputs(other, other.core.on_peer_lost(node_id, self.now))
                self._arm(other)

    def restart(self, node_id: bytes, seeds: Iterable[bytes]) -> None:
        """Start a fresh core with the same id (incarnation 0) and join through ``seeds``."""
        node = self.nodes[node_id]
        node.generation += 1
        node.up = True
        node.scheduled = None
        self.crashed_at.pop(node_id, None)
        node.core = self._new_core(node_id, node.index, node.generation, None, 0)
        self._run_outputs(node, node.core.join(list(seeds), self.now))
        self._arm(node)

    def freeze(self, node_id: bytes, seconds: float) -> None:
        """Stall the node's event loop for ``seconds`` from now (a starved process): what
        reaches it meanwhile waits, its timers fire late, and when it comes back the core
        hears of the stall first (``on_loop_lag``), as the driver's late timer tells it."""
        node = self.nodes[node_id]
        until = self.now + seconds
        if until <= node.frozen_until:
            return
        node.frozen_until = until
        self.engine.at(until, self._thaw, node, node.generation, until, seconds)

    def deafen(self, node_id: bytes, seconds: float) -> None:
        """Lose every datagram to the node for ``seconds`` from now."""
        node = self.nodes[node_id]
        node.deaf_until = max(node.deaf_until, self.now + seconds)

    def _frozen(self, node: SimNode, fn: Callable[..., None], *args: object) -> bool:
        """If ``node`` is stalled, run ``fn(*args)`` when it comes back (True)."""
        if node.frozen_until <= self.now:
            return False
        self.engine.at(node.frozen_until, fn, *args)
        return True

    def _thaw(self, node: SimNode, generation: int, until: float, seconds: float) -> None:
        if not node.up or node.generation != generation or node.frozen_until != until:
            return
        self._run_outputs(node, node.core.on_loop_lag(seconds, self.now))
        self._arm(node)

    def leave(self, node_id: bytes) -> None:
        node = self.nodes[node_id]
        self._run_outputs(node, node.core.leave(self.now))
        self._arm(node)

    def partition(self, *groups: Iterable[bytes]) -> None:
        """Nodes reach only nodes in their own group (and no node in no group)."""
        self.network.partition([set(g) for g in groups], isolate_rest=True)

    def heal(self) -> None:
        self.network.heal()

    # --- running --------------------------------------------------------------------------

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    @property
    def now(self) -> float:
        return self.engine.now

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float) -> None:
        self.engine.run_until(until)

    def _arm(self, node: SimNode) -> None:
        if not node.up:
            return
        deadline = node.core.next_deadline()
        if deadline is not None and deadline != node.scheduled:
            node.scheduled = deadline
            self.engine.at(max(deadline, self.now), self._timer, node, node.generation,
                           deadline)

    def _timer(self, node: SimNode, generation: int, deadline: float) -> None:
        if not node.up or node.generation != generation or node.scheduled != deadline:
            return
        if self._frozen(node, self._timer, node, generation, deadline):
            return
        node.scheduled = None
        self._run_outputs(node, node.core.on_timer(self.now))
        self._arm(node)

    def _deliver(self, target: bytes, sender: bytes, msg: object) -> None:
        node = self.nodes[target]
        if not node.up or node.deaf_until > self.now:
            return
        if self._frozen(node, self._deliver, target, sender, msg):
            return
        self.delivered += 1
        self._run_outputs(node, node.core.on_message(sender, msg, self.now))
        self._arm(node)

    def _sync_request(self, target: bytes, sender: bytes, generation: int,
                      msg: PushPull | SyncDigest) -> None:
        now = self.now
        node = self.nodes[target]
        if not node.up or not self.network.reachable(sender, target):
            self.engine.at(now + self.config.sync_timeout, self._sync_failed, sender, target,
                           generation)
            return
        if self._frozen(node, self._sync_request, target, sender, generation, msg):
            return
        reply: PushPull | SyncDelta
        if isinstance(msg, SyncDigest):
            reply = node.core.on_sync_digest(sender, msg, now)
        else:
            reply, outputs = node.core.on_push_pull(sender, msg, now)
            self._run_outputs(node, outputs)
        self._arm(node)
        self.engine.at(now + self.latency, self._sync_reply, sender, target, generation,
                       reply)

    def _sync_reply(self, target: bytes, sender: bytes, generation: int,
                    msg: PushPull | SyncDelta) -> None:
        node = self.nodes[target]
        if not (node.up and node.generation == generation):
            return
        if self._frozen(node, self._sync_reply, target, sender, generation, msg):
            return
        if isinstance(msg, SyncDelta):
            wanted, outputs = node.core.on_sync_delta(sender, msg, self.now)
            self.engine.at(self.now + self.latency, self._sync_entries, sender, target, wanted)
        else:
            outputs = node.core.on_push_pull_reply(sender, msg, self.now)
        self._run_outputs(node, outputs)
        self._arm(node)

    def _sync_entries(self, target: bytes, sender: bytes, msg: object) -> None:
        node = self.nodes[target]
        if self._frozen(node, self._sync_entries, target, sender, msg):
            return
        if node.up:
            self._run_outputs(node, node.core.on_sync_entries(sender, msg, self.now))  # type: ignore[arg-type]
            self._arm(node)

    def _sync_failed(self, target: bytes, sender: bytes, generation: int) -> None:
        node = self.nodes[target]
        if self._frozen(node, self._sync_failed, target, sender, generation):
            return
        if node.up and node.generation == generation:
            self._run_outputs(node, node.core.on_push_pull_failed(sender, self.now))
            self._arm(node)

    def _run_outputs(self, node: SimNode, outputs: list[Output]) -> None:
        now = self.now
        for out in outputs:
            kind = type(out)
            if kind is Send:
                node.sent += 1
                to = out.to  # type: ignore[union-attr]
                msg = out.msg  # type: ignore[union-attr]
                if self.encode:
                    data = encode_message(msg)
                    node.sent_bytes += len(data)
                    msg = decode_message(data, PACKET_TYPES)
                if to not in self.nodes:
                    continue
                delay = self.network.transit(node.node_id, to, 0, now)
                if delay is None:
                    continue
                self.engine.at(now + delay, self._deliver, to, node.node_id, msg)
            elif kind is Sync:
                msg = out.msg  # type: ignore[union-attr]
                assert isinstance(msg, PushPull)
                request: PushPull | SyncDigest = msg
                if self.digest_syncs and not msg.join:
                    request = node.core.sync_digest()
                self.engine.at(now + self.latency, self._sync_request, out.to,  # type: ignore[union-attr]
                               node.node_id, node.generation, request)
            else:
                self._observe(node.node_id, out)
            for listener in self.listeners:
                listener(now, node.node_id, out)

    def _observe(self, observer: bytes, out: Output) -> None:
        member = getattr(out, "member", None)
        if member is None:
            return
        subject = member.node_id
        if self.record:
            self.observations.append(Observation(self.now, observer, type(out).__name__,
                                                 subject))
        if type(out) is MemberFailed:
            crashed = self.crashed_at.get(subject)
            if crashed is None:
                self.false_deaths.append(Observation(self.now, observer, "MemberFailed",
                                                     subject))
            else:
                self.first_failure.setdefault(subject, self.now)
                self.failure_seen[subject].setdefault(observer, self.now)

    # --- questions ------------------------------------------------------------------------

    def state(self, observer: bytes, subject: bytes) -> MemberState | None:
        return self.nodes[observer].core.state_of(subject)

    def converged(self) -> bool:
        """Every live node sees every live node ALIVE and every crashed node not alive."""
        live = [n.node_id for n in self.live_nodes()]
        crashed = [i for i, n in self.nodes.items() if not n.up]
        for node in self.live_nodes():
            core = node.core
            for subject in live:
                if core.state_of(subject) is not MemberState.ALIVE:
                    return False
            for subject in crashed:
                state = core.state_of(subject)
                if state is MemberState.ALIVE or state is MemberState.SUSPECT:
                    return False
        return True

    def all_marked_dead(self, subject: bytes) -> bool:
        return all(n.core.state_of(subject) in (MemberState.DEAD, None)
                   for n in self.live_nodes())

    def messages_per_node_second(self, since_counts: dict[bytes, int], seconds: float) -> float:
        """Mean datagrams sent per live node per second since ``since_counts``."""
        live = self.live_nodes()
        total = sum(n.sent - since_counts.get(n.node_id, 0) for n in live)
        return total / len(live) / seconds

    def sent_counts(self) -> dict[bytes, int]:
        return {i: n.sent for i, n in self.nodes.items()}


def detection_summary(cluster: SwimCluster) -> dict[str, float]:
    """Median and p99 (seconds) of first detection and of every survivor's detection."""
    first = [cluster.first_failure[s] - cluster.crashed_at[s]
             for s in cluster.first_failure if s in cluster.crashed_at]
    everyone = [t - cluster.crashed_at[s] for s, seen in cluster.failure_seen.items()
                if s in cluster.crashed_at for t in seen.values()]
    return {
        "first_median": stats.median(first) if first else float("nan"),
        "first_p99": percentile(first, 0.99),
        "all_median": stats.median(everyone) if everyone else float("nan"),
        "all_p99": percentile(everyone, 0.99),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


__all__ = ["Observation", "SimNode", "SwimCluster", "detection_summary", "percentile",
           "sim_node_id"]
