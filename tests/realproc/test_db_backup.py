"""Issue 17: backups with pgBackRest into the mesh's own S3 API, point-in-time restore.

Two agents; ``db create shop --standbys 1``; rows A, ``db backup``, rows B, time T, rows C;
``db restore shop --at T --as copy``: the copy has exactly A and B. Bad restore times are
refused with nothing created.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import LocalCluster, wait_until
from tests.realproc.test_db import (
    at_once,
    databases,
    db_roots,
    kill_postgres,
    psql,
    ready,
    via,
)

ADDRESSES = [f"127.0.0.{71 + i}" for i in range(2)]

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("dbbackup")
    cluster = LocalCluster(root, extra_args=["--profile", "local"])
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_postgres(agent)
        for agent in cluster.agents:
            for root in db_roots(agent, node_dirs=True):
                shutil.rmtree(root, ignore_errors=True)


def stanza_objects(agent, name: str) -> list[str]:
    """The bucket's objects of every stanza (incarnation) of database ``name``."""
    found = []
    for root in ("pgbackrest/", "/pgbackrest/"):
        for kind in ("archive", "backup"):
            listing = agent.get(f"/v1/storage/objects/meshcloud-db?prefix={root}{kind}/"
                                f"{name}-&limit=1000")
            found += [o["key"] for o in listing["objects"]
                      if o["key"][len(f"{root}{kind}/{name}-"):].split("/")[0].isdigit()]
    return found


