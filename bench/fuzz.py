"""`python -m bench fuzz [--inputs N] [--seed S] [--targets a,b]`: the fuzz campaign.

Feeds ``N`` mutated inputs (default 1,000,000; 20,000 with ``--quick``) to every decoder
that reads bytes from outside, split over the targets of :mod:`tests.fuzz.targets` by
weight (slow targets such as the Noise handshake get fewer). Prints, per target, the inputs
fed, how many the decoder refused with its typed error, the time, the slowest input and the
failures (crashes: any other exception; broken invariants: state changed by a refused input,
forged data accepted). Each distinct failure is printed with its input in hex.

JSON keys: ``fuzz_inputs``, ``fuzz_seconds``, ``fuzz_targets``, ``fuzz_failures``.
Failures are reported, never asserted: the pytest ``fuzz`` marker is the gate.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

DEFAULT_INPUTS = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", type=int, default=None,
                        help=f"inputs over all targets (default {DEFAULT_INPUTS:,})")
    parser.add_argument("--seed", type=int, default=0, help="mutation seed (replayable)")
    parser.add_argument("--targets", default="",
                        help="comma-separated target names (default: all)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.fuzz.engine import describe, fuzz
    from tests.fuzz.targets import all_targets, allocate

    total = args.inputs if args.inputs is not None else (
        20_000 if args.quick else DEFAULT_INPUTS)
    names = [n.strip() for n in args.targets.split(",") if n.strip()] or None
    started = time.perf_counter()
    targets = all_targets(names)
    print(f"built {len(targets)} targets in {time.perf_counter() - started:.1f} s; "
          f"{total:,} inputs, seed {args.seed}", flush=True)
    shares = allocate(targets, total)
    print(f"{'target':<18} {'inputs':>9} {'refused':>9} {'seconds':>8} {'µs/input':>9} "
          f"{'slowest':>8} {'failures':>8}", flush=True)
    inputs = failures = 0
    details: list[str] = []
    for target in targets:
        result = fuzz(target, shares[target.name], seed=args.seed)
        inputs += result.inputs
        failures += result.failures
        per = 1e6 * result.seconds / max(1, result.inputs)
        print(f"{target.name:<18} {result.inputs:>9,} {result.rejected:>9,} "
              f"{result.seconds:>8.1f} {per:>9.0f} {result.slowest:>8.3f} "
              f"{result.failures:>8}", flush=True)
        details += describe(result)
    seconds = time.perf_counter() - started
    print(f"{'total':<18} {inputs:>9,} {'':>9} {seconds:>8.1f}", flush=True)
    for line in details:
        print(line, flush=True)
    return {"fuzz_inputs": inputs, "fuzz_seconds": round(seconds, 1),
            "fuzz_targets": len(targets), "fuzz_failures": failures}
