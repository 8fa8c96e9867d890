"""UI routes: pages, fragments for live refresh, the login link, and the event stream.

Pages are GET only; changes go through the JSON API (forms post with ``fetch`` and the
header ``X-Meshcloud-UI``, which a cross-site form cannot send, so the session cookie alone
never authorises a change). The session cookie is HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import io
import json
import math
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from meshcloud.api.auth import SESSION_COOKIE, TokenAuth
from meshcloud.ui_text import ago

if TYPE_CHECKING:
    from meshcloud.node import Node

HERE = Path(__file__).parent
SSE_KEEPALIVE = 15.0
"""Seconds between comment lines on an idle event stream (keeps proxies from closing it)."""

NAV = [
    ("mesh", "Mesh", "/ui/", True),
    ("workloads", "Workloads", "/ui/workloads", False),
    ("storage", "Storage", "/ui/storage", False),
    ("functions", "Functions", "/ui/functions", False),
    ("sites", "Sites", "/ui/sites", False),
    ("databases", "Databases", "/ui/databases", False),
    ("vnets", "V-Nets", "/ui/vnets", False),
    ("spark", "Spark", "/ui/spark", False),
    ("events", "Events", "/ui/events", True),
    ("invite", "Invite", "/ui/invite", True),
]

_env = Environment(loader=FileSystemLoader(HERE / "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def merge_nav(base: list[tuple[str, str, str, bool]],
              extra: list[tuple[str, str, str, bool]]) -> list[tuple[str, str, str, bool]]:
    """A service's entry replaces the placeholder of the same page, keeping its place."""
    by_page = {entry[0]: entry for entry in extra}
    merged = [by_page.pop(entry[0], entry) for entry in base]
    return merged + list(by_page.values())


def render(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**context))


# --- view models ------------------------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def capacity_bars(cap: dict[str, Any]) -> list[dict[str, Any]]:
    bars = []
    cores, load = cap.get("cpu_cores"), cap.get("load")
    if cores:
        used = min(100.0, 100.0 * (load or 0) / cores)
        bars.append({"label": "CPU", "percent": round(used), "text": f"{cores} cores",
                     "title": f"load {load or 0:.2f} on {cores} cores"})
    total, free = cap.get("ram_total"), cap.get("ram_free")
    if total:
        used = 100.0 * (total - (free or 0)) / total
        bars.append({"label": "RAM", "percent": round(used),
                     "text": f"{_fmt_bytes(free)} free", "title": f"of {_fmt_bytes(total)}"})
    disk_total, disk_free = cap.get("disk_total"), cap.get("disk_free")
    if disk_free is not None:
        used = 100.0 * (disk_total - disk_free) / disk_total if disk_total else 0
        bars.append({"label": "Disk", "percent": round(used),
                     "text": f"{_fmt_bytes(disk_free)} free", "title": "free disk"})
    battery = cap.get("battery")
    if battery is not None:
        bars.append({"label": "Battery", "percent": round(battery),
                     "text": f"{battery:.0f}%" + (" AC" if cap.get("on_ac") else ""),
                     "title": "battery level"})
    return bars


