"""The Databases page of the web UI: every database with its primary and standbys (node,
health, replication lag), its backups, its ports, and the create / backup / failover /
restore actions (through the JSON API from the page). The connection string, password
included, is fetched only on request (``GET /v1/db/NAME/url``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from apps.db.service import DbService
    from meshcloud.kit.ui import UiKit

TEMPLATES = Path(__file__).parent / "templates"


def routes(ui: UiKit, service: DbService) -> list[Route]:
    ui.use_templates(TEMPLATES)

    def context() -> dict[str, Any]:
        dbs = service.overview()
        for d in dbs:
            info = service.backups(d["name"])
            d["backups"] = info["backups"][-5:][::-1]
            d["restored_from"] = info["restored_from"]
            d["restored_at"] = info["restored_at"]
            d["error"] = service.errors.get(d["name"], "")
        return {"databases": dbs, "host": service.bind_host(),
                "example": json.dumps({"name": "shop", "standbys": 1})}

    async def page(request: Request) -> Response:
        return ui.render("databases.html", **ui.base("databases", "Databases"), **context())

    async def fragment(request: Request) -> Response:
        return ui.render("_databases.html", **context())

    return [Route("/ui/databases", page), Route("/ui/frag/databases", fragment)]
