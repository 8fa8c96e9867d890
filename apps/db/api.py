"""JSON API of the database service (mounted by the node under the same token check).

=======  ====================  ===========================================================
method   path                  what
=======  ====================  ===========================================================
GET      /v1/db                every database: port, primary, members (no password)
POST     /v1/db                ``{"name", "standbys", "version", "port"}``: create
GET      /v1/db/{name}/url     the connection string, with the password
DELETE   /v1/db/{name}         stop it everywhere and delete its data
=======  ====================  ===========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from apps.db.service import DbService


def routes(service: DbService) -> list[Route]:
    from meshcloud.kit.api import field, read_json

    async def listing(request: Request) -> Response:
        if request.method == "POST":
            body = await read_json(request)
            name = field(body, "name", str, required=True)
            spec = service.create(name, standbys=field(body, "standbys", int, 0),
                                  version=field(body, "version", int, 15),
                                  port=field(body, "port", int))
            return JSONResponse({"name": name, "port": spec.port,
                                 "home": spec.home.hex()}, status_code=201)
        return JSONResponse({"databases": service.overview()})

    async def url(request: Request) -> Response:
        return JSONResponse({"url": service.url(request.path_params["name"])})

    async def one(request: Request) -> Response:
        service.remove(request.path_params["name"])
        return JSONResponse({"removed": request.path_params["name"]})

    return [Route("/v1/db", listing, methods=["GET", "POST"]),
            Route("/v1/db/{name}/url", url, methods=["GET"]),
            Route("/v1/db/{name}", one, methods=["DELETE"])]
