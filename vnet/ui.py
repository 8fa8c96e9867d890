"""The V-Nets page of the web UI: every V-Net with its members, their addresses, this
node's tunnels (endpoint, traffic, handshake age), and attach/detach/remove buttons
(through the JSON API). Creating one is the CLI's job (the page shows the command)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from meshcloud.kit.ui import UiKit
    from vnet.service import VNetService

TEMPLATES = Path(__file__).parent / "templates"


def routes(ui: UiKit, service: VNetService) -> list[Route]:
    ui.use_templates(TEMPLATES)

    def context() -> dict[str, Any]:
        vnets = []
        for v in service.overview():
            shown = service.show(v["name"])
            vnets.append({**v, "members": shown["members"],
                          "workloads": shown["workloads"]})
        return {"vnets": vnets}

    async def page(request: Request) -> Response:
        return ui.render("vnets.html", **ui.base("vnets", "V-Nets"), **context())

    async def fragment(request: Request) -> Response:
        return ui.render("_vnets.html", **context())

    return [Route("/ui/vnets", page), Route("/ui/frag/vnets", fragment)]
