"""The Sites page of the web UI: every site with its domains, versions (roll back to any
kept one), request counters summed over the nodes, and how to deploy or reach it.

Changes go through the JSON API from the page (``POST /v1/sites/NAME/rollback``,
``DELETE /v1/sites/NAME``); deploying a directory is the CLI's job (the page shows the
command). The list re-renders on ``site.*`` events and every few seconds, since other
nodes' deploys and counters arrive through the replicated tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apps.sites.core import Sites

if TYPE_CHECKING:
    from meshcloud.kit.ui import UiKit

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_INGRESS = "127.0.0.1:7080"


def routes(ui: UiKit, sites: Sites) -> list[Route]:
    ui.use_templates(TEMPLATES)

    def context() -> dict[str, Any]:
        ingress = ui.service("ingress")
        address = str(getattr(ingress, "http_address", "") or "") or DEFAULT_INGRESS
        return {"sites": sites.overview(), "ingress": address}

    async def page(request: Request) -> Response:
        return ui.render("sites.html", **ui.base("sites", "Sites"), **context())

    async def fragment(request: Request) -> Response:
        return ui.render("_sites.html", **context())

    return [Route("/ui/sites", page), Route("/ui/frag/sites", fragment)]
