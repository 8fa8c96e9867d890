"""CLI verbs of the database service: ``meshcloud db create|ls|url|rm``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


@command("db")
def cmd_db(args: argparse.Namespace) -> int | None:
    api = client(args)
    verb = args.db_command
    if verb == "create":
        body: dict[str, Any] = {"name": args.name, "standbys": args.standbys,
                                "version": args.version}
        if args.port is not None:
            body["port"] = args.port
        reply = api.post("/v1/db", body)
        print(f"database {reply['name']}: port {reply['port']} on every node "
              f"(`meshcloud db url {reply['name']}`)")
    elif verb == "url":
        print(api.get(f"/v1/db/{args.name}/url")["url"])
    elif verb == "psql":
        url = api.get(f"/v1/db/{args.name}/url")["url"]
        psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
        os.execv(psql, [psql, url, *args.psql_args])
    elif verb == "rm":
        api.delete(f"/v1/db/{args.name}")
        print(f"removed database {args.name}")
    else:
        dbs = api.get("/v1/db")["databases"]
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
    return None


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("db", help="managed PostgreSQL databases")
    dsub = p.add_subparsers(dest="db_command", required=True)
    c = dsub.add_parser("create", help="a new database: a primary and N standbys")
    c.add_argument("name", help="database (and user) name: a-z, 0-9, _")
    c.add_argument("--standbys", type=int, default=0, help="streaming standbys (default 0)")
    c.add_argument("--version", type=int, default=15, help="PostgreSQL major version")
    c.add_argument("--port", type=int, help="the TCP port on every node (default: the "
                                            "first free from 15432)")
    ls = dsub.add_parser("ls", help="databases, their port and where they run")
    ls.add_argument("--json", action="store_true")
    u = dsub.add_parser("url", help="the connection string (with the password)")
    u.add_argument("name")
    q = dsub.add_parser("psql", help="psql connected to the database (through this node)")
    q.add_argument("name")
    q.add_argument("psql_args", nargs=argparse.REMAINDER, help="more arguments for psql")
    r = dsub.add_parser("rm", help="stop a database and delete its data everywhere")
    r.add_argument("name")


EXTENSIONS.append(add_parsers)
