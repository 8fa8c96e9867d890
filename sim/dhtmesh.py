"""A fast in-process lookup simulation: thousands of real DhtCores on the simulator's engine.

Used by ``bench/`` and ``sim/`` (and ``python -m sim.dhtlookups``) to measure lookups at 1,000 and
10,000 nodes: rounds (median, p99; see :mod:`dht.lookup` for the definition), success
rate, requests per lookup, and, with latency, lookup time.

What runs is the production code: each node is a :class:`~dht.core.DhtCore` with its
real routing table and lookup state machine; messages are the real message objects
(encoded and decoded through the codec too with ``wire=True``). Only three things are
cheapened, each for a stated reason:

* **Signatures** use :class:`~dht.hooks.FakeSigner`/``FakeVerifier`` (lookups sign nothing;
  records would otherwise cost an Ed25519 verify each).
* **Delivery** is the simulator's one event queue (:class:`sim.engine.Engine`) and network
  model (:class:`sim.network.Network`): a message arrives ``latency + U(0, jitter)``
  seconds after it was sent (``latency=0``: instantly, in send order). A crashed node
  drops what it is sent; its peers learn only by their own request timeouts, as in real
  life.
* **Routing tables** are built one of two ways (``build``):

  - ``"join"``: nodes join one at a time, each bootstrapping from a random node already
    in (own-id lookup, then the join refresh of every farther bucket, Kademlia §2.3), with
    all that implies: tables fill from the messages nodes exchange, full buckets ping
    their oldest contact. Faithful by construction, but it costs ``N * log N`` lookups:
    minutes for 5,000 nodes, too slow for a 10,000-node benchmark.
  - ``"uniform"`` (default): each table is filled directly. Bucket ``i`` of node ``u``
    covers one contiguous block of the id space; if ``m`` nodes live there the bucket
    holds ``min(k, m)`` of them, chosen uniformly at random. Near buckets (``m <= k``)
    are complete, exactly as after joins. Far buckets are a uniform sample, which is
    the state tables reach once the network has seen some churn: a contact that stops
    answering is replaced by the newest node in the replacement cache, the last node of
    that block to have contacted us, an arbitrary one. A network where every node joined
    once and nothing ever failed is less even: a far bucket is first filled by the nodes
    that answered its refresh lookup, which gather round one random id, and full buckets
    keep their oldest contacts. Measured against real joins (``python -m sim.dhtlookups --build
    join``: no crashes, instant delivery, 1,000 lookups, k = 20, alpha = 3), uniform
    tables come out up to one round better at the median or p99 and need a quarter to a
    third fewer requests; the success rate is the same (100 %):

    ======  =========  =============  ==========  ====================  ==============
    nodes   build      rounds median  rounds p99  requests per lookup   whole run
    ======  =========  =============  ==========  ====================  ==============
    2,000   join       3              4           28.6                  27 s
    2,000   uniform    2              3           22.1                  2 s
    5,000   join       3              4           31.5                  107 s
    5,000   uniform    3              3           22.7                  5 s
    10,000  join       3              5           35.0                  292 s
    10,000  uniform    3              4           23.3                  7 s
    ======  =========  =============  ==========  ====================  ==============

Crashes are applied after the tables are built, all at once: the worst case for lookups,
since every table still lists the dead.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dht.config import DhtConfig
from dht.core import DhtCore
from dht.hooks import FakeSigner, FakeVerifier
from dht.ids import ID_BITS, id_to_int, int_to_id, random_id
from dht.messages import PeerInfo
from dht.outputs import LookupFinished, Output, Send
from dht.routing import Contact
from meshcloud.codec.messages import decode_message, encode_message
from sim.engine import Engine
from sim.network import LinkModel, Network

SIM_CONFIG = DhtConfig()
"""Defaults for simulated nodes: the production defaults (k=20, alpha=3, 2 s timeout)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupSample:
    initiator: bytes
    target: bytes
    rounds: int
    queries: int
    failures: int
    duration: float
    success: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    nodes: int
    crashed: int
    kind: str
    build: str
    lookups: int
    rounds_median: float
    rounds_p99: float
    rounds_max: int
    success_rate: float
    queries_mean: float
    duration_median: float
    duration_p99: float
    messages: int  # every message delivered or dropped while the lookups ran
    samples: tuple[LookupSample, ...] = field(repr=False, default=())

    def summary(self) -> str:
        return (f"{self.nodes} nodes ({self.crashed} crashed), {self.lookups} {self.kind} "
                f"lookups, {self.build} tables: rounds median {self.rounds_median:g} "
                f"p99 {self.rounds_p99:g} max {self.rounds_max}; success "
                f"{self.success_rate:.1%}; {self.queries_mean:.1f} requests per lookup; "
                f"time median {self.duration_median:.3f} s p99 {self.duration_p99:.3f} s")


