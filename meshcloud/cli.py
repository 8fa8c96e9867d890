"""The `meshcloud` command line.

Each verb is a small function; verbs that need the running agent talk to its local API
(:mod:`meshcloud.client`). Any :class:`~meshcloud.errors.MeshError` becomes one line on
stderr (``meshcloud: <message>``) and exit code 1; a usage error exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from meshcloud.client import ApiClient

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int | None]],
                                   Callable[[argparse.Namespace], int | None]]:
    def register(fn: Callable[[argparse.Namespace], int | None]
                 ) -> Callable[[argparse.Namespace], int | None]:
        COMMANDS[name] = fn
        return fn

    return register


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h, 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def datadir(args: argparse.Namespace) -> DataDir:
    return DataDir(args.data_dir)


def client(args: argparse.Namespace) -> ApiClient:
    from meshcloud.client import ApiClient

    return ApiClient(datadir(args))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def node_settings(args: argparse.Namespace) -> dict[str, object]:
    labels = dict(args.label) if getattr(args, "label", None) else None
    return {"listen": args.listen, "advertise": args.advertise, "api": args.api,
            "s3": getattr(args, "s3", None), "profile": args.profile, "labels": labels,
            "ingress": getattr(args, "ingress", None)}


# --- verbs ----------------------------------------------------------------------------------


@command("init")
def cmd_init(args: argparse.Namespace) -> None:
    from meshcloud.lifecycle import init_mesh

    info = init_mesh(datadir(args), args.name, node_settings(args))
    assert info.cert is not None
    print(f"created mesh {info.mesh_name!r} ({info.mesh_id.hex()[:12]}) in {args.data_dir}")
    print(f"this node: {info.cert.node_id.hex()[:12]} (holds the mesh admin key)")
    print("next: `meshcloud up` to run it, `meshcloud invite` to add machines")


@command("join")
def cmd_join(args: argparse.Namespace) -> None:
    import trio

    from meshcloud.lifecycle import join_mesh

    d = datadir(args)
    before = set(d.path.iterdir()) if d.path.is_dir() else None
    try:
        accepted = trio.run(join_mesh, d, args.token, node_settings(args))
    except BaseException:
        undo_half_made(d.path, before)
        raise
    cert = accepted.cert
    print(f"joined mesh {accepted.mesh_name!r} as node {cert.node_id.hex()[:12]} "
          f"(admitted by {cert.issuer_id.hex()[:12]})")
    print("next: `meshcloud up` to run it")


def undo_half_made(path: Path, before: set[Path] | None) -> None:
    """Remove what a refused `join` created: the data dir itself if it did not exist, else
    the entries it added (a data dir that held a node key is never touched)."""
    import shutil

    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    if any(p.name == "node.key" for p in before):
        return
    for entry in set(path.iterdir()) - before:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@command("invite")
def cmd_invite(args: argparse.Namespace) -> None:
    from meshcloud.client import AgentNotRunning

    body: dict[str, Any] = {"ttl_s": args.ttl, "uses": args.uses}
    if args.bootstrap:
        body["bootstrap"] = args.bootstrap
    try:
        reply = client(args).post("/v1/invites", body)
        token = reply["token"]
    except AgentNotRunning:
        token = _local_invite(args)
    if args.qr:
        print(qr_text(token, colour=sys.stdout.isatty()), end="")
    print(token)


def qr_text(data: str, *, colour: bool) -> str:
    """``data`` as a QR code for a terminal: two modules per character cell (half blocks),
    with the 4-module quiet zone readers need. With ``colour`` it sets black-on-white
    itself, so it scans the same on dark and light terminals; without (a pipe, a file),
    dark modules are drawn in the text colour on the page's background."""
    import qrcode

    qr = qrcode.QRCode(border=4)
    qr.add_data(data)
    qr.make(fit=True)
    matrix = qr.get_matrix()
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    blocks = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584",
              (True, True): "\u2588"}
    lines = []
    for top, bottom in zip(matrix[::2], matrix[1::2], strict=True):
        row = "".join(blocks[(a, b)] for a, b in zip(top, bottom, strict=True))
        lines.append(f"\x1b[30;107m{row}\x1b[0m" if colour else row)
    return "\n".join(lines) + "\n"


