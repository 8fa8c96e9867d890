"""JSON API of the database service (mounted by the node under the same token check).

=======  ====================  ===========================================================
method   path                  what
=======  ====================  ===========================================================
GET      /v1/db                every database: port, primary, members (no password); and
                               ``kept``: removed databases whose backups are kept
POST     /v1/db                ``{"name", "standbys", "version", "port", "size"}``: create
GET      /v1/db/{name}/url     the connection string, with the password (``?read_only=1``:
                               the standbys' port; POST too, for the UI's button)
POST     /v1/db/{name}/users   ``{"user", "role"}``: a new login; the password once
POST     /v1/db/{name}/failover ``{"to": NODE}``: planned switchover to a standby
POST     /v1/db/{name}/backup  ``{"type": "full"|"incr"|"diff"}``: run it on the primary
GET      /v1/db/{name}/backups the backups in the repository (as last seen)
POST     /v1/db/{name}/restore ``{"at": TIME, "as": NEW}``: point-in-time restore
DELETE   /v1/db/{name}         stop it everywhere and delete its data; its backups are kept
                               unless ``{"delete_backups": true}`` (or
                               ``?delete_backups=1``); on a removed name with kept backups,
                               that deletes them
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
                                  port=field(body, "port", int),
                                  size=field(body, "size", str),
                                  params=field(body, "params", list, []))
            return JSONResponse({"name": name, "port": spec.port,
                                 "home": spec.home.hex()}, status_code=201)
        return JSONResponse({"databases": service.overview(), "kept": service.kept()})

    async def url(request: Request) -> Response:
        read_only = request.query_params.get("read_only", "") in ("1", "true", "yes")
        return JSONResponse({"url": service.url(request.path_params["name"], read_only)})

    async def users(request: Request) -> Response:
        body = await read_json(request)
        result = await service.add_user(request.path_params["name"],
                                        field(body, "user", str, required=True),
                                        field(body, "role", str, "readwrite"))
        return JSONResponse(result, status_code=201)

    async def failover(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await service.switchover(request.path_params["name"],
                                                     field(body, "to", str, "")))

    async def backup(request: Request) -> Response:
        body = await read_json(request)
        result = await service.backup(request.path_params["name"],
                                      field(body, "type", str, "full"))
        return JSONResponse(result)

    async def backups(request: Request) -> Response:
        return JSONResponse(service.backups(request.path_params["name"]))

    async def restore(request: Request) -> Response:
        body = await read_json(request)
        result = await service.restore(request.path_params["name"],
                                       field(body, "at", str, required=True),
                                       field(body, "as", str))
        return JSONResponse(result, status_code=201)

    async def one(request: Request) -> Response:
        body = await read_json(request)
        delete = field(body, "delete_backups", bool, False) or \
            request.query_params.get("delete_backups", "") in ("1", "true", "yes")
        return JSONResponse(await service.remove(request.path_params["name"],
                                                 delete_backups=delete))

    return [Route("/v1/db", listing, methods=["GET", "POST"]),
            Route("/v1/db/{name}/url", url, methods=["GET", "POST"]),
            Route("/v1/db/{name}/backup", backup, methods=["POST"]),
            Route("/v1/db/{name}/users", users, methods=["POST"]),
            Route("/v1/db/{name}/failover", failover, methods=["POST"]),
            Route("/v1/db/{name}/backups", backups, methods=["GET"]),
            Route("/v1/db/{name}/restore", restore, methods=["POST"]),
            Route("/v1/db/{name}", one, methods=["DELETE"])]
