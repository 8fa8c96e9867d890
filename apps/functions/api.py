"""JSON API of the functions service (mounted by the node under the same token check).

=======  ====================================  ==========================================
method   path                                  what
=======  ====================================  ==========================================
GET      /v1/functions                         every function and its kept versions
GET      /v1/functions/{name}                  one function
HEAD     /v1/functions/bundles/{sha256}        200 when that bundle is stored, else 404
PUT      /v1/functions/bundles/{sha256}        a bundle (tar) by its SHA-256
POST     /v1/functions/{name}/versions         ``{"sha256", "handler", "runtime", "env",
                                               "timeout", "memory", "concurrency",
                                               "idle"}``: a new version, current at once
POST     /v1/functions/{name}/invoke           with ``X-Invocation-Type: Event``: queued,
                                               202 ``{"invocation_id"}`` (optional
                                               ``X-Invocation-Id``: the dedup id)
GET      /v1/functions/{name}/invocations      the asynchronous invocations (last 50)
POST     /v1/functions/{name}/schedule         ``{"schedule": CRON}`` (``""``: none)
GET      /v1/functions/{name}/ticks            the scheduled ticks recorded (last 50)
POST     /v1/functions/{name}/rollback         ``{"to": N}`` (default: the one before)
GET      /v1/functions/{name}/logs?lines=N  ``{"nodes": {node: text}, "offsets": {node:
         [&request_id=ID]                      end}}``: the tail of its log on every live
         [&offsets=NODE:N,...]                 node (``request_id``: that invocation's
                                               lines; ``offsets``: what each log holds
                                               past them, for ``fn logs -f``)
POST     /v1/functions/{name}/zip?handler=H    a zip archive as a new version (the page's
         [&runtime=&memory=&timeout=&...]      upload): converted to a bundle, stored,
                                               current at once
POST     /v1/functions/{name}/invoke           the body is the event; the reply is the
                                               handler's result (or an error JSON)
GET      /v1/functions/{name}/secrets          ``{"secrets": [NAME]}``: names only
POST     /v1/functions/{name}/secrets          ``{"set": {NAME: value}, "remove": [NAME]}``
                                               (a name may get secrets before its deploy)
POST     /v1/functions/{name}/keys             ``{"replace": bool}``: a new key for ``POST
                                               /fn/NAME`` (in the reply only; 4 kept)
DELETE   /v1/functions/{name}/keys             revoke every key
POST     /v1/functions/{name}/access           ``{"public": bool}``
DELETE   /v1/functions/{name}                  the function, its secrets, unused bundles

A function's JSON carries ``stats`` (invocations, errors, cold starts, p50/p99 duration,
instances per node, recent invocations) summed over every node's ``fn_stats`` row. A
synchronous invocation's reply has headers ``X-Fn-Request-Id``, ``X-Fn-Node``,
``X-Fn-Cold`` and ``X-Fn-Duration-Ms`` (measured by the node that took the call).
=======  ====================================  ==========================================
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apps.functions.core import MAX_PAYLOAD, FunctionError, check_name
from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from apps.functions.service import FunctionService


def routes(fns: FunctionService) -> list[Route]:
    from apps.functions.service import HTTP_STATUS
    from meshcloud.kit.api import read_json

    async def listing(request: Request) -> Response:
        return JSONResponse({"functions": fns.overview()})

    async def one(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            return JSONResponse(await fns.remove(name))
        return JSONResponse(fns.describe(fns.get(name)))

    async def bundle(request: Request) -> Response:
        digest = request.path_params["sha256"]
        if request.method == "HEAD":
            size = await fns.bundle_size(digest)
            return Response(status_code=404 if size is None else 200)
        length = request.headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            raise FunctionError("a bundle upload needs a Content-Length")

        async def body() -> AsyncIterator[bytes]:
            async for piece in request.stream():
                if piece:
                    yield piece

        size = await fns.upload(digest, int(length), body())
        return JSONResponse({"stored": digest, "size": size}, status_code=201)

    async def versions(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await fns.commit(request.path_params["name"], body),
                            status_code=201)

    async def rollback(request: Request) -> Response:
        body = await read_json(request)
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
            raise MeshError("to must be a version number", code="bad_request")
        return JSONResponse(await fns.rollback(request.path_params["name"], to))

    async def invoke(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        payload = bytearray()
        async for piece in request.stream():
            payload += piece
            if len(payload) > MAX_PAYLOAD:
                raise FunctionError(f"a payload is at most {MAX_PAYLOAD >> 20} MiB")
        if request.headers.get("x-invocation-type", "").lower() == "event":
            ident = fns.enqueue(name, bytes(payload),
                                request.headers.get("x-invocation-id", ""))
            return JSONResponse({"invocation_id": ident}, status_code=202)
        request_id = secrets.token_hex(8)
        started = trio.current_time()
        reply = await fns.invoke(name, bytes(payload), request_id=request_id)
        headers = {"x-fn-cold": "1" if reply.cold else "0", "x-fn-node": reply.node.hex(),
                   "x-fn-request-id": request_id,
                   "x-fn-duration-ms": f"{(trio.current_time() - started) * 1000:.3f}"}
        if reply.ok:
            return Response(reply.body, media_type=reply.content_type, headers=headers)
        return Response(json.dumps({"error": {"code": reply.code, "message": reply.message}}),
                        status_code=HTTP_STATUS.get(reply.code, 502),
                        media_type="application/json", headers=headers)

    async def schedule(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await fns.set_schedule(request.path_params["name"],
                                                   body.get("schedule", "")))

    async def invocations(request: Request) -> Response:
        return JSONResponse({"invocations": fns.invocations(request.path_params["name"])})

    async def ticks(request: Request) -> Response:
        return JSONResponse({"ticks": fns.ticks(request.path_params["name"])})

    async def logs(request: Request) -> Response:
        raw = request.query_params.get("lines", "100")
        if not (raw.isascii() and raw.isdigit()):
            raise FunctionError("lines must be a number")
        offsets: dict[str, int] | None = None
        if "offsets" in request.query_params:
            offsets = {}
            for item in request.query_params["offsets"].split(",")[:64]:
                node, _, at = item.partition(":")
                if not (at.isascii() and at.isdigit() and len(at) < 19):
                    raise FunctionError("offsets are NODE:BYTES pairs")
                offsets[node] = int(at)
        texts, ends = await fns.read_logs(
            request.path_params["name"], int(raw),
            request_id=request.query_params.get("request_id", ""), offsets=offsets)
        return JSONResponse({"nodes": texts, "offsets": ends})

    async def zip_deploy(request: Request) -> Response:
        from apps.functions.bundle import from_zip
        from apps.functions.core import MAX_BUNDLE

        name = check_name(request.path_params["name"])
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > MAX_BUNDLE:
                raise FunctionError(f"a zip archive is at most {MAX_BUNDLE >> 20} MiB")
        bundle = await trio.to_thread.run_sync(from_zip, bytes(data))
        digest = hashlib.sha256(bundle).hexdigest()

        async def body() -> AsyncIterator[bytes]:
            yield bundle

        if await fns.bundle_size(digest) is None:
            await fns.upload(digest, len(bundle), body())
        spec: dict[str, object] = {"sha256": digest}
        for key in ("handler", "runtime", "memory", "timeout", "idle"):
            if request.query_params.get(key):
                spec[key] = request.query_params[key]
        concurrency = request.query_params.get("concurrency", "")
        if concurrency:
            if not (concurrency.isascii() and concurrency.isdigit()):
                raise FunctionError("concurrency must be a number")
            spec["concurrency"] = int(concurrency)
        return JSONResponse(await fns.commit(name, spec), status_code=201)

    async def fn_secrets(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "GET":
            return JSONResponse({"name": name, "secrets": fns.secrets.names(check_name(name))})
        return JSONResponse(fns.set_secrets(name, await read_json(request)))

    async def keys(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            return JSONResponse(fns.set_access(name, None, revoke_keys=True))
        body = await read_json(request)
        return JSONResponse(fns.new_key(name, replace_all=body.get("replace") is True),
                            status_code=201)

    async def access(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(fns.set_access(request.path_params["name"], body.get("public")))

    return [Route("/v1/functions", listing, methods=["GET"]),
            Route("/v1/functions/{name}/keys", keys, methods=["POST", "DELETE"]),
            Route("/v1/functions/{name}/access", access, methods=["POST"]),
            Route("/v1/functions/{name}/secrets", fn_secrets, methods=["GET", "POST"]),
            Route("/v1/functions/{name}/logs", logs, methods=["GET"]),
            Route("/v1/functions/bundles/{sha256}", bundle, methods=["HEAD", "PUT"]),
            Route("/v1/functions/{name}", one, methods=["GET", "DELETE"]),
            Route("/v1/functions/{name}/versions", versions, methods=["POST"]),
            Route("/v1/functions/{name}/schedule", schedule, methods=["POST"]),
            Route("/v1/functions/{name}/ticks", ticks, methods=["GET"]),
            Route("/v1/functions/{name}/invocations", invocations, methods=["GET"]),
            Route("/v1/functions/{name}/rollback", rollback, methods=["POST"]),
            Route("/v1/functions/{name}/zip", zip_deploy, methods=["POST"]),
            Route("/v1/functions/{name}/invoke", invoke, methods=["POST"])]
