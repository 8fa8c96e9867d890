"""`python -m sim run SCENARIO --real`: the scenario with real agents and real faults.

N genuine agents, each in its own network namespace on a private bridge
(:class:`~sim.netns.NetnsLab`), made with the genuine ``init`` / ``invite`` / ``join``
commands. The scenario's faults are applied for real: ``kill -9`` (crash), a new process
on the same data dir (restart), ``meshcloud leave``, iptables DROP rules (partition,
one-way cut), the iptables ``statistic`` match (loss), the link set down (sleep / roam),
``tc tbf`` (bandwidth). Time is real: the run lasts the scenario's duration.

What each node believes is read from its API (``GET /v1/members``) every half second and
recorded in the same :class:`~sim.trace.Trace` the simulated mode writes, so the same
checkers judge it. Every namespace, link and process made here is removed at the end,
also after Ctrl-C or an error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

from sim.agents import Agent, LocalCluster, wait_until
from sim.checkers import (
    DetectionTime,
    FalsePositives,
    MembershipConvergence,
    SplitBrain,
    run_checkers,
)
from sim.netns import Host, NetnsLab, require_root
from sim.report import metrics_document, write_metrics, write_plots, write_summary
from sim.runner import RunResult
from sim.scenario import Fault, Scenario
from sim.trace import Trace

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
"""Seconds between reads of every agent's member list."""
PEER_PORT, API_PORT, S3_PORT = 7946, 7947, 7948


