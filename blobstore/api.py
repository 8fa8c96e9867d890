"""The agent API's storage routes (``/v1/storage/...``): what the CLI and tests use.

Token-protected like the rest of the API (loopback, bearer token). Bodies of object
uploads and downloads stream; nothing holds a whole object.

=======  ===========================================  ======================================
method   path                                         what
=======  ===========================================  ======================================
GET      /v1/storage/buckets                          buckets
POST     /v1/storage/buckets                          create ``{"name", "code"}``
DELETE   /v1/storage/buckets/{bucket}                 delete (must be empty)
GET      /v1/storage/objects/{bucket}                 list (``prefix``, ``delimiter``,
                                                      ``after``, ``limit``)
PUT      /v1/storage/objects/{bucket}/{key}           upload the request body
GET      /v1/storage/objects/{bucket}/{key}           download
DELETE   /v1/storage/objects/{bucket}/{key}           delete
GET      /v1/storage/layout/{bucket}                  every object's chunks and holders, and
                                                      whether each chunk has k+m shards on
                                                      k+m distinct live nodes; each
                                                      object's target code and whether it
                                                      is at target (``below_target``: how
                                                      many are not)
GET      /v1/storage/layout/{bucket}/{key}            the same for one object (the UI's
                                                      object page)
POST     /v1/storage/keys                             create an S3 key; the secret is shown
                                                      in this reply only
GET      /v1/storage/keys                             keys (no secrets)
DELETE   /v1/storage/keys/{access_key}                delete a key
=======  ===========================================  ======================================
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from blobstore.bucketlist import list_bucket
from blobstore.erasure import ErasureCode
from blobstore.layout import better, code_key, code_text, goal_code, manifest_code
from blobstore.records import S3KEYS, AccessKeyRecord, ObjectRecord, Permission
from blobstore.s3.errors import S3Error
from blobstore.s3.listing import After, Position
from blobstore.s3.names import validate_bucket_name, validate_key
from meshcloud.errors import MeshError, NotFoundError

if TYPE_CHECKING:
    from blobstore.node_service import BlobService

ACCESS_KEY_PREFIX = "MC"
MAX_KEY_NAME = 64


def new_access_key() -> tuple[str, str]:
    """(access key id, secret): 20 upper-case characters like AWS's, 40-character secret."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key_id = ACCESS_KEY_PREFIX + "".join(secrets.choice(alphabet) for _ in range(18))
    return key_id, secrets.token_urlsafe(30)[:40]


def object_json(record: ObjectRecord) -> dict[str, Any]:
    return {"key": record.key, "size": record.size, "etag": record.etag,
            "content_type": record.content_type, "modified": record.modified_ms,
            "metadata": record.metadata}


def _s3(exc: S3Error) -> MeshError:
    status = exc.status
    code = "not_found" if status == 404 else "conflict" if status == 409 else "bad_request"
    error = NotFoundError(f"{exc.code}: {exc.message}") if status == 404 else \
        MeshError(f"{exc.code}: {exc.message}", code=code)
    return error