def _local_invite(args: argparse.Namespace) -> str:
    """An invite made without the agent (right after `init`), from the data dir alone."""
    from meshcloud.clock import SystemClock
    from meshcloud.config import load_config
    from meshcloud.identity.invites import create_invite
    from meshcloud.node import expand_wildcards

    d = datadir(args)
    root = d.root_key()
    if root is None:
        raise MeshError("this node holds no admin key: create invites on the node where "
                        "`meshcloud init` ran")
    config = load_config(d.config_path)
    bootstrap = args.bootstrap or config.advertise or expand_wildcards(config.listen)
    if any(address.endswith(":0") for address in bootstrap):
        raise MeshError("the agent is not running and listens on a random port: start it "
                        "first (`meshcloud up`) or pass --bootstrap HOST:PORT")
    token = create_invite(root, now=SystemClock().wall_ms(), ttl_ms=int(args.ttl * 1000),
                          uses=args.uses, bootstrap=tuple(bootstrap),
                          mesh_name=d.mesh().mesh_name, ledger=(d.node_key().id,))
    return token.encode()


@command("revoke")
def cmd_revoke(args: argparse.Namespace) -> None:
    if args.id is None:
        rows = client(args).get("/v1/revocations")
        for row in rows:
            print(f"{row['kind']:<7} {row['id']}")
        if not rows:
            print("nothing revoked")
        return
    body: dict[str, Any] = {"id": args.id}
    if args.id.startswith("mc1-"):  # the token itself names its invite
        from meshcloud.identity.invites import InviteToken

        body = {"id": InviteToken.decode(args.id).invite.invite_id.hex(), "kind": "invite"}
    elif args.invite:
        body["kind"] = "invite"
    elif args.node:
        body["kind"] = "node"
    reply = client(args).post("/v1/revocations", body)
    print(f"revoked {reply['kind']} {reply['id']}: every member refuses it within seconds")


@command("up")
def cmd_up(args: argparse.Namespace) -> int:
    from meshcloud.daemon import run_agent

    return run_agent(datadir(args), node_settings(args), log_level=args.log_level)


@command("status")
def cmd_status(args: argparse.Namespace) -> None:
    status = client(args).get("/v1/status")
    if args.json:
        print_json(status)
        return
    from meshcloud.ui_text import print_status

    print_status(status)


@command("leave")
def cmd_leave(args: argparse.Namespace) -> None:
    reply = client(args).post("/v1/leave", timeout=30)
    print(f"node {reply['node'][:12]} left the mesh; its agent is stopping "
          f"(start it again with `meshcloud up` to rejoin)")


@command("ping")
def cmd_ping(args: argparse.Namespace) -> None:
    reply = client(args).post(f"/v1/peers/{args.node}/ping")
    print(f"{reply['peer'][:12]} answered in {reply['rtt_ms']:.2f} ms "
          f"(meshcloud {reply['agent_version']})")


@command("ui")
def cmd_ui(args: argparse.Namespace) -> None:
    api = client(args)
    reply = api.post("/v1/ui/ticket")
    print(reply.get("url") or f"{api.url}/ui/login?ticket={reply['ticket']}")
    print("(a one-time link, valid for 5 minutes)", file=sys.stderr)


@command("version")
def cmd_version(args: argparse.Namespace) -> None:
    from meshcloud.node import versions

    for name, version in versions().items():
        print(f"{name:10} {version}")


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from meshcloud.demo import run_demo

    return run_demo(args.dir, nodes=args.nodes, base_port=args.base_port,
                    restart_dead=args.restart_dead, stdin=sys.stdin)