class RealRun:
    def __init__(self, scenario: Scenario, root: Path) -> None:
        require_root()
        self.scenario = scenario
        self.root = root
        self.rng = random.Random(scenario.scenario.seed)
        self.trace = Trace()
        self.lab: NetnsLab | None = None
        self.cluster = LocalCluster(root / "agents")
        self.host_of: dict[str, Host] = {}
        self.start = 0.0
        self.last_view: dict[tuple[str, str], str] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)

    def now(self) -> float:
        return time.monotonic() - self.start

    # --- building -----------------------------------------------------------------------

    def build(self) -> None:
        """The first agent inits the mesh; the others join through it at once and start
        together, as machines switched on together would."""
        n = self.scenario.scenario.nodes
        self.lab = NetnsLab(n)
        bandwidth = self.scenario.network.bandwidth
        specs = []
        for index, host in enumerate(self.lab.hosts):
            self.host_of[f"node{index + 1}"] = host
            if bandwidth:
                self.lab.bandwidth(host, f"{int(bandwidth * 8)}bit")
            specs.append({"name": f"node{index + 1}", "listen": f"{host.ip}:{PEER_PORT}",
                          "api": f"{host.ip}:{API_PORT}", "s3": f"{host.ip}:{S3_PORT}",
                          "prefix": host.exec_prefix(),
                          "extra_args": ["--profile", self.scenario.scenario.profile]})
        first = self.cluster.new_agent(**specs[0])
        first.cli("init", "--name", self.scenario.name, *first.node_flags())
        first.start()
        self.cluster.start_all(self.cluster.join_many(specs[1:], through=first))
        if self.scenario.network.loss:
            self.lab.loss(self.lab.hosts, self.scenario.network.loss)

    def wait_converged(self, timeout: float = 60.0) -> None:
        names = {a.node_id for a in self.cluster.agents}

        def all_alive() -> bool:
            for agent in self.cluster.agents:
                alive = {m["id"] for m in agent.get("/v1/members") if m["state"] == "alive"}
                if not names <= alive:
                    return False
            return True

        wait_until(all_alive, timeout, interval=0.5, message="every agent sees every agent")

    # --- observing ----------------------------------------------------------------------

    def observe(self) -> None:
        now = self.now()
        live = [a for a in self.cluster.agents if a.running]
        futures = {self.pool.submit(self._members, a): a for a in live}
        for future, agent in futures.items():
            members = future.result()
            if members is None:
                continue
            observer = agent.node_id
            for member in members:
                if member["id"] == observer:
                    continue
                key = (observer, member["id"])
                state = member["state"]
                if self.last_view.get(key) != state:
                    self.last_view[key] = state
                    self.trace.view(now, bytes.fromhex(observer), bytes.fromhex(member["id"]),
                                    state)
        self.trace.sample("truth_alive", now, len(live))

    @staticmethod
    def _members(agent: Agent) -> list[dict[str, Any]] | None:
        try:
            return agent.api_call("GET", "/v1/members", timeout=2)
        except OSError:
            return None

    # --- faults -------------------------------------------------------------------------

    def _pick(self, fault: Fault, pool: list[Agent]) -> list[Agent]:
        if fault.fraction is not None:
            count = max(1, math.ceil(fault.fraction * len(pool) - 1e-9))
        else:
            count = fault.count or 1
        return self.rng.sample(pool, min(count, len(pool)))

    def apply(self, fault: Fault) -> None:
        assert self.lab is not None
        now = self.now()
        running = [a for a in self.cluster.agents if a.running]
        detail: dict[str, Any] = {}
        action = fault.action
        if action == "crash":
            victims = self._pick(fault, running)
            for agent in victims:
                agent.kill()
                self.trace.node_state(now, bytes.fromhex(agent.node_id), "crashed")
            detail["nodes"] = [a.name for a in victims]
        elif action == "restart":
            down = [a for a in self.cluster.agents if not a.running]
            for agent in self._pick(fault, down) if down else []:
                agent.start()
                self.trace.node_state(self.now(), bytes.fromhex(agent.node_id), "alive")
        elif action == "leave":
            for agent in self._pick(fault, running):
                agent.cli("leave", check=False)
                self.trace.node_state(now, bytes.fromhex(agent.node_id), "left")
                agent.stop()
        elif action in ("sleep", "roam"):
            for agent in self._pick(fault, running):
                self.lab.link(self.host_of[agent.name], False)
                self.trace.node_state(now, bytes.fromhex(agent.node_id), "asleep")
        elif action == "wake":
            for agent in self.cluster.agents:
                host = self.host_of[agent.name]
                if not host.link_up:
                    self.lab.link(host, True)
                    self.trace.node_state(now, bytes.fromhex(agent.node_id), "alive")
        elif action == "partition":
            order = list(running)
            self.rng.shuffle(order)
            assert fault.groups is not None
            groups, start = [], 0
            for index, share in enumerate(fault.groups):
                end = len(order) if index == len(fault.groups) - 1 else \
                    start + round(share * len(order))
                groups.append(order[start:end])
                start = end
            self.lab.partition([[self.host_of[a.name] for a in g] for g in groups])
            self.trace.partition(now, [frozenset(bytes.fromhex(a.node_id) for a in g)
                                       for g in groups])
            detail["groups"] = [len(g) for g in groups]
        elif action == "heal":
            self.lab.heal()
            self.trace.partition(now, None)
        elif action == "loss":
            self.lab.heal()
            if fault.value:
                self.lab.loss(self.lab.hosts, fault.value)
        elif action == "one_way":
            victims = self._pick(fault, running)
            rest = [a for a in running if a not in victims]
            self.lab.cut_one_way([self.host_of[a.name] for a in rest],
                                 [self.host_of[a.name] for a in victims])
        elif action == "join":
            for _ in range(fault.count or 1):
                self._join_new()
        self.trace.fault(now, action, **detail)

    def _join_new(self) -> None:
        assert self.lab is not None
        host = self.lab.add_host()
        index = len(self.cluster.agents)
        agent = self.cluster.new_agent(
            f"node{index + 1}", listen=f"{host.ip}:{PEER_PORT}", api=f"{host.ip}:{API_PORT}",
            s3=f"{host.ip}:{S3_PORT}", prefix=host.exec_prefix())
        self.host_of[agent.name] = host
        through = self.rng.choice([a for a in self.cluster.agents if a.running])
        agent.cli("join", self.cluster.invite(through), *agent.node_flags())
        agent.start()
        self.trace.node_state(self.now(), bytes.fromhex(agent.node_id), "alive")

    # --- running ------------------------------------------------------------------------

    def run(self, progress: bool) -> None:
        self.build()
        self.wait_converged()
        self.start = time.monotonic()
        ids = [bytes.fromhex(a.node_id) for a in self.cluster.agents]
        for node in ids:
            self.trace.node_state(0.0, node, "alive")
        self.trace.records["initial_members"].append({"t": 0.0, "nodes": ids})
        for (observer, subject) in [(a, b) for a in ids for b in ids if a != b]:
            self.last_view[(observer.hex(), subject.hex())] = "alive"
        faults = sorted(self.scenario.faults, key=lambda f: f.at)
        duration = self.scenario.scenario.duration
        next_log = 0.0
        while self.now() < duration:
            while faults and faults[0].at <= self.now():
                self.apply(faults.pop(0))
            self.observe()
            if progress and self.now() >= next_log:
                alive = sum(1 for a in self.cluster.agents if a.running)
                print(f"  t={self.now():6.1f}s / {duration:.0f}s  agents running: {alive}",
                      flush=True)
                next_log += max(5.0, duration / 20)
            time.sleep(POLL_INTERVAL)  # real agents: time passes for real
        self.trace.end = duration

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.cluster.close()
        if self.lab is not None:
            self.lab.close()


def run_real(scenario: Scenario, *, out: Path, progress: bool = True) -> RunResult:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "agents"
    shutil.rmtree(work, ignore_errors=True)
    real = RealRun(scenario, out)
    try:
        real.run(progress)
    finally:
        real.close()
    checkers = [MembershipConvergence(), SplitBrain(), DetectionTime(), FalsePositives()]
    results = run_checkers(real.trace, scenario, checkers)
    figures = {"agents": len(real.cluster.agents), "mode": "real"}
    document = metrics_document(scenario, figures, results)
    write_metrics(out / "metrics.json", document)
    plots = write_plots(out, scenario, real.trace)
    wall = time.monotonic() - started
    write_summary(out / "summary.md", scenario, document, results, plots, wall)
    return RunResult(scenario, real.trace, results, figures, document, out, wall)
