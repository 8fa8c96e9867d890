"""The Storage pages: buckets, objects by prefix, one object's shards, access keys, health.

Pages read the node's :class:`~blobstore.node_service.BlobService` directly (the same
calls the ``/v1/storage`` API makes); every change goes through that API from the
browser: buckets and keys are JSON posts, an upload is an ``XMLHttpRequest`` PUT of the
file's bytes to ``/v1/storage/objects/BUCKET/KEY`` (streamed to the agent, which streams
it into shards; ``upload.onprogress`` drives the progress bar), a download is a link to
the same path. An access key's secret is in the create reply only, shown once by the
page and never rendered by the server.

=========================================  ===============================================
``/ui/storage``                            buckets (create, open)
``/ui/storage/b/{bucket}?prefix=&after=``  one level of a bucket: folders, objects, upload
``/ui/storage/o/{bucket}/{key}``           one object: size, type, code, shard placement
``/ui/storage/keys``                       S3 access keys
``/ui/storage/health``                     this node's store, repair / scrub / GC workers
=========================================  ===============================================

Fragments under ``/ui/frag/storage/...`` re-render the live parts on ``object.*``,
``repair.*``, ``scrub.*``, ``gc.*`` and ``member.*`` events.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from blobstore.node_service import BlobService
    from meshcloud.kit.ui import UiKit

TEMPLATES = Path(__file__).parent / "templates"

PAGE_SIZE = 200
"""Objects and folders per page of a bucket listing."""
CODES = (("", "automatic"), ("r2", "2 copies"), ("r3", "3 copies"), ("2+1", "2+1 erasure"),
         ("4+2", "4+2 erasure"))
RECENT_REPAIRS = 20


class StorageUnavailable(Exception):
    pass


def code_text(code: Any) -> str:
    """An erasure code as people read it: ``3 copies`` or ``4+2``."""
    scheme = getattr(getattr(code, "scheme", None), "name", "")
    if scheme == "REPLICATION":
        return f"{code.m + 1} copies"
    return f"{code.k}+{code.m}"


def crumbs(bucket: str, prefix: str) -> list[dict[str, str]]:
    """Breadcrumbs for a prefix: the bucket, then each folder down to ``prefix``."""
    out = [{"label": bucket, "prefix": ""}]
    so_far = ""
    for part in [p for p in prefix.split("/") if p]:
        so_far += part + "/"
        out.append({"label": part, "prefix": so_far})
    return out


def parse_after(text: str) -> Any:
    """The ``after`` query parameter (``k:KEY`` or ``p:PREFIX``) as a listing position."""
    from blobstore.s3.listing import After, Position

    if text[:2] == "k:":
        return Position(After.KEY, text[2:])
    if text[:2] == "p:":
        return Position(After.PREFIX, text[2:])
    return None


def layout_view(layout: dict[str, Any]) -> dict[str, Any]:
    """An object's layout with per-chunk counts for the shard map."""
    n = layout["k"] + layout["m"]
    chunks = []
    for chunk in layout["chunks"]:
        live = sum(1 for s in chunk["shards"] if s["live"])
        chunks.append({**chunk, "live": live, "n": n,
                       "state": "ok" if chunk["ok"] else
                       "lost" if live < layout["k"] else "degraded"})
    nodes: dict[str, dict[str, Any]] = {}
    for chunk in layout["chunks"]:
        for shard in chunk["shards"]:
            entry = nodes.setdefault(shard["node"], {"node": shard["node"], "shards": 0,
                                                     "live": shard["live"]})
            entry["shards"] += 1
            entry["live"] = entry["live"] and shard["live"]
    worst = "ok"
    for chunk in chunks:
        if chunk["state"] == "lost":
            worst = "lost"
        elif chunk["state"] == "degraded" and worst == "ok":
            worst = "degraded"
    return {**layout, "chunk_views": chunks, "holders": sorted(nodes.values(),
                                                               key=lambda e: e["node"]),
            "health": worst, "n": n}