def ids(url: str) -> list[int]:
    r = psql(url, "SELECT id FROM t ORDER BY id")
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def test_backup_then_point_in_time_restore_as_a_new_database(cluster):
    a, b = cluster.agents
    wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) >= 2,
               60, message="2 members")
    a.cli("db", "create", "shop", "--standbys", "1", "--port", str(ephemeral_port()))
    wait_until(lambda: ready(b, "shop", 1), 180, interval=0.5, message="shop ready")
    url = via(a.cli("db", "url", "shop").stdout.strip(), ADDRESSES[1])
    r = psql(url, "CREATE TABLE t (id int primary key); "
                  "INSERT INTO t SELECT generate_series(1, 100)")
    assert r.returncode == 0, r.stderr

    # a restore to a time before any backup (the scheduled first one may have run by now):
    # refused, nothing created
    early = a.cli("db", "restore", "shop", "--at", "2020-01-01T00:00:00Z", "--as", "nope",
                  check=False, timeout=300)
    assert early.returncode != 0
    assert "no backup" in early.stderr or "before the first backup" in early.stderr
    assert "nope" not in databases(a)

    out = a.cli("db", "backup", "shop", timeout=600).stdout
    assert "backup " in out and "(full)" in out, out
    listed = a.cli("db", "backup", "shop", "--list").stdout
    assert "full" in listed, listed
    first_stop = a.get("/v1/db/shop/backups")["backups"][0]["stop"]

    r = psql(url, "INSERT INTO t SELECT generate_series(101, 150)")
    assert r.returncode == 0, r.stderr
    r = psql(url, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                  "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    at = r.stdout.strip()
    # rows C are committed strictly after T (the server clock has moved past it)
    wait_until(lambda: psql(url, f"SELECT clock_timestamp() > '{at}'::timestamptz"
                            ).stdout.strip() == "t", 10, message="clock past T")
    r = psql(url, "INSERT INTO t SELECT generate_series(151, 200)")
    assert r.returncode == 0, r.stderr

    # bad input: a time before the first backup, a taken name, a bad time (three requests
    # at once: each is refused alone, and none may leave anything behind)
    before, taken, garbage = at_once(
        lambda: a.cli("db", "restore", "shop", "--at", str(first_stop - 3600), "--as",
                      "nope", check=False, timeout=300),
        lambda: a.cli("db", "restore", "shop", "--at", at, "--as", "shop", check=False,
                      timeout=300),
        lambda: a.cli("db", "restore", "shop", "--at", "yesterday", "--as", "nope",
                      check=False, timeout=300))
    assert before.returncode != 0 and "before the first backup" in before.stderr, \
        before.stderr
    assert taken.returncode != 0 and "already exists" in taken.stderr, taken.stderr
    assert garbage.returncode != 0 and "bad time" in garbage.stderr, garbage.stderr
    assert sorted(databases(a)) == ["shop"]

    out = a.cli("db", "restore", "shop", "--at", at, "--as", "copy", timeout=600).stdout
    assert "as copy" in out, out
    wait_until(lambda: ready(a, "copy", 1), 300, interval=0.5, message="copy ready")
    copy_url = via(a.cli("db", "url", "copy").stdout.strip(), ADDRESSES[0])
    assert copy_url.startswith("postgresql://copy:")
    wait_until(lambda: psql(copy_url, "SELECT 1").returncode == 0, 60, interval=0.5,
               message="copy answers")
    assert ids(copy_url) == list(range(1, 151))
    assert ids(url) == list(range(1, 201))  # the source is untouched
    # the copy is a database of its own: it takes writes and keeps its own backups
    r = psql(copy_url, "INSERT INTO t VALUES (1000)")
    assert r.returncode == 0, r.stderr
    # the source's user cannot log in to the copy with the source's password
    old = psql(copy_url.replace("copy:", "shop:", 1).replace("/copy", "/shop")
               .replace(copy_url.split(":")[2].split("@")[0],
                        url.split(":")[2].split("@")[0]), "SELECT 1")
    assert old.returncode != 0
    out = a.cli("db", "backup", "copy", "--type", "full", timeout=600).stdout
    assert "(full)" in out, out
    assert psql(copy_url, "INSERT INTO t VALUES (1001)").returncode == 0
    copy_at = psql(copy_url, "SELECT extract(epoch FROM clock_timestamp())").stdout.strip()

    # DROP TABLE, then restore shop in place to just before it: the table is back, whole,
    # under the same URL (port and password)
    r = psql(url, "SELECT extract(epoch FROM clock_timestamp())")
    before_drop = r.stdout.strip()
    wait_until(lambda: psql(url, f"SELECT extract(epoch FROM clock_timestamp()) > "
                                 f"{before_drop}").stdout.strip() == "t", 10,
               message="clock past the mark")
    assert psql(url, "DROP TABLE t").returncode == 0
    out = a.cli("db", "restore", "shop", "--at", before_drop, timeout=600).stdout
    assert "as shop" in out, out
    wait_until(lambda: psql(url, "SELECT count(*) FROM t", timeout=10).stdout.strip()
               == "200", 300, interval=1, message="shop restored in place")
    assert ids(url) == list(range(1, 201))
    wait_until(lambda: ready(b, "shop", 1), 300, interval=0.5, message="shop's standby")

    # `db rm copy` keeps its backups and says where and how to restore or delete them
    wait_until(lambda: psql(copy_url, f"SELECT extract(epoch FROM clock_timestamp()) > "
                                      f"{copy_at}").stdout.strip() == "t", 10,
               message="clock past the copy's mark")
    out = a.cli("db", "rm", "copy", timeout=300).stdout
    assert re.search(r"backups are kept \(\d+ base backups? and the WAL archive\)", out), out
    assert "meshcloud db restore copy --at TIME --as NEW" in out, out
    assert "meshcloud db rm copy --delete-backups" in out, out
    assert stanza_objects(a, "copy"), "the kept backups are in the bucket"
    assert "backups kept" in a.cli("db", "ls").stdout
    # ... and a restore from them makes a new database with the copy's rows
    out = a.cli("db", "restore", "copy", "--at", copy_at, "--as", "again",
                timeout=600).stdout
    assert "as again" in out, out
    again_url = via(a.cli("db", "url", "again").stdout.strip(), ADDRESSES[1])
    wait_until(lambda: psql(again_url, "SELECT 1", timeout=10).returncode == 0, 300,
               interval=1, message="again answers")
    assert ids(again_url) == [*range(1, 151), 1000, 1001]
    late = a.cli("db", "restore", "copy", "--at", str(time.time() + 60), "--as", "nope",
                 check=False, timeout=300)
    assert late.returncode != 0 and "after the kept backups end" in late.stderr, late.stderr

    # --delete-backups: on a live database (stopped first), then on the removed one
    wait_until(lambda: stanza_objects(a, "again"), 120, interval=1,
               message="again's own stanza in the bucket")
    live, removed = at_once(
        lambda: a.cli("db", "rm", "again", "--delete-backups", timeout=300).stdout,
        lambda: a.cli("db", "rm", "copy", "--delete-backups", timeout=300).stdout)
    assert "deleted its backups" in live, live
    assert "deleted its backups" in removed, removed
    assert stanza_objects(a, "again") == []
    assert stanza_objects(a, "copy") == []
    assert stanza_objects(a, "shop"), "another database's backups stay"
    assert "backups kept" not in a.cli("db", "ls").stdout
    gone = a.cli("db", "restore", "copy", "--at", copy_at, "--as", "nope", check=False)
    assert gone.returncode != 0 and "no database 'copy'" in gone.stderr, gone.stderr


def test_user_add_read_only_port_and_planned_switchover(cluster):
    import threading

    from tests.realproc.test_db import roles

    a, b = cluster.agents
    a.cli("db", "create", "ops", "--standbys", "1", "--port", str(ephemeral_port()))
    wait_until(lambda: ready(b, "ops", 1), 180, interval=0.5, message="ops ready")
    url = via(a.cli("db", "url", "ops").stdout.strip(), ADDRESSES[1])
    r = psql(url, "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (0)")
    assert r.returncode == 0, r.stderr

    # a read-only user: password printed once, reads allowed, writes refused
    out = a.cli("db", "user", "add", "ops", "reader", "--role", "readonly").stdout
    password = out.split("password (shown once): ")[1].split()[0]
    reader = via(url.replace(url.split("@")[0], f"postgresql://reader:{password}"),
                 ADDRESSES[0])
    assert psql(reader, "SELECT count(*) FROM t").stdout.strip() == "1"
    denied = psql(reader, "INSERT INTO t VALUES (99)")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    dup = a.cli("db", "user", "add", "ops", "reader", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr, dup.stderr
    bad = a.cli("db", "user", "add", "ops", "Bad-Name", check=False)
    assert bad.returncode != 0 and "bad database name" in bad.stderr
    assert password not in (a.data_dir / "logs" / "console.log").read_text()

    # bad input: an impossible --size, an unreadable one, a database name that is not there
    huge = a.cli("db", "create", "huge", "--standbys", "1", "--size", "1000T", check=False)
    assert huge.returncode != 0 and "no 2 node(s) with" in huge.stderr, huge.stderr
    odd = a.cli("db", "create", "huge", "--size", "lots", check=False)
    assert odd.returncode != 0 and "not a size" in odd.stderr, odd.stderr
    assert "huge" not in databases(a)
    nope = psql(url.rsplit("/", 1)[0] + "/nope", "SELECT 1")
    assert nope.returncode != 0 and 'database "nope" does not exist' in nope.stderr
    fits = a.cli("db", "create", "small", "--size", "1M").stdout
    assert "database small" in fits
    a.cli("db", "rm", "small")

    # the read-only port reaches a standby
    ro = via(a.cli("db", "url", "ops", "--read-only").stdout.strip(), ADDRESSES[0])
    wait_until(lambda: psql(ro, "SELECT pg_is_in_recovery()").stdout.strip() == "t", 60,
               interval=0.5, message="read-only port on a standby")
    refused = psql(ro, "INSERT INTO t VALUES (98)")
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr

    # planned switchover under writes: no acknowledged row lost, roles swapped
    before = roles(a, "ops")
    primary = next(n for n, r in before.items() if r == "primary")
    standby = next(n for n, r in before.items() if r == "standby")
    acked: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if psql(url, f"INSERT INTO t VALUES ({i})", timeout=20).returncode == 0:
                acked.append(i)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 10, 60, message="10 rows before the switchover")
        out = a.cli("db", "failover", "ops", timeout=300).stdout
        assert "primary moved" in out, out
        count = len(acked)
        wait_until(lambda: len(acked) >= count + 10, 120, interval=0.2,
                   message="writes after the switchover")
    finally:
        stop.set()
        thread.join(60)
    present = set(ids(url))
    assert sorted(set(acked) - present) == []
    wait_until(lambda: roles(a, "ops") == {standby: "primary", primary: "standby"}, 180,
               interval=0.5, message="old primary follows as a standby")
    print(f"switchover: {out.strip()}; {len(acked)} acked, 0 lost")
