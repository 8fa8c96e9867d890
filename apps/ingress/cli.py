"""CLI verbs of the ingress: ``expose``, ``unexpose``, ``endpoints``, ``routes``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
from typing import Any

from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


@command("expose")
def cmd_expose(args: argparse.Namespace) -> None:
    reply = client(args).post("/v1/ingress/exposures",
                              {"target": args.target, "port": args.port, "bind": args.bind})
    print(f"every node forwards {reply['bind']}:{reply['port']} to {reply['target']}")


@command("unexpose")
def cmd_unexpose(args: argparse.Namespace) -> None:
    client(args).delete(f"/v1/ingress/exposures/{args.port}")
    print(f"port {args.port} no longer exposed")


@command("endpoints")
def cmd_endpoints(args: argparse.Namespace) -> None:
    reply = client(args).get("/v1/ingress")
    if args.json:
        print_json(reply)
        return
    for e in reply["endpoints"]:
        state = "healthy" if e["healthy"] else "unhealthy"
        if not e["node_alive"]:
            state = "node down"
        print(f"{e['workload']}:{e['endpoint']:12} replica {e['replica']:<3} "
              f"node {e['node'][:12]} port {e['port']:<6} {state}")
    for x in reply["exposures"]:
        print(f"exposed {x['bind']}:{x['port']} -> {x['target']}")


@command("routes")
def cmd_routes(args: argparse.Namespace) -> None:
    reply = client(args).get("/v1/ingress/routes")
    if args.json:
        print_json(reply)
        return
    if not reply["routes"]:
        print("no HTTP routes (meshcloud run NAME --http --domain HOST[/PREFIX])")
    for r in reply["routes"]:
        live = ", ".join(f"{x['replica']}@{x['node'][:12]}" for x in r["live"]) or "none"
        where = r["host"] + (r["prefix"] if r["prefix"] != "/" else "")
        print(f"{where:32} -> {r['target']:20} {len(r['live'])}/{r['replicas']} live "
              f"({live})  timeout {r['timeout_s']:g}s")
    if reply.get("ingress"):
        print(f"this node's ingress: http://{reply['ingress']}")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("expose", help="every node listens on a TCP port and forwards to an "
                                      "endpoint (WORKLOAD:ENDPOINT)")
    p.add_argument("target", metavar="WORKLOAD:ENDPOINT")
    p.add_argument("--port", type=int, required=True, help="the port every node listens on")
    p.add_argument("--bind", default="127.0.0.1", help="address every node listens on "
                   "(default 127.0.0.1; 'mesh': each node's mesh listen address)")
    p = sub.add_parser("unexpose", help="stop listening on an exposed port")
    p.add_argument("port", type=int)
    p = sub.add_parser("endpoints", help="endpoints, their replicas and exposed ports")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("routes", help="HTTP routes (host and path prefix -> endpoint) and "
                                      "their live replicas")
    p.add_argument("--json", action="store_true")


EXTENSIONS.append(add_parsers)
