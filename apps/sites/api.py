"""JSON API of the sites service (mounted by the node under the same token check).

=======  ====================================  ==========================================
method   path                                  what
=======  ====================================  ==========================================
GET      /v1/sites                             every site: domains, versions, counters
GET      /v1/sites/{name}                      one site
POST     /v1/sites/{name}/missing              ``{"files": [{path, size, sha256}]}`` →
                                               ``{"missing": [sha256...]}``
PUT      /v1/sites/{name}/files/{sha256}       one file's bytes (``Content-Length``);
                                               refused unless they hash to ``sha256``
POST     /v1/sites/{name}/versions             ``{"files", "domains", "spa", "max_age"}``:
                                               a new version, current at once
POST     /v1/sites/{name}/rollback             ``{"to": N}`` (default: the one before)
DELETE   /v1/sites/{name}                      the site and its objects
=======  ====================================  ==========================================
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apps.sites.core import Sites, site_json
from apps.sites.manifest import SiteError, check_name
from meshcloud.errors import MeshError, NotFoundError

MAX_MISSING_BODY = 2 << 20


def routes(sites: Sites) -> list[Route]:
    from meshcloud.kit.api import read_json

    async def listing(request: Request) -> Response:
        return JSONResponse({"sites": sites.overview()})

    async def one(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            return JSONResponse(await sites.remove(name))
        found = next((s for s in sites.overview() if s["name"] == name), None)
        if found is None:
            raise NotFoundError(f"no site {name!r}")
        return JSONResponse(found)

    async def missing(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse({"missing": await sites.missing(request.path_params["name"],
                                                              body.get("files"))})

    async def upload(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        length = request.headers.get("content-length", "")
        if not (length.isascii() and length.isdigit()):
            raise SiteError("a file upload needs a Content-Length")

        async def body() -> AsyncIterator[bytes]:
            async for piece in request.stream():
                if piece:
                    yield piece

        digest = request.path_params["sha256"]
        await sites.upload(name, digest, int(length), body())
        return JSONResponse({"stored": digest, "size": int(length)}, status_code=201)

    async def commit(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await sites.commit(request.path_params["name"], body),
                            status_code=201)

    async def rollback(request: Request) -> Response:
        body = await read_json(request)
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
            raise MeshError("to must be a version number", code="bad_request")
        return JSONResponse(await sites.rollback(request.path_params["name"], to))

    return [Route("/v1/sites", listing, methods=["GET"]),
            Route("/v1/sites/{name}", one, methods=["GET", "DELETE"]),
            Route("/v1/sites/{name}/missing", missing, methods=["POST"]),
            Route("/v1/sites/{name}/files/{sha256}", upload, methods=["PUT"]),
            Route("/v1/sites/{name}/versions", commit, methods=["POST"]),
            Route("/v1/sites/{name}/rollback", rollback, methods=["POST"])]


__all__ = ["routes", "site_json"]
