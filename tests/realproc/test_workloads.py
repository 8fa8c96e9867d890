"""Issue 6 acceptance for workloads: 5 real agents, podman with runc, real TCP.

Each agent listens on its own loopback address (127.0.0.31 … .35) so a partition is a
set of iptables DROP rules between addresses (the transport dials from the address it
listens on). The ground truth is podman's own view of each node's store, read with the
podman CLI on the node's store (the flags of ``python -m apps.images podman --data-dir D --
ps``, which tests/realproc/test_images.py runs), never the agents' word.

One cluster serves the whole module (agents take seconds to start); each test leaves it
with five agents up and no workloads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from apps.runtimes.podman_service import podman_unavailable_reason
from sim.agents import Agent, LocalCluster, wait_until

WEB = "localhost/meshcloud/web:1"
BUSYBOX = "localhost/meshcloud/busybox:1"
ADDRESSES = [f"127.0.0.{31 + i}" for i in range(5)]
DETECTION_BOUND = 6.0
"""Membership detection of a killed node (gossip: ≤ 6 s; the transport alone: at once)."""
FAILOVER_BOUND = DETECTION_BOUND + 5.0

_reason = podman_unavailable_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "rootful podman and iptables need root"
if _reason is None and shutil.which("iptables") is None:
    _reason = "iptables is not installed"
pytestmark = [pytest.mark.real, pytest.mark.podman, pytest.mark.slow,
              pytest.mark.skipif(_reason is not None, reason=f"cannot run: {_reason}")]


# --- podman's own view ------------------------------------------------------------------------


def podman(agent: Agent, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The podman CLI on the node's store, with the flags and environment that
    ``python -m apps.images podman --data-dir D --`` uses (without a Python start per call:
    the tests poll every node's podman)."""
    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman_service import PodmanService

    service = PodmanService(PodmanConfig(data_dir=agent.data_dir, node_id="cli"))
    service.prepare()
    return subprocess.run([*service.cli_args(), *args], env=service.env(), capture_output=True,
                          text=True, check=check, timeout=60)


def containers(agent: Agent, workload: str) -> list[dict]:
    out = podman(agent, "ps", "-a", "--format", "json", "--filter",
                 f"label=meshcloud.workload={workload}").stdout
    return json.loads(out or "[]")


def running(agent: Agent, workload: str) -> list[dict]:
    return [c for c in containers(agent, workload) if c.get("State") == "running"]


def running_everywhere(agents: list[Agent], workload: str) -> dict[str, list[str]]:
    """{node id: running container names} from podman on each node."""
    out: dict[str, list[str]] = {}
    for agent in agents:
        names = [c["Names"][0] for c in running(agent, workload)]
        if names:
            out[agent.node_id] = names
    return out


def rows(agent: Agent, workload: str | None = None) -> list[dict]:
    path = "/v1/replicas" + (f"?workload={workload}" if workload else "")
    return agent.get(path)["replicas"]


def settled(agents: list[Agent], workload: str, count: int) -> bool:
    """``count`` replicas running per podman, on distinct nodes, and claims agreeing."""
    where = running_everywhere(agents, workload)
    if sum(len(v) for v in where.values()) != count or len(where) != count:
        return False
    claims = rows(agents[0], workload)
    return (sum(r["state"] == "running" and r["wanted"] for r in claims) == count
            and {r["node"] for r in claims if r["wanted"]} == set(where))


# --- the cluster ------------------------------------------------------------------------------


