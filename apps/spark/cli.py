"""CLI verbs of the Spark service: ``meshcloud spark up|down|status|submit|jobs|logs``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from meshcloud.errors import MeshError
from meshcloud.kit.cli import EXTENSIONS, client, command, print_json

POLL = 0.5
"""Seconds between two reads of a running job's log."""


@command("spark")
def cmd_spark(args: argparse.Namespace) -> int | None:
    api = client(args)
    verb = args.spark_command
    if verb == "up":
        from apps.workloads.spec import parse_size

        try:
            memory = parse_size(args.worker_memory, "--worker-memory")
        except ValueError as exc:
            raise MeshError(str(exc), code="bad_memory") from None
        reply = api.post("/v1/spark/up", {"workers": args.workers, "worker_memory": memory,
                                          "cores": args.cores})
        c = reply["cluster"]
        print(f"spark: master {c['master_url']} (on every node's port {c['rpc_port']}), "
              f"{c['workers']} worker(s) of {c['worker_memory_mb']} MiB; "
              f"UI {c['ui_url']}")
    elif verb == "down":
        api.post("/v1/spark/down")
        print("spark: cluster removed")
    elif verb == "status":
        reply = api.get("/v1/spark")
        if args.json:
            print_json(reply)
            return None
        print_status(reply)
    elif verb == "submit":
        return submit(api, args)
    elif verb == "jobs":
        rows = api.get("/v1/spark/jobs")["jobs"]
        if args.json:
            print_json(rows)
            return None
        if not rows:
            print("no Spark jobs (`meshcloud spark submit job.py`)")
        for j in rows:
            took = (j["finished_ms"] - j["submitted_ms"]) / 1000 if j["finished_ms"] else None
            print(f"{j['id']}  {j['state']:9} {j['file']:24} node {j['node'][:8]}  "
                  f"{'' if took is None else f'{took:.1f}s '}{j['error'][:80]}"
                  f"{'UI ' + j['ui_url'] if j.get('ui_url') else ''}")
    elif verb == "logs":
        reply = api.get(f"/v1/spark/jobs/{args.id}/log")
        sys.stdout.write(reply["data"])
    return None


def print_status(reply: dict[str, Any]) -> None:
    c = reply.get("cluster")
    capable = [n for n in reply["nodes"] if n["capable"] and n["alive"]]
    if c is None:
        print(f"no Spark cluster ({len(capable)} node(s) can run one: `meshcloud spark up`)")
    else:
        master = c["master_node"][:12] if c["master_node"] else "not running yet"
        print(f"master   {c['master_url']}  on node {master}  UI {c['ui_url']}")
        for r in c["worker_replicas"]:
            print(f"worker   {r.get('replica')}  node {str(r.get('node') or '-')[:12]}  "
                  f"{r.get('state', '')}")
        view = reply.get("master_view") or {}
        for w in view.get("workers", []):
            print(f"  registered {w.get('host')}:{w.get('port')} {w.get('state')} "
                  f"cores {w.get('cores')} memory {w.get('memory')} MiB"
                  f"{'  UI ' + w['ui_url'] if w.get('ui_url') else ''}")
        for a in view.get("activeapps", []):
            print(f"  running app {a.get('id')} {a.get('name')}"
                  f"{'  UI ' + a['ui_url'] if a.get('ui_url') else ''}")
        for a in view.get("completedapps", [])[-5:]:
            print(f"  finished app {a.get('id')} {a.get('name')} {a.get('state')}")
    for n in reply["nodes"]:
        if not n["capable"]:
            print(f"node {n['node'][:12]}: no Spark ({n['reason']})")


def submit(api: Any, args: argparse.Namespace) -> int:
    path = Path(args.job)
    if not path.is_file():
        raise MeshError(f"job file {args.job} not found", code="not_found")
    conf = {}
    for item in args.conf or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise MeshError(f"--conf {item!r} is not KEY=VALUE", code="bad_conf")
        conf[key] = value
    job = api.post("/v1/spark/jobs", {
        "file": path.name, "source": path.read_text(), "args": list(args.job_args),
        "conf": conf, "input": args.input or "", "output": args.output or ""})
    job_id = job["id"]
    print(f"spark job {job_id}: driver on node {job['node'][:12]}", file=sys.stderr)
    if args.detach:
        print(job_id)
        return 0
    offset = 0
    ui_shown = False
    while True:
        if not ui_shown:  # the application's UI, once its driver registered
            row = api.get(f"/v1/spark/jobs/{job_id}")
            if row.get("ui_url"):
                print(f"spark job {job_id}: UI {row['ui_url']}", file=sys.stderr)
            ui_shown = bool(row.get("ui_url")) or row.get("state") != "running"
        reply = api.get(f"/v1/spark/jobs/{job_id}/log?offset={offset}")
        if reply["data"]:
            sys.stdout.write(reply["data"])
            sys.stdout.flush()
        offset = reply["next"]
        if reply["ended"] and not reply["data"]:
            break
        if not reply["data"]:
            time.sleep(POLL)
    final = api.get(f"/v1/spark/jobs/{job_id}")
    print(f"spark job {job_id}: {final['state']}"
          f"{': ' + final['error'] if final['error'] else ''}", file=sys.stderr)
    return 0 if final["state"] == "succeeded" else 1


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("spark", help="Apache Spark: a cluster on the mesh, jobs on buckets")
    s = p.add_subparsers(dest="spark_command", required=True)
    u = s.add_parser("up", help="start (or resize) the cluster: a master and N workers")
    u.add_argument("--workers", type=int, default=2, help="workers, on distinct nodes")
    u.add_argument("--worker-memory", default="1g", help="executor memory per worker")
    u.add_argument("--cores", type=int, default=1, help="cores per worker")
    s.add_parser("down", help="stop the master and the workers")
    st = s.add_parser("status", help="master, workers, applications")
    st.add_argument("--json", action="store_true")
    j = s.add_parser("submit", help="run a PySpark job on the cluster (driver on this node)")
    j.add_argument("job", help="the job's .py file")
    j.add_argument("--input", help="s3://bucket/prefix (passed to the job as --input)")
    j.add_argument("--output", help="s3://bucket/prefix (passed to the job as --output)")
    j.add_argument("--conf", action="append", help="spark.KEY=VALUE (repeatable)")
    j.add_argument("--detach", "-d", action="store_true", help="print the job id and return")
    j.add_argument("--arg", dest="job_args", action="append", default=[],
                   help="one more argument for the job (repeatable; --arg=--flag)")
    ls = s.add_parser("jobs", help="submitted jobs, newest first")
    ls.add_argument("--json", action="store_true")
    lg = s.add_parser("logs", help="a job's driver log (kept in the log bucket)")
    lg.add_argument("id")


EXTENSIONS.append(add_parsers)
