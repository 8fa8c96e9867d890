"""`python -m bench starvation`: false deaths while the agents themselves are busy.

Real agents (``meshcloud up`` processes, :mod:`sim.agents`) on 127.0.0.1:

1. **loaded**: ``--agents`` agents (10) for ``--minutes`` (10) while every agent serves a
   continuous S3 workload (one boto3 client per agent writing and reading 64 MiB and
   4 KiB objects) and ``--hogs`` external busy loops (one per core) saturate the machine;
2. **kills under load**: ``--kills`` (3) agents are killed with SIGKILL, one at a time;
   per (kill, survivor) the seconds until the survivor's ``member.failed`` event;
3. **kills at rest**: the load stops; ``--idle-kills`` (2) more kills, timed the same way;
4. **start-up burst**: ``--burst`` (30) new agents, joined beforehand, started at once;
   then a settle period.

Figures (last line, JSON): ``false_deaths`` (``member.failed`` events, per observer, about
an agent that was running), ``false_suspicions`` (distinct (peer, incarnation)
suspicions of a running agent), ``startup_false_deaths`` (false deaths during the burst),
``detect_median_s`` / ``detect_median_idle_s``, ``max_loop_lag_ms`` (largest event-loop
lag any agent logged while loaded; ``max_loop_lag_ms_with_startup`` adds their own
start-up; ``max_loop_lag_ms_by_agent`` each agent's), ``lag_samples_over_200ms_pct``,
``startup_max_loop_lag_ms``, plus workload counts. Never asserts: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from blobstore.memory import FREEZE_AFTER
from sim.agents import Agent, AgentError, LocalCluster, wait_until

MIB = 1024 * 1024
HOG = "while True:\n    pass\n"
STARTUP_SETTLE = FREEZE_AFTER + 5.0
"""Seconds after the agents' start before the loaded window (and its lag figures) begins."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="minutes of the loaded phase")
    parser.add_argument("--kills", type=int, default=3, help="kills under load")
    parser.add_argument("--idle-kills", type=int, default=2, help="kills at rest")
    parser.add_argument("--burst", type=int, default=30, help="agents started at once")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2,
                        help="external busy loops during the load")
    parser.add_argument("--big-mib", type=int, default=64, help="size of the big objects")
    parser.add_argument("--root", default=None, help="directory for the data dirs")


class Workload:
    """One S3 client process against one agent: PUT/GET of a big and a small object,
    looping (a process of its own, as a real client would be: one bench process with a
    thread per client would serialise them on its GIL and underload the agents)."""

    def __init__(self, agent: Agent, key: dict[str, str], bucket: str, big_mib: int,
                 root: Path) -> None:
        self.agent = agent
        self.status = root / f"client-{agent.name}.json"
        cmd = [sys.executable, "-c", "import sys; from bench.starvation import client_main; "
               "client_main(sys.argv[1:])", agent.info["s3"], key["access_key"],
               key["secret"], bucket, agent.name, str(big_mib), str(self.status)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def counts(self) -> dict[str, int]:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {"ops": 0, "errors": 0, "bytes": 0}

    @property
    def ops(self) -> int:
        return self.counts()["ops"]

    @property
    def errors(self) -> int:
        return self.counts()["errors"]

    @property
    def bytes(self) -> int:
        return self.counts()["bytes"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def client_main(argv: list[str]) -> None:
    """The client process: loop until terminated, writing its counts to a file."""
    import boto3
    from botocore.config import Config

    url, access, secret, bucket, name, big_mib, status = argv
    client = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      signature_version="s3v4", read_timeout=300, connect_timeout=30))
    big, small = os.urandom(int(big_mib) * MIB), os.urandom(4096)
    counts = {"ops": 0, "errors": 0, "bytes": 0}
    path = Path(status)
    i = 0
    while True:
        i += 1
        for key, body in ((f"{name}/big-{i % 2}", big), (f"{name}/small-{i % 8}", small)):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=body)
                got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                if got != body:
                    raise ValueError("the object read back differs")
                counts["ops"] += 2
                counts["bytes"] += 2 * len(body)
            except Exception:
                counts["errors"] += 1
                time.sleep(1.0)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(counts))
            tmp.replace(path)


def events(agent: Agent, kind: str) -> list[dict[str, Any]]:
    try:
        return agent.api_call("GET", f"/v1/events?kind={kind}&limit=2000", timeout=30)
    except (OSError, ValueError):
        return []


def loop_lag(agent: Agent) -> dict[str, Any]:
    try:
        return agent.api_call("GET", "/v1/status", timeout=30).get("loop", {})
    except (OSError, ValueError):
        return {}