def cleanup_node(agent: Agent) -> None:
    """Remove the node's containers, stop its podman service, release its store."""
    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman_service import PodmanService, release_store

    podman(agent, "rm", "--all", "--force", "--time", "0", check=False)
    service = PodmanService(PodmanConfig(data_dir=agent.data_dir, node_id="cleanup"))
    with contextlib.suppress(OSError, ValueError):
        pid = int((service.dir / "service.pid").read_text().split()[0])
        if b"podman" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
    release_store(service.graph_root)
    shutil.rmtree(service.run_root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("workloads")
    cluster = LocalCluster(root, extra_args=["--profile", "local"])
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.start_all(cluster.join_many([{"listen": f"{a}:0"} for a in ADDRESSES[1:]]))
        with ThreadPoolExecutor(len(cluster.agents)) as pool:  # every node builds at once
            builds = list(pool.map(lambda a: a.api_call(
                "POST", "/v1/images/build-demo", {}, timeout=120)["built"], cluster.agents))
        for built in builds:
            assert {b["image"] for b in built} == {WEB, BUSYBOX}

        def offers_everywhere() -> bool:
            return all(len(a.get("/v1/images")["mesh"]) == 5 and all(
                WEB in o["images"] for o in a.get("/v1/images")["mesh"].values())
                for a in cluster.agents)

        wait_until(offers_everywhere, 30, message="every node's images known everywhere")
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            cleanup_node(agent)


def up(cluster: LocalCluster) -> list[Agent]:
    return [a for a in cluster.agents if a.running]


def remove_workload(cluster: LocalCluster, name: str) -> None:
    agents = up(cluster)
    agents[0].cli("rm", name)
    wait_until(lambda: not running_everywhere(agents, name) and not rows(agents[0], name),
               30, message=f"{name} gone")


# --- tests ------------------------------------------------------------------------------------


def test_replicas_on_distinct_nodes_and_failover_after_kill(cluster):
    agents = cluster.agents
    result = agents[0].cli("run", "web", "--image", WEB, "--replicas", "2")
    assert "web: 2 replica(s) wanted (podman" in result.stdout
    wait_until(lambda: settled(agents, "web", 2), 60, message="2 web replicas running")
    placed = running_everywhere(agents, "web")
    assert len(placed) == 2, placed  # each replica on a different node (podman's view)

    ps = agents[4].cli("ps", "web").stdout.splitlines()
    assert [line.split()[2] for line in ps[1:]] == ["running", "running"]
    assert {line.split()[1] for line in ps[1:]} == {n[:12] for n in placed}

    victim = next(a for a in agents if a.node_id in placed)
    name = placed[victim.node_id][0]
    index = int(name.rsplit("-", 1)[1])
    fence = next(r["fencing"] for r in rows(agents[0], "web") if r["replica"] == index)
    victim.kill()  # kill -9 the agent...
    killed = time.monotonic()
    podman(victim, "stop", "--time", "0", name)  # ...and stop its container
    others = [a for a in agents if a is not victim]

    def replaced() -> bool:
        where = running_everywhere(others, "web")
        return sum(len(v) for v in where.values()) == 2 and len(where) == 2

    wait_until(replaced, FAILOVER_BOUND + 10, interval=0.1, message="replacement running")
    took = time.monotonic() - killed
    print(f"\n[workloads] failover: replacement running {took:.2f}s after kill -9")
    assert took <= FAILOVER_BOUND, f"failover took {took:.1f}s"
    new_place = running_everywhere(others, "web")
    assert victim.node_id not in new_place
    for observer in others:  # `meshcloud ps` from any node shows it
        wait_until(lambda o=observer: {r["node"] for r in rows(o, "web")} == set(new_place)
                   and all(r["state"] == "running" for r in rows(o, "web")), 10,
                   message="ps everywhere")
    row = next(r for r in rows(others[0], "web") if r["replica"] == index)
    assert row["fencing"] == fence + 1

    victim.start()  # the machine comes back; the cluster settles again
    wait_until(lambda: settled(agents, "web", 2), 60, message="settled after restart")
    remove_workload(cluster, "web")


def test_drain_moves_everything_before_safe_to_unplug(cluster):
    agents = up(cluster)
    agents[0].cli("run", "web", "--image", WEB, "--replicas", "3")
    agents[0].cli("run", "box", "--image", BUSYBOX, "--replicas", "2", "--command",
                  "sleep 3600")
    wait_until(lambda: settled(agents, "web", 3) and settled(agents, "box", 2), 60,
               message="web and box running")
    counts = {a.node_id: len(running(a, "web")) + len(running(a, "box")) for a in agents}
    target = max(agents, key=lambda a: counts[a.node_id])
    assert counts[target.node_id] >= 1
    asker = next(a for a in agents if a is not target)
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    drain = threading.Thread(target=lambda: outcome.setdefault(
        "r", asker.cli("drain", target.node_id[:16], "--timeout", "90s", check=False,
                       timeout=120)))
    drain.start()
    lowest = 3
    while drain.is_alive():  # make before break: web never drops below 3 running copies
        lowest = min(lowest, sum(len(v) for v in running_everywhere(agents, "web").values()))
        time.sleep(0.05)
    drain.join()
    result = outcome["r"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"safe to unplug {target.node_id[:12]}")
    assert running(target, "web") == [] and running(target, "box") == []
    assert lowest == 3, f"web dropped to {lowest} running during the drain"
    others = [a for a in agents if a is not target]
    wait_until(lambda: settled(others, "web", 3) and settled(others, "box", 2), 30,
               message="everything runs on the other nodes")
    asker.cli("drain", target.node_id, "--undo")
    remove_workload(cluster, "web")
    remove_workload(cluster, "box")


def test_bad_specs_are_refused_and_the_state_is_untouched(cluster, tmp_path):
    agent = up(cluster)[1]
    before = (agent.get("/v1/workloads"), rows(agent))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text(f'name = "neg"\nimage = "{WEB}"\nmemory = "-64m"\ncpu = -1\n')
    cases = [
        (["run", "ghost", "--image", "localhost/meshcloud/ghost:1"], "not in any node's store"),
        (["run", "neg", "--image", WEB, "--memory=-5m"], "negative"),
        (["run", "gpu", "--image", WEB, "--require-label", "gpu=yes"],
         "no live node can run it"),
        (["run", "many", "--image", WEB, "--replicas", "9"], "only 5 live node(s)"),
        (["run", "arm", "--image", WEB, "--arch", "riscv64"], "no live node can run it"),
        (["deploy", str(bad_toml)], "negative"),
    ]
    for argv, expected in cases:
        result = agent.cli(*argv, check=False)
        assert result.returncode == 1, argv
        assert result.stderr.startswith("meshcloud: ") and result.stderr.count("\n") == 1
        assert expected in result.stderr, (argv, result.stderr)
    assert (agent.get("/v1/workloads"), rows(agent)) == before
    for other in up(cluster):
        assert other.get("/v1/workloads") == {"workloads": []}


def test_singleton_never_runs_twice_during_a_partition(cluster):
    agents = up(cluster)
    assert len(agents) == 5
    agents[0].cli("run", "db", "--image", BUSYBOX, "--singleton", "--command", "sleep 3600")
    wait_until(lambda: settled(agents, "db", 1), 60, message="the singleton running")
    holder_id = next(iter(running_everywhere(agents, "db")))
    holder = next(a for a in agents if a.node_id == holder_id)
    minority = [holder, next(a for a in agents if a is not holder)]
    majority = [a for a in agents if a not in minority]
    fence = rows(agents[0], "db")[0]["fencing"]
    rules: list[list[str]] = []
    try:
        for a in minority:
            for b in majority:
                for src, dst in ((a, b), (b, a)):
                    rule = ["INPUT", "-i", "lo", "-s", src.listen.split(":")[0],
                            "-d", dst.listen.split(":")[0], "-j", "DROP"]
                    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
                    rules.append(rule)
        most = 0
        deadline = time.monotonic() + 60
        while True:  # sample podman on both sides until the majority runs it
            where = running_everywhere(agents, "db")
            most = max(most, sum(len(v) for v in where.values()))
            assert most <= 1, f"two running copies during the partition: {where}"
            if any(a.node_id in where for a in majority):
                break
            assert time.monotonic() < deadline, "the majority side never started it"
        # podman's own record of when each copy ran: the minority's copy ended before
        # the majority's started
        ended = [c for a in minority for c in containers(a, "db") if c["State"] != "running"]
        started = [c for a in majority for c in containers(a, "db") if c["State"] == "running"]
        assert len(ended) == 1 and len(started) == 1
        finished_at = _inspect_time(minority, ended[0]["Id"], "FinishedAt")
        started_at = _inspect_time(majority, started[0]["Id"], "StartedAt")
        print(f"\n[workloads] singleton: minority copy ended {started_at - finished_at:.2f}s "
              "before the majority's started")
        assert finished_at < started_at
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-D", *rule], check=False)
    for _ in range(20):  # healed: still one copy, where the majority put it
        where = running_everywhere(agents, "db")
        assert sum(len(v) for v in where.values()) <= 1, where
        time.sleep(0.1)
    wait_until(lambda: settled(agents, "db", 1), 60, message="one copy after the heal")
    assert rows(agents[0], "db")[0]["fencing"] > fence
    remove_workload(cluster, "db")


def test_singleton_of_a_killed_agent_is_stopped_before_another_starts(cluster):
    """kill -9 of the holder's agent leaves its container running: the node's watchdog
    stops it before the lease could be granted elsewhere (podman's view and timestamps)."""
    agents = up(cluster)
    agents[0].cli("run", "db", "--image", BUSYBOX, "--singleton", "--command", "sleep 3600")
    wait_until(lambda: settled(agents, "db", 1), 60, message="the singleton running")
    holder = next(a for a in agents if a.node_id in running_everywhere(agents, "db"))
    wait_until(lambda: (holder.data_dir / "workloads" / "watchdog.pid").exists(), 10,
               message="watchdog started")
    holder.kill()
    others = [a for a in agents if a is not holder]
    deadline = time.monotonic() + 60
    while True:
        where = running_everywhere(agents, "db")
        assert sum(len(v) for v in where.values()) <= 1, f"two running copies: {where}"
        if any(a.node_id in where for a in others):
            break
        assert time.monotonic() < deadline, "no other node took the singleton over"
    ended = [c for c in containers(holder, "db") if c["State"] != "running"]
    started = [c for a in others for c in containers(a, "db") if c["State"] == "running"]
    assert len(ended) == 1 and len(started) == 1
    gap = (_inspect_time(others, started[0]["Id"], "StartedAt")
           - _inspect_time([holder], ended[0]["Id"], "FinishedAt"))
    print(f"\n[workloads] dead agent's singleton stopped by its watchdog {gap:.2f}s before "
          "the new copy started")
    assert gap > 0
    holder.start()
    wait_until(lambda: settled(agents, "db", 1), 60, message="settled after the restart")
    remove_workload(cluster, "db")


_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?")


def _inspect_time(agents: list[Agent], container_id: str, field: str) -> float:
    """A container's StartedAt / FinishedAt from ``podman inspect``, as epoch seconds."""
    for agent in agents:
        result = podman(agent, "inspect", container_id, check=False)
        if result.returncode != 0:
            continue
        text = json.loads(result.stdout)[0]["State"][field]
        match = _TIME.match(text)
        assert match, f"unexpected time format {text!r}"
        day, clock, frac, zone = match.groups()
        zone = "+00:00" if zone in (None, "Z") else zone
        if len(zone) == 5:
            zone = zone[:3] + ":" + zone[3:]
        base = datetime.fromisoformat(f"{day}T{clock}{zone}").timestamp()
        return base + (int(frac) / 10 ** len(frac) if frac else 0.0)
    raise AssertionError(f"container {container_id} not found")