def storage_routes(service: BlobService) -> list[Route]:
    def store() -> Any:
        if service.objects is None:
            raise MeshError("storage is starting", code="unavailable")
        return service.objects

    async def json_body(request: Request) -> dict[str, Any]:
        from meshcloud.kit.api import read_json

        return await read_json(request)

    async def buckets(request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            name = str(body.get("name", ""))
            try:
                record = await store().create_bucket(name, code=str(body.get("code") or ""))
            except S3Error as exc:
                raise _s3(exc) from None
            return JSONResponse({"name": name, "id": record.bucket_id.hex(),
                                 "code": record.code or "auto"})
        return JSONResponse([{"name": n, "id": r.bucket_id.hex(), "created": r.created_ms,
                              "code": r.code or "auto"} for n, r in store().buckets()])

    async def bucket(request: Request) -> Response:
        try:
            await store().delete_bucket(request.path_params["bucket"])
        except S3Error as exc:
            raise _s3(exc) from None
        return JSONResponse({"deleted": request.path_params["bucket"]})

    async def listing(request: Request) -> Response:
        from meshcloud.kit.api import query_int

        q = request.query_params
        try:
            name = validate_bucket_name(request.path_params["bucket"])
            bucket_id = store().bucket(name).bucket_id
            after = Position(After.KEY, q["after"]) if q.get("after") else None
            page = await list_bucket(store().index, bucket_id, prefix=q.get("prefix", ""),
                                     delimiter=q.get("delimiter") or None,
                                     max_keys=query_int(request, "limit", 1000,
                                                        minimum=1, maximum=1000),
                                     after=after)
        except S3Error as exc:
            raise _s3(exc) from None
        return JSONResponse({
            "objects": [{"key": k, "size": e.size, "etag": e.etag,
                         "modified": int(e.last_modified * 1000)} for k, e in page.contents],
            "prefixes": page.common_prefixes, "truncated": page.is_truncated,
            "next": page.last.value if page.last is not None else None})

    async def obj(request: Request) -> Response:
        bucket_name = request.path_params["bucket"]
        try:
            key = validate_key(request.path_params["key"])
            if request.method == "PUT":
                async def body() -> AsyncIterator[bytes]:
                    async for piece in request.stream():
                        if piece:
                            yield piece

                length = request.headers.get("content-length", "")
                record = await store().put(
                    bucket_name, key, body(),
                    content_type=request.headers.get("content-type", "binary/octet-stream"),
                    size_hint=int(length) if length.isascii() and length.isdigit() else None)
                return JSONResponse(object_json(record))
            if request.method == "DELETE":
                await store().delete(bucket_name, key)
                return JSONResponse({"deleted": key})
            record = await store().head(bucket_name, key)
        except S3Error as exc:
            raise _s3(exc) from None
        return StreamingResponse(store().read(record), media_type=record.content_type,
                                 headers={"content-length": str(record.size),
                                          "etag": f'"{record.etag}"'})

    def goal(name: str) -> ErasureCode:
        return goal_code(store().explicit_code(store().bucket(name)), service.mesh_size())

    async def layout(request: Request) -> Response:
        name = request.path_params["bucket"]
        live = service.alive()
        out = []
        try:
            bucket_id = store().bucket(name).bucket_id
            target = goal(name)
            after = None
            while True:
                page = await list_bucket(store().index, bucket_id, after=after)
                for key, _ in page.contents:
                    record = await store().head(name, key)
                    out.append(object_layout(record, live, target))
                if not page.is_truncated or page.last is None:
                    break
                after = page.last
        except S3Error as exc:
            raise _s3(exc) from None
        return JSONResponse({"live": sorted(n.hex() for n in live), "objects": out,
                             "complete": all(o["complete"] for o in out),
                             "mesh_size": service.mesh_size(),
                             "target": code_text(code_key(target)),
                             "below_target": sum(not o["at_target"] for o in out)})

    async def object_layout_route(request: Request) -> Response:
        try:
            key = validate_key(request.path_params["key"])
            record = await store().head(request.path_params["bucket"], key)
            target = goal(request.path_params["bucket"])
        except S3Error as exc:
            raise _s3(exc) from None
        live = service.alive()
        return JSONResponse({"live": sorted(n.hex() for n in live),
                             **object_layout(record, live, target)})

    async def keys(request: Request) -> Response:
        if request.method == "POST":
            body = await json_body(request)
            name = str(body.get("name") or "")[:MAX_KEY_NAME]
            grants = body.get("buckets") or {}
            if not name or not isinstance(grants, dict):
                raise MeshError("a key needs a name; buckets is {bucket: 'read,write'}",
                                code="bad_request")
            clean: dict[str, str] = {}
            for bucket_name, perms in grants.items():
                if bucket_name != "*":
                    validate_bucket_name(str(bucket_name))
                wanted = [p.strip() for p in str(perms).split(",") if p.strip()]
                if not wanted or any(p not in Permission.ALL for p in wanted):
                    raise MeshError(f"permissions are read and/or write, not {perms!r}",
                                    code="bad_request")
                clean[str(bucket_name)] = ",".join(sorted(set(wanted)))
            key_id, secret = new_access_key()
            record = AccessKeyRecord(name=name, secret=secret,
                                     created_ms=service.node.clock.wall_ms(), buckets=clean,
                                     create_buckets=bool(body.get("create_buckets")),
                                     creator=service.node.node_id)
            await service.index.put_everywhere(S3KEYS.name, (key_id,), record)
            return JSONResponse({"access_key": key_id, "secret": secret, "name": name,
                                 "buckets": clean, "create_buckets": record.create_buckets})
        rows = service.node.state.scan(S3KEYS.name)
        return JSONResponse([{"access_key": k[0], "name": r.name, "buckets": r.buckets,
                              "create_buckets": r.create_buckets, "created": r.created_ms}
                             for k, r in rows])

    async def key(request: Request) -> Response:
        key_id = request.path_params["access_key"]
        if service.node.state.get(S3KEYS.name, key_id) is None:
            raise NotFoundError(f"no S3 key {key_id}")
        await service.index.put_everywhere(S3KEYS.name, (key_id,), None)
        return JSONResponse({"deleted": key_id})

    async def rotate_key(request: Request) -> Response:
        """A new secret for the same access key id and grants: the old one stops working
        on every node as soon as the row arrives."""
        key_id = request.path_params["access_key"]
        record = service.node.state.get(S3KEYS.name, key_id)
        if record is None:
            raise NotFoundError(f"no S3 key {key_id}")
        _, secret = new_access_key()
        fresh = dataclasses.replace(record, secret=secret,
                                    created_ms=service.node.clock.wall_ms(),
                                    creator=service.node.node_id)
        await service.index.put_everywhere(S3KEYS.name, (key_id,), fresh)
        return JSONResponse({"access_key": key_id, "secret": secret, "name": record.name,
                             "buckets": record.buckets,
                             "create_buckets": record.create_buckets})

    return [
        Route("/v1/storage/buckets", buckets, methods=["GET", "POST"]),
        Route("/v1/storage/buckets/{bucket}", bucket, methods=["DELETE"]),
        Route("/v1/storage/objects/{bucket}", listing, methods=["GET"]),
        Route("/v1/storage/objects/{bucket}/{key:path}", obj, methods=["GET", "PUT", "DELETE"]),
        Route("/v1/storage/layout/{bucket}", layout, methods=["GET"]),
        Route("/v1/storage/layout/{bucket}/{key:path}", object_layout_route,
              methods=["GET"]),
        Route("/v1/storage/keys", keys, methods=["GET", "POST"]),
        Route("/v1/storage/keys/{access_key}", key, methods=["DELETE"]),
        Route("/v1/storage/keys/{access_key}/rotate", rotate_key, methods=["POST"]),
    ]


def object_layout(record: ObjectRecord, live: frozenset[bytes],
                  target: ErasureCode | None = None) -> dict[str, Any]:
    """Where an object's shards are, and whether each chunk has its k+m shards on k+m
    distinct live nodes (``ok``). A small object kept inline in its index record has no
    chunks (``inline``): the index's replicas are its copies. With ``target`` (the code
    the object should have, :mod:`blobstore.layout`): ``target`` as text and
    ``at_target`` (that code or one at least as good, and complete)."""
    manifest = record.manifest
    chunks = []
    complete = True
    for chunk in manifest.chunks:
        nodes = [s.node for s in chunk.shards]
        on_live = {n for n in nodes if n in live}
        ok = len(chunk.shards) == manifest.n and len(on_live) == manifest.n \
            and len(set(nodes)) == manifest.n
        complete = complete and ok
        chunks.append({"index": chunk.index, "shards": [
            {"index": s.index, "node": s.node.hex(), "live": s.node in live}
            for s in chunk.shards], "ok": ok})
    out = {"key": record.key, "size": record.size, "k": manifest.k, "m": manifest.m,
           "scheme": manifest.scheme.name.lower(), "chunks": chunks, "complete": complete,
           "inline": record.inline is not None, "code": code_text(manifest_code(manifest))}
    if target is not None:
        inline = record.inline is not None or not manifest.chunks
        out["target"] = code_text(code_key(target))
        out["at_target"] = inline or (
            complete and not better(code_key(target), manifest_code(manifest)))
    return out