def false_events(observers: list[Agent], live: dict[str, tuple[float, float]],
                 since_ms: float) -> tuple[int, int, list[str]]:
    """(false deaths, false suspicions, a few examples) in the observers' logs.

    ``live`` maps a node id to the wall-ms interval during which its process ran. The
    logs, not ``/v1/events``: an agent keeps its last 2,000 events only, and ten busy
    minutes push an early ``member.failed`` out of them."""
    short = {node[:12]: node for node in live}
    deaths = 0
    suspicions: set[tuple[str, int]] = set()
    examples: list[str] = []
    for agent in observers:
        try:
            lines = (agent.data_dir / "logs" / "agent.log").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            failed = '"member failed"' in line
            if not failed and '"member suspect"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            peer, at = short.get(entry.get("peer", "")), entry.get("ts", 0) * 1000
            if peer is None or at < since_ms:
                continue
            start, end = live[peer]
            if not start <= at <= end - 500:  # 0.5 s: a death seen as it happened
                continue
            if failed:
                deaths += 1
                if len(examples) < 8:
                    examples.append(f"{agent.name} declared {peer[:8]} dead at {at:.0f}")
            else:
                suspicions.add((peer, int(entry.get("incarnation", 0))))
    return deaths, len(suspicions), examples


def detection(killed: Agent, killed_ms: float, survivors: list[Agent]) -> list[float]:
    """Seconds from the kill to each survivor's member.failed event about it."""
    out = []
    for agent in survivors:
        times = [e["at"] for e in events(agent, "member.failed")
                 if e.get("peer") == killed.node_id and e["at"] >= killed_ms]
        if times:
            out.append((min(times) - killed_ms) / 1000)
    return out


def kill_and_time(victim: Agent, survivors: list[Agent], live: dict[str, tuple[float, float]],
                  timeout: float = 60.0) -> list[float]:
    killed_ms = time.time() * 1000
    victim.kill()
    live[victim.node_id] = (live[victim.node_id][0], killed_ms)

    def everyone_knows() -> bool:
        return all(any(e.get("peer") == victim.node_id for e in events(a, "member.failed"))
                   for a in survivors)

    try:
        wait_until(everyone_knows, timeout, interval=0.5, message="every survivor saw it")
    except AgentError as exc:
        print(f"  {exc}", flush=True)
    times = detection(victim, killed_ms, survivors)
    print(f"  killed {victim.name}: detected by {len(times)}/{len(survivors)}, "
          f"median {statistics.median(times) if times else float('nan'):.2f} s", flush=True)
    return times


def logged_messages(agents: list[Agent], marker: str, start: float, end: float
                    ) -> Iterator[str]:
    """The messages containing ``marker`` the agents logged between two wall times
    (seconds), from their JSON logs."""
    for agent in agents:
        try:
            lines = (agent.data_dir / "logs" / "agent.log").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if marker not in line:
                continue
            try:
                entry = json.loads(line)
                message = entry["msg"]
            except (ValueError, KeyError):
                continue
            if start <= entry.get("ts", 0) <= end:
                yield message


def logged_max_lag(agents: list[Agent], start: float, end: float) -> float:
    """Largest stall (ms) the agents logged between two wall times (seconds): the
    status's max also covers each agent's own start-up, before the phase measured."""
    best = 0.0
    for message in logged_messages(agents, "event loop stalled", start, end):
        try:
            lag = float(message.split("stalled for ")[1].split(" ms")[0])
        except (ValueError, IndexError):
            continue
        best = max(best, lag)
    return best


_STEP = re.compile(r"last slow step: (?P<name>.+?), (?P<ms>[0-9.]+) ms"
                   r"(?:; cpu (?P<cpu>[0-9.]+) ms, run queue (?P<runq>[0-9.]+) ms)?\)")


def logged_stall_steps(agents: list[Agent], start: float, end: float
                       ) -> dict[str, list[float]]:
    """Per task name, the stalls over 100 ms the agents logged between two wall times
    (seconds) whose last slow step it was: [count, max ms of that step, and of that
    worst step: its CPU ms and run-queue ms (agents that log them)]."""
    out: dict[str, list[float]] = {}
    for message in logged_messages(agents, "last slow step: ", start, end):
        found = _STEP.search(message)
        if found is None:
            continue
        took = float(found["ms"])
        slot = out.setdefault(found["name"], [0, 0.0, 0.0, 0.0])
        slot[0] += 1
        if took >= slot[1]:
            slot[1:] = [took, float(found["cpu"] or 0), float(found["runq"] or 0)]
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def slow_steps(agents: list[Agent], n: int = 12) -> list[dict[str, Any]]:
    """The agents' slow task steps (over 50 ms, since each started), merged by task name:
    count, worst wall ms, total wall ms, CPU ms of those steps (wall far above CPU: the
    machine did not run the agent; close to it: its own work held the loop)."""
    merged: dict[str, dict[str, Any]] = {}
    for agent in agents:
        if not agent.running:
            continue
        for step in loop_lag(agent).get("slow_steps", []):
            slot = merged.setdefault(step["task"], {"task": step["task"], "count": 0,
                                                    "max_ms": 0.0, "total_ms": 0.0,
                                                    "cpu_ms": 0.0, "runq_ms": 0.0})
            slot["count"] += step["count"]
            slot["max_ms"] = max(slot["max_ms"], step["max_ms"])
            slot["total_ms"] = round(slot["total_ms"] + step["total_ms"], 1)
            slot["cpu_ms"] = round(slot["cpu_ms"] + step["cpu_ms"], 1)
            slot["runq_ms"] = round(slot["runq_ms"] + step.get("runq_ms", 0.0), 1)
    return sorted(merged.values(), key=lambda s: -s["max_ms"])[:n]


