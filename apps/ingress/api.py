"""JSON API of the ingress (mounted by the node under the same token check).

=======  ===============================  ================================================
method   path                             what
=======  ===============================  ================================================
GET      /v1/ingress                      endpoints (replicas, node, port, health) and
                                          exposed ports
GET      /v1/ingress/routes               HTTP routes: host + path prefix → endpoint, its
                                          live replicas and timeout
POST     /v1/ingress/exposures            ``{"target": "WORKLOAD:ENDPOINT", "port": N,
                                          "bind": "127.0.0.1"}``: every node listens
DELETE   /v1/ingress/exposures/{port}     stop listening on that port everywhere
GET      /v1/ingress/ca                   ``{"pem"}``: the mesh CA certificate (made on
                                          first use on the admin node)
GET      /v1/ingress/certs                site certificates of the mesh CA
POST     /v1/ingress/certs                ``{"domain", "days"}`` (admin node): issue one;
                                          every node installs it
=======  ===============================  ================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apps.ingress.messages import Exposure
from apps.ingress.tables import EXPOSURES, endpoint_rows, exposures
from meshcloud.errors import MeshError, NotFoundError

if TYPE_CHECKING:
    from apps.ingress.service import IngressService


def parse_exposure(body: Any, published: dict[str, list[str]]) -> tuple[int, Exposure]:
    """Check a request against the workloads' published endpoints (``published``: workload
    → endpoint names); one clear MeshError for the first problem. Pure."""
    from apps.ingress.service import valid_bind

    if not isinstance(body, dict):
        raise MeshError("body must be a JSON object", code="bad_request")
    target, port, bind = body.get("target"), body.get("port"), body.get("bind", "127.0.0.1")
    if not isinstance(target, str) or target.count(":") != 1:
        raise MeshError("target must be WORKLOAD:ENDPOINT", code="bad_request")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise MeshError("port must be an integer from 1 to 65535", code="bad_request")
    if not isinstance(bind, str) or not valid_bind(bind):
        raise MeshError(f"bind {bind!r} is not an IP address", code="bad_request")
    workload, endpoint = target.split(":")
    if workload not in published:
        raise NotFoundError(f"no workload {workload!r}", code="not_found")
    if endpoint not in published[workload]:
        names = ", ".join(published[workload]) or "none"
        raise MeshError(f"workload {workload!r} publishes no endpoint {endpoint!r} "
                        f"(it publishes: {names})", code="bad_request")
    return port, Exposure(workload=workload, endpoint=endpoint, bind=bind)


def route_rows(service: IngressService) -> list[dict[str, Any]]:
    """Each HTTP route with the replicas it would reach now (healthy, node alive)."""
    entries = service._entries()
    out = []
    for host, table in sorted(service.http_routes().items()):
        for route in sorted(table, key=lambda r: r.prefix):
            live = service.targets(route.workload, route.endpoint)
            entry = entries.get(route.workload)
            out.append({"host": host, "prefix": route.prefix or "/",
                        "target": f"{route.workload}:{route.endpoint}",
                        "timeout_s": route.timeout,
                        "replicas": entry.replicas if entry is not None else 0,
                        "live": [{"replica": t.index, "node": t.node.hex()} for t in live]})
    return out


def routes(service: IngressService) -> list[Route]:
    from meshcloud.kit.api import read_json

    def published() -> dict[str, list[str]]:
        return {name: [e for e, _ in entry.spec.publish]
                for name, entry in service._entries().items()}

    async def overview(request: Request) -> Response:
        rows = endpoint_rows(service.state)
        alive = set(service.node.alive_peer_ids()) | {service.node.node_id}
        endpoints = [{"workload": w, "endpoint": e, "replica": i, "node": r.node.hex(),
                      "port": r.port, "healthy": r.healthy, "node_alive": r.node in alive}
                     for (w, e, i), r in sorted(rows.items())]
        exposed = [{"port": p, "target": f"{x.workload}:{x.endpoint}", "bind": x.bind}
                   for p, x in sorted(exposures(service.state).items())]
        return JSONResponse({"endpoints": endpoints, "exposures": exposed,
                             "status": service.status()})

    async def http_routes(request: Request) -> Response:
        return JSONResponse({"routes": route_rows(service),
                             "ingress": service.http_address,
                             "lookups": len(service.lookups)})

    async def expose(request: Request) -> Response:
        port, exposure = parse_exposure(await read_json(request), published())
        current = exposures(service.state).get(port)
        if current is not None and current != exposure:
            raise MeshError(f"port {port} already forwards to "
                            f"{current.workload}:{current.endpoint}", code="conflict")
        service.state.put(EXPOSURES.name, (port,), exposure)
        return JSONResponse({"port": port, "target": f"{exposure.workload}:"
                             f"{exposure.endpoint}", "bind": exposure.bind}, status_code=201)

    async def unexpose(request: Request) -> Response:
        text = request.path_params["port"]
        if not text.isdigit() or int(text) not in exposures(service.state):
            raise NotFoundError(f"port {text!r} is not exposed", code="not_found")
        service.state.delete(EXPOSURES.name, (int(text),))
        return JSONResponse({"removed": int(text)})

    async def ca(request: Request) -> Response:
        return JSONResponse({"pem": service.site_certs.ca_pem().decode()})

    async def certs(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"certificates": service.site_certs.overview()})
        body = await read_json(request)
        reply = service.site_certs.issue(body.get("domain"), body.get("days"))
        return JSONResponse(reply, status_code=201)

    return [Route("/v1/ingress", overview, methods=["GET"]),
            Route("/v1/ingress/ca", ca, methods=["GET"]),
            Route("/v1/ingress/certs", certs, methods=["GET", "POST"]),
            Route("/v1/ingress/routes", http_routes, methods=["GET"]),
            Route("/v1/ingress/exposures", expose, methods=["POST"]),
            Route("/v1/ingress/exposures/{port}", unexpose, methods=["DELETE"])]
