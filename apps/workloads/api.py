"""JSON API of the workload service (mounted by the node under the same token check).

=======  ====================================  ==============================================
method   path                                  what
=======  ====================================  ==============================================
GET      /v1/workloads                         every workload: desired vs running, replicas
POST     /v1/workloads                         ``{"spec": {...}, "replace": false}``: run
                                               (409 if it exists) or deploy (``replace``)
POST     /v1/workloads/check                   ``{"spec": {...}}``: the problems, nothing written
GET      /v1/workloads/{name}                  one workload
DELETE   /v1/workloads/{name}                  remove it (replicas stop everywhere)
POST     /v1/workloads/{name}/scale            ``{"replicas": n}``
POST     /v1/workloads/{name}/stop|start       replicas to 0 / back to the spec's count
GET      /v1/workloads/{name}/logs             text/plain stream; ``?follow=1&tail=N&replica=i``
GET      /v1/replicas                          ``meshcloud ps`` rows (``?workload=NAME``)
POST     /v1/nodes/{node}/drain                ``{"drain": true|false}``
GET      /v1/nodes/{node}/drain                progress: claims and replicas left, ``safe``
GET      /v1/images                            images and runtimes of every node
POST     /v1/images/build-demo                 build the demo images into this node's store
=======  ====================================  ==============================================

A refused spec answers 400 ``{"error": {"code": "invalid_spec", "message", "problems"}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from apps.workloads.errors import SpecError
from apps.workloads.offers import own_offers
from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from apps.workloads.service import WorkloadService

LOG_CHUNK_LINES = 256
"""Lines gathered into one HTTP chunk when they are ready together."""


def _spec_error(exc: SpecError) -> JSONResponse:
    return JSONResponse({"error": {"code": exc.code, "message": exc.message,
                                   "problems": exc.problems}}, status_code=400)


async def _body(request: Request) -> dict[str, Any]:
    from meshcloud.kit.api import read_json

    return await read_json(request)


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise MeshError(f"query parameter {name} must be an integer", code="bad_request") \
            from None


def routes(service: WorkloadService) -> list[Route]:
    async def list_workloads(request: Request) -> Response:
        return JSONResponse({"workloads": service.list()})

    async def submit(request: Request) -> Response:
        body = await _body(request)
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise MeshError("body must be {\"spec\": {...}}", code="bad_request")
        try:
            result = service.submit(spec, replace_existing=bool(body.get("replace", False)))
        except SpecError as exc:
            return _spec_error(exc)
        return JSONResponse(result, status_code=201)

    async def check(request: Request) -> Response:
        from apps.workloads.spec import parse_spec

        body = await _body(request)
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as exc:
            return JSONResponse({"problems": exc.problems})
        return JSONResponse({"problems": service.check(spec)})

    async def one(request: Request) -> Response:
        return JSONResponse(service.describe(request.path_params["name"]))

    async def remove(request: Request) -> Response:
        name = request.path_params["name"]
        service.remove(name)
        return JSONResponse({"removed": name})

    async def scale(request: Request) -> Response:
        body = await _body(request)
        replicas = body.get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise MeshError("body must be {\"replicas\": N}", code="bad_request")
        try:
            return JSONResponse(service.scale(request.path_params["name"], replicas))
        except SpecError as exc:
            return _spec_error(exc)

    async def stop(request: Request) -> Response:
        return JSONResponse(service.stop(request.path_params["name"]))

    async def start(request: Request) -> Response:
        return JSONResponse(service.start(request.path_params["name"]))

    async def replicas(request: Request) -> Response:
        return JSONResponse({"replicas": service.replica_rows(
            request.query_params.get("workload") or None)})

    async def drain(request: Request) -> Response:
        node_id = service.resolve_node(request.path_params["node"])
        if request.method == "POST":
            body = await _body(request)
            service.set_drain(node_id, bool(body.get("drain", True)))
        return JSONResponse(await service.drain_progress(node_id))

    async def images(request: Request) -> Response:
        offers = own_offers(service.state)
        return JSONResponse({
            "node": service.node.node_id.hex(), "images": list(service.images),
            "runtimes": sorted(service.runtimes),
            "mesh": {node.hex(): {"images": list(o.images), "runtimes": list(o.runtimes)}
                     for node, o in sorted(offers.items())}})

    async def build_demo(request: Request) -> Response:
        return JSONResponse({"built": await service.build_demo_images()})

    async def catalogue(request: Request) -> Response:
        if request.method == "GET":
            from apps.workloads.catalogue import mesh_images

            return JSONResponse({ref: {"key": i.key, "size": i.size, "sha256": i.sha256,
                                       "pushed_ms": i.pushed_ms}
                                 for ref, i in sorted(mesh_images(service.state).items())})
        body = await _body(request)
        refs, key = body.get("images"), body.get("key")
        if not (isinstance(refs, list) and refs and all(isinstance(r, str) and r for r in refs)
                and isinstance(key, str) and isinstance(body.get("size"), int)
                and isinstance(body.get("sha256"), str)):
            raise MeshError("give images (a list of references), key, size and sha256",
                            code="bad_request")
        return JSONResponse({"pushed": service.register_image(refs, key, body["size"],
                                                              body["sha256"])})

    async def uncatalogue(request: Request) -> Response:
        return JSONResponse(service.unregister_image(request.path_params["ref"]))

    return [
        Route("/v1/workloads", list_workloads, methods=["GET"]),
        Route("/v1/workloads", submit, methods=["POST"]),
        Route("/v1/workloads/check", check, methods=["POST"]),
        Route("/v1/workloads/{name}", one, methods=["GET"]),
        Route("/v1/workloads/{name}", remove, methods=["DELETE"]),
        Route("/v1/workloads/{name}/scale", scale, methods=["POST"]),
        Route("/v1/workloads/{name}/stop", stop, methods=["POST"]),
        Route("/v1/workloads/{name}/start", start, methods=["POST"]),
        Route("/v1/workloads/{name}/logs", LogsEndpoint(service), methods=["GET"]),
        Route("/v1/replicas", replicas, methods=["GET"]),
        Route("/v1/nodes/{node}/drain", drain, methods=["GET", "POST"]),
        Route("/v1/images", images, methods=["GET"]),
        Route("/v1/images/build-demo", build_demo, methods=["POST"]),
        Route("/v1/images/mesh", catalogue, methods=["GET", "POST"]),
        Route("/v1/images/mesh/{ref:path}", uncatalogue, methods=["DELETE"]),
    ]


class LogsEndpoint:
    """``GET /v1/workloads/{name}/logs``: a plain ASGI app, so the producers (one per
    replica, local or over the mesh) live in a nursery of this request, and a client
    that goes away cancels them."""

    def __init__(self, service: WorkloadService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        name = scope.get("path_params", {}).get("name", "")
        try:
            follow = request.query_params.get("follow", "") in ("1", "true", "yes")
            tail = _int_param(request, "tail")
            replica = _int_param(request, "replica")
            targets = self.service.log_targets(name, replica)
        except MeshError as exc:
            from meshcloud.kit.api import error_response, status_for

            await error_response(status_for(exc), exc.code, exc.message)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"cache-control", b"no-store")]})
        lines_send, lines = trio.open_memory_channel[str](LOG_CHUNK_LINES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._disconnect, receive, nursery.cancel_scope)
            nursery.start_soon(lambda: self.service.stream_logs(
                name, targets, follow=follow, tail=tail, send=lines_send))
            async with lines:
                async for first in lines:
                    chunk = [first]
                    while len(chunk) < LOG_CHUNK_LINES:
                        try:
                            chunk.append(lines.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await send({"type": "http.response.body",
                                "body": "".join(f"{line}\n" for line in chunk).encode(),
                                "more_body": True})
            nursery.cancel_scope.cancel()
        try:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away

    @staticmethod
    async def _disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return
