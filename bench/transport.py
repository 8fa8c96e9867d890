"""`python -m bench transport`: the link between two real agents on 127.0.0.1.

Starts two genuine agents (``meshcloud init`` / ``invite`` / ``join`` / ``up``), lets them
settle, reads the idle RSS of one, then asks agent A (over its API) to measure the link to
agent B with :func:`meshcloud.transport.benchmark.measure`: fresh connects (TCP + Noise XX
+ certificate checks), small request/response on a fresh stream each (≥ 1,000), and a bulk
stream of 256 MiB. Several rounds; the median of each figure is reported, with agent A's
CPU time per request (``rpc_cpu_us``, comparable across loads where the wall times are
not) and the highest 1-minute load average seen at a round's start (``load_avg``).

Reference (measured here before the project started, see docs/architecture.md):
py-libp2p 0.8.1 idled at 84 MiB, moved 186–367 MB/s with 0.34–0.58 ms round trips.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from meshcloud.transport.benchmark import rss_mib
from sim.agents import LocalCluster, wait_until

LIBP2P = {"stream_mb_s": (186, 367), "rpc_p50_ms": (0.34, 0.58), "idle_rss_mb": (84, 84)}
TARGETS = {"stream_mb_s": ">= 300", "rpc_p50_ms": "<= 0.25", "connect_ms": "<= 5",
           "idle_rss_mb": "<= 60"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds the agents idle before RSS is read")


def run(args: argparse.Namespace) -> dict[str, float]:
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(prefix="mc-bench-transport-") as tmp, \
            LocalCluster.create(Path(tmp), 2) as cluster:
        a, b = cluster.agents
        wait_until(lambda: any(p["connected"] for p in a.get("/v1/peers")), 15,
                   message="agents connected")
        time.sleep(args.settle)  # let start-up garbage settle before reading idle memory
        idle = [rss_mib(agent.pid) for agent in (a, b)]
        print(f"idle agent RSS: {idle[0]} MiB and {idle[1]} MiB")
        results = []
        for index in range(rounds):
            figures = a.api_call("POST", "/v1/debug/bench-transport",
                                 {"address": b.address, "quick": bool(args.quick)},
                                 timeout=600)
            results.append(figures)
            print(f"round {index + 1}: connect {figures['connect_ms']:.2f} ms, "
                  f"rpc p50 {figures['rpc_p50_ms']:.3f} ms p99 {figures['rpc_p99_ms']:.3f} ms "
                  f"({figures['rpc_cpu_us']:.0f} us CPU each), "
                  f"stream {figures['stream_mb_s']:.0f} MB/s "
                  f"({figures['bulk_bytes'] >> 20} MiB), load {figures['load_avg']}")
    out = {key: round(statistics.median(r[key] for r in results), 3)
           for key in ("connect_ms", "rpc_p50_ms", "rpc_p99_ms", "rpc_cpu_us", "stream_mb_s")}
    out["load_avg"] = max(r["load_avg"] or 0.0 for r in results)
    out["idle_rss_mb"] = max(x for x in idle if x is not None)
    print()
    print(f"{'figure':<14}{'measured':>12}{'target':>12}   py-libp2p 0.8.1 (earlier, here)")
    for key in ("connect_ms", "rpc_p50_ms", "rpc_p99_ms", "rpc_cpu_us", "stream_mb_s",
                "idle_rss_mb", "load_avg"):
        ref = LIBP2P.get(key)
        if ref is None:
            ref_text = ""
        else:
            ref_text = f"{ref[0]}–{ref[1]}" if ref[0] != ref[1] else f"{ref[0]}"
        print(f"{key:<14}{out[key]:>12}{TARGETS.get(key, ''):>12}   {ref_text}")
    return out