def mesh_picture(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Nodes on a ring, sized by capacity (√cores × RAM), coloured by state."""
    width, height = 640, 300
    n = max(1, len(members))
    cx, cy = width / 2, height / 2 - 10
    ring = min(width, height) / 2 - 50 if n > 1 else 0
    weights = [math.sqrt(max(1, (m["capacity"].get("cpu_cores") or 1))
                         * max(1.0, (m["capacity"].get("ram_total") or 2**30) / 2**30))
               for m in members]
    top = max(weights, default=1)
    circles = []
    for i, member in enumerate(members):
        angle = 2 * math.pi * i / n - math.pi / 2
        r = 10 + 18 * weights[i] / top
        circles.append({"id": member["id"], "state": member["state"],
                        "x": round(cx + ring * math.cos(angle), 1),
                        "y": round(cy + ring * math.sin(angle), 1), "r": round(r, 1),
                        "label": member["id"][:6]})
    lines = []
    alive = [c for c in circles if c["state"] == "alive"]
    if len(alive) <= 40:
        for i, a in enumerate(alive):
            for b in alive[i + 1:]:
                lines.append({"x1": a["x"], "y1": a["y"], "x2": b["x"], "y2": b["y"]})
    return {"width": width, "height": height, "circles": circles, "lines": lines}


def mesh_context(node: Node) -> dict[str, Any]:
    members = node.members_view()
    for member in members:
        member["me"] = member["id"] == node.node_id.hex()
        member.setdefault("capacity", {})
        member["bars"] = capacity_bars(member["capacity"])
        member["last_change_text"] = ago(member.get("last_change"))
    counts: dict[str, int] = {}
    for state in ("alive", "suspect", "dead", "left"):
        count = sum(1 for m in members if m["state"] == state)
        if count or state == "alive":
            counts[state] = count
    return {"members": members, "counts": counts, "picture": mesh_picture(members)}


# --- routes -----------------------------------------------------------------------------------


def ui_routes(node: Node, auth: TokenAuth) -> list[Route | Mount]:
    def base(page: str, title: str) -> dict[str, Any]:
        return {
            "page": page, "title": title, "mesh_name": node.mesh.mesh_name,
            "node_id": node.node_id.hex(),
            "nav": [{"page": p, "label": label, "href": href, "ready": ready}
                    for p, label, href, ready in merge_nav(NAV, node.extra_nav())],
        }

    async def login(request: Request) -> Response:
        session = auth.redeem_ticket(request.query_params.get("ticket", ""))
        if session is None:
            response = render("login_failed.html", **base("login", "Login"))
            response.status_code = 401
            return response
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict",
                            path="/", max_age=7 * 86400)
        return response

    async def mesh_page(request: Request) -> Response:
        return render("mesh.html", **base("mesh", "Mesh"), **mesh_context(node))

    async def mesh_fragment(request: Request) -> Response:
        return render("_mesh.html", **mesh_context(node))

    async def events_page(request: Request) -> Response:
        events = list(reversed(node.events.recent(300)))
        kinds = sorted({e["kind"].split(".")[0] for e in events} |
                       {"member", "peer", "node", "workload", "replica", "object", "repair"})
        return render("events.html", **base("events", "Events"), events=events, kinds=kinds)

    async def invite_page(request: Request) -> Response:
        return render("invite.html", **base("invite", "Invite"), admin=node.is_admin,
                      token=None)

    async def invite_create(request: Request) -> Response:
        form = await small_form(request)
        try:
            ttl = float(form.get("ttl_s", "3600"))
            uses = int(form.get("uses", "1"))
        except ValueError:
            ttl, uses = 3600.0, 1
        ttl = min(max(ttl, 60.0), 30 * 86400.0)
        uses = min(max(uses, 1), 100)
        token = node.create_invite(ttl_s=ttl, uses=uses)
        text = token.encode()
        return render("invite.html", **base("invite", "Invite"), admin=True, token=text,
                      qr_svg=qr_svg(text), expires_at=token.invite.body.expires_at, uses=uses)

    def placeholder(page: str, title: str):
        async def show(request: Request) -> Response:
            return render("placeholder.html", **base(page, title))

        return show

    async def to_mesh(request: Request) -> Response:
        return RedirectResponse("/ui/")

    async def events_stream(request: Request) -> Response:
        return await event_stream(node, request)

    routes: list[Route | Mount] = [
        Route("/ui/login", login),
        Route("/ui/", mesh_page),
        Route("/ui", to_mesh),
        Route("/", to_mesh),
        Route("/ui/frag/mesh", mesh_fragment),
        Route("/ui/events", events_page),
        Route("/ui/invite", invite_page, methods=["GET"]),
        Route("/ui/invite", invite_create, methods=["POST"]),
        Route("/v1/events/stream", events_stream),
        Mount("/ui/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    served = {entry[0] for entry in node.extra_nav()}
    for page, label, href, ready in NAV:
        if not ready and page not in served:
            routes.append(Route(href, placeholder(page, label)))
    for extra in node.ui_route_providers:
        routes.extend(extra(base, render))
    return routes


async def small_form(request: Request, limit: int = 8192) -> dict[str, str]:
    """A URL-encoded form of a few fields (no multipart: the UI never uploads by form)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[-1] for key, values in fields.items()}


def qr_svg(text: str) -> str:
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    buffer = io.BytesIO()
    image.save(buffer)
    svg = buffer.getvalue().decode()
    return svg[svg.index("<svg"):]


async def event_stream(node: Node, request: Request) -> Response:
    """Server-sent events: every node event, as JSON, as it happens."""
    receive = node.events.subscribe()

    async def lines():
        yield ": meshcloud event stream\n\n"
        with receive:
            while True:
                with trio.move_on_after(SSE_KEEPALIVE) as scope:
                    event = await receive.receive()
                if scope.cancelled_caught:
                    yield ": keepalive\n\n"
                    continue
                yield f"data: {json.dumps(event)}\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
