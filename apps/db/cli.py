"""CLI verbs of the database service: ``meshcloud db create|ls|url|rm|...``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


def _utc(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@command("db")
def cmd_db(args: argparse.Namespace) -> int | None:
    api = client(args)
    verb = args.db_command
    if verb == "create":
        body: dict[str, Any] = {"name": args.name, "standbys": args.standbys,
                                "version": args.version}
        if args.port is not None:
            body["port"] = args.port
        if args.size is not None:
            body["size"] = args.size
        if args.param:
            body["params"] = args.param
        reply = api.post("/v1/db", body)
        print(f"database {reply['name']}: port {reply['port']} on every node "
              f"(`meshcloud db url {reply['name']}`)")
    elif verb == "url":
        query = "?read_only=1" if args.read_only else ""
        print(api.get(f"/v1/db/{args.name}/url{query}")["url"])
    elif verb == "user":
        reply = api.post(f"/v1/db/{args.name}/users", {"user": args.user, "role": args.role})
        print(f"user {reply['user']} ({reply['role']}) on {args.name}; password (shown "
              f"once): {reply['password']}")
        print(reply["url"])
    elif verb == "failover":
        reply = api.post(f"/v1/db/{args.name}/failover", {"to": args.to or ""}, timeout=300)
        print(f"{args.name}: primary moved from {reply['from'][:8]} to {reply['to'][:8]} "
              f"in {reply['seconds']:.1f} s (no commit lost: the old primary shut down "
              f"cleanly first)")
    elif verb == "psql":
        url = api.get(f"/v1/db/{args.name}/url")["url"]
        psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
        os.execv(psql, [psql, url, *args.psql_args])
    elif verb == "backup":
        if args.list:
            info = api.get(f"/v1/db/{args.name}/backups")
            if args.json:
                print_json(info)
                return None
            for b in info["backups"]:
                print(f"{b['label']:32} {b['type']:5} {_utc(b['stop'])}  "
                      f"{b['size'] / 1e6:9.1f} MB  stored {b['repo_size'] / 1e6:8.1f} MB")
            if not info["backups"]:
                print(f"no backups of {args.name} yet")
            return None
        reply = api.post(f"/v1/db/{args.name}/backup", {"type": args.type}, timeout=3600)
        print(f"backup {reply.get('label', '?')} ({reply.get('type', args.type)}) of "
              f"{args.name}: {reply.get('size', 0) / 1e6:.1f} MB in "
              f"{reply.get('seconds', 0):.1f} s")
    elif verb == "restore":
        body = {"at": args.at}
        if args.as_name:
            body["as"] = args.as_name
        reply = api.post(f"/v1/db/{args.name}/restore", body, timeout=600)
        print(f"restoring {args.name} at {reply['at']} as {reply['name']} "
              f"(port {reply['port']}; `meshcloud db ls` shows when it is up)")
    elif verb == "rm":
        reply = api.call("DELETE", f"/v1/db/{args.name}",
                         {"delete_backups": bool(args.delete_backups)}, timeout=600)
        print(rm_text(args.name, reply))
    else:
        listing = api.get("/v1/db")
        dbs = listing["databases"]
        if args.json:
            print_json(dbs)
            return None
        if not dbs:
            print("no databases (`meshcloud db create NAME`)")
        for d in dbs:
            roles = " ".join(f"{m['role']}@{m['node'][:8]}"
                             f"{'' if m['healthy'] and m['alive'] else '(down)'}"
                             for m in d["members"])
            print(f"{d['name']:20} port {d['port']:<6} pg{d['version']} "
                  f"standbys {d['standbys']}  {roles or 'starting'}")
        for k in listing.get("kept") or []:
            print(f"{k['name']:20} removed {_utc(k['removed_ms'] / 1000)}, backups kept "
                  f"({len(k['backups'])}) in {k['bucket']} ({k['stanza']})")
    return None


def rm_text(name: str, reply: dict[str, Any]) -> str:
    """What ``db rm`` did, and with kept backups where they are and what to do next."""
    lines = []
    if reply.get("stanza"):
        lines.append(f"removed database {name}")
    if "objects_deleted" in reply:
        lines.append(f"deleted its backups: {reply['objects_deleted']} objects of "
                     f"{', '.join(reply.get('deleted') or [reply.get('stanza', name)])} "
                     f"from bucket {reply['bucket']}")
        return "\n".join(lines)
    n = len(reply.get("backups") or [])
    where = ", ".join(f"{reply['bucket']}/pgbackrest/{{archive,backup}}/{st}/"
                      for st in reply.get("kept") or [])
    lines.append(f"its backups are kept ({n} base backup{'' if n == 1 else 's'} and the "
                 f"WAL archive{'' if reply.get('archived') else ' as far as archived'}) "
                 f"in {where}")
    lines.append(f"  restore: meshcloud db restore {name} --at TIME --as NEW")
    lines.append(f"  delete:  meshcloud db rm {name} --delete-backups")
    return "\n".join(lines)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("db", help="managed PostgreSQL databases")
    dsub = p.add_subparsers(dest="db_command", required=True)
    c = dsub.add_parser("create", help="a new database: a primary and N standbys")
    c.add_argument("name", help="database (and user) name: a-z, 0-9, _")
    c.add_argument("--standbys", type=int, default=0, help="streaming standbys (default 0)")
    c.add_argument("--version", type=int, default=15, help="PostgreSQL major version")
    c.add_argument("--port", type=int, help="the TCP port on every node (default: the "
                                            "first free from 15432)")
    c.add_argument("--size", help="disk each copy needs (10G, 512M): placed only on nodes "
                                  "with that much free")
    c.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a PostgreSQL setting for every copy (work_mem=16MB); repeat for "
                        "more")
    ls = dsub.add_parser("ls", help="databases, their port and where they run")
    ls.add_argument("--json", action="store_true")
    u = dsub.add_parser("url", help="the connection string (with the password)")
    u.add_argument("name")
    u.add_argument("--read-only", action="store_true",
                   help="the standbys' port (read-only queries)")
    us = dsub.add_parser("user", help="`db user add NAME USER`: a new login role")
    us.add_argument("action", choices=["add"])
    us.add_argument("name")
    us.add_argument("user")
    us.add_argument("--role", choices=["readonly", "readwrite", "admin"],
                    default="readwrite")
    f = dsub.add_parser("failover", help="planned switchover to the most advanced standby")
    f.add_argument("name")
    f.add_argument("--to", help="the standby's node id (prefix not accepted)")
    q = dsub.add_parser("psql", help="psql connected to the database (through this node)")
    q.add_argument("name")
    q.add_argument("psql_args", nargs=argparse.REMAINDER, help="more arguments for psql")
    b = dsub.add_parser("backup", help="back up now into the mesh's storage (pgBackRest)")
    b.add_argument("name")
    b.add_argument("--type", choices=["full", "incr", "diff"], default="full")
    b.add_argument("--list", action="store_true", help="list the backups instead")
    b.add_argument("--json", action="store_true")
    rs = dsub.add_parser("restore", help="point-in-time restore (into a new database with "
                                         "--as, else replacing this one)")
    rs.add_argument("name")
    rs.add_argument("--at", required=True, help="ISO 8601 time (UTC unless a zone is given) "
                                                "or Unix seconds")
    rs.add_argument("--as", dest="as_name", help="the new database's name")
    r = dsub.add_parser("rm", help="stop a database and delete its data everywhere "
                                   "(its backups are kept unless --delete-backups)")
    r.add_argument("name")
    r.add_argument("--delete-backups", action="store_true",
                   help="also delete its backups and WAL archive from the bucket (on a "
                        "removed database: its kept backups)")


EXTENSIONS.append(add_parsers)
