"""CLI verbs of the V-Net service: ``meshcloud vnet create|ls|rm|attach|detach|show``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_show(info: dict[str, Any]) -> None:
    local = info.get("local") or {}
    if local and local.get("plane") == "userspace":
        where = (f"plane userspace, {local.get('address')}, "
                 f"SOCKS5 port {local.get('socks')}")
    elif local:
        where = (f"plane {local.get('plane')} on {local.get('interface')} "
                 f"{local.get('address')} port {local.get('port')}")
    else:
        where = "(this node is not a member)"
    print(f"{info['name']}  {info['cidr']}  {where}")
    if local.get("error"):
        print(f"  error: {local['error']}")
    for m in info["members"]:
        where = "this node" if m["this_node"] else m["node"][:12]
        state = "" if m["routed"] else "  (address in conflict, re-allocating)"
        # a replica row without an address of its own: its replica runs on the host's
        # network until the reconciler restarts it into its namespace
        none = "(restarting)" if m.get("kind") == "replica" else "(host address)"
        line = f"  {m['address'] or none:15} {m['member'][:30]:30} {where:12}"
        tunnel = m.get("tunnel")
        if tunnel:
            age = tunnel["handshake_age_s"]
            line += (f" endpoint {tunnel['endpoint']}  rx {_size(tunnel['rx_bytes'])} "
                     f"tx {_size(tunnel['tx_bytes'])}  handshake "
                     + (f"{age:.0f} s ago" if age is not None else "never"))
        elif not m["this_node"]:
            line += "  no tunnel" + ("" if m["alive"] else " (node down)")
        print(line + state)
    if info.get("workloads"):
        print(f"  workloads: {', '.join(info['workloads'])}")


@command("vnet")
def cmd_vnet(args: argparse.Namespace) -> int | None:
    api = client(args)
    verb = args.vnet_command
    name = urllib.parse.quote(getattr(args, "name", "") or "", safe="")
    if verb == "create":
        reply = api.post("/v1/vnets", {"name": args.name, "cidr": args.cidr})
        print(f"V-Net {reply['name']} {reply['cidr']} "
              f"(`meshcloud vnet attach {reply['name']} --host` on each machine)")
    elif verb == "rm":
        api.delete(f"/v1/vnets/{name}")
        print(f"removed V-Net {args.name}")
    elif verb in ("attach", "detach"):
        body: dict[str, Any] = {"host": True} if args.host else {"workload": args.workload}
        if verb == "attach" and args.plane:
            body["plane"] = args.plane
        reply = api.post(f"/v1/vnets/{name}/{verb}", body)
        if verb == "attach" and "address" in reply:
            print(f"this node is {reply['address']} in V-Net {args.name}")
        elif verb == "attach":
            print(f"workload {args.workload} attached to V-Net {args.name}")
        else:
            print(f"detached {reply['detached']} from V-Net {args.name}")
    elif verb == "show":
        info = api.get(f"/v1/vnets/{name}")
        if args.json:
            print_json(info)
        else:
            print_show(info)
    else:
        vnets = api.get("/v1/vnets")["vnets"]
        if args.json:
            print_json(vnets)
            return None
        if not vnets:
            print("no V-Nets (`meshcloud vnet create NAME --cidr 10.42.0.0/24`)")
        for v in vnets:
            local = v.get("local") or {}
            print(f"{v['name']:20} {v['cidr']:18} {v['members']:3} members  "
                  + (f"here: {local.get('address')} ({local.get('plane')})" if local
                     else "here: not attached"))
    return None


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("vnet", help="V-Nets: private networks across nodes (WireGuard)")
    vsub = p.add_subparsers(dest="vnet_command", required=True)
    c = vsub.add_parser("create", help="a new V-Net with a private IPv4 range")
    c.add_argument("name", help="1-32 of a-z, 0-9, '-'")
    c.add_argument("--cidr", required=True, help="e.g. 10.42.0.0/24")
    ls = vsub.add_parser("ls", help="V-Nets, their range and this node's address")
    ls.add_argument("--json", action="store_true")
    r = vsub.add_parser("rm", help="remove a V-Net: every node drops its interface")
    r.add_argument("name")
    for verb, text in (("attach", "join a V-Net: this node (--host) or a workload (its "
                                  "running replicas restart into it, one at a time)"),
                       ("detach", "leave a V-Net: this node (--host) or a workload (its "
                                  "replicas restart on the host's network, one at a "
                                  "time)")):
        a = vsub.add_parser(verb, help=text, description=text)
        a.add_argument("name")
        group = a.add_mutually_exclusive_group(required=True)
        group.add_argument("--host", action="store_true", help="this machine")
        group.add_argument("workload", nargs="?", help="a workload's replicas")
        if verb == "attach":
            a.add_argument("--plane", choices=["wireguard", "python", "userspace"],
                           help="force this node's data plane (default: the best there is)")
    s = vsub.add_parser("show", help="members, addresses, tunnels, bytes, handshake age")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")


EXTENSIONS.append(add_parsers)
