"""``python -m sim.dhtlookups``: run the lookup simulation (:mod:`sim.dhtmesh`) and print figures.

Examples::

    python -m sim.dhtlookups                    # 1,000 and 10,000 nodes, 0 and 20 % crashed
    python -m sim.dhtlookups --nodes 10000 --crash 0.2 --kind closest --lookups 2000
    python -m sim.dhtlookups --nodes 2000 --build join  # tables from real joins (slow)
    python -m sim.dhtlookups --nodes 1000 --latency 0.02 --jitter 0.03 --json

Figures only, never a pass/fail: benchmarks print, tests assert.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

from dht.config import DhtConfig
from sim.dhtmesh import simulate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.dhtlookups",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--crash", type=float, nargs="+", default=[0.0, 0.2],
                        help="fractions of nodes crashed before the lookups")
    parser.add_argument("--kind", nargs="+", choices=["closest", "peer"],
                        default=["closest", "peer"])
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--build", choices=["uniform", "join"], default="uniform")
    parser.add_argument("--latency", type=float, default=0.0, help="one-way seconds")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--alpha", type=int, default=DhtConfig().alpha)
    parser.add_argument("--k", type=int, default=DhtConfig().k)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)
    config = DhtConfig(k=args.k, alpha=args.alpha, max_find_count=2 * args.k)
    for nodes, crash, kind in itertools.product(args.nodes, args.crash, args.kind):
        started = time.perf_counter()
        result = simulate(nodes, lookups=args.lookups, crash_fraction=crash, kind=kind,
                          build=args.build, seed=args.seed, latency=args.latency,
                          jitter=args.jitter, config=config)
        wall = time.perf_counter() - started
        if args.json:
            figures = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                       if f.name != "samples"}
            print(json.dumps({**figures, "k": args.k, "alpha": args.alpha,
                              "latency": args.latency, "jitter": args.jitter,
                              "wall_seconds": round(wall, 2)}))
        else:
            print(f"{result.summary()} [{wall:.1f} s]", flush=True)


if __name__ == "__main__":
    main()