def fill_tables_uniformly(cores: list[DhtCore], infos: list[PeerInfo], rng: random.Random,
                          *, k: int | None = None) -> None:
    """Fill each core's routing table: bucket ``i`` of node ``u`` covers one contiguous block
    of the id space; with ``m`` nodes there it holds ``min(k, m)`` of them, chosen uniformly
    (the "uniform" build of the module docstring). ``cores[i]`` belongs to ``infos[i]``."""
    keys = sorted((id_to_int(info.node_id), i) for i, info in enumerate(infos))
    values = [key for key, _ in keys]
    for i, core in enumerate(cores):
        bucket_size = k or core.config.k
        ku = id_to_int(infos[i].node_id)
        lo, hi = 0, len(values)  # nodes sharing our first (255 - bit) bits
        for bit in range(ID_BITS - 1, -1, -1):
            if hi - lo <= 1:
                break
            base = (ku >> bit) << bit  # our prefix down to this bit, lower bits zero
            if ku >> bit & 1:
                split = bisect.bisect_left(values, base, lo, hi)
                block, lo = (lo, split), split
            else:
                split = bisect.bisect_left(values, base + (1 << bit), lo, hi)
                block, hi = (split, hi), split
            size = block[1] - block[0]
            if size == 0:
                continue
            chosen = (range(block[0], block[1]) if size <= bucket_size
                      else rng.sample(range(block[0], block[1]), bucket_size))
            for position in chosen:
                key, j = keys[position]
                core.table.insert_unchecked(Contact(infos[j], key))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 1,000 samples is the 990th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


