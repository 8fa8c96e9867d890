"""CLI verbs of the workload policy: ``meshcloud policy allow-root|revoke-root NAME``,
``meshcloud policy list``.

They ask the local agent to sign a statement with the mesh root key, so they work only on
the node holding it (elsewhere the agent answers ``not_admin``). See
:mod:`apps.workloads.policy` for what the statement is and who checks it.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


@command("policy")
def cmd_policy(args: argparse.Namespace) -> None:
    api = client(args)
    if args.policy_verb in ("allow-root", "revoke-root"):
        name = urllib.parse.quote(args.name, safe="")
        row = api.post(f"/v1/policy/root/{name}",
                       {"allow": args.policy_verb == "allow-root"})
        if args.policy_verb == "allow-root":
            print(f"workload {args.name!r} may run as root (signed by the mesh admin key); "
                  "its replicas restart as root")
        else:
            print(f"workload {args.name!r} no longer runs as root; its replicas restart "
                  "unprivileged")
        if args.json:
            print_json(row)
        return
    rows = api.get("/v1/policy/root")["root"]
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no workload may run as root")
    for row in rows:
        print(f"{row['workload']:40} {row['verb']:12} {row['verdict']}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="workload policy: which workloads may run as root "
                                      "(admin node)")
    verbs = p.add_subparsers(dest="policy_verb", metavar="VERB", required=True)
    for verb, text in (("allow-root", "let workload NAME run as root (signed statement)"),
                       ("revoke-root", "make workload NAME run unprivileged again")):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("name", help="workload name")
        v.add_argument("--json", action="store_true")
    v = verbs.add_parser("list", help="statements in the mesh and whether they hold")
    v.add_argument("--json", action="store_true")


EXTENSIONS.append(add_parser)
