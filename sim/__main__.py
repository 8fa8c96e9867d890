"""`python -m sim`: run a scenario, simulated (default) or with real agents (`--real`).

    python -m sim list
    python -m sim run churn --nodes 1000 --duration 10m --seed 7
    python -m sim run partition --nodes 200
    python -m sim run my-scenario.toml --out results/try1
    python -m sim run crash --real --nodes 8        (root: network namespaces)
    python -m sim clean                             (remove what a killed --real run left)

Writes ``metrics.json``, ``summary.md`` and PNG plots to ``results/<scenario>-<seed>/``
(or ``--out``); exits 0 when every check passed, 1 when one failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from sim.runner import RunResult


def _duration(text: str) -> float:
    from sim.scenario import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a scenario (a built-in name or a .toml file)")
    run.add_argument("scenario")
    run.add_argument("--nodes", type=int, help="number of nodes (overrides the scenario)")
    run.add_argument("--duration", type=_duration, help="simulated time, e.g. 10m")
    run.add_argument("--seed", type=int, help="random seed (same seed, same run)")
    run.add_argument("--out", type=Path, help="output directory")
    run.add_argument("--no-dht", action="store_true", help="membership only (faster)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--real", action="store_true",
                     help="real agents in network namespaces with real faults (root)")
    sub.add_parser("list", help="list the built-in scenarios")
    sub.add_parser("clean", help="remove namespaces and links left by a killed --real run")
    return parser


def print_results(result: RunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{result.scenario.name}: "
                        f"{'[green]PASSED[/]' if result.passed else '[red]FAILED[/]'}",
                  title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("summary")
    for check in result.results:
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]",
                      check.summary)
    console.print(table)
    for check in result.results:
        if not check.passed:
            for example in check.examples:
                console.print(f"  [red]{check.name}[/]: {example}")
    if result.out is not None:
        console.print(f"results in {result.out}/ (metrics.json, summary.md, plots) — "
                      f"{result.wall_s:.1f} s wall")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "list":
            from sim.scenario import builtin_names, load

            for name in builtin_names():
                scenario = load(name)
                print(f"{name:<10} {scenario.scenario.nodes:>5} nodes "
                      f"{scenario.scenario.duration:>6.0f} s   {scenario.scenario.description}")
            return 0
        if args.command == "clean":
            from sim.netns import clean_leftovers, require_root

            require_root()
            removed = clean_leftovers()
            print(f"removed {len(removed['netns'])} namespace(s), {len(removed['links'])} "
                  f"link(s)")
            return 0
        from sim.runner import with_overrides
        from sim.scenario import load

        scenario = with_overrides(load(args.scenario), nodes=args.nodes,
                                  duration=args.duration, seed=args.seed)
        out = args.out or Path("results") / f"{scenario.name}-{scenario.scenario.seed}"
        if args.real:
            from sim.real import run_real

            result = run_real(scenario, out=out, progress=not args.quiet)
        else:
            from sim.runner import run

            result = run(scenario, out=out, progress=not args.quiet, with_dht=not args.no_dht)
        print_results(result)
        return 0 if result.passed else 1
    except MeshError as exc:
        print(f"sim: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
