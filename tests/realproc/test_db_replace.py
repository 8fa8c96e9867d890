"""Issue 17: a database's lost node is replaced, with real agents and real postgres.

Three agents on their own loopback addresses (127.0.0.64 … .66), with a replace delay of
10 s (``MESHCLOUD_DB_REPLACE_AFTER``) instead of the local profile's 30 s: ``db create
stock --standbys 1``, the standby's node is killed (kill -9, its postgres too), writes go
on, a new standby is cloned on the third node and streams synchronously; the lost node,
back, drops its copy and never serves it. The delay is what the test would otherwise
mostly wait for; what it proves is the remaking (its own mesh: the failover and the
partition of ``test_db.py`` restart a node and expect it back in the group, which a short
delay would race).
"""

from __future__ import annotations

import shutil
import signal

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import LocalCluster, wait_until
from tests.realproc.test_db import (
    agent_of,
    db_roots,
    kill_postgres,
    psql,
    ready,
    roles,
    via,
)

ADDRESSES = [f"127.0.0.{64 + i}" for i in range(3)]
REPLACE_AFTER = 10.0
"""Long enough that a node starved for a few seconds on a loaded machine (suspected, then
alive again) is not counted gone."""

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("dbreplace")
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_DB_REPLACE_AFTER": str(REPLACE_AFTER)})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.start_all(cluster.join_many([{"listen": f"{ADDRESSES[i]}:0"}
                                             for i in range(1, 3)]))
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_postgres(agent)
        for agent in cluster.agents:  # the homes root outlives the test's tmp dir
            for root in db_roots(agent, node_dirs=True):
                shutil.rmtree(root, ignore_errors=True)


def test_a_lost_standby_is_remade_on_another_node_and_the_old_one_drops_its_copy(cluster):
    a = cluster.agents[0]
    wait_until(lambda: all(sum(m["state"] == "alive" for m in x.get("/v1/members")) >= 3
                           for x in cluster.agents), 120, message="3 members everywhere")
    a.cli("db", "create", "stock", "--standbys", "1", "--port", str(ephemeral_port()))
    wait_until(lambda: ready(a, "stock", 1), 180, interval=0.5, message="stock ready")
    before = roles(a, "stock")
    primary_hex = next(n for n, r in before.items() if r == "primary")
    standby_hex = next(n for n, r in before.items() if r == "standby")
    lost = agent_of(cluster, standby_hex)
    third = next(x for x in cluster.agents if x.node_id not in (primary_hex, standby_hex))
    observer = agent_of(cluster, primary_hex)
    url = via(a.cli("db", "url", "stock").stdout.strip(),
              ADDRESSES[cluster.agents.index(third)])
    assert psql(url, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)").returncode == 0

    lost.kill()
    kill_postgres(lost, signal.SIGKILL)
    # writes go on (the primary degrades to asynchronous while no standby streams)
    assert psql(url, "INSERT INTO t VALUES (2)", timeout=60).returncode == 0
    wait_until(lambda: roles(observer, "stock") == {primary_hex: "primary",
                                                     third.node_id: "standby"},
               240, interval=0.5, message="a new standby on the third node")
    wait_until(lambda: psql(url, "SELECT sync_state FROM pg_stat_replication"
                            ).stdout.split() == ["quorum"], 60, interval=0.5,
               message="synchronous again with the new standby")
    assert psql(url, "INSERT INTO t VALUES (3); SELECT count(*) FROM t"
                ).stdout.split()[-1] == "3"

    # the lost node comes back: outside the group now, it drops its copy, never serves
    lost.start()
    wait_until(lambda: not any(p.name == "stock" for p in db_roots(lost)), 180,
               interval=0.5, message="the returning node dropped its copy")
    assert roles(observer, "stock") == {primary_hex: "primary", third.node_id: "standby"}
