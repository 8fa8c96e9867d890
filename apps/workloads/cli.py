"""CLI verbs of workloads: run, deploy, ps, logs, rm, scale, drain, images.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported
(the agent's composition module lists it). Every verb talks to the local agent's
API, which works from any node: ``ps`` and ``logs`` show replicas wherever they run.
"""

from __future__ import annotations

import argparse
import shlex
import time
import urllib.parse
from pathlib import Path
from typing import Any

from apps.workloads.errors import SpecError
from meshcloud.errors import MeshError
from meshcloud.kit.cli import EXTENSIONS, client, command, parse_duration, print_json

POLL_INTERVAL = 0.5
"""Seconds between progress checks of ``--wait`` and ``drain`` (a person is watching)."""


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The spec dict of ``meshcloud run`` flags (checked by the agent, all at once)."""
    from apps.workloads.spec import parse_env

    problems: list[str] = []
    env: dict[str, str] = {}
    for item in args.env or []:
        try:
            key, value = parse_env(item)
            env[key] = value
        except ValueError as exc:
            problems.append(str(exc))
    labels: dict[str, str] = {}
    for item in args.require_label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"--require-label {item!r} is not KEY=VALUE")
        labels[key] = value
    command: list[str] = []
    if args.argv:
        try:
            command = shlex.split(args.argv)
        except ValueError as exc:
            problems.append(f"--command: {exc}")
    spec: dict[str, Any] = {
        "name": args.name, "image": args.image, "replicas": args.replicas,
        "singleton": args.singleton, "env": env, "ports": list(args.port or []),
        "volumes": list(args.volume or []), "command": command,
        "stop_timeout": args.stop_timeout, "publish": _publish_from_args(args),
        "domains": list(args.domain or []),
        "constraints": {"runtime": args.runtime, "arch": list(args.arch or []),
                        "labels": labels, "min_ram": args.min_ram, "min_cpus": args.min_cpus,
                        "avoid_battery": not args.allow_battery,
                        "avoid_metered": args.avoid_metered or (
                            args.heavy and not args.allow_battery),
                        "heavy": args.heavy},
    }
    if args.route_timeout is not None:
        spec["route_timeout"] = args.route_timeout
    if args.cpu is not None:
        spec["cpu"] = args.cpu
    if args.memory is not None:
        spec["memory"] = args.memory
    health = _health_from_args(args, problems)
    if health is not None:
        spec["health"] = health
    if problems:
        raise SpecError(args.name, problems)
    return spec


def _publish_from_args(args: argparse.Namespace) -> list[str]:
    """``--publish`` items, with ``--http [PORT]`` first (``--domain`` alone implies it)."""
    publish = list(args.publish or [])
    http = args.http
    if http is None and args.domain and not publish:
        http = ""
    if http is not None:
        publish.insert(0, f"http={http}" if http else "http")
    return publish


def _health_from_args(args: argparse.Namespace, problems: list[str]) -> dict[str, Any] | None:
    chosen = [k for k in ("health_http", "health_tcp", "health_cmd") if getattr(args, k)]
    if len(chosen) > 1:
        problems.append("give one of --health-http, --health-tcp, --health-cmd")
        return None
    if not chosen:
        return None
    health: dict[str, Any] = {"interval": args.health_interval}
    if args.health_cmd:
        health.update(kind="command", command=["/bin/sh", "-c", args.health_cmd])
        return health
    text = args.health_http or args.health_tcp
    port_text, _, path = text.partition("/")
    try:
        health["port"] = int(port_text)
    except ValueError:
        problems.append(f"health check port {port_text!r} is not a number")
        return None
    health["kind"] = "http" if args.health_http else "tcp"
    if args.health_http:
        health["path"] = "/" + path
    return health


def _submit(args: argparse.Namespace, spec: dict[str, Any], replace: bool) -> None:
    api = client(args)
    result = api.post("/v1/workloads", {"spec": spec, "replace": replace})
    if args.wait:
        result = _wait_running(api, result["name"], args.wait)
    if args.json:
        print_json(result)
        return
    what = result["image"] or " ".join(result["command"])
    print(f"{result['name']}: {result['desired']} replica(s) wanted ({result['runtime']}, "
          f"{what}), generation {result['generation']}")
    if args.wait:
        print(f"{result['name']}: {result['running']} of {result['desired']} running")
    else:
        print(f"see where they run: meshcloud ps {result['name']}")


def _wait_running(api: Any, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        result: dict[str, Any] = api.get(f"/v1/workloads/{_quote(name)}")
        if result["running"] >= result["desired"]:
            return result
        if time.monotonic() > deadline:
            raise MeshError(f"{name}: {result['running']} of {result['desired']} replicas "
                            f"running after {timeout:g}s (see `meshcloud ps {name}`)",
                            code="timeout")
        time.sleep(POLL_INTERVAL)


@command("run")
def cmd_run(args: argparse.Namespace) -> None:
    spec = spec_from_args(args)
    for vnet in args.vnet or ():  # first, so that the first replicas start in it
        client(args).post(f"/v1/vnets/{_quote(vnet)}/attach",
                          {"workload": args.name, "ahead": True})
    _submit(args, spec, replace=False)


@command("deploy")
def cmd_deploy(args: argparse.Namespace) -> None:
    from apps.workloads.spec import spec_from_toml

    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MeshError(f"cannot read {path}: {exc.strerror or exc}") from None
    spec = spec_from_toml(text, str(path))
    _submit(args, spec.to_dict(), replace=True)


@command("ps")
def cmd_ps(args: argparse.Namespace) -> None:
    path = "/v1/replicas" + (f"?workload={_quote(args.name)}" if args.name else "")
    rows = client(args).get(path)["replicas"]
    if args.json:
        print_json(rows)
        return
    if not rows:
        print("no workloads (start one with `meshcloud run NAME --image IMAGE`)")
        return
    import shutil
    import sys

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    for line in ps_lines(rows, time.time() * 1000, width):
        print(line)


def ps_lines(rows: list[dict[str, Any]], now_ms: float, width: int | None) -> list[str]:
    """The ``ps`` table; MESSAGE gets what ``width`` leaves (at least 40), all of it when
    ``width`` is None (output to a pipe or file)."""
    table = [("REPLICA", "NODE", "STATE", "RESTARTS", "FENCE", "UPDATED", "MESSAGE")]
    for r in rows:
        age = "-" if not r.get("updated") else _age((now_ms - r["updated"]) / 1000)
        state = r["state"] if r["wanted"] else f"{r['state']} (extra)"
        table.append((r["name"], (r["node"] or "-")[:12], state, str(r["restarts"]),
                      str(r["fencing"]), age, " ".join((r.get("message") or "").split())))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    room = None if width is None else max(40, width - sum(widths) - 2 * len(widths) - 1)
    lines = []
    for row in table:
        message = row[-1]
        if room is not None and len(message) > room:
            message = message[:room - 1] + "…"
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + message)
    return lines


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, int(seconds))}s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)}m ago"
    return f"{int(seconds // 3600)}h ago"


@command("logs")
def cmd_logs(args: argparse.Namespace) -> None:
    query = {"follow": "1" if args.follow else "0"}
    if args.tail is not None:
        query["tail"] = str(args.tail)
    if args.replica is not None:
        query["replica"] = str(args.replica)
    path = f"/v1/workloads/{_quote(args.name)}/logs?{urllib.parse.urlencode(query)}"
    for line in client(args).stream_lines(path):
        print(line, flush=args.follow)


@command("rm")
def cmd_rm(args: argparse.Namespace) -> None:
    client(args).delete(f"/v1/workloads/{_quote(args.name)}")
    print(f"{args.name}: removed (its replicas stop on every node)")


@command("scale")
def cmd_scale(args: argparse.Namespace) -> None:
    result = client(args).post(f"/v1/workloads/{_quote(args.name)}/scale",
                               {"replicas": args.replicas})
    print(f"{args.name}: {result['desired']} replica(s) wanted")


@command("drain")
def cmd_drain(args: argparse.Namespace) -> int:
    api = client(args)
    path = f"/v1/nodes/{_quote(args.node)}/drain"
    progress = api.post(path, {"drain": not args.undo})
    node = progress["node"][:12]
    if args.undo:
        print(f"node {node} takes workloads again")
        return 0
    if args.json and args.no_wait:
        print_json(progress)
        return 0
    print(f"draining node {node}: its replicas move to other nodes", flush=True)
    deadline = time.monotonic() + args.timeout
    last = None
    while not progress["safe"]:
        summary = _drain_summary(progress)
        if summary != last:
            print(f"  {summary}", flush=True)
            last = summary
        if args.no_wait:
            return 0
        if time.monotonic() > deadline:
            raise MeshError(f"node {node} still runs replicas after {args.timeout:g}s "
                            f"({summary}); see `meshcloud ps`", code="timeout")
        time.sleep(POLL_INTERVAL)
        progress = api.get(path)
    if args.json:
        print_json(progress)
    note = "" if progress["reachable"] else " (the node does not answer; its claims moved)"
    print(f"safe to unplug {node}: no replica runs there{note}")
    return 0


def _drain_summary(progress: dict[str, Any]) -> str:
    claims = ", ".join(f"{c['workload']}-{c['replica']} ({c['state']})"
                       for c in progress["claims"])
    running = ", ".join(r["name"] for r in progress["running"])
    parts = []
    if claims:
        parts.append(f"{len(progress['claims'])} claimed here: {claims}")
    if running:
        parts.append(f"{len(progress['running'])} still running: {running}")
    return "; ".join(parts) or "waiting for the drain flag to spread"


@command("images")
def cmd_images(args: argparse.Namespace) -> None:
    api = client(args)
    verb = getattr(args, "images_command", None)
    if verb == "push":
        push_archive(api, Path(args.archive))
        return
    if verb == "rm":
        _remove_pushed(api, args.reference)
        return
    if args.build_demo:
        built = api.post("/v1/images/build-demo", timeout=300)["built"]
        for r in built:
            print(f"{r['image']}: {'built' if r['built'] else 'up to date'} "
                  f"in {r['seconds']:.2f}s")
        if not args.local:
            for r in built:
                _push_from_store(api, args, r["image"])
    info = api.get("/v1/images")
    pushed = api.get("/v1/images/mesh")
    if args.json:
        print_json({**info, "pushed": pushed})
        return
    print("pushed to the mesh (any podman node loads them on demand):")
    for ref, image in pushed.items():
        print(f"    {ref}  {image['size'] / 1e6:.1f} MB  sha256:{image['sha256'][:12]}")
    if not pushed:
        print("    none (`meshcloud images push ARCHIVE`)")
    for node, offer in info["mesh"].items():
        mark = " (this node)" if node == info["node"] else ""
        runtimes = ",".join(offer["runtimes"]) or "none"
        print(f"{node[:12]}{mark}  runtimes: {runtimes}")
        for image in offer["images"]:
            print(f"    {image}")


def push_archive(api: Any, archive: Path) -> list[str]:
    """Store a ``podman save`` archive in the mesh's image bucket and name its images."""
    from apps.workloads.catalogue import BUCKET, archive_key, archive_references, file_sha256
    from blobstore.cli import upload

    if not archive.is_file():
        raise MeshError(f"{archive} is not a file (make one with `podman save -o "
                        "image.tar IMAGE`)")
    refs = archive_references(archive)
    digest = file_sha256(archive)
    if BUCKET not in {b["name"] for b in api.get("/v1/storage/buckets")}:
        api.post("/v1/storage/buckets", {"name": BUCKET, "code": ""})
    upload(api, archive, BUCKET, archive_key(digest))
    api.post("/v1/images/mesh", {"images": refs, "key": archive_key(digest),
                                 "size": archive.stat().st_size, "sha256": digest})
    for ref in refs:
        print(f"pushed {ref} (sha256:{digest[:12]}): any podman node loads it on demand")
    return refs