# --- parser ---------------------------------------------------------------------------------


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", action="append", metavar="HOST:PORT",
                        help="peer address to listen on (repeatable; default 0.0.0.0:7946)")
    parser.add_argument("--advertise", action="append", metavar="HOST:PORT",
                        help="address to tell peers (repeatable)")
    parser.add_argument("--api", metavar="HOST:PORT", help="local API (default 127.0.0.1:7947)")
    parser.add_argument("--s3", metavar="HOST:PORT", help="S3 API (default 127.0.0.1:7948)")
    parser.add_argument("--ingress", metavar="HOST:PORT",
                        help="HTTP ingress (default 127.0.0.1:7080; mesh:PORT, off)")
    parser.add_argument("--profile", choices=["lan", "wan", "local", "phone"],
                        help="timing preset (default lan)")
    parser.add_argument("--label", action="append", type=parse_label, metavar="KEY=VALUE",
                        help="a placement label (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshcloud",
                                     description="A private cloud with no master.")
    parser.add_argument("--data-dir", default=None,
                        help="node data directory (default ~/.meshcloud, or $MESHCLOUD_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="create a new mesh with this machine as its first node")
    p.add_argument("--name", default="home", help="a name for the mesh")
    add_node_flags(p)

    p = sub.add_parser("join", help="join a mesh with an invite token")
    p.add_argument("token", help="the mc1-... token from `meshcloud invite`")
    add_node_flags(p)

    p = sub.add_parser("invite", help="create an invite for a new machine (admin node)")
    p.add_argument("--ttl", type=parse_duration, default=3600.0, help="lifetime (default 1h)")
    p.add_argument("--uses", type=int, default=1, help="how many machines may use it")
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT",
                   help="address the new machine contacts (default: this node's)")
    p.add_argument("--qr", action="store_true", help="also print a QR code")

    p = sub.add_parser("revoke", help="revoke a node or an invite, mesh-wide (admin node)")
    p.add_argument("id", nargs="?", default=None,
                   help="node or invite id (a unique prefix), or an invite's mc1- token; "
                        "none: list revocations")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--node", action="store_true", help="the id is a node's")
    kind.add_argument("--invite", action="store_true", help="the id is an invite's")

    p = sub.add_parser("up", help="run the agent (foreground; Ctrl-C stops it)")
    add_node_flags(p)
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("status", help="this node, its peers and versions")
    p.add_argument("--json", action="store_true")

    sub.add_parser("version", help="versions of meshcloud and its parts")
    sub.add_parser("ui", help="print a one-time login link to the web UI")
    sub.add_parser("leave", help="leave the mesh gracefully and stop this node's agent")
    p = sub.add_parser("ping", help="round trip to another node over the mesh")
    p.add_argument("node", help="node id (or a unique prefix)")

    p = sub.add_parser(
        "demo", help="run a local 3-node mesh with the web UI",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Run a mesh of real agents on 127.0.0.1 (node1 creates it, the others "
                    "join). Kill one agent and the others keep serving; Enter restarts it. "
                    "Running the demo again reuses its data and restarts missing nodes. "
                    "Ctrl-C stops the agents and their workloads.")
    p.add_argument("--nodes", type=int, default=3, help="how many nodes")
    p.add_argument("--dir", default=os.environ.get("MESHCLOUD_DEMO_DIR", "~/.meshcloud-demo"),
                   help="where the demo nodes keep their data (or $MESHCLOUD_DEMO_DIR)")
    p.add_argument("--base-port", type=int, default=7100,
                   help="nodeN listens on BASE+N-1 (peers), BASE+100+N-1 (API) and "
                        "BASE+200+N-1 (S3)")
    p.add_argument("--restart-dead", action="store_true",
                   help="restart a node whose agent dies, without asking")

    for extend in EXTENSIONS:
        extend(sub)
    _data_dir_after_verbs(sub)
    return parser


def _data_dir_after_verbs(sub: Any) -> None:
    """Accept ``--data-dir`` after the verb too (``meshcloud init --data-dir X``), at every
    level of verbs; given in both places, the later one wins."""
    for verb_parser in set(sub.choices.values()):
        if "--data-dir" not in verb_parser._option_string_actions:
            verb_parser.add_argument("--data-dir", default=argparse.SUPPRESS,
                                     help="node data directory (as before the verb)")
        for action in verb_parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _data_dir_after_verbs(action)


EXTENSIONS: list[Callable[[Any], None]] = []
"""Functions adding verb groups (resources) to the parser: see meshcloud.cli_resources."""


def main(argv: list[str] | None = None) -> int:
    try:
        import meshcloud.cli_resources  # noqa: F401 - registers resource verbs
    except ImportError:
        pass
    import apps.ingress.cli  # noqa: F401 - ingress verbs (expose, unexpose, endpoints)
    import blobstore.cli  # noqa: F401 - storage verbs (bucket, ls, cp, s3 key)
    from apps.functions import cli as _fn_verbs  # noqa: F401 - fn deploy/invoke/ls/rm
    from apps.sites import cli as _site_verbs  # noqa: F401 - site deploy/rollback/ls/rm
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = os.environ.get("MESHCLOUD_DATA_DIR")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result = COMMANDS[args.command](args)
        sys.stdout.flush()
    except MeshError as exc:
        print(f"meshcloud: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if stdout_closed():
            # the reader went away (`meshcloud ps | head`): stop quietly, like other tools
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141
        print("meshcloud: the agent closed the connection (broken pipe); see its log",
              file=sys.stderr)
        return 1
    return int(result or 0)


def stdout_closed() -> bool:
    """True when nobody reads our standard output any more (a pipe's reader exited)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):
        return True
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events)


if __name__ == "__main__":
    sys.exit(main())
