"""Running one scenario in simulated mode: build, schedule, run, check, report.

Everything that happens is scheduled on the one :class:`~sim.engine.Engine` from the
scenario and the seed: the initial mesh, the nemesis's faults, churn (a Poisson process per
kind), phones that sleep, wake and roam, DHT lookups, and a sampler that records what the
plots show. Same scenario + same seed ⇒ same trace ⇒ byte-identical ``metrics.json``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sim.checkers import CheckResult, run_checkers
from sim.cluster import SimCluster, gossip_preset
from sim.engine import Engine
from sim.network import LinkModel, Network
from sim.report import metrics_document, write_metrics, write_plots, write_summary
from sim.scenario import Fault, Scenario
from sim.trace import Trace

SAMPLE_INTERVAL = 1.0
"""Seconds between samples of alive counts and message rates."""
VIEW_SAMPLES = 60
"""Views (observers) whose alive count is recorded each sample, for the alive plot."""
SWEEP_INTERVAL = 10.0
"""Seconds between sweeps of idle connections (the transport's idle close)."""


@dataclass
class RunResult:
    scenario: Scenario
    trace: Trace
    results: list[CheckResult]
    figures: dict[str, Any]
    document: dict[str, Any]
    out: Path | None
    wall_s: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def with_overrides(scenario: Scenario, *, nodes: int | None = None,
                   duration: float | None = None, seed: int | None = None) -> Scenario:
    meta = scenario.scenario
    meta = replace(meta, nodes=nodes or meta.nodes, duration=duration or meta.duration,
                   seed=meta.seed if seed is None else seed)
    faults = [f for f in scenario.faults if f.at <= meta.duration]
    return replace(scenario, scenario=meta, faults=faults)


class Run:
    def __init__(self, scenario: Scenario, *, with_dht: bool = True,
                 checkers: list[Any] | None = None, models: list[Any] | None = None) -> None:
        self.scenario = scenario
        meta = scenario.scenario
        self.engine = Engine(meta.seed)
        net = scenario.network
        self.network = Network(
            rng=self.engine.derive_random("network"),
            default=LinkModel(latency_ms=net.latency_ms, jitter=net.jitter, loss=net.loss),
            uplink_bytes_per_s=net.bandwidth,
        )
        self.trace = Trace()
        self.cluster = SimCluster(self.engine, self.network, self.trace,
                                  config=gossip_preset(meta.profile), with_dht=with_dht)
        self.rng = self.engine.derive_random("nemesis")
        self.checkers = checkers
        self.models = models or []
        self._last_messages = 0
        self._last_sent: dict[bytes, tuple[int, int, int]] = {}
        self.rates: list[float] = []
        self.proto_rates: list[float] = []
        self.overhead_byte_rates: list[float] = []
        self.connection_counts: list[float] = []
        self.live_counts: list[float] = []
        self._next_sweep = SWEEP_INTERVAL

    # --- scheduling -------------------------------------------------------------------------

    def schedule(self) -> None:
        s = self.scenario
        meta = s.scenario
        self.cluster.populate(meta.nodes, phones=s.population.phones, slow=s.population.slow)
        for model in self.models:
            model.attach(self)
        for fault in s.faults:
            self.engine.at(fault.at, self.apply, fault)
        if s.nemesis.random:
            self._random_nemesis()
        churn = s.churn
        total = churn.join + churn.leave + churn.crash
        if total > 0:
            self.engine.at(churn.start, self._churn_event)
        for host in self.cluster.by_index:
            if host.phone:
                self.engine.at(self.rng.expovariate(1 / s.population.phone_awake),
                               self._phone_sleeps, host.node_id)
        if s.checks.dht_lookups and self.cluster.with_dht:
            every = meta.duration / s.checks.dht_lookups
            self.engine.at(every, self._lookup, every)
        self.engine.at(0.0, self._sample)

    def _random_nemesis(self) -> None:
        s = self.scenario
        t = 30.0
        actions = ["crash", "restart", "leave", "join", "partition", "loss", "slow"]
        while True:
            t += self.rng.expovariate(s.nemesis.rate / 60)
            if t > s.scenario.duration * 0.8:
                break
            action = self.rng.choice(actions)
            fault = Fault(at=t, action=action, count=self.rng.randint(1, 3))
            if action == "partition":
                fault = Fault(at=t, action="partition", groups=[0.5, 0.5])
                self.engine.at(t + self.rng.uniform(20, 60),
                               self.apply, Fault(at=t, action="heal"))
            elif action == "loss":
                fault = Fault(at=t, action="loss", value=round(self.rng.uniform(0.01, 0.2), 3),
                              duration=self.rng.uniform(30, 90))
            self.engine.at(t, self.apply, fault)

    def _victims(self, fault: Fault, pool: list[bytes]) -> list[bytes]:
        if fault.fraction is not None:
            count = max(1, math.ceil(fault.fraction * len(pool) - 1e-9))
        else:
            count = fault.count or 1
        count = min(count, len(pool))
        return self.rng.sample(pool, count) if count else []

    def apply(self, fault: Fault) -> None:
        c = self.cluster
        now = self.engine.now
        live = [h.node_id for h in c.by_index if h.reachable and not h.left]
        action = fault.action
        detail: dict[str, Any] = {}
        if action == "crash":
            victims = self._victims(fault, live)
            for node in victims:
                c.crash(node)
            if fault.duration:
                for node in victims:
                    self.engine.after(fault.duration, c.restart, node)
            detail["count"] = len(victims)
        elif action == "restart":
            down = [h.node_id for h in c.by_index if not h.up and not h.left]
            victims = self._victims(fault, down) if down else []
            for node in victims:
                c.restart(node)
            detail["count"] = len(victims)
        elif action == "leave":
            victims = self._victims(fault, live)
            for node in victims:
                c.leave(node)
            detail["count"] = len(victims)
        elif action == "join":
            count = (max(1, round(fault.fraction * self.scenario.scenario.nodes))
                     if fault.fraction else fault.count or 1)
            seed = self.rng.choice(live) if live else None
            for _ in range(count):
                c.add(seed=seed)  # a mass join goes through one bootstrap node
            detail["count"] = count
        elif action in ("sleep", "wake", "roam", "slow"):
            pool = live if action != "wake" else [h.node_id for h in c.by_index if h.asleep]
            victims = self._victims(fault, pool)
            for node in victims:
                if action == "slow":
                    c.hosts[node].slow = True
                    if fault.duration:
                        self.engine.after(fault.duration, self._unslow, node)
                else:
                    getattr(c, action)(node)
                    if action == "sleep" and fault.duration:
                        self.engine.after(fault.duration, c.wake, node)
            detail["count"] = len(victims)
        elif action == "partition":
            order = list(live)
            self.rng.shuffle(order)
            groups: list[set[bytes]] = []
            start = 0
            assert fault.groups is not None
            for index, share in enumerate(fault.groups):
                end = len(order) if index == len(fault.groups) - 1 else \
                    start + round(share * len(order))
                groups.append(set(order[start:end]))
                start = end
            self.network.partition(groups)
            # connections across the cut die only when a stream on them goes silent
            # (the keepalive runs only while streams are open): see sim.connections
            self.trace.partition(now, [frozenset(g) for g in groups])
            detail["groups"] = [len(g) for g in groups]
        elif action == "one_way":
            victims = set(self._victims(fault, live))
            rest = set(live) - victims
            self.network.cut_one_way(rest, victims)
            detail["count"] = len(victims)
        elif action == "heal":
            self.network.heal()
            self.trace.partition(now, None)
        elif action == "loss":
            before = self.network.default.loss
            self.network.set_loss(fault.value or 0.0)
            if fault.duration:
                self.engine.after(fault.duration, self.network.set_loss, before)
            detail["value"] = fault.value
        self.trace.fault(now, action, **detail)

    def _unslow(self, node: bytes) -> None:
        self.cluster.hosts[node].slow = False

    def _churn_event(self) -> None:
        s = self.scenario
        churn = s.churn
        now = self.engine.now
        quiet = 2 * s.checks.convergence_bound  # time to settle before the end
        stop = churn.stop if churn.stop is not None else \
            min(s.scenario.duration * 0.85, s.scenario.duration - quiet)
        if now > stop:
            return
        total = churn.join + churn.leave + churn.crash
        pick = self.rng.random() * total
        c = self.cluster
        live = [h.node_id for h in c.by_index if h.reachable and not h.left]
        if pick < churn.join:
            # half the joins are nodes coming back, half are new machines
            down = [h.node_id for h in c.by_index if not h.up and not h.left]
            if down and self.rng.random() < 0.5:
                node = self.rng.choice(down)
                c.restart(node)
                self.trace.fault(now, "restart", count=1)
            else:
                c.add()
                self.trace.fault(now, "join", count=1)
        elif pick < churn.join + churn.leave:
            if len(live) > 3:
                c.leave(self.rng.choice(live))
                self.trace.fault(now, "leave", count=1)
        elif len(live) > 3:
            node = self.rng.choice(live)
            c.crash(node)
            self.engine.after(churn.restart_after, c.restart, node)
            self.trace.fault(now, "crash", count=1)
        self.engine.after(self.rng.expovariate(total / 60), self._churn_event)

    def _phone_sleeps(self, node: bytes) -> None:
        host = self.cluster.hosts[node]
        pop = self.scenario.population
        if host.reachable and not host.left:
            if self.rng.random() < 0.3:
                self.cluster.roam(node)
                self.engine.after(self.rng.expovariate(1 / pop.phone_awake), self._phone_sleeps,
                                  node)
                return
            self.cluster.sleep(node)
            self.engine.after(self.rng.expovariate(1 / pop.phone_sleep), self._phone_wakes, node)
        else:
            self.engine.after(self.rng.expovariate(1 / pop.phone_awake), self._phone_sleeps, node)

    def _phone_wakes(self, node: bytes) -> None:
        self.cluster.wake(node)
        pop = self.scenario.population
        self.engine.after(self.rng.expovariate(1 / pop.phone_awake), self._phone_sleeps, node)

    def _lookup(self, every: float) -> None:
        self.cluster.lookup(self.rng)
        self.engine.after(every, self._lookup, every)

    def _sample(self) -> None:
        c = self.cluster
        now = self.engine.now
        live_hosts = [h for h in c.by_index if h.reachable and not h.left]
        self.trace.sample("truth_alive", now, len(live_hosts))
        observers = [h for h in c.by_index[:VIEW_SAMPLES]]
        counts = []
        for host in observers:
            if host.reachable and not host.left:
                stats = host.swim.statistics()
                counts.append(stats.alive)
            else:
                counts.append(math.nan)
        self.trace.record("view_alive_counts", t=now, counts=counts)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            c.conns.sweep(now)
        if now > 0 and live_hosts:
            zero = (0, 0, 0)
            last = [self._last_sent.get(h.node_id, zero) for h in live_hosts]
            sent = [h.sent - was[0] for h, was in zip(live_hosts, last, strict=True)]
            proto = sum(h.proto_sent - was[1] for h, was in zip(live_hosts, last, strict=True))
            extra = sum(h.overhead_bytes - was[2]
                        for h, was in zip(live_hosts, last, strict=True))
            per = len(live_hosts) * SAMPLE_INTERVAL
            rate = sum(sent) / per
            self.rates.append(rate)
            self.proto_rates.append(proto / per)
            self.overhead_byte_rates.append(extra / per)
            conns = sum(c.conns.size(h.node_id) for h in live_hosts) / len(live_hosts)
            self.connection_counts.append(conns)
            self.live_counts.append(float(len(live_hosts)))
            self.trace.sample("msgs_per_node_s", now, round(rate, 3))
            self.trace.sample("connections_per_node", now, round(conns, 2))
            ordered = sorted(sent)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / SAMPLE_INTERVAL
            self.trace.sample("msgs_per_node_s_p99", now, p99)
        self._last_sent = {h.node_id: (h.sent, h.proto_sent, h.overhead_bytes)
                           for h in c.by_index}
        for model in self.models:
            model.sample(now)
        self.engine.after(SAMPLE_INTERVAL, self._sample)

    # --- running ----------------------------------------------------------------------------

    def run(self, on_progress: Callable[[float], None] | None = None) -> None:
        self.schedule()
        self.engine.run_until(self.scenario.scenario.duration, on_progress,
                              progress_step=max(1.0, self.scenario.scenario.duration / 200))
        self.trace.end = self.scenario.scenario.duration
        for model in self.models:
            model.finish(self.engine.now)

    def figures(self) -> dict[str, Any]:
        c = self.cluster
        mean_rate = statistics.fmean(self.rates or [0.0])
        proto_rate = statistics.fmean(self.proto_rates or [0.0])
        overhead = statistics.fmean(self.overhead_byte_rates or [0.0])
        seconds = max(1.0, len(self.rates) * SAMPLE_INTERVAL)
        live = max(1.0, statistics.fmean(self.live_counts or [1.0]))
        cs = c.conns.stats
        return {
            "events": self.engine.events_run,
            "messages": c.messages,
            "msgs_per_node_s": round(mean_rate, 3),
            "protocol_msgs_per_node_s": round(proto_rate, 3),
            "bytes_per_node_s": round(proto_rate * c.mean_message_bytes + overhead, 1),
            "overhead_bytes_per_node_s": round(overhead, 1),
            "mean_message_bytes": round(c.mean_message_bytes, 1),
            "connections_per_node": round(statistics.fmean(self.connection_counts or [0.0]),
                                          2),
            "connections_per_node_max": max((c.conns.size(h.node_id) for h in c.live()),
                                            default=0),
            "dials_per_node_s": round(cs.dials / seconds / live, 3),
            "datagrams_per_node_s": round(cs.datagrams / seconds / live, 3),
            "dials_failed": cs.dials_failed,
            "keepalive_msgs_per_node_s": round(cs.keepalive_messages / seconds / live, 4),
            "idle_closes": cs.idle_closes,
            "evictions": cs.evictions,
            "lost_random": self.network.stats.lost_random,
            "lost_partition": self.network.stats.lost_partition,
            "nodes_final_alive": sum(1 for h in c.by_index if h.reachable and not h.left),
            "nodes_ever": len(c.by_index),
        }


def default_models(scenario: Scenario) -> list[Any]:
    """Models of the services on top of membership the scenario asks for."""
    models: list[Any] = []
    wanted = scenario.scenario.models
    if "blobs" in wanted:
        from sim.blobs import BlobSimModel

        models.append(BlobSimModel())
    if "workloads" in wanted:
        from sim.workloads import WorkloadSim

        models.append(WorkloadSim())
    if "state" in wanted:
        from sim.statemodel import StateSimModel

        models.append(StateSimModel())
    return models


def default_checkers() -> list[Any]:
    from sim.blobchecks import NoAcknowledgedObjectLost
    from sim.checkers import CHECKERS

    return [*CHECKERS, NoAcknowledgedObjectLost()]


def run(scenario: Scenario, *, out: Path | None, progress: bool = True,
        with_dht: bool = True, extra_checkers: list[Any] | None = None,
        models: list[Any] | None = None) -> RunResult:
    started = time.monotonic()
    models = default_models(scenario) if models is None else models
    sim = Run(scenario, with_dht=with_dht, models=models)
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[t]:>7.1f}s / {task.total:.0f}s simulated"),
                   TextColumn("{task.fields[nodes]} nodes"), TimeElapsedColumn()]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(scenario.name, total=scenario.scenario.duration, t=0.0,
                                nodes=scenario.scenario.nodes)

            def report(t: float) -> None:
                alive = sum(1 for h in sim.cluster.by_index if h.reachable)
                bar.update(task, completed=t, t=t, nodes=alive)

            sim.run(report)
    else:
        sim.run()
    checkers = default_checkers() + list(extra_checkers or [])
    for model in sim.models:
        for checker in getattr(model, "checkers", list)():
            if all(type(checker) is not type(c) for c in checkers):
                checkers.append(checker)
    results = run_checkers(sim.trace, scenario, checkers)
    figures = sim.figures()
    document = metrics_document(scenario, figures, results)
    wall = time.monotonic() - started
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_metrics(out / "metrics.json", document)
        plots = write_plots(out, scenario, sim.trace)
        write_summary(out / "summary.md", scenario, document, results, plots, wall)
    return RunResult(scenario, sim.trace, results, figures, document, out, wall)
