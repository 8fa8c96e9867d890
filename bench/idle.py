"""`python -m bench idle`: what N real agents cost while the mesh is idle.

For each N (``--sizes``, default 10, 30, 60) real ``meshcloud up`` processes on 127.0.0.1
(made with the genuine ``init`` / ``invite`` / ``join`` commands, ``sim.agents``) join one
mesh; once every agent lists N members alive and ``--settle`` seconds passed, the agents
are left alone for ``--seconds`` (default 60) and measured from outside and from their own
counters:

* ``idle_cpu_pct``: CPU per agent (user + system, ``/proc/PID/stat``), % of one core;
* ``idle_rss_mb``: resident memory per agent (``/proc/PID/status``), MiB;
* ``idle_bytes_s`` / ``idle_packets_s``: bytes and Noise messages per node per second on
  the peer port, sent plus received, from the transport's counters (``status`` →
  ``transport.counters``; handshakes included);
* ``connections_per_node``: connections each agent holds at the end (mean; max too);
* per protocol: message bytes per node per second (``transport.protocols``), which shows
  which service sends what when nothing happens, and the dials each protocol caused
  (``dials_per_node_s_by_cause``: a stream opened to a peer without a connection, a
  datagram sender proved; ``connections_opened_per_node_s`` counts both ends).

With N = 30 (or the size given by ``--detect-at``), ``--freezes`` agents (5) are then
frozen with SIGSTOP in turn (no TCP close, no ICMP hints at their death), each until every
other agent lists it dead, then thawed and seen alive again: ``detect_sigstop_median_s``
and ``_max_s`` (polled), ``detect_sigstop_own_median_s`` (the median over freezes of the
observers' own ``member.failed`` times), and per freeze the first suspicion and what the
observers' probers did (``detect_sigstop_runs_*``).

JSON keys are per size (``idle_cpu_pct_10``...) and as objects keyed by N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sim.agents import Agent, LocalCluster

TICKS = os.sysconf("SC_CLK_TCK")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10,30,60", help="mesh sizes (comma separated)")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds after convergence before measuring")
    parser.add_argument("--detect-at", type=int, default=30,
                        help="mesh size at which SIGSTOP detection is measured (0: never)")
    parser.add_argument("--freezes", type=int, default=5,
                        help="agents frozen in turn for the SIGSTOP detection figure")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build(root: Path, n: int) -> LocalCluster:
    """n agents, all invited by the first and joined through it (4 joins at a time)."""
    cluster = LocalCluster(root)
    try:
        first = cluster.init_first()
        pending = [cluster.new_agent() for _ in range(n - 1)]

        def join(agent: Agent) -> None:
            token = cluster.invite(first, ttl="30m")  # made when used: a slow build outlives 10 min
            agent.cli("join", token, *agent.node_flags(), timeout=120)
            agent.start(wait=False)
            agent.wait_ready(timeout=180)  # 60 agents starting on 2 shared cores

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(join, pending))
    except BaseException:
        cluster.close()
        raise
    return cluster


def alive_ids(agent: Agent) -> set[str]:
    """Members ``agent`` lists alive (none while its API does not answer)."""
    if not agent.running:
        raise RuntimeError(f"{agent.name} exited:\n{agent.console_tail()}")
    try:
        return {m["id"] for m in agent.get("/v1/members") if m["state"] == "alive"}
    except OSError:  # busy starting on a loaded machine: ask again later
        return set()


def converge(cluster: LocalCluster, timeout: float) -> float:
    """Wait until every agent lists every agent alive; prints progress every 10 s."""
    ids = {a.node_id for a in cluster.agents}
    started = last = time.monotonic()
    while True:
        seen = [len(alive_ids(a) & ids) for a in cluster.agents]
        if min(seen) == len(ids):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{len(ids)} agents did not converge within {timeout:.0f} s: "
                               f"alive counts {sorted(seen)}")
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(f"     converging: alive counts min {min(seen)} median "
                  f"{statistics.median(seen)} of {len(ids)}", flush=True)
        time.sleep(0.5)


def snapshot(agents: list[Agent]) -> list[dict[str, Any]]:
    out = []
    for agent in agents:
        status = agent.get("/v1/status")
        out.append({"cpu": cpu_seconds(agent.pid), "t": time.monotonic(),
                    "transport": status.get("transport", {}), "loop": status.get("loop", {})})
    return out


def measure(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    agents = cluster.agents
    before = snapshot(agents)
    time.sleep(seconds)
    after = snapshot(agents)
    cpu, byte_rates, packet_rates, sent_rates, connections = [], [], [], [], []
    protocols: dict[str, float] = {}
    dials: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        span = a["t"] - b["t"]
        cpu.append((a["cpu"] - b["cpu"]) / span * 100)
        cb, ca = b["transport"]["counters"], a["transport"]["counters"]
        byte_rates.append((ca["bytes_sent"] + ca["bytes_received"]
                           - cb["bytes_sent"] - cb["bytes_received"]) / span)
        sent_rates.append((ca["bytes_sent"] - cb["bytes_sent"]) / span)
        packet_rates.append((ca["packets_sent"] + ca["packets_received"]
                             - cb["packets_sent"] - cb["packets_received"]) / span)
        connections.append(a["transport"]["connections"])
        pb, pa = b["transport"]["protocols"], a["transport"]["protocols"]
        for name, usage in pa.items():
            old = pb.get(name, {}).get("bytes_sent", 0)
            protocols[name] = protocols.get(name, 0.0) + (usage["bytes_sent"] - old) / span
            dialled = usage.get("dials", 0) - pb.get(name, {}).get("dials", 0)
            dials[name] = dials.get(name, 0.0) + dialled / span
    n = len(agents)
    stalls = [a["loop"].get("stalls", 0) - b["loop"].get("stalls", 0)
              for b, a in zip(before, after, strict=True)]
    handshakes = sum(a["transport"]["counters"]["connections_opened"]
                     - b["transport"]["counters"]["connections_opened"]
                     for b, a in zip(before, after, strict=True))
    return {
        "idle_cpu_pct": round(statistics.fmean(cpu), 2),
        "idle_rss_mb": round(statistics.fmean(rss_mib(a.pid) for a in agents), 1),
        "idle_bytes_s": round(statistics.fmean(byte_rates), 1),
        "idle_bytes_sent_s": round(statistics.fmean(sent_rates), 1),
        "idle_packets_s": round(statistics.fmean(packet_rates), 2),
        "connections_per_node": round(statistics.fmean(connections), 1),
        "connections_max": max(connections),
        "connections_opened_per_node_s": round(handshakes / n / seconds, 3),
        "loop_stalls_per_node_min": round(statistics.fmean(stalls) * 60 / seconds, 2),
        "protocol_bytes_sent_per_node_s": {k: round(v / n, 1)
                                           for k, v in sorted(protocols.items()) if v},
        "dials_per_node_s_by_cause": {k: round(v / n, 4)
                                      for k, v in sorted(dials.items(), key=lambda kv: -kv[1])
                                      if v},
    }


def _alive_everywhere(observers: list[Agent], node_id: str) -> bool:
    return all(node_id in alive_ids(agent) for agent in observers)


LOOP_COUNTERS = ("probes_retried", "probes_stalled", "probes_failed", "stalls")


def _loop_counters(agents: list[Agent]) -> dict[str, int]:
    totals = dict.fromkeys(LOOP_COUNTERS, 0)
    for agent in agents:
        loop = agent.get("/v1/status").get("loop", {})
        for key in LOOP_COUNTERS:
            totals[key] += int(loop.get(key, 0))
    return totals


def _freeze_once(victim: Agent, observers: list[Agent], timeout: float) -> dict[str, Any]:
    """Freeze ``victim``; poll until every observer lists it dead; thaw it. Returns the
    polled delays, the observers' own ``member.suspect`` / ``member.failed`` delays, and
    what their probers did meanwhile (retried rounds of a shaky prober, stalls)."""
    counters = _loop_counters(observers)
    seen: dict[str, float] = {}
    victim.freeze()
    frozen_at, frozen_ms = time.monotonic(), time.time() * 1000
    try:
        while len(seen) < len(observers) and time.monotonic() - frozen_at < timeout:
            for agent in observers:
                if agent.name in seen:
                    continue
                states = {m["id"]: m["state"] for m in agent.get("/v1/members")}
                if states.get(victim.node_id) in ("dead", "left"):
                    seen[agent.name] = time.monotonic() - frozen_at
    finally:
        victim.thaw()
    after = _loop_counters(observers)
    # the observers' own clocks (their events): polling 29 APIs in turn on a loaded
    # machine takes seconds, which the polled figure includes
    failed, suspected = [], []
    for agent in observers:
        first_suspect = None
        for event in agent.get("/v1/events?limit=500&kind=member."):
            if event.get("peer") != victim.node_id or event["at"] < frozen_ms:
                continue
            delay = (event["at"] - frozen_ms) / 1000
            if event["kind"] == "member.failed":
                failed.append(delay)
            elif event["kind"] == "member.suspect" and first_suspect is None:
                first_suspect = delay
        if first_suspect is not None:
            suspected.append(first_suspect)
    return {"polled": sorted(seen.values()), "failed": sorted(failed),
            "suspected": sorted(suspected),
            "loop": {key: after[key] - counters[key] for key in LOOP_COUNTERS}}


def detect_sigstop(cluster: LocalCluster, freezes: int = 1,
                   timeout: float = 30.0) -> dict[str, Any]:
    """Freeze ``freezes`` agents in turn (the last ones), each until every other agent
    lists it dead, then thaw it and wait until all list it alive again (it refutes).
    Figures: per freeze, the median over observers; overall, the median of those."""
    agents = cluster.agents
    runs = []
    for i in range(freezes):
        victim = agents[-1 - (i % (len(agents) - 1))]
        observers = [a for a in agents if a is not victim]
        runs.append(_freeze_once(victim, observers, timeout))
        deadline = time.monotonic() + 60
        while not _alive_everywhere(observers, victim.node_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{victim.name} was not alive again 60 s after its thaw")
            time.sleep(0.5)
        time.sleep(5)  # let suspicions and health scores of the round settle

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2) if values else -1.0

    polled = [med(r["polled"]) for r in runs]
    own = [med(r["failed"]) for r in runs]
    own_max = [round(r["failed"][-1], 2) if r["failed"] else -1.0 for r in runs]
    first_suspect = [round(r["suspected"][0], 2) if r["suspected"] else -1.0 for r in runs]
    return {"detect_sigstop_median_s": med(polled),
            "detect_sigstop_max_s": max(round(r["polled"][-1], 2) if r["polled"] else -1.0
                                        for r in runs),
            "detect_sigstop_observers": min(len(r["polled"]) for r in runs),
            "detect_sigstop_own_median_s": med(own),
            "detect_sigstop_own_max_s": max(own_max),
            "detect_sigstop_runs_own_median_s": own,
            "detect_sigstop_runs_first_suspect_s": first_suspect,
            "detect_sigstop_runs_loop": [r["loop"] for r in runs]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [10] if args.quick else [int(x) for x in args.sizes.split(",")]
    seconds = min(args.seconds, 20.0) if args.quick else args.seconds
    figures: dict[str, Any] = {"seconds": seconds}
    keys = ("idle_cpu_pct", "idle_rss_mb", "idle_bytes_s", "idle_packets_s",
            "connections_per_node")
    for key in keys:
        figures[key] = {}
    print(f"{'N':>4} {'cpu %':>6} {'RSS MiB':>8} {'B/s':>8} {'sent B/s':>9} {'pkt/s':>7} "
          f"{'conns':>6} {'max':>4} {'dials/s':>8}", flush=True)
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"idle{n}-") as tmp:
            started = time.monotonic()
            cluster = build(Path(tmp), n)
            try:
                converge(cluster, 120 + 4 * n)
                time.sleep(args.settle)
                result = measure(cluster, seconds)
                if n == args.detect_at:
                    result.update(detect_sigstop(cluster, args.freezes))
            finally:
                cluster.close()
        for key in keys:
            figures[key][str(n)] = result[key]
        for key, value in result.items():
            figures[f"{key}_{n}"] = value
        print(f"{n:>4} {result['idle_cpu_pct']:>6.2f} {result['idle_rss_mb']:>8.1f} "
              f"{result['idle_bytes_s']:>8.0f} {result['idle_bytes_sent_s']:>9.0f} "
              f"{result['idle_packets_s']:>7.1f} {result['connections_per_node']:>6.1f} "
              f"{result['connections_max']:>4} {result['connections_opened_per_node_s']:>8.3f}"
              f"   ({time.monotonic() - started:.0f} s)", flush=True)
        print(f"     loop stalls per agent per minute: {result['loop_stalls_per_node_min']}",
              flush=True)
        print(f"     sent per protocol, B/s per node: {result['protocol_bytes_sent_per_node_s']}",
              flush=True)
        print(f"     dials per node per second, by the protocol that needed them: "
              f"{result['dials_per_node_s_by_cause']}", flush=True)
        if "detect_sigstop_median_s" in result:
            print(f"     SIGSTOP detection: median {result['detect_sigstop_median_s']} s, max "
                  f"{result['detect_sigstop_max_s']} s "
                  f"({result['detect_sigstop_observers']} observers, polled); by their own "
                  f"events: median {result['detect_sigstop_own_median_s']} s, max "
                  f"{result['detect_sigstop_own_max_s']} s; per freeze (own median) "
                  f"{result['detect_sigstop_runs_own_median_s']}, first suspicion "
                  f"{result['detect_sigstop_runs_first_suspect_s']}; observers' probers "
                  f"meanwhile {result['detect_sigstop_runs_loop']}", flush=True)
    rates = list(figures["idle_bytes_s"].values())
    if len(rates) > 1 and min(rates) > 0:
        figures["idle_bytes_s_spread_pct"] = round((max(rates) / min(rates) - 1) * 100, 1)
    return figures
