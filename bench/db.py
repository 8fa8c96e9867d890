"""`python -m bench db`: managed PostgreSQL through the mesh against a bare local one.

Three agents (127.0.0.91 … .93, ``--profile local``), ``db create bench --standbys 1``;
``pgbench`` (TPC-B like, scale 10, 4 clients, 60 s; ``--quick``: scale 2, 15 s):

* ``tps_direct``: to the primary's own postgres port, commits not waiting for the standby
  (``synchronous_commit = local`` for the session);
* ``tps_via_ingress``: the same sessions through another node's port for the database
  (one cross-node forward): the cost of the path alone;
* ``tps_sync_standby``: the primary's port, synchronous standby on (the default);
* ``tps_via_ingress_sync`` (= ``tps_mesh``): through another node's port, synchronous
  standby on (what a client gets by default);
* ``tps_local``: a bare PostgreSQL 15 from the same binaries on this machine, initdb'd by
  the bench, no standby; ``ratio`` = ``tps_mesh / tps_local``, ``ingress_ratio`` =
  ``tps_via_ingress / tps_direct`` (target ≥ 0.7); each pair (direct, via the ingress)
  is measured in alternating rounds (6, ``--quick`` 3) so that both see the same load
  of a shared machine, with the 1-minute load average beside them;
* ``failover_s``: the primary's agent and postgres ``kill -9``'d → first INSERT accepted
  through a surviving node's port (the lease is 6 s in ``--profile local``);
* ``backup_mb_s``: ``db backup bench`` (full, pgBackRest into the mesh's S3 API): database
  size / seconds; ``restore_s``: ``db restore bench --at NOW --as copy`` → the copy
  answers a query.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sim.agents import Agent, LocalCluster, wait_until

ADDRESSES = [f"127.0.0.{91 + i}" for i in range(3)]
BIN = Path("/usr/lib/postgresql/15/bin")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--scale", type=int, default=None)


def pgbench(url: str, seconds: int, *, options: str = "") -> float:
    env = {**os.environ, "PGOPTIONS": options} if options else None
    out = subprocess.run([str(BIN / "pgbench"), "-c", "4", "-j", "2", "-T", str(seconds),
                          "-n", url], capture_output=True, text=True, env=env,
                         timeout=seconds + 300)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-1000:]}")
    found = re.search(r"tps = ([0-9.]+)", out.stdout)
    if not found:
        raise RuntimeError(f"no tps in pgbench output: {out.stdout[-500:]}")
    return float(found.group(1))


def psql(url: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "psql"), url, "-XAtq", "-v", "ON_ERROR_STOP=1",
                           "-c", sql], capture_output=True, text=True, timeout=timeout)


def via(url: str, host: str, port: int | None = None) -> str:
    head, _, tail = url.rpartition("@")
    old_port, _, db = tail.partition(":")[2].partition("/")
    return f"{head}@{host}:{port or old_port}/{db}"


def members(agent: Agent, name: str) -> list[dict[str, Any]]:
    for d in agent.get("/v1/db")["databases"]:
        if d["name"] == name:
            return list(d["members"])
    return []


def ready(agent: Agent, name: str, standbys: int) -> bool:
    ms = [m for m in members(agent, name) if m["healthy"] and m["alive"]]
    return sorted(m["role"] for m in ms) == sorted(["primary"] + ["standby"] * standbys)


def kill_postgres(agent: Agent, signum: int) -> None:
    from tests.realproc.test_db import kill_postgres as kill

    kill(agent, signum)


def local_tps(scale: int, seconds: int) -> float:
    """pgbench against a bare PostgreSQL initdb'd here (as an unprivileged uid)."""
    import trio

    from apps.db import pg
    from apps.ingress.ports import ephemeral_port

    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(root, 0o711)
    inst = pg.Instance(root / "local", 65534 if os.geteuid() == 0 else None)
    port = ephemeral_port()
    password = "benchlocalpassword"

    async def up() -> None:
        await pg.initdb(inst, "bench", password, port=port, standbys=0)
        await pg.start(inst)
        await pg.sql(inst, port, "bench", password, "CREATE DATABASE bench")

    try:
        trio.run(up)
        url = f"postgresql://bench:{password}@127.0.0.1:{port}/bench"
        subprocess.run([str(BIN / "pgbench"), "-i", "-q", "-s", str(scale), url],
                       check=True, capture_output=True, timeout=900)
        return pgbench(url, seconds)
    finally:
        trio.run(pg.stop, inst, "immediate")
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.seconds or (15 if args.quick else 60)
    scale = args.scale or (2 if args.quick else 10)
    figures: dict[str, Any] = {"seconds": seconds, "scale": scale, "clients": 4,
                               "load_1m_start": round(os.getloadavg()[0], 2)}
    print(f"bare local PostgreSQL: pgbench -s {scale} -c 4 -T {seconds} …", flush=True)
    figures["tps_local"] = round(local_tps(scale, seconds), 1)
    print(f"  tps_local {figures['tps_local']}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-db-"))
    cluster = LocalCluster(root, extra_args=["--profile", "local"])
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        for address in ADDRESSES[1:]:
            cluster.join(through=cluster.agents[0], listen=f"{address}:0")
        a = cluster.agents[0]
        wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) >= 3,
                   120, message="3 members")
        a.cli("db", "create", "bench", "--standbys", "1")
        wait_until(lambda: ready(a, "bench", 1), 300, interval=0.5, message="bench ready")
        ms = members(a, "bench")
        primary = next(m for m in ms if m["role"] == "primary")
        standby = next(m for m in ms if m["role"] == "standby")
        other = next(x for x in cluster.agents
                     if x.node_id not in (primary["node"], standby["node"]))
        host = ADDRESSES[cluster.agents.index(other)]
        url = a.cli("db", "url", "bench").stdout.strip()
        mesh_url = via(url, host)
        direct_url = via(url, "127.0.0.1", primary["port"])
        subprocess.run([str(BIN / "pgbench"), "-i", "-q", "-s", str(scale), mesh_url],
                       check=True, capture_output=True, timeout=1800)
        local = "-c synchronous_commit=local"
        # The machine is shared: its load moves by the minute. Each pair of figures that
        # is compared is measured in alternating rounds, so both see the same load.
        rounds = 3 if args.quick else 6
        for pair in ((("tps_direct", direct_url, local), ("tps_via_ingress", mesh_url, local)),
                     (("tps_sync_standby", direct_url, ""),
                      ("tps_via_ingress_sync", mesh_url, ""))):
            runs: dict[str, list[float]] = {key: [] for key, _, _ in pair}
            loads: list[float] = []
            print(f"{' vs '.join(runs)}: {rounds} alternating rounds of pgbench -c 4 "
                  f"-T {max(1, seconds // rounds)} …", flush=True)
            for _ in range(rounds):
                for key, target, options in pair:
                    runs[key].append(pgbench(target, max(1, seconds // rounds),
                                             options=options))
                    loads.append(os.getloadavg()[0])
            for key, values in runs.items():
                figures[key] = round(sum(values) / len(values), 1)
                figures[f"{key}_rounds"] = [round(v, 1) for v in values]
                figures[f"load_1m_{key}"] = round(sum(loads) / len(loads), 2)
                print(f"  {key} {figures[key]} (rounds {figures[f'{key}_rounds']}, "
                      f"load {figures[f'load_1m_{key}']})", flush=True)
        figures["tps_mesh"] = figures["tps_via_ingress_sync"]
        figures["ratio"] = round(figures["tps_mesh"] / figures["tps_local"], 3)
        figures["ingress_ratio"] = round(figures["tps_via_ingress"] / figures["tps_direct"],
                                         3)

        size_mb = int(psql(mesh_url, "SELECT pg_database_size('bench')").stdout) / 1e6
        started = time.monotonic()
        a.cli("db", "backup", "bench", timeout=3600)
        took = time.monotonic() - started
        figures["backup_s"] = round(took, 2)
        figures["backup_mb_s"] = round(size_mb / took, 2)
        print(f"backup: {size_mb:.1f} MB in {took:.1f} s", flush=True)
        psql(mesh_url, "CREATE TABLE mark (id int); INSERT INTO mark VALUES (1)")
        at = psql(mesh_url, "SELECT extract(epoch FROM clock_timestamp())").stdout.strip()
        started = time.monotonic()
        a.cli("db", "restore", "bench", "--at", at, "--as", "copy", timeout=900)
        copy_url = via(a.cli("db", "url", "copy").stdout.strip(), host)
        wait_until(lambda: psql(copy_url, "SELECT count(*) FROM mark", timeout=10
                                ).stdout.strip() == "1", 1800, interval=0.5,
                   message="restored copy answers")
        figures["restore_s"] = round(time.monotonic() - started, 2)
        print(f"restore: {figures['restore_s']} s", flush=True)

        # failover: kill -9 the primary's agent and postgres, write through `other`
        psql(mesh_url, "CREATE TABLE f (id int)")
        old = next(x for x in cluster.agents if x.node_id == primary["node"])
        done = threading.Event()
        old.kill()
        kill_postgres(old, signal.SIGKILL)
        killed = time.monotonic()
        while not done.is_set():
            if psql(mesh_url, "INSERT INTO f VALUES (1)", timeout=10).returncode == 0:
                done.set()
            elif time.monotonic() - killed > 300:
                break
            else:
                time.sleep(0.1)
        figures["failover_s"] = round(time.monotonic() - killed, 2) if done.is_set() \
            else None
        print(f"failover: first write {figures['failover_s']} s after kill -9", flush=True)
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_postgres(agent, signal.SIGQUIT)
        from tests.realproc.test_db import db_roots

        for agent in cluster.agents:
            for path in db_roots(agent, node_dirs=True):
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return figures