def lag_share_over(agents: list[Agent], bound: str = "<=200") -> float:
    """Share (%) of all lag samples above the histogram bucket ``bound``."""
    total = above = 0
    for agent in agents:
        hist = loop_lag(agent).get("histogram_ms", {}) if agent.running else {}
        labels = list(hist)
        if bound not in labels:
            continue
        cut = labels.index(bound) + 1
        total += sum(hist.values())
        above += sum(hist[label] for label in labels[cut:])
    return round(100 * above / total, 3) if total else 0.0


def payload_modes(agents: list[Agent]) -> dict[str, int]:
    """How the clients' S3 bodies came (aws-chunked signed or not, ...), summed."""
    out: dict[str, int] = {}

    def find(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "s3_payload_modes" and isinstance(value, dict):
                    for mode, n in value.items():
                        out[mode] = out.get(mode, 0) + int(n)
                else:
                    find(value)

    for agent in agents:
        if agent.running:
            try:
                find(agent.api_call("GET", "/v1/status", timeout=30))
            except (OSError, ValueError):
                pass
    return out


def max_lag(agents: list[Agent]) -> float:
    return max((loop_lag(a).get("max_ms", 0.0) for a in agents if a.running), default=0.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root or tempfile.mkdtemp(prefix="starvation-"))
    figures: dict[str, Any] = {"agents": args.agents, "minutes": args.minutes,
                               "hogs": args.hogs, "burst": args.burst}
    hogs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    cluster = LocalCluster.create(root / "mesh", args.agents, chain=False)
    workloads: list[Workload] = []
    try:
        agents = list(cluster.agents)
        now_ms = time.time() * 1000
        live = {a.node_id: (now_ms, float("inf")) for a in agents}
        ids = {a.node_id for a in agents}
        wait_until(lambda: all({m["id"] for m in a.get("/v1/members")
                                if m["state"] == "alive"} == ids for a in agents),
                   60, interval=0.5, message="every agent lists every agent alive")
        print(f"{len(agents)} agents up ({root})", flush=True)
        key = agents[0].post("/v1/storage/keys", {"name": "bench", "buckets": {"*": "read,write"},
                                                  "create_buckets": True})
        import boto3  # noqa: F401 - fail early when it is missing

        _make_bucket(agents[0], key)
        # the loaded window starts once the agents' one-off start-up steps are over (the
        # collector's freeze, FREEZE_AFTER after storage starts): their lag is start-up's
        time.sleep(max(0.0, started + STARTUP_SETTLE - time.monotonic()))
        try:
            wait_until(lambda: all(_frozen(a) for a in agents), 60, interval=0.5,
                       message="every agent froze its start-up objects")
        except AgentError as exc:  # agents without the figure: the fixed wait only
            print(f"  {exc}", flush=True)
        time.sleep(1.0)  # the freeze's stall is logged at the next lag sample
        since_ms = time.time() * 1000
        figures["load_avg_start"] = round(os.getloadavg()[0], 1)
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
        workloads = [Workload(a, key, "starve", args.big_mib, root) for a in agents]
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(30.0, max(0.0, end - time.monotonic())))
            deaths, susp, _ = false_events(agents, live, since_ms)
            print(f"  t+{(time.monotonic() - end) / 60 + args.minutes:5.1f} min: "
                  f"ops {sum(w.ops for w in workloads)}, errors "
                  f"{sum(w.errors for w in workloads)}, false deaths {deaths}, "
                  f"false suspicions {susp}, max lag {max_lag(agents):.0f} ms", flush=True)
        loaded_end = time.time()
        figures["max_loop_lag_ms"] = round(logged_max_lag(agents, since_ms / 1000,
                                                          loaded_end), 1)
        figures["max_loop_lag_ms_with_startup"] = round(max_lag(agents), 1)
        figures["lag_samples_over_200ms_pct"] = lag_share_over(agents)
        figures["stall_steps"] = logged_stall_steps(agents, since_ms / 1000, time.time())
        figures["slow_steps"] = slow_steps(agents)
        figures["load_avg_end"] = round(os.getloadavg()[0], 1)
        figures["s3_payload_modes"] = payload_modes(agents)
        lags = {a.name: loop_lag(a) for a in agents}
        figures["loop_lag_ms_by_agent"] = {n: v.get("max_ms") for n, v in lags.items()}
        figures["max_loop_lag_ms_by_agent"] = {  # the loaded window only
            a.name: round(logged_max_lag([a], since_ms / 1000, loaded_end), 1) for a in agents}
        detect: list[float] = []
        for victim in agents[len(agents) - args.kills:]:
            for w in workloads:
                if w.agent is victim:
                    w.stop()
            survivors = [a for a in agents if a.running and a is not victim]
            detect += kill_and_time(victim, survivors, live)
        for w in workloads:
            w.stop()
        figures["s3_ops"] = sum(w.ops for w in workloads)
        figures["s3_errors"] = sum(w.errors for w in workloads)
        figures["s3_mib"] = round(sum(w.bytes for w in workloads) / MIB)
        for hog in hogs:
            hog.kill()
            hog.wait()
        hogs = []
        deaths, susp, examples = false_events(agents, live, since_ms)
        figures["false_deaths"] = deaths
        figures["false_suspicions"] = susp
        figures["false_death_examples"] = examples
        figures["detect_median_s"] = round(statistics.median(detect), 2) if detect else None
        idle: list[float] = []
        running = [a for a in agents if a.running]
        for victim in running[len(running) - args.idle_kills:]:
            survivors = [a for a in agents if a.running and a is not victim]
            idle += kill_and_time(victim, survivors, live)
        figures["detect_median_idle_s"] = round(statistics.median(idle), 2) if idle else None
        if args.burst:
            figures.update(burst(cluster, args.burst, live))
    finally:
        for w in workloads:
            w.stop()
        for hog in hogs:
            hog.kill()
        cluster.close()
        if args.root is None:  # ten minutes of 64 MiB objects fill tens of GiB
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _frozen(agent: Agent) -> bool:
    found: list[int] = []

    def find(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "memory_frozen" and isinstance(value, int):
                    found.append(value)
                else:
                    find(value)

    try:
        find(agent.api_call("GET", "/v1/status", timeout=30))
    except (OSError, ValueError):
        return False
    return bool(found) and found[0] > 0


def _make_bucket(agent: Agent, key: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    client.create_bucket(Bucket="starve")


def burst(cluster: LocalCluster, n: int, live: dict[str, tuple[float, float]], *,
          quiet: float = 30.0, joined: Callable[[], object] | None = None) -> dict[str, Any]:
    """Join ``n`` new agents (data dirs only; ``joined()`` is called once they are), start
    them all at once, let them settle (until every agent lists every agent alive, then
    ``quiet`` seconds more)."""
    # every first-generation agent joined through the admin's node (certificates of one
    # link), so each can sponsor newcomers (a chain is at most MAX_CHAIN links); the
    # newcomers of one sponsor join at once
    through = [a for a in cluster.agents if a.running]
    fresh = [agent for i, sponsor in enumerate(through)
             for agent in cluster.join_many([{} for _ in range(i, n, len(through))],
                                            through=sponsor)]
    if joined is not None:
        joined()
    started_ms = time.time() * 1000
    for agent in fresh:
        agent.start(wait=False)
    for agent in fresh:
        agent.wait_ready(timeout=300)
    ready_s = (time.time() * 1000 - started_ms) / 1000
    everyone = [a for a in cluster.agents if a.running]
    ids = {a.node_id for a in everyone}
    for agent in fresh:
        live[agent.node_id] = (started_ms, float("inf"))
    try:
        settle = wait_until(lambda: all({m["id"] for m in a.get("/v1/members")
                                         if m["state"] == "alive"} >= ids for a in everyone),
                            180, interval=1.0, message="every agent lists every agent alive")
    except AgentError:
        settle = None
    time.sleep(quiet)  # a quiet while in which late false deaths would show
    deaths, susp, examples = false_events(everyone, live, started_ms)
    print(f"  burst of {n}: ready in {ready_s:.1f} s, converged after "
          f"{settle if settle is None else round(settle, 1)} s more, false deaths {deaths}, "
          f"false suspicions {susp}", flush=True)
    return {"startup_false_deaths": deaths, "startup_false_suspicions": susp,
            "startup_ready_s": round(ready_s, 1),
            "startup_converged_s": None if settle is None else round(settle, 1),
            "startup_max_loop_lag_ms": round(max_lag(everyone), 1),
            "startup_false_death_examples": examples}
