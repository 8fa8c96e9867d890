"""`python -m bench NAME [--quick]`: run one benchmark.

Each benchmark module in this package has ``run(args) -> dict``: it prints its figures as
it goes (a readable table) and returns them; this runner prints the returned figures as
the **last line of output, one JSON object**. Benchmarks never assert on time: they
measure, and `docs/benchmarks.md` records what was measured, on which machine, when.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                  if not m.name.startswith("_") and m.name != "common")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=available())
    parser.add_argument("--quick", action="store_true", help="a smaller, faster version")
    parser.add_argument("--out", default=None, help="also write the JSON figures here")
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(f"bench.{args.name}")
    if hasattr(module, "add_arguments"):
        extra = argparse.ArgumentParser(prog=f"python -m bench {args.name}")
        module.add_arguments(extra)
        args = extra.parse_args(rest, namespace=args)
    elif rest:
        parser.error(f"unknown arguments: {' '.join(rest)}")
    figures = module.run(args)
    line = json.dumps(figures, sort_keys=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
