"""The Workloads pages: what runs where, desired vs running, logs, run / stop / scale /
remove, and draining a node.

Pages read the node's workload service (``apps.workloads``) with the calls its API makes
(``list``, ``describe``, ``draining``, ``drain_progress``); every change is a request to
that API from the browser:

=============================================  ====================================
run                                            ``POST /v1/workloads {"spec": {...}}``
scale / stop / start                           ``POST /v1/workloads/NAME/scale|stop|start``
remove                                         ``DELETE /v1/workloads/NAME``
drain / undrain a node                         ``POST /v1/nodes/NODE/drain``
logs (streamed into the page)                  ``GET /v1/workloads/NAME/logs?follow=1``
=============================================  ====================================

Replica states change on the node that runs them and reach this node through the
replicated tables, which raise no event here; so the live sections re-render on
``workload.*`` / ``replica.*`` / ``node.*`` / ``member.*`` events *and* every few seconds
(``data-poll``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from meshcloud.kit.ui import UiKit

TEMPLATES = Path(__file__).parent / "templates"

DRAIN_PROGRESS_TIMEOUT = 2.0
"""Seconds the page waits for a draining node's inventory before showing it unknown."""
LOG_TAIL = 200
"""Lines of history a log panel starts with."""


def replica_summary(workload: dict[str, Any]) -> dict[str, Any]:
    """Desired vs running, and a word for the whole workload."""
    wanted = [r for r in workload.get("replicas", []) if r.get("wanted")]
    running = sum(1 for r in wanted if r.get("state") == "running")
    desired = int(workload.get("desired") or 0)
    restarts = sum(int(r.get("restarts") or 0) for r in workload.get("replicas", []))
    if desired == 0:
        health = "stopped"
    elif running >= desired:
        health = "running"
    elif any(r.get("state") in ("failed", "node down") for r in wanted):
        health = "degraded"
    else:
        health = "starting"
    return {"desired": desired, "running": running, "restarts": restarts, "health": health,
            "percent": round(100 * running / desired) if desired else 0}


def workload_view(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload.get("spec") or {}
    what = workload.get("image") or " ".join(workload.get("command") or []) or "-"
    return {**workload, **replica_summary(workload), "what": what,
            "ports": spec.get("ports") or [], "configured": workload.get("configured"),
            "runtime": workload.get("runtime") or spec.get("constraints", {}).get("runtime")}


def routes_by_workload(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ingress's HTTP routes (``GET /v1/ingress/routes`` rows) per workload."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        workload, _, endpoint = str(row["target"]).partition(":")
        prefix = "" if row["prefix"] == "/" else row["prefix"]
        out.setdefault(workload, []).append(
            {"host": row["host"], "prefix": row["prefix"], "where": row["host"] + prefix,
             "endpoint": endpoint, "live": len(row["live"]), "replicas": row["replicas"],
             "nodes": sorted({x["node"] for x in row["live"]})})
    return out


def routes(ui: UiKit) -> list[Route]:
    ui.use_templates(TEMPLATES)
    render = ui.render

    def service() -> Any:
        found = ui.service("workloads")
        if found is None:
            raise MeshError("this node runs no workload service", code="unavailable")
        return found

    def offers() -> dict[bytes, Any]:
        from apps.workloads.offers import all_offers

        return all_offers(service().state)

    async def nodes_view() -> list[dict[str, Any]]:
        svc = service()
        draining = svc.draining()
        members = {m["id"]: m for m in ui.node.members_view()}
        offered = offers()
        rows = []
        per_node: dict[str, int] = {}
        for workload in svc.list():
            for replica in workload.get("replicas", []):
                if replica.get("node") and replica.get("wanted"):
                    per_node[replica["node"]] = per_node.get(replica["node"], 0) + 1
        for node_id in sorted(set(offered) | draining):
            hex_id = node_id.hex()
            member = members.get(hex_id, {})
            offer = offered.get(node_id)
            row = {"id": hex_id, "state": member.get("state", "unknown"),
                   "me": node_id == ui.node.node_id, "draining": node_id in draining,
                   "replicas": per_node.get(hex_id, 0),
                   "runtimes": list(offer.runtimes) if offer else [],
                   "images": len(offer.images) if offer else 0, "progress": None}
            if row["draining"]:
                with trio.move_on_after(DRAIN_PROGRESS_TIMEOUT):
                    row["progress"] = await svc.drain_progress(node_id)
            rows.append(row)
        return rows

    def ingress_routes() -> dict[str, list[dict[str, Any]]]:
        ingress = ui.service("ingress")
        if ingress is None:
            return {}
        return routes_by_workload(ingress.route_rows())

    async def context() -> dict[str, Any]:
        svc = service()
        published = ingress_routes()
        workloads = [{**workload_view(w), "routes": published.get(w["name"], [])}
                     for w in svc.list()]
        offered = offers()
        images = sorted({image for o in offered.values() for image in o.images})
        runtimes = sorted({r for o in offered.values() for r in o.runtimes})
        return {"workloads": workloads, "nodes": await nodes_view(), "images": images,
                "runtimes": runtimes}

    def unavailable() -> Response:
        return render("placeholder.html", status_code=503,
                      **ui.base("workloads", "Workloads"),
                      text="This node runs no workload service (see `meshcloud status`).")

    async def page(request: Request) -> Response:
        try:
            view = await context()
        except MeshError:
            return unavailable()
        return render("workloads.html", **ui.base("workloads", "Workloads"), **view)

    def frag_unavailable() -> Response:
        return render("_unavailable.html", status_code=503,
                      text="This node runs no workload service.")

    async def fragment(request: Request) -> Response:
        try:
            view = await context()
        except MeshError:
            return frag_unavailable()
        return render("_workloads.html", **view)

    async def nodes_fragment(request: Request) -> Response:
        try:
            return render("_drain.html", nodes=await nodes_view())
        except MeshError:
            return frag_unavailable()

    async def detail(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            workload = workload_view(service().describe(name))
        except MeshError as exc:
            return render("workload.html", status_code=404,
                          **ui.base("workloads", f"{name} · Workloads"), name=name,
                          missing=exc.message)
        return render("workload.html", **ui.base("workloads", f"{name} · Workloads"),
                      name=name, w=workload, tail=LOG_TAIL)

    async def detail_fragment(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            workload = workload_view(service().describe(name))
        except MeshError as exc:
            return render("_workload.html", name=name, missing=exc.message)
        return render("_workload.html", name=name, w=workload)

    return [
        Route("/ui/workloads", page),
        Route("/ui/frag/workloads", fragment),
        Route("/ui/frag/workloads/nodes", nodes_fragment),
        Route("/ui/workloads/w/{name}", detail),
        Route("/ui/frag/workloads/w/{name}", detail_fragment),
    ]
