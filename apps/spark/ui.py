"""The Spark page of the web UI: the master (where it runs, its address and UI), the
workers (placed replicas and those registered with the master), running and finished
applications, jobs, and which nodes can carry Spark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from apps.spark.service import SparkService
    from meshcloud.kit.ui import UiKit

TEMPLATES = Path(__file__).parent / "templates"


def routes(service: SparkService, ui: UiKit) -> list[Route]:
    ui.use_templates(TEMPLATES)

    async def context() -> dict[str, Any]:
        out = service.overview()
        view = await service.master_json() if out["cluster"] else None
        return {"spark": out, "view": view or {}, "jobs": service.job_rows()[:20]}

    async def page(request: Request) -> Response:
        return ui.render("spark.html", **ui.base("spark", "Spark"), **await context())

    async def fragment(request: Request) -> Response:
        return ui.render("_spark.html", **await context())

    return [Route("/ui/spark", page), Route("/ui/frag/spark", fragment)]
