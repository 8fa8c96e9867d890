"""JSON API of the V-Net service (mounted by the node under the same token check).

=======  ==============================  ===============================================
method   path                            what
=======  ==============================  ===============================================
GET      /v1/vnets                       every V-Net: range, member count, local plane
POST     /v1/vnets                       ``{"name", "cidr"}``: a new V-Net
GET      /v1/vnets/{name}                members, addresses, tunnels, bytes, handshakes
DELETE   /v1/vnets/{name}                the V-Net, its members and attachments
POST     /v1/vnets/{name}/attach         ``{"host": true, "plane"?}`` or ``{"workload",
                                         "ahead"?}`` (ahead: not created yet)
POST     /v1/vnets/{name}/detach         ``{"host": true}`` or ``{"workload"}``
GET      /v1/vnets/{name}/refused        packets this node's isolation rules refused
=======  ==============================  ===============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from vnet.service import VNetService


def routes(service: VNetService) -> list[Route]:
    from meshcloud.kit.api import field, read_json

    async def listing(request: Request) -> Response:
        if request.method == "POST":
            body = await read_json(request)
            return JSONResponse(await service.create(
                field(body, "name", str, required=True), field(body, "cidr", str,
                                                               required=True)),
                status_code=201)
        return JSONResponse({"vnets": service.overview()})

    async def one(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            return JSONResponse(await service.remove(name))
        return JSONResponse(service.show(name))

    async def attach(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await service.attach(
            request.path_params["name"], host=bool(field(body, "host", bool, False)),
            workload=field(body, "workload", str), plane=field(body, "plane", str, ""),
            ahead=bool(field(body, "ahead", bool, False))))

    async def detach(request: Request) -> Response:
        body = await read_json(request)
        return JSONResponse(await service.detach(
            request.path_params["name"], host=bool(field(body, "host", bool, False)),
            workload=field(body, "workload", str)))

    async def refused(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse({"vnet": name, "packets": await service.refused(name)})

    return [Route("/v1/vnets", listing, methods=["GET", "POST"]),
            Route("/v1/vnets/{name}", one, methods=["GET", "DELETE"]),
            Route("/v1/vnets/{name}/attach", attach, methods=["POST"]),
            Route("/v1/vnets/{name}/detach", detach, methods=["POST"]),
            Route("/v1/vnets/{name}/refused", refused, methods=["GET"])]
