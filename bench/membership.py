"""`python -m bench membership`: SWIM and Kademlia at scale, on virtual time.

Runs the production cores in the simulator (``sim/``: one event queue, virtual time, a
network with latency and loss), so 5,000 nodes and an hour of 10 % loss take minutes:

* **detection**: a converged mesh of N nodes; every 15 s one node crashes (kill -9: peers
  with an open connection see the reset, a datagram sent to it comes back unreachable);
  per crash and observer, the seconds until the observer declares it dead. Median and p99
  over all (crash, observer) pairs (six crashes at N <= 1,000: the median moves with when
  each victim's first probe came, see docs/benchmarks.md).
* **false positives**: N nodes, no crash, 0 % and 10 % loss for a simulated hour (10 min
  with ``--quick``): suspicions and deaths of live nodes per node-hour.
* **load**: messages and bytes sent per node per second in a steady mesh, by N (the
  bytes are estimated by encoding one message in 64).
* **join**: a new node joins through one member; seconds until every node lists it alive.
* **DHT**: lookups at 1,000 and 10,000 nodes, with none and 20 % of the nodes crashed
  (``sim.dhtmesh``): rounds (median, p99) and success.

JSON keys: ``detect_median_s``, ``detect_p99_s`` (1,000 nodes), ``false_deaths_loss10``
(per node-hour at 10 % loss), ``msgs_per_node_s`` (object keyed by N), ``dht_rounds_median``
and ``dht_success`` (10,000 nodes, 20 % crashed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from sim.checkers import detection_times, false_positives
from sim.runner import Run
from sim.scenario import CheckSpec, NetworkSpec, Scenario, ScenarioMeta


def scenario(nodes: int, duration: float, *, loss: float = 0.0, seed: int = 1) -> Scenario:
    return Scenario(scenario=ScenarioMeta(name="bench", nodes=nodes, duration=duration,
                                          seed=seed),
                    network=NetworkSpec(latency_ms=2.0, jitter=0.3, loss=loss),
                    checks=CheckSpec(dht_lookups=0))


def quiet_run(nodes: int, duration: float, *, loss: float = 0.0, crash_every: float = 0.0,
              join_at: float | None = None, seed: int = 1) -> tuple[Run, dict[str, Any]]:
    run = Run(scenario(nodes, duration, loss=loss, seed=seed), with_dht=False, models=[])
    extra: dict[str, Any] = {}
    run.schedule()
    if crash_every:
        t = 20.0
        while t < duration - 20:
            run.engine.at(t, lambda: run.cluster.crash(run.cluster.random_live()))
            t += crash_every
    if join_at is not None:
        def join() -> None:
            host = run.cluster.add()
            extra["joined"] = (run.engine.now, host.node_id)

        run.engine.at(join_at, join)
    started = time.monotonic()
    run.engine.run_until(duration)
    run.trace.end = duration
    extra["wall_s"] = round(time.monotonic() - started, 1)
    return run, extra


def known_by_all(run: Run, node: bytes, since: float) -> float | None:
    """Seconds from ``since`` until every live node had ``node`` as alive."""
    seen: dict[bytes, float] = {}
    for t, observer, subject, state in run.trace.views:
        if subject == node and state == "alive" and t >= since:
            seen.setdefault(observer, t)
    live = [h.node_id for h in run.cluster.by_index
            if h.reachable and not h.left and h.node_id != node]
    if not all(o in seen for o in live):
        return None
    return max(seen[o] for o in live) - since


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="100,1000,5000",
                        help="mesh sizes for detection and load (comma separated)")
    parser.add_argument("--fp-nodes", type=int, default=200,
                        help="mesh size of the false-positive runs (1,000 takes ~2 h)")
    parser.add_argument("--fp-minutes", type=float, default=60.0,
                        help="simulated minutes of each false-positive run")


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    sizes = [100, 500] if quick else [int(x) for x in args.sizes.split(",")]
    figures: dict[str, Any] = {"msgs_per_node_s": {}, "bytes_per_node_s": {}}
    print(f"{'N':>6} {'detect med':>11} {'detect p99':>11} {'msgs/node/s':>12} "
          f"{'bytes/node/s':>13} {'join→all':>9} {'wall':>7}")
    for n in sizes:
        duration = 120.0 if n <= 1000 else 80.0
        sim, extra = quiet_run(n, duration, crash_every=15.0, join_at=duration - 27, seed=n)
        times, _ = detection_times(sim.trace)
        steady = sim.rates[5:15] or sim.rates  # before the first crash's news
        rate = statistics.fmean(steady)
        bytes_rate = rate * sim.cluster.mean_message_bytes
        joined_at, joined = extra["joined"]
        join_s = known_by_all(sim, joined, joined_at)
        figures["msgs_per_node_s"][str(n)] = round(rate, 3)
        figures["bytes_per_node_s"][str(n)] = round(bytes_rate, 1)
        median = statistics.median(times) if times else float("nan")
        p99 = sorted(times)[int(0.99 * (len(times) - 1))] if times else float("nan")
        if n == 1000 or (quick and n == sizes[-1]):
            figures["detect_median_s"] = round(median, 3)
            figures["detect_p99_s"] = round(p99, 3)
            figures["join_known_by_all_s"] = round(join_s, 3) if join_s is not None else None
        figures[f"detect_median_s_{n}"] = round(median, 3)
        figures[f"detect_p99_s_{n}"] = round(p99, 3)
        join_text = f"{join_s:.2f}s" if join_s is not None else "never"
        print(f"{n:>6} {median:>10.2f}s {p99:>10.2f}s {rate:>12.2f} {bytes_rate:>13.0f} "
              f"{join_text:>9} {extra['wall_s']:>6.0f}s", flush=True)
    rates = list(figures["msgs_per_node_s"].values())
    spread = (max(rates) / min(rates) - 1) * 100 if min(rates) > 0 else float("inf")
    figures["msgs_per_node_s_spread_pct"] = round(spread, 1)
    print(f"messages per node per second vary by {spread:.1f} % from N={sizes[0]} to "
          f"N={sizes[-1]} (target: within ±20 %)")

    fp_nodes = 200 if quick else args.fp_nodes
    fp_duration = 600.0 if quick else args.fp_minutes * 60
    for loss in (0.0, 0.1):
        sim, extra = quiet_run(fp_nodes, fp_duration, loss=loss, seed=7)
        deaths, suspicions, _ = false_positives(sim.trace, grace=10.0)
        node_hours = fp_nodes * fp_duration / 3600
        key = "loss10" if loss else "loss0"
        figures["false_positive_run"] = {"nodes": fp_nodes, "simulated_s": fp_duration}
        figures[f"false_deaths_{key}"] = round(deaths / node_hours, 6)
        figures[f"false_suspicions_{key}"] = round(suspicions / node_hours, 6)
        print(f"{fp_nodes} nodes, {loss:.0%} loss, {fp_duration / 60:.0f} simulated min: "
              f"{deaths} false deaths, {suspicions} false suspicions "
              f"({extra['wall_s']:.0f}s wall)", flush=True)

    from sim.dhtmesh import simulate

    dht_sizes = [1000, 2000] if quick else [1000, 10000]
    for n in dht_sizes:
        for crashed in (0.0, 0.2):
            for kind in ("closest", "peer"):
                result = simulate(n, lookups=300 if quick else 1000, crash_fraction=crashed,
                                  kind=kind)
                what = "k closest" if kind == "closest" else "find peer"
                print(f"DHT {n:>6} nodes, {crashed:>4.0%} crashed, {what:<9}: rounds median "
                      f"{result.rounds_median:g} p99 {result.rounds_p99:g}, success "
                      f"{result.success_rate:.1%}, {result.queries_mean:.1f} requests",
                      flush=True)
                figures[f"dht_{n}_{int(crashed * 100)}pct_{kind}"] = {
                    "rounds_median": result.rounds_median, "rounds_p99": result.rounds_p99,
                    "success": round(result.success_rate, 4)}
    n = dht_sizes[-1]
    crashed_closest = figures[f"dht_{n}_20pct_closest"]
    crashed_peer = figures[f"dht_{n}_20pct_peer"]
    # the headline: the k-closest lookup (the harder one), with 20 % of nodes crashed
    figures["dht_rounds_median"] = crashed_closest["rounds_median"]
    figures["dht_success"] = min(crashed_closest["success"], crashed_peer["success"])
    figures["dht_rounds_median_no_crash"] = figures[f"dht_{n}_0pct_closest"]["rounds_median"]
    figures["dht_rounds_median_find_peer"] = crashed_peer["rounds_median"]
    return figures