def _push_from_store(api: Any, args: argparse.Namespace, reference: str) -> None:
    """`podman save` an image of this node's store, then push the archive."""
    import subprocess
    import tempfile

    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman_service import PodmanService
    from meshcloud.kit.cli import datadir

    service = PodmanService(PodmanConfig(data_dir=datadir(args).path, node_id="cli"))
    with tempfile.TemporaryDirectory(prefix="meshcloud-image-") as tmp:
        archive = Path(tmp) / "image.tar"
        result = subprocess.run([*service.cli_args(), "save", "--format", "docker-archive",
                                 "-o", str(archive), reference], env=service.env(),
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise MeshError(f"podman save {reference} failed: {result.stderr.strip()[-300:]}")
        push_archive(api, archive)


def _remove_pushed(api: Any, reference: str) -> None:
    from apps.workloads.catalogue import BUCKET

    reply = api.delete(f"/v1/images/mesh/{_quote(reference)}")
    if not reply["archive_shared"]:
        from blobstore.cli import _object_path

        api.delete(_object_path(BUCKET, reply["key"]))
    print(f"removed {reference} from the mesh (node stores that loaded it keep their copy)")


# --- parser -------------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("run", help="run a service workload on the mesh")
    p.add_argument("name", help="workload name (lowercase letters, digits, -)")
    p.add_argument("--image", help="local image (podman); omit to run a host command")
    p.add_argument("--replicas", type=int, default=1, help="copies, each on its own node")
    p.add_argument("--cpu", type=float, help="CPU cores per replica (e.g. 0.5)")
    p.add_argument("--memory", help="memory per replica (e.g. 128m, 1g)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE")
    p.add_argument("--port", action="append", metavar="[IP:]HOST:CONTAINER[/udp]",
                   help="publish a port (host IP defaults to 127.0.0.1)")
    p.add_argument("--publish", action="append", metavar="NAME[=PORT]|PORT",
                   help="a named endpoint for the ingress (the replica listens on $PORT)")
    p.add_argument("--http", nargs="?", const="", metavar="PORT",
                   help="publish the endpoint 'http' first (an image listens on PORT, a "
                        "host command on $PORT); with --domain, one-command web apps")
    p.add_argument("--domain", action="append", metavar="HOST[/PREFIX]",
                   help="the HTTP ingress routes this Host (and path prefix) to the first "
                        "published endpoint (implies --http if nothing is published)")
    p.add_argument("--route-timeout", type=float, metavar="SECONDS",
                   help="an HTTP request gets 504 if a replica takes longer to answer "
                        "(default 60)")
    p.add_argument("--volume", action="append", metavar="NAME:/PATH[:ro]",
                   help="a named volume on the node that runs the replica")
    p.add_argument("--singleton", action="store_true",
                   help="at most one copy anywhere, under a lease (replicas = 1)")
    p.add_argument("--runtime", choices=["podman", "process"])
    p.add_argument("--vnet", action="append", metavar="NAME",
                   help="attach to this V-Net: each replica gets its own address in it")
    p.add_argument("--arch", action="append", help="accepted architecture (repeatable)")
    p.add_argument("--require-label", action="append", metavar="KEY=VALUE",
                   help="run only on nodes with this label")
    p.add_argument("--min-ram", help="only on nodes with at least this much RAM")
    p.add_argument("--min-cpus", type=float, default=0.0)
    p.add_argument("--allow-battery", action="store_true",
                   help="do not rank nodes on battery last")
    p.add_argument("--avoid-metered", action="store_true")
    p.add_argument("--heavy", action="store_true",
                   help="heavy work (database, build): never on a battery or metered node "
                        "(with --allow-battery: allowed there)")
    p.add_argument("--health-http", metavar="PORT[/PATH]")
    p.add_argument("--health-tcp", metavar="PORT")
    p.add_argument("--health-cmd", metavar="SHELL COMMAND")
    p.add_argument("--health-interval", type=float, default=5.0)
    p.add_argument("--stop-timeout", type=float, default=10.0)
    _wait_flags(p)
    p.add_argument("--command", dest="argv", metavar="'CMD ARGS...'",
                   help="command line (shell words, not run by a shell); with an image it "
                        "replaces the image's CMD, without one it runs as a host process")

    p = sub.add_parser("deploy", help="create or update a workload from a TOML file")
    p.add_argument("file")
    _wait_flags(p)

    p = sub.add_parser("ps", help="where each replica runs, its state and restarts")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", help="a workload's output, from whichever node runs it")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument("--replica", type=int, help="one replica (default: all, prefixed)")

    p = sub.add_parser("rm", help="remove a workload (its replicas stop)")
    p.add_argument("name")

    p = sub.add_parser("scale", help="change the number of replicas (0 stops it)")
    p.add_argument("name")
    p.add_argument("replicas", type=int)

    p = sub.add_parser("drain", help="move every workload off a node before unplugging it")
    p.add_argument("node", help="node id (or a unique prefix, or `self`)")
    p.add_argument("--undo", action="store_true", help="let the node take workloads again")
    p.add_argument("--timeout", type=parse_duration, default=300.0,
                   help="give up after this long (default 5m)")
    p.add_argument("--no-wait", action="store_true", help="set the flag and return")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("images", help="images of the mesh: push, ls, rm; node stores",
                       description="Images without a registry: `push` stores a `podman save` "
                                   "archive in the mesh (blobstore bucket meshcloud-images); "
                                   "a node loads it before it starts a replica.")
    p.add_argument("--build-demo", action="store_true",
                   help="build localhost/meshcloud/{busybox,web}:1 and push them to the mesh")
    p.add_argument("--local", action="store_true",
                   help="with --build-demo: only into this node's store, no push")
    p.add_argument("--json", action="store_true")
    isub = p.add_subparsers(dest="images_command", metavar="VERB")
    push = isub.add_parser("push", help="store a `podman save` archive in the mesh")
    push.add_argument("archive", help="file from `podman save -o FILE IMAGE`")
    isub.add_parser("ls", help="pushed images and every node's store (the default)")
    rm = isub.add_parser("rm", help="remove a pushed image from the mesh")
    rm.add_argument("reference", help="e.g. localhost/meshcloud/web:1")


def _wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=parse_duration, nargs="?", const=120.0, default=None,
                   metavar="DURATION", help="wait until every replica runs (default 2m)")
    p.add_argument("--json", action="store_true")


EXTENSIONS.append(add_parsers)