def routes(ui: UiKit) -> list[Route]:
    ui.use_templates(TEMPLATES)
    render = ui.render

    def service() -> BlobService:
        found = ui.service("storage")
        if found is None or found.objects is None:
            raise StorageUnavailable()
        return found  # type: ignore[no-any-return]

    def unavailable(page: str) -> Response:
        return render("storage_unavailable.html", status_code=503,
                      **ui.base("storage", "Storage"), tab=page)

    def frag_unavailable() -> Response:
        return render("_unavailable.html", status_code=503,
                      text="Storage is still starting on this node.")

    def bucket_rows() -> list[dict[str, Any]]:
        store = service().objects
        rows = []
        for name, record in sorted(store.buckets()):
            rows.append({"name": name, "created": record.created_ms,
                         "code": record.code or "auto",
                         "code_now": code_text(store.code_for(record))})
        return rows

    async def buckets_page(request: Request) -> Response:
        try:
            rows = bucket_rows()
        except StorageUnavailable:
            return unavailable("buckets")
        return render("storage.html", **ui.base("storage", "Storage"), tab="buckets",
                      buckets=rows, codes=CODES)

    async def buckets_fragment(request: Request) -> Response:
        try:
            return render("_buckets.html", buckets=bucket_rows())
        except StorageUnavailable:
            return frag_unavailable()

    async def listing(bucket: str, prefix: str, after: str) -> dict[str, Any]:
        from blobstore.bucketlist import list_bucket
        from blobstore.s3.errors import S3Error

        store = service().objects
        try:
            record = store.bucket(bucket)
            page = await list_bucket(store.index, record.bucket_id, prefix=prefix,
                                     delimiter="/", max_keys=PAGE_SIZE,
                                     after=parse_after(after))
        except S3Error as exc:
            return {"bucket": bucket, "missing": exc.message or exc.code, "prefix": prefix}
        folders = [{"prefix": p, "name": p[len(prefix):]} for p in page.common_prefixes]
        objects = [{"key": k, "name": k[len(prefix):], "size": e.size, "etag": e.etag,
                    "modified": int(e.last_modified * 1000),
                    "basename": posixpath.basename(k) or "object"}
                   for k, e in page.contents]
        next_after = None
        if page.is_truncated and page.last is not None:
            next_after = f"{page.last.kind.value}:{page.last.value}"
        return {"bucket": bucket, "prefix": prefix, "folders": folders, "objects": objects,
                "next_after": next_after, "after": after, "crumbs": crumbs(bucket, prefix),
                "code": record.code or "auto", "code_now": code_text(store.code_for(record))}

    async def bucket_page(request: Request) -> Response:
        bucket = request.path_params["bucket"]
        q = request.query_params
        try:
            view = await listing(bucket, q.get("prefix", ""), q.get("after", ""))
        except StorageUnavailable:
            return unavailable("buckets")
        status = 404 if view.get("missing") else 200
        return render("bucket.html", status_code=status,
                      **ui.base("storage", f"{bucket} · Storage"), tab="buckets", **view)

    async def bucket_fragment(request: Request) -> Response:
        q = request.query_params
        try:
            view = await listing(request.path_params["bucket"], q.get("prefix", ""),
                                 q.get("after", ""))
        except StorageUnavailable:
            return frag_unavailable()
        return render("_objects.html", **view)

    async def object_page(request: Request) -> Response:
        from blobstore.api import object_layout
        from blobstore.s3.errors import S3Error

        bucket, key = request.path_params["bucket"], request.path_params["key"]
        base = ui.base("storage", f"{posixpath.basename(key) or key} · Storage")
        try:
            blob = service()
            record = await blob.objects.head(bucket, key)
        except StorageUnavailable:
            return unavailable("buckets")
        except S3Error as exc:
            return render("object.html", status_code=404, **base, tab="buckets",
                          bucket=bucket, key=key, missing=exc.message or exc.code,
                          crumbs=crumbs(bucket, posixpath.dirname(key) + "/"
                                        if "/" in key else ""))
        layout = layout_view(object_layout(record, blob.alive()))
        return render("object.html", **base, tab="buckets", bucket=bucket, key=key,
                      basename=posixpath.basename(key) or "object",
                      record=record, layout=layout, metadata=dict(record.metadata),
                      crumbs=crumbs(bucket, key.rpartition("/")[0] + "/"
                                    if "/" in key else ""))

    def key_rows() -> list[dict[str, Any]]:
        from blobstore.records import S3KEYS

        rows = []
        for key, record in service().node.state.scan(S3KEYS.name):
            if record is None:
                continue
            rows.append({"access_key": key[0], "name": record.name,
                         "buckets": dict(record.buckets), "created": record.created_ms,
                         "create_buckets": record.create_buckets})
        return sorted(rows, key=lambda r: r["created"] or 0, reverse=True)

    async def keys_page(request: Request) -> Response:
        try:
            rows = key_rows()
            buckets = [name for name, _ in sorted(service().objects.buckets())]
        except StorageUnavailable:
            return unavailable("keys")
        return render("keys.html", **ui.base("storage", "Access keys · Storage"), tab="keys",
                      keys=rows, buckets=buckets)

    async def keys_fragment(request: Request) -> Response:
        try:
            return render("_keys.html", keys=key_rows())
        except StorageUnavailable:
            return frag_unavailable()

    def health_view() -> dict[str, Any]:
        blob = service()
        status = blob.status()
        events = [e for e in reversed(ui.node.events.recent(400))
                  if e["kind"].split(".")[0] in ("repair", "scrub", "gc")][:RECENT_REPAIRS]
        live = len(blob.alive())
        from blobstore.erasure import choose_code

        return {"status": status, "repair": status.get("repair") or {},
                "scrub": status.get("scrub") or {}, "gc": status.get("gc") or {},
                "live": live, "auto_code": code_text(choose_code(max(1, live))),
                "events": events}

    async def health_page(request: Request) -> Response:
        try:
            view = health_view()
        except StorageUnavailable:
            return unavailable("health")
        return render("storage_health.html", **ui.base("storage", "Health · Storage"),
                      tab="health", **view)

    async def health_fragment(request: Request) -> Response:
        try:
            return render("_storage_health.html", **health_view())
        except StorageUnavailable:
            return frag_unavailable()

    return [
        Route("/ui/storage", buckets_page),
        Route("/ui/frag/storage/buckets", buckets_fragment),
        Route("/ui/storage/b/{bucket}", bucket_page),
        Route("/ui/frag/storage/b/{bucket}", bucket_fragment),
        Route("/ui/storage/o/{bucket}/{key:path}", object_page),
        Route("/ui/storage/keys", keys_page),
        Route("/ui/frag/storage/keys", keys_fragment),
        Route("/ui/storage/health", health_page),
        Route("/ui/frag/storage/health", health_fragment),
    ]
