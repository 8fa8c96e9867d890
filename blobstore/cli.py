"""Storage verbs of the `meshcloud` CLI: buckets, objects, S3 keys.

They talk to the local agent's API (``/v1/storage/...``, :mod:`blobstore.api`) with the
data dir's token, like every other verb, so they need no S3 key and work as soon as the
agent runs. Uploads and downloads stream (a file is never read whole) with a progress bar.

::

    meshcloud bucket create photos [--code 4+2]
    meshcloud bucket ls
    meshcloud bucket rm photos
    meshcloud cp ./cat.jpg s3://photos/2024/cat.jpg
    meshcloud cp s3://photos/2024/cat.jpg ./copy.jpg
    meshcloud ls                       # buckets
    meshcloud ls s3://photos/2024/     # objects (one level, like `aws s3 ls`)
    meshcloud s3 key create laptop --bucket photos --allow read,write
"""

from __future__ import annotations

import argparse
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
"""Bytes read or written per step of a transfer (1 MiB)."""


def parse_s3_url(text: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty."""
    if not text.startswith("s3://"):
        raise MeshError(f"{text!r} is not an s3://bucket/key address")
    bucket, _, key = text[5:].partition("/")
    if not bucket:
        raise MeshError(f"{text!r} names no bucket")
    return bucket, key


def _object_path(bucket: str, key: str) -> str:
    return f"/v1/storage/objects/{urllib.parse.quote(bucket)}/{urllib.parse.quote(key)}"


def _progress() -> Any:
    """A rich progress bar on stderr (off when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress("[bold]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not sys.stderr.isatty())


@command("bucket")
def cmd_bucket(args: argparse.Namespace) -> None:
    api = client(args)
    if args.bucket_command == "create":
        reply = api.post("/v1/storage/buckets", {"name": args.name, "code": args.code or ""})
        print(f"created bucket {reply['name']} (code {reply['code']})")
    elif args.bucket_command == "rm":
        api.delete(f"/v1/storage/buckets/{urllib.parse.quote(args.name)}")
        print(f"deleted bucket {args.name}")
    else:
        buckets = api.get("/v1/storage/buckets")
        if args.json:
            print_json(buckets)
            return
        for bucket in buckets:
            print(f"{bucket['name']:40} code {bucket['code']}")


@command("ls")
def cmd_ls(args: argparse.Namespace) -> None:
    api = client(args)
    if not args.target:
        for bucket in api.get("/v1/storage/buckets"):
            print(f"{'':>12}  {'BUCKET':19}  {bucket['name']}/")
        return
    bucket, prefix = parse_s3_url(args.target)
    after = ""
    while True:
        query = {"prefix": prefix, "limit": "1000"}
        if not args.recursive:
            query["delimiter"] = "/"
        if after:
            query["after"] = after
        page = api.get(f"/v1/storage/objects/{urllib.parse.quote(bucket)}?"
                       + urllib.parse.urlencode(query))
        for common in page["prefixes"]:
            print(f"{'PRE':>12}  {'':19}  {common}")
        for obj in page["objects"]:
            from datetime import UTC, datetime

            when = datetime.fromtimestamp(obj["modified"] / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M:%S")
            print(f"{obj['size']:>12}  {when}  {obj['key']}")
        if not page["truncated"] or not page["next"]:
            return
        after = page["next"]


@command("cp")
def cmd_cp(args: argparse.Namespace) -> None:
    api = client(args)
    if args.src.startswith("s3://") and not args.dst.startswith("s3://"):
        download(api, *parse_s3_url(args.src), Path(args.dst))
    elif args.dst.startswith("s3://") and not args.src.startswith("s3://"):
        bucket, key = parse_s3_url(args.dst)
        src = Path(args.src)
        if not key or key.endswith("/"):
            key += src.name
        require_buckets(api, [bucket])
        upload(api, src, bucket, key)
    else:
        raise MeshError("cp copies between a local path and s3://bucket/key")


def require_buckets(api: Any, names: list[str]) -> None:
    """Refuse at once, in one line, names of buckets that do not exist."""
    have = {b["name"] for b in api.get("/v1/storage/buckets")}
    missing = [n for n in dict.fromkeys(names) if n not in have]
    if missing:
        raise MeshError(f"no bucket named {', '.join(repr(n) for n in missing)} (create it "
                        f"with `meshcloud bucket create {missing[0]}`; `meshcloud bucket ls` "
                        "lists them)", code="not_found")


def _check_granted_buckets(api: Any, buckets: dict[str, str], allow_create: bool) -> None:
    """A key's buckets must exist; with --allow-create a missing one is only noted."""
    named = [b for b in buckets if b != "*"]
    if named and not allow_create:
        require_buckets(api, named)
    elif named:
        have = {b["name"] for b in api.get("/v1/storage/buckets")}
        for name in named:
            if name not in have:
                print(f"note: bucket {name!r} does not exist yet; the key may create it",
                      file=sys.stderr)


def upload(api: Any, src: Path, bucket: str, key: str) -> dict[str, Any]:
    import json

    if not src.is_file():
        raise MeshError(f"{src} is not a file")
    size = src.stat().st_size
    progress = _progress()
    with progress, open(src, "rb") as fh:
        task = progress.add_task(f"{src.name} -> s3://{bucket}/{key}", total=size)

        def pieces() -> Iterator[bytes]:
            while piece := fh.read(PIECE):
                progress.advance(task, len(piece))
                yield piece

        request = api._request("PUT", _object_path(bucket, key))
        request.data = pieces()
        request.add_header("Content-Length", str(size))
        request.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                reply: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            from meshcloud.client import _api_error

            raise _api_error(exc) from None
        except (BrokenPipeError, ConnectionResetError):
            raise MeshError(f"the agent refused the upload to s3://{bucket}/{key} part way "
                            "(it closed the connection); see `meshcloud bucket ls` and the "
                            "agent's log", code="upload_failed") from None
    print(f"uploaded {size} bytes to s3://{bucket}/{key} (etag {reply['etag']})")
    return reply


def download(api: Any, bucket: str, key: str, dst: Path) -> None:
    if dst.is_dir():
        dst = dst / key.rsplit("/", 1)[-1]
    request = api._request("GET", _object_path(bucket, key))
    try:
        response = urllib.request.urlopen(request, timeout=300)
    except urllib.error.HTTPError as exc:
        from meshcloud.client import _api_error

        raise _api_error(exc) from None
    size = int(response.headers.get("content-length", "0") or 0)
    tmp = dst.with_name(f".{dst.name}.part")
    progress = _progress()
    got = 0
    with response, progress, open(tmp, "wb") as fh:
        task = progress.add_task(f"s3://{bucket}/{key} -> {dst}", total=size)
        while piece := response.read(PIECE):
            fh.write(piece)
            got += len(piece)
            progress.advance(task, len(piece))
    if got != size:
        tmp.unlink(missing_ok=True)
        raise MeshError(f"download of s3://{bucket}/{key} stopped at {got} of {size} bytes")
    os.replace(tmp, dst)
    print(f"downloaded {got} bytes to {dst}")


@command("s3")
def cmd_s3(args: argparse.Namespace) -> None:
    api = client(args)
    if args.s3_command != "key":
        raise MeshError("usage: meshcloud s3 key create|ls|rm|rotate")
    if args.key_command in ("create", "rotate"):
        if args.key_command == "rotate":
            path = f"/v1/storage/keys/{urllib.parse.quote(args.access_key)}/rotate"
            reply = api.post(path, {})
        else:
            buckets = {b: args.allow for b in (args.bucket or [])}
            _check_granted_buckets(api, buckets, args.allow_create)
            reply = api.post("/v1/storage/keys", {"name": args.name, "buckets": buckets,
                                                  "create_buckets": args.allow_create})
        print(f"access key id:     {reply['access_key']}")
        print(f"secret access key: {reply['secret']}")
        print("(the secret is shown this once; keep it somewhere safe)", file=sys.stderr)
        grants = ", ".join(f"{b}: {p}" for b, p in reply["buckets"].items()) or "none"
        print(f"grants: {grants}{'; may create buckets' if reply['create_buckets'] else ''}")
    elif args.key_command == "rm":
        api.delete(f"/v1/storage/keys/{urllib.parse.quote(args.access_key)}")
        print(f"deleted key {args.access_key}")
    else:
        for key in api.get("/v1/storage/keys"):
            grants = ", ".join(f"{b}: {p}" for b, p in key["buckets"].items()) or "none"
            print(f"{key['access_key']}  {key['name']:20} {grants}")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("bucket", help="create, list and delete buckets")
    bsub = p.add_subparsers(dest="bucket_command", required=True)
    c = bsub.add_parser("create", help="create a bucket")
    c.add_argument("name")
    c.add_argument("--code", help="erasure code: k+m (e.g. 4+2) or rN copies (default: "
                                  "automatic, 4+2 from six nodes)")
    ls = bsub.add_parser("ls", help="list buckets")
    ls.add_argument("--json", action="store_true")
    rm = bsub.add_parser("rm", help="delete an empty bucket")
    rm.add_argument("name")

    p = sub.add_parser("ls", help="list buckets, or objects under s3://bucket/prefix")
    p.add_argument("target", nargs="?", help="s3://bucket/prefix")
    p.add_argument("--recursive", "-r", action="store_true", help="all keys, not one level")

    p = sub.add_parser("cp", help="copy a file to or from s3://bucket/key")
    p.add_argument("src")
    p.add_argument("dst")

    p = sub.add_parser("s3", help="S3 access keys")
    ssub = p.add_subparsers(dest="s3_command", required=True)
    k = ssub.add_parser("key", help="create, list and delete S3 access keys")
    ksub = k.add_subparsers(dest="key_command", required=True)
    kc = ksub.add_parser("create", help="create a key (prints its secret once)")
    kc.add_argument("name")
    kc.add_argument("--bucket", action="append", metavar="B",
                    help="grant on this bucket (repeatable; * means every bucket)")
    kc.add_argument("--allow", default="read,write", help="read, write or read,write")
    kc.add_argument("--allow-create", action="store_true",
                    help="may also create buckets through S3")
    ksub.add_parser("ls", help="list keys (no secrets)")
    kr = ksub.add_parser("rm", help="delete a key")
    kr.add_argument("access_key")
    kt = ksub.add_parser("rotate", help="a new secret for a key (the old one stops working)")
    kt.add_argument("access_key")


EXTENSIONS.append(add_parsers)
