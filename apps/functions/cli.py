"""CLI verbs of the functions service: ``meshcloud fn deploy|invoke|logs|ls|rm|rollback``,
``fn schedule|ticks|invocations|secret|key``.

Registered into :mod:`meshcloud.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from meshcloud.errors import MeshError
from meshcloud.kit.cli import EXTENSIONS, client, command, print_json


def _raw(api: Any, method: str, path: str, data: bytes | None, timeout: float = 300
         ) -> tuple[int, bytes, dict[str, str]]:
    request = api._request(method, path)
    if data is not None:
        request.data = data
        request.add_header("Content-Length", str(len(data)))
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def deploy(api: Any, name: str, root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    from apps.functions.bundle import pack
    from apps.functions.core import check_name

    check_name(name)
    bundle = pack(root)
    digest = hashlib.sha256(bundle).hexdigest()
    status, _, _ = _raw(api, "HEAD", f"/v1/functions/bundles/{digest}", None)
    if status != 200:
        status, body, _ = _raw(api, "PUT", f"/v1/functions/bundles/{digest}", bundle)
        if status != 201:
            raise MeshError(f"bundle upload failed ({status}): {body.decode(errors='replace')}",
                            code="upload_failed")
    reply: dict[str, Any] = api.post(f"/v1/functions/{urllib.parse.quote(name)}/versions",
                                     {"sha256": digest, **spec})
    return reply


def invoke(api: Any, name: str, data: bytes, *, event: bool = False, dedup: str = ""
           ) -> tuple[bool, bytes]:
    path = f"/v1/functions/{urllib.parse.quote(name)}/invoke"
    if not event:
        status, body, _ = _raw(api, "POST", path, data)
        return status == 200, body
    request = api._request("POST", path)
    request.data = data
    request.add_header("Content-Length", str(len(data)))
    request.add_header("X-Invocation-Type", "Event")
    if dedup:
        request.add_header("X-Invocation-Id", dedup)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status == 202, response.read()
    except urllib.error.HTTPError as exc:
        return False, exc.read()


def wait_requirements(api: Any, name: str, version: int, limit: float,
                      sleep: Any = time.sleep, monotonic: Any = time.monotonic) -> None:
    """Follow the install of ``requirements.txt`` on the node that runs the version
    (its fork server is started ahead of the first call): one line per change, an
    error when it failed."""
    deadline = monotonic() + limit
    said: set[tuple[str, str]] = set()
    while monotonic() < deadline:
        fn = api.get(f"/v1/functions/{urllib.parse.quote(name)}")
        if fn["current"] != version:
            print(f"{name} is now at version {fn['current']}: not waiting")
            return
        rows = {node: r for node, r in fn.get("stats", {}).get("requirements", {}).items()
                if r["version"] == version}
        for node, r in sorted(rows.items()):
            if (node, r["state"]) not in said:
                said.add((node, r["state"]))
                if r["state"] == "installing":
                    print(f"installing requirements.txt on {node[:12]} ...", flush=True)
                elif r["state"] == "ready":
                    print(f"requirements.txt installed on {node[:12]}")
                    return
                else:
                    raise MeshError(r["message"], code="requirements_failed")
        sleep(0.5)
    print(f"requirements.txt not installed yet after {limit:g} s: see `meshcloud fn logs "
          f"{name}`")


def print_logs(nodes: dict[str, str]) -> None:
    for node, text in nodes.items():
        for line in text.splitlines():
            print(f"{node[:12]}  {line}", flush=True)


def follow_logs(api: Any, path: str, offsets: dict[str, int], every: float = 0.5,
                sleep: Any = time.sleep) -> None:
    """Print what every node's log gains until interrupted (a node that appears starts
    at its tail)."""
    try:
        while True:
            sleep(every)
            query = ",".join(f"{n}:{o}" for n, o in sorted(offsets.items()))
            try:
                reply = api.get(path + (f"&offsets={query}" if query else ""))
            except (MeshError, OSError) as exc:
                print(f"(logs unavailable: {exc}; retrying)", file=sys.stderr, flush=True)
                continue
            print_logs(reply["nodes"])
            offsets = {**offsets, **reply.get("offsets", {})}
    except KeyboardInterrupt:
        return


def parse_secrets(pairs: list[str]) -> dict[str, str]:
    """``K=V`` (or ``K=@FILE``: the file's text, so the value stays out of the shell's
    history and the process list)."""
    from apps.functions.core import FunctionError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FunctionError(f"bad secret {key[:40]!r}: expected NAME=VALUE or "
                                "NAME=@FILE")
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text().rstrip("\n")
            except OSError as exc:
                raise FunctionError(f"secret {key}: cannot read {value[1:]}: "
                                    f"{exc.strerror}") from None
        out[key] = value
    return out


def put_secrets(api: Any, name: str, set_: dict[str, str], remove: list[str]
                ) -> list[str]:
    from apps.functions.core import check_name

    check_name(name)
    reply = api.post(f"/v1/functions/{urllib.parse.quote(name)}/secrets",
                     {"set": set_, "remove": remove})
    return list(reply["secrets"])


def _data(arg: str | None) -> bytes:
    if arg is None:
        return b""
    if arg.startswith("@"):
        return sys.stdin.buffer.read() if arg == "@-" else Path(arg[1:]).read_bytes()
    return arg.encode()


@command("fn")
def cmd_fn(args: argparse.Namespace) -> None:
    from apps.functions.core import FunctionError

    api = client(args)
    verb = args.fn_command
    if verb == "deploy":
        spec: dict[str, Any] = {"runtime": args.runtime, "handler": args.handler,
                                "env": args.env or []}
        if args.image:
            if args.dir:
                raise FunctionError("--image IMAGE runs that image: give no DIR")
            spec = {"image": args.image, "env": args.env or []}
        elif not args.dir:
            raise FunctionError("fn deploy needs a DIR (or --image IMAGE); options go "
                                "before NAME or after DIR")
        for key in ("timeout", "memory", "concurrency", "idle", "schedule"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
        if args.on_object:
            spec["on_object"] = args.on_object
        if args.public is not None:
            spec["public"] = args.public
        if args.secret:  # before the version: its first instances have them
            put_secrets(api, args.name, parse_secrets(args.secret), [])
        reply = (api.post(f"/v1/functions/{urllib.parse.quote(args.name)}/versions", spec)
                 if args.image else deploy(api, args.name, Path(args.dir), spec))
        print(f"deployed {args.name} version {reply['current']}: "
              f"POST /fn/{args.name} on any node's ingress, or `meshcloud fn invoke`")
        if not reply.get("public") and not reply.get("keys"):
            print(f"POST /fn/{args.name} needs a key: `meshcloud fn key {args.name}` "
                  "(or deploy with --public)")
        if args.dir and (Path(args.dir) / "requirements.txt").is_file() and not args.no_wait:
            wait_requirements(api, args.name, int(reply["current"]), args.wait)
    elif verb == "invoke":
        ok, body = invoke(api, args.name, _data(args.data), event=args.async_,
                          dedup=args.id or "")
        if ok:
            sys.stdout.buffer.write(body + (b"" if body.endswith(b"\n") else b"\n"))
            return
        try:
            error = json.loads(body)["error"]
            raise MeshError(error["message"], code=error["code"])
        except (ValueError, KeyError, TypeError):
            raise MeshError(body.decode(errors="replace"), code="invoke_failed") from None
    elif verb == "logs":
        path = f"/v1/functions/{urllib.parse.quote(args.name)}/logs?lines={args.lines}"
        reply = api.get(path)
        if not reply["nodes"] and not args.follow:
            print(f"no log lines of {args.name} on any live node")
        print_logs(reply["nodes"])
        if args.follow:
            follow_logs(api, path, reply.get("offsets", {}))
    elif verb == "schedule":
        cron = "" if args.cron in ("off", "none") else args.cron
        reply = api.post(f"/v1/functions/{urllib.parse.quote(args.name)}/schedule",
                         {"schedule": cron})
        print(f"{args.name} runs on schedule {reply['schedule']!r}" if reply["schedule"]
              else f"{args.name} has no schedule")
    elif verb == "invocations":
        rows = api.get(f"/v1/functions/{urllib.parse.quote(args.name)}/invocations")
        if args.json:
            print_json(rows["invocations"])
            return
        for r in rows["invocations"]:
            print(f"{r['id']:26} {r['state']:7} attempts {r['attempts']}  {r['message']}")
    elif verb == "ticks":
        rows = api.get(f"/v1/functions/{urllib.parse.quote(args.name)}/ticks")["ticks"]
        if args.json:
            print_json(rows)
            return
        for r in rows:
            print(f"{r['tick']}  {r['state']:8} term {r['term']:<4} {r['node'][:12]}  "
                  f"{'ok' if r['ok'] else r['message']}")
    elif verb == "secret":
        if args.secret_command == "set":
            names = put_secrets(api, args.name, parse_secrets(args.pairs), [])
        elif args.secret_command == "rm":
            names = put_secrets(api, args.name, {}, list(args.keys))
        else:
            names = api.get(f"/v1/functions/{urllib.parse.quote(args.name)}/secrets"
                            )["secrets"]
        print(f"{args.name} secrets: {', '.join(names) if names else '(none)'}")
    elif verb == "key":
        path = f"/v1/functions/{urllib.parse.quote(args.name)}/keys"
        if args.revoke_all:
            reply = api.delete(path)
            print(f"every key of {args.name} revoked")
            return
        reply = api.post(path, {"replace": args.replace})
        print(reply["key"])
        print(f"(shown once; send it as `X-Fn-Key: KEY` with POST /fn/{args.name}; "
              f"{reply['keys']} key(s) open it)", file=sys.stderr)
    elif verb == "access":
        reply = api.post(f"/v1/functions/{urllib.parse.quote(args.name)}/access",
                         {"public": args.mode == "public"})
        print(f"POST /fn/{args.name} is " + ("public" if reply["public"] else
                                             f"private ({reply['keys']} key(s))"))
    elif verb == "rollback":
        reply = api.post(f"/v1/functions/{urllib.parse.quote(args.name)}/rollback",
                         {"to": args.to} if args.to is not None else {})
        print(f"{args.name} now runs version {reply['current']}")
    elif verb == "rm":
        reply = api.delete(f"/v1/functions/{urllib.parse.quote(args.name)}")
        print(f"removed function {args.name} ({reply['versions']} versions)")
    else:
        fns = api.get("/v1/functions")["functions"]
        if args.json:
            print_json(fns)
            return
        if not fns:
            print("no functions (`meshcloud fn deploy NAME DIR`)")
        for f in fns:
            cur = next(v for v in f["versions"] if v["version"] == f["current"])
            kept = ",".join(str(v["version"]) for v in f["versions"])
            what = cur["image"] or cur["handler"]
            print(f"{f['name']:20} v{f['current']:<4} {cur['runtime']} {what:16} "
                  f"timeout {cur['timeout_ms'] / 1000:g}s memory "
                  f"{cur['memory_bytes'] >> 20}M concurrency {cur['concurrency']} "
                  f"(kept: {kept})")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fn", help="functions: deploy code, invoke it on any node")
    fsub = p.add_subparsers(dest="fn_command", required=True)
    d = fsub.add_parser("deploy", help="upload a directory as a new version and switch to it")
    d.add_argument("name")
    d.add_argument("dir", nargs="?", help="the code (not with --image)")
    d.add_argument("--runtime", default="python", choices=["python"])
    d.add_argument("--image", help="any language: a container image serving POST / on $PORT "
                                   "(run by podman, one request per invocation)")
    d.add_argument("--handler", default="main:handle", help="module:function")
    d.add_argument("--env", action="append", metavar="K=V")
    d.add_argument("--public", action="store_true", default=None,
                   help="POST /fn/NAME needs no key (default: a key from `fn key`)")
    d.add_argument("--private", dest="public", action="store_false",
                   help="POST /fn/NAME needs a key again")
    d.add_argument("--secret", action="append", metavar="K=V",
                   help="a secret in the environment (encrypted in the mesh's state, "
                        "never shown); K=@FILE reads the value from a file")
    d.add_argument("--timeout", help="per invocation (default 30s)")
    d.add_argument("--memory", help="per instance (default 128M)")
    d.add_argument("--concurrency", type=int, help="instances per node (default 8)")
    d.add_argument("--idle", help="scale to zero after this idle time (default 5m)")
    d.add_argument("--schedule", metavar="CRON",
                   help='run on a cron schedule, seconds optional ("*/10 * * * * *")')
    d.add_argument("--on-object", action="append", metavar="created:BUCKET/PREFIX",
                   help="run on each object created (or deleted:) under a bucket prefix")
    d.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                   help="with a requirements.txt: how long to follow its install")
    d.add_argument("--no-wait", action="store_true",
                   help="do not follow the install of requirements.txt")
    sc = fsub.add_parser("schedule", help="run a function on a cron schedule (off: none)")
    sc.add_argument("name")
    sc.add_argument("cron", help='"*/10 * * * * *" (seconds first, optional) or off')
    tk = fsub.add_parser("ticks", help="the scheduled ticks recorded for a function")
    tk.add_argument("name")
    tk.add_argument("--json", action="store_true")
    i = fsub.add_parser("invoke", help="run a function once and print its result")
    i.add_argument("name")
    i.add_argument("--data", help="the event: text, @FILE, or @- for stdin")
    i.add_argument("--async", dest="async_", action="store_true",
                   help="queue it (run at least once, retried with back-off); prints its id")
    i.add_argument("--id", help="with --async: the invocation (dedup) id")
    iv = fsub.add_parser("invocations", help="its asynchronous invocations and their state")
    iv.add_argument("name")
    iv.add_argument("--json", action="store_true")
    lg = fsub.add_parser("logs", help="the tail of its log on every node that ran it")
    lg.add_argument("name")
    lg.add_argument("--lines", type=int, default=100)
    lg.add_argument("-f", "--follow", action="store_true",
                    help="keep printing new lines (Ctrl-C stops)")
    k = fsub.add_parser("key", help="a new key for POST /fn/NAME (printed once)")
    k.add_argument("name")
    k.add_argument("--replace", action="store_true", help="revoke the older keys")
    k.add_argument("--revoke-all", action="store_true", help="revoke every key")
    ac = fsub.add_parser("access", help="make POST /fn/NAME public or key-only")
    ac.add_argument("name")
    ac.add_argument("mode", choices=["public", "private"])
    se = fsub.add_parser("secret", help="a function's secrets (values are never shown)")
    ssub = se.add_subparsers(dest="secret_command", required=True)
    ss = ssub.add_parser("set", help="set secrets: NAME K=V [K=@FILE ...]")
    ss.add_argument("name")
    ss.add_argument("pairs", nargs="+", metavar="K=V")
    sr = ssub.add_parser("rm", help="remove secrets: NAME K [K ...]")
    sr.add_argument("name")
    sr.add_argument("keys", nargs="+", metavar="K")
    sl = ssub.add_parser("ls", help="the names of a function's secrets")
    sl.add_argument("name")
    r = fsub.add_parser("rollback", help="run an earlier version again")
    r.add_argument("name")
    r.add_argument("--to", type=int, metavar="VERSION")
    ls = fsub.add_parser("ls", help="functions and their versions")
    ls.add_argument("--json", action="store_true")
    rm = fsub.add_parser("rm", help="delete a function and all its versions")
    rm.add_argument("name")


EXTENSIONS.append(add_parsers)
__all__ = ["deploy", "invoke"]