class SimNetwork:
    """N cores on one virtual clock. Deterministic for a given seed."""

    def __init__(self, n: int, *, seed: int = 1, config: DhtConfig = SIM_CONFIG,
                 latency: float = 0.0, jitter: float = 0.0, wire: bool = False) -> None:
        if n < 2:
            raise ValueError("a network needs at least two nodes")
        self.rng = random.Random(seed)
        self.config = config
        self.latency = latency
        self.jitter = jitter
        self.wire = wire
        self.engine = Engine(seed)
        self.network = Network(self.rng, LinkModel(latency_s=latency, jitter=0.0,
                                                   spread_s=jitter))
        self.ids: list[bytes] = []
        seen: set[bytes] = set()
        while len(self.ids) < n:
            node = random_id(self.rng)
            if node not in seen:
                seen.add(node)
                self.ids.append(node)
        self.index: dict[bytes, int] = {node: i for i, node in enumerate(self.ids)}
        self.infos = [PeerInfo(node_id=node, addresses=(f"sim://{i}",))
                      for i, node in enumerate(self.ids)]
        verifier = FakeVerifier()
        self.cores = [
            DhtCore(FakeSigner(node), verifier, config, rng=random.Random(self.rng.random()),
                    addresses=info.addresses)
            for node, info in zip(self.ids, self.infos, strict=True)
        ]
        self.alive = [True] * n
        self.messages = 0
        self._timer_at = [math.inf] * n
        self.on_finished: Callable[[int, LookupFinished], None] | None = None
        self.log: list[tuple[int, Output]] | None = None  # set to a list to keep every output
        self._live_cache: tuple[int, list[int]] | None = None

    # --- building tables ------------------------------------------------------------------

    def build_uniform(self) -> None:
        """Fill every table directly (see the module docstring for why this is faithful)."""
        fill_tables_uniformly(self.cores, self.infos, self.rng, k=self.config.k)

    def build_by_joining(self) -> None:
        """Nodes join one by one through real bootstrap lookups (see module docstring)."""
        for position in range(1, len(self.cores)):
            seed = self.rng.randrange(position)
            core = self.cores[position]
            self._handle(position, core.bootstrap([self.infos[seed]], self.now))
            self.run(lambda core=core: not core.active_lookups)  # type: ignore[misc]

    # --- faults ---------------------------------------------------------------------------

    def crash(self, fraction: float, *, keep: set[int] | None = None) -> list[int]:
        """Crash ``fraction`` of the nodes (never those in ``keep``); returns their indices."""
        keep = keep or set()
        choices = [i for i in range(len(self.cores)) if i not in keep and self.alive[i]]
        victims = self.rng.sample(choices, round(fraction * len(self.cores)))
        for i in victims:
            self.alive[i] = False
        return victims

    # --- running --------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.engine.now

    def _handle(self, i: int, outputs: list[Output]) -> None:
        source = self.ids[i]
        now = self.engine.now
        if self.log is not None:
            self.log.extend((i, out) for out in outputs)
        for out in outputs:
            if type(out) is Send:
                msg = out.msg
                if self.wire:
                    msg = decode_message(encode_message(msg))
                dst = self.index.get(out.to)
                if dst is not None:
                    delay = self.network.transit(source, out.to, 0, now)
                    if delay is not None:
                        self.engine.at(now + delay, self._arrive, dst, source, msg)
            elif type(out) is LookupFinished and self.on_finished is not None:
                self.on_finished(i, out)
        deadline = self.cores[i].next_deadline()
        if deadline < self._timer_at[i]:
            self._timer_at[i] = deadline
            self.engine.at(deadline, self._timer, i, deadline)

    def _arrive(self, dst: int, source: bytes, msg: Any) -> None:
        self.messages += 1
        if self.alive[dst]:
            self._handle(dst, self.cores[dst].on_message(source, msg, self.engine.now))

    def _timer(self, dst: int, when: float) -> None:
        if self._timer_at[dst] == when:
            self._timer_at[dst] = math.inf
        if not self.alive[dst]:
            return
        core = self.cores[dst]
        now = self.engine.now
        if core.next_deadline() <= now:
            self._handle(dst, core.on_timer(now))
        elif self._timer_at[dst] == math.inf:
            self._handle(dst, [])

    def run(self, done: Callable[[], bool], *, until: float = math.inf) -> None:
        """Process events until ``done()`` is true (checked after every event) or the next
        event is later than ``until``."""
        self.engine.run_while(lambda: not done(), until)

    @property
    def idle(self) -> bool:
        """No event left to run."""
        return self.engine.pending == 0

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, handling everything due in them."""
        end = self.now + seconds
        self.run(lambda: False, until=end)
        self.engine.now = max(self.engine.now, end)

    def feed(self, i: int, outputs: list[Output]) -> None:
        """Perform the outputs of a command given to core ``i`` (sends, timers)."""
        self._handle(i, outputs)

    def start_lookup(self, i: int, target: bytes, kind: str) -> int:
        core = self.cores[i]
        if kind == "peer":
            outputs = core.find_peer(target, self.now)
        else:
            outputs = core.find_node(target, self.now)
        lookup_id = outputs[0].lookup_id  # type: ignore[union-attr]
        self._handle(i, outputs)
        return lookup_id

    # --- truth ----------------------------------------------------------------------------

    def true_closest(self, target: bytes, count: int, exclude: int) -> set[bytes]:
        """The ``count`` live nodes closest to ``target``, ``exclude`` left out."""
        live = self._live_sorted()
        t = id_to_int(target)
        skip = id_to_int(self.ids[exclude])
        want = count + 1

        # Every id sharing p leading bits with the target is nearer to it than any id that
        # does not: the answer lies in the deepest subtree round the target that still
        # holds `want` live nodes (binary search on p), then a sort of that subtree.
        def span(depth: int) -> tuple[int, int]:
            shift = ID_BITS - depth
            low = (t >> shift) << shift if shift < ID_BITS else 0
            return (bisect.bisect_left(live, low),
                    bisect.bisect_right(live, low + (1 << shift) - 1))

        lo_depth, hi_depth = 0, ID_BITS
        while lo_depth < hi_depth:
            mid = (lo_depth + hi_depth + 1) // 2
            a, b = span(mid)
            if b - a >= want:
                lo_depth = mid
            else:
                hi_depth = mid - 1
        a, b = span(lo_depth)
        nearest = heapq.nsmallest(want, live[a:b], key=lambda v: v ^ t)
        return {int_to_id(v) for v in [v for v in nearest if v != skip][:count]}

    def _live_sorted(self) -> list[int]:
        if self._live_cache is None or self._live_cache[0] != sum(self.alive):
            values = sorted(id_to_int(node) for i, node in enumerate(self.ids) if self.alive[i])
            self._live_cache = (sum(self.alive), values)
        return self._live_cache[1]


def simulate(nodes: int = 1000, *, lookups: int = 500, crash_fraction: float = 0.0,
             kind: str = "closest", build: str = "uniform", seed: int = 1,
             latency: float = 0.0, jitter: float = 0.0, wire: bool = False,
             config: DhtConfig = SIM_CONFIG, concurrency: int = 100) -> SimulationResult:
    """Build a network, crash some of it, run ``lookups`` lookups, report figures.

    ``kind="closest"``: look up random ids; success = exactly the k closest live nodes.
    ``kind="peer"``: find_peer of random live nodes; success = the node itself answered.
    Lookups start from random live nodes, ``concurrency`` at a time.
    """
    builders = {"join": SimNetwork.build_by_joining, "uniform": SimNetwork.build_uniform}
    if kind not in ("closest", "peer") or build not in builders:
        raise ValueError(f"kind is 'closest' or 'peer'; build is one of {sorted(builders)}")
    net = SimNetwork(nodes, seed=seed, config=config, latency=latency, jitter=jitter,
                     wire=wire)
    builders[build](net)
    crashed = net.crash(crash_fraction)
    live = [i for i in range(nodes) if net.alive[i]]
    rng = random.Random(seed * 7919 + 1)
    plan: list[tuple[int, bytes]] = []
    for _ in range(lookups):
        initiator = rng.choice(live)
        if kind == "peer":
            target_index = rng.choice(live)
            while target_index == initiator:
                target_index = rng.choice(live)
            plan.append((initiator, net.ids[target_index]))
        else:
            plan.append((initiator, random_id(rng)))
    finished: dict[tuple[int, int], LookupFinished] = {}
    net.on_finished = lambda i, out: finished.__setitem__((i, out.lookup_id), out)
    started: dict[tuple[int, int], bytes] = {}
    messages_before = net.messages
    pending = list(reversed(plan))

    def room() -> bool:
        return len(started) - len(finished) < concurrency

    def all_done() -> bool:
        return len(finished) == len(started)

    while True:
        while pending and room():
            initiator, target = pending.pop()
            lookup_id = net.start_lookup(initiator, target, kind)
            started[(initiator, lookup_id)] = target
        if not pending and all_done():
            break
        net.run(room if pending else all_done)
        if net.idle and not all_done():
            raise RuntimeError("simulation stalled with lookups unfinished")
    samples = []
    k = config.k
    for (initiator, lookup_id), target in started.items():
        out = finished[(initiator, lookup_id)]
        if kind == "peer":
            success = out.succeeded
        else:
            found = {info.node_id for info in out.closest}
            success = found == net.true_closest(target, k, initiator)
        samples.append(LookupSample(initiator=net.ids[initiator], target=target,
                                    rounds=out.rounds, queries=out.queries,
                                    failures=out.failures, duration=out.ended - out.started,
                                    success=success))
    rounds = [float(s.rounds) for s in samples]
    durations = [s.duration for s in samples]
    return SimulationResult(
        nodes=nodes, crashed=len(crashed), kind=kind, build=build, lookups=len(samples),
        rounds_median=median(rounds), rounds_p99=percentile(rounds, 0.99),
        rounds_max=max(s.rounds for s in samples),
        success_rate=sum(s.success for s in samples) / len(samples),
        queries_mean=sum(s.queries for s in samples) / len(samples),
        duration_median=median(durations), duration_p99=percentile(durations, 0.99),
        messages=net.messages - messages_before, samples=tuple(samples))

