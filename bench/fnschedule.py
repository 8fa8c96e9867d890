"""`python -m bench fnschedule`: a schedule under node deaths (issue 16's acceptance).

A function runs on ``*/10 * * * * *`` for five minutes on a 3-agent mesh; meanwhile the
node holding the scheduler lease is killed (SIGKILL) and restarted, then the node that
took the lease over meanwhile is killed and restarted too (the holder again, if it is
another node). Afterwards it counts, from the replicated
``fn_ticks`` rows and the handler's own log lines (``TICKRAN <tick>``):

* ``ticks_expected``: firing times from the first recorded tick to the last;
* ``ticks_recorded``: ticks with a row; ``missing``: expected ones without;
* ``ran_once`` / ``ran_twice``: ticks whose handler ran once / more than once;
* ``not_ok``: ticks recorded as not finished ok (a holder killed while one ran);
* ``holders``: distinct nodes that ran ticks.

``--quick``: one minute, every 2 s. Never asserts: it prints the counts.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from sim.agents import process_mesh, wait_until

ADDRESSES = [f"127.0.0.{91 + i}" for i in range(3)]
HANDLER = '''
def handle(event, context):
    context.logger.info("TICKRAN %s", event["tick"])
    return {"tick": event["tick"]}
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long the schedule runs (default 300, quick 60)")
    parser.add_argument("--every", type=int, default=None,
                        help="seconds between ticks (default 10, quick 2)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ticks(agent: Any) -> dict[int, dict[str, Any]]:
    rows = json.loads(agent.cli("fn", "ticks", "tick", "--json").stdout)
    return {int(r["tick"]): r for r in rows}


def holder(agents: list[Any]) -> Any | None:
    held = [a for a in agents if a.running
            and a.get("/v1/status")["functions"].get("scheduler")]
    return held[0] if len(held) == 1 else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds or (60.0 if args.quick else 300.0)
    every = args.every or (2 if args.quick else 10)
    kills: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mc-bench-fnsched-") as tmp:
        src = Path(tmp) / "tick"
        src.mkdir()
        (src / "main.py").write_text(HANDLER)
        with process_mesh(Path(tmp) / "mesh", ADDRESSES, http_port=free_port()) as cluster:
            a = cluster.agents[0]
            a.cli("fn", "deploy", "tick", str(src), "--schedule", f"*/{every} * * * * *")
            begun = time.monotonic()
            plan = [(0.2, "kill"), (0.35, "start"), (0.55, "kill"), (0.7, "start")]
            victim = took_over = None
            for at, action in plan:
                while time.monotonic() - begun < at * seconds:
                    time.sleep(0.2)
                if action == "kill":
                    wait_until(lambda: holder(cluster.agents) is not None, 60, interval=0.2,
                               message="a scheduler lease holder")
                    victim = holder(cluster.agents)
                    why = "the scheduler lease holder"
                    if victim is not None and victim.name in kills and took_over is not None:
                        # the first victim took the lease back: the second death is the
                        # node that held it meanwhile (two distinct agents die)
                        victim, why = took_over, "the holder while the first was down"
                    assert victim is not None
                    victim.kill()
                    kills.append(victim.name)
                    print(f"{time.monotonic() - begun:6.1f} s  killed {victim.name} "
                          f"({why})", flush=True)
                else:
                    assert victim is not None
                    took_over = took_over or holder([x for x in cluster.agents
                                                     if x is not victim])
                    victim.start()
                    print(f"{time.monotonic() - begun:6.1f} s  restarted {victim.name}",
                          flush=True)
            while time.monotonic() - begun < seconds:
                time.sleep(0.2)
            a.cli("fn", "schedule", "tick", "off")

            def settled() -> bool:
                rows = ticks(a)
                return bool(rows) and all(r["state"] == "done" for t, r in rows.items()
                                          if t < max(rows))

            wait_until(settled, 60, interval=0.5, message="every started tick done")
            rows = ticks(a)
            logs = a.cli("fn", "logs", "tick", "--lines", "10000").stdout
    ran = [int(t) for t in re.findall(r"TICKRAN (\d+)", logs)]
    counts = {t: ran.count(t) for t in set(ran)}
    first, last = min(rows), max(rows)
    expected = list(range(first, last + 1, every))
    figures = {
        "seconds": seconds, "every_s": every, "kills": len(kills),
        "agents_killed": len(set(kills)),
        "ticks_expected": len(expected), "ticks_recorded": len(rows),
        "missing": len(set(expected) - set(rows)),
        "ran_once": sum(1 for t in expected if counts.get(t) == 1),
        "ran_twice": sum(1 for n in counts.values() if n > 1),
        "not_run": sum(1 for t in expected if t not in counts),
        "not_ok": sum(1 for r in rows.values() if not r["ok"]),
        "holders": len({r["node"] for r in rows.values()}),
    }
    for key, value in figures.items():
        print(f"{key:16} {value}")
    return figures
