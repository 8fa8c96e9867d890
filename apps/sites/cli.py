"""CLI verbs of the sites service: ``meshcloud site deploy|rollback|ls|rm|cert|ca``.

Registered with :mod:`meshcloud.kit.cli` (``EXTENSIONS`` and ``COMMANDS``) when imported."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshcloud.errors import MeshError
from meshcloud.kit.cli import EXTENSIONS, client, command, print_json

PIECE = 1 << 20
UPLOADS = 4
"""Files uploaded at once."""
SKIP_DIRS = {".git", ".hg", ".svn"}


def scan_tree(root: Path) -> list[tuple[str, Path, int, str]]:
    """Every regular file under ``root`` as (site path, file, size, sha256), sorted; a
    name the site cannot serve is one clear error before anything is uploaded."""
    from apps.sites.manifest import MAX_FILES, SiteError, check_path

    if not root.is_dir():
        raise SiteError(f"{root} is not a directory")
    out: list[tuple[str, Path, int, str]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            file = Path(folder) / name
            if not file.is_file():
                continue
            rel = file.relative_to(root).as_posix()
            check_path(rel)
            h = hashlib.sha256()
            size = 0
            with open(file, "rb") as fh:
                while piece := fh.read(PIECE):
                    h.update(piece)
                    size += len(piece)
            out.append((rel, file, size, h.hexdigest()))
            if len(out) > MAX_FILES:
                raise SiteError(f"{root} has more than {MAX_FILES} files")
    if not out:
        raise SiteError(f"{root} holds no files")
    return sorted(out)


def put_file(api: Any, site: str, file: Path, size: int, digest: str,
             advance: Any) -> None:
    with open(file, "rb") as fh:
        def pieces() -> Iterator[bytes]:
            while piece := fh.read(PIECE):
                advance(len(piece))
                yield piece

        path = f"/v1/sites/{urllib.parse.quote(site)}/files/{digest}"
        request = api._request("PUT", path)
        request.data = pieces() if size else b""
        request.add_header("Content-Length", str(size))
        request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                json.loads(response.read())
        except urllib.error.HTTPError as exc:
            from meshcloud.client import _api_error

            raise _api_error(exc) from None
        except (BrokenPipeError, ConnectionResetError):
            raise MeshError(f"the agent closed the connection while {file} was uploading; "
                            "see its log", code="upload_failed") from None


def deploy(api: Any, root: Path, name: str, domains: list[str] | None, spa: bool | None,
           max_age: int | None, out: Any = sys.stdout) -> dict[str, Any]:
    from blobstore.cli import _progress

    files = scan_tree(root)
    listing = [{"path": p, "size": s, "sha256": d} for p, _, s, d in files]
    site = urllib.parse.quote(name)
    missing = set(api.post(f"/v1/sites/{site}/missing", {"files": listing})["missing"])
    todo: dict[str, tuple[Path, int]] = {}
    for _, file, size, digest in files:
        if digest in missing:
            todo.setdefault(digest, (file, size))
    total = sum(size for _, size in todo.values())
    print(f"{name}: {len(files)} files, {len(todo)} to upload ({total} bytes), "
          f"{len(files) - len(todo)} unchanged", file=out, flush=True)
    from concurrent.futures import ThreadPoolExecutor  # the agent loads this module too

    progress = _progress()
    order = sorted(todo.items())
    with progress, ThreadPoolExecutor(UPLOADS) as pool:
        task = progress.add_task(f"uploading {name}", total=total or 1)

        def one(item: tuple[str, tuple[Path, int]]) -> Path:
            digest, (file, size) = item
            put_file(api, name, file, size, digest, lambda n: progress.advance(task, n))
            return file

        for done, file in enumerate(pool.map(one, order), 1):
            if not sys.stderr.isatty():
                print(f"  [{done}/{len(todo)}] {file.relative_to(root).as_posix()}",
                      file=out, flush=True)
    body: dict[str, Any] = {"files": listing}
    if domains:
        body["domains"] = domains
    if spa is not None:
        body["spa"] = spa
    if max_age is not None:
        body["max_age"] = max_age
    reply: dict[str, Any] = api.post(f"/v1/sites/{site}/versions", body)
    print(f"deployed {name} version {reply['current']} ({reply['files']} files, "
          f"{reply['size']} bytes): http://{reply['domains'][0]}/ on every node's ingress",
          file=out)
    return reply


@command("site")
def cmd_site(args: argparse.Namespace) -> None:
    api = client(args)
    verb = args.site_command
    if verb == "deploy":
        spa = True if args.spa else False if args.no_spa else None
        deploy(api, Path(args.dir), args.name, args.domain, spa, args.max_age)
    elif verb == "rollback":
        reply = api.post(f"/v1/sites/{urllib.parse.quote(args.name)}/rollback",
                         {"to": args.to} if args.to is not None else {})
        print(f"{args.name} now serves version {reply['current']}")
    elif verb == "cert":
        reply = api.post("/v1/ingress/certs", {"domain": args.domain, "days": args.days})
        print(f"certificate for {reply['host']} issued by the mesh CA (serial "
              f"{reply['serial']}, sealed to {reply['nodes']} nodes); every node's HTTPS "
              f"ingress serves it within seconds")
    elif verb == "ca":
        sys.stdout.write(api.get("/v1/ingress/ca")["pem"])
    elif verb == "rm":
        reply = api.delete(f"/v1/sites/{urllib.parse.quote(args.name)}")
        print(f"removed site {args.name} ({reply['versions']} versions, "
              f"{reply['objects']} objects)")
    else:
        sites = api.get("/v1/sites")["sites"]
        if args.json:
            print_json(sites)
            return
        if not sites:
            print("no sites (`meshcloud site deploy DIR --name NAME --domain HOST`)")
        for s in sites:
            kept = ",".join(str(v["version"]) for v in s["versions"])
            stats = s["stats"]
            print(f"{s['name']:20} v{s['current']:<4} {s['files']:>5} files "
                  f"{s['size']:>10} B  {' '.join(s['domains'])}  (kept: {kept}; "
                  f"{stats['requests']} requests, {stats['not_found']} not found, "
                  f"{stats['errors']} errors){'  spa' if s['spa'] else ''}")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("site", help="static sites served by every node's ingress")
    ssub = p.add_subparsers(dest="site_command", required=True)
    d = ssub.add_parser("deploy", help="upload a directory as a new version and switch to "
                                       "it on every node")
    d.add_argument("dir", help="the directory to publish (index.html, 404.html, ...)")
    d.add_argument("--name", required=True, help="site name (lowercase letters, digits, -)")
    d.add_argument("--domain", action="append", metavar="HOST",
                   help="host name to serve it on (repeatable; required the first time)")
    spa = d.add_mutually_exclusive_group()
    spa.add_argument("--spa", action="store_true",
                     help="single-page app: unknown page paths serve /index.html")
    spa.add_argument("--no-spa", action="store_true", help="turn the SPA fallback off")
    d.add_argument("--max-age", type=int, help="Cache-Control max-age of non-HTML files "
                                               "(seconds, default 300)")
    r = ssub.add_parser("rollback", help="serve an earlier version again")
    r.add_argument("name")
    r.add_argument("--to", type=int, metavar="VERSION",
                   help="the version (default: the one before the current)")
    ls = ssub.add_parser("ls", help="sites, their versions, domains and request counts")
    ls.add_argument("--json", action="store_true")
    c = ssub.add_parser("cert", help="issue a certificate for DOMAIN from the mesh CA "
                                     "(admin node); every node's HTTPS ingress serves it")
    c.add_argument("domain")
    c.add_argument("--days", type=int, default=None, help="validity (default 397)")
    ssub.add_parser("ca", help="print the mesh CA certificate (PEM) for clients to trust")
    rm = ssub.add_parser("rm", help="delete a site and all its versions")
    rm.add_argument("name")


EXTENSIONS.append(add_parsers)
