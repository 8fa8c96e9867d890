"""Issue 17 (first slice): managed PostgreSQL with real agents and real postgres.

Three agents on their own loopback addresses (127.0.0.61 … .63); ``db create shop
--standbys 1``; psql through each node's port; the primary and the standby on distinct
nodes, the standby synchronous (quorum); ``db rm`` stops both and frees the port.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from apps.ingress.ports import ephemeral_port
from apps.runtimes.homes import default_homes
from sim.agents import Agent, LocalCluster, wait_until

ADDRESSES = [f"127.0.0.{61 + i}" for i in range(3)]
PSQL = "/usr/lib/postgresql/15/bin/psql"

pytestmark = [pytest.mark.real, pytest.mark.slow]


def db_roots(agent: Agent) -> list[Path]:
    out = []
    for base in (default_homes(agent.data_dir) / "db", agent.data_dir / "db"):
        if base.is_dir():
            out += [p for p in base.iterdir() if p.is_dir()]
    return out


def kill_postgres(agent: Agent) -> None:
    """postgres outlives a killed agent (pg_ctl detaches it): stop it immediately."""
    for root in db_roots(agent):
        try:
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            continue


def psql(url: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PSQL, url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          capture_output=True, text=True, timeout=timeout)


def via(url: str, host: str) -> str:
    """The same connection string through another node's address."""
    head, _, tail = url.rpartition("@")
    _, _, port_db = tail.partition(":")
    return f"{head}@{host}:{port_db}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("db")
    cluster = LocalCluster(root, extra_args=["--profile", "local"])
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        for i in range(1, 3):
            cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[i]}:0")
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_postgres(agent)


def databases(agent: Agent) -> dict[str, dict]:
    return {d["name"]: d for d in agent.get("/v1/db")["databases"]}


def ready(agent: Agent, name: str, standbys: int) -> bool:
    d = databases(agent).get(name)
    if d is None or d["primary"] is None:
        return False
    roles = sorted(m["role"] for m in d["members"] if m["healthy"] and m["alive"])
    return roles == sorted(["primary"] + ["standby"] * standbys)


def test_create_reach_through_every_node_sync_standby_and_rm(cluster):
    a, b, c = cluster.agents
    wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) >= 3,
               60, message="3 members")
    port = ephemeral_port()
    out = a.cli("db", "create", "shop", "--standbys", "1", "--port", str(port)).stdout
    assert f"port {port}" in out
    # bad input: one clear error, nothing stored
    bad = a.cli("db", "create", "Bad-Name", check=False)
    assert bad.returncode != 0 and "bad database name" in (bad.stderr + bad.stdout)
    dup = a.cli("db", "create", "shop", check=False)
    assert dup.returncode != 0 and "already exists" in (dup.stderr + dup.stdout)
    assert sorted(databases(b)) == ["shop"]

    wait_until(lambda: ready(c, "shop", 1), 180, interval=0.5, message="primary + standby")
    d = databases(c)["shop"]
    nodes = {m["role"]: m["node"] for m in d["members"]}
    assert nodes["primary"] != nodes["standby"]

    url = a.cli("db", "url", "shop").stdout.strip()
    assert url.startswith("postgresql://shop:") and f":{port}/shop" in url
    listing = a.cli("db", "ls").stdout
    assert "shop" in listing and url.split(":")[2].split("@")[0] not in listing  # no pw

    first = psql(via(url, ADDRESSES[0]),
                 "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
    assert first.returncode == 0, first.stderr
    for i, host in enumerate(ADDRESSES):
        r = psql(via(url, host), f"INSERT INTO t VALUES ({10 + i}); SELECT count(*) FROM t")
        assert r.returncode == 0, (host, r.stderr)
        assert r.stdout.strip() == str(2 + i)
    # the standby streams synchronously (quorum commit: ANY 1)
    sync = psql(via(url, ADDRESSES[1]),
                "SELECT sync_state FROM pg_stat_replication").stdout.split()
    assert sync == ["quorum"]
    # a wrong password is refused
    wrong = psql(via(url.replace("shop:", "shop:x", 1), ADDRESSES[2]), "SELECT 1")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr

    a.cli("db", "rm", "shop")
    wait_until(lambda: all(not db_roots(x) for x in (a, b, c)), 60, interval=0.5,
               message="data dirs removed")
    gone = psql(via(url, ADDRESSES[2]), "SELECT 1", timeout=15)
    assert gone.returncode != 0
    assert databases(c) == {}
