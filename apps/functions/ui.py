"""The Functions page of the web UI: every function with its versions (roll back to any
kept one), its metrics over the mesh (invocations, errors, p50/p99 duration, cold
starts, instances per node), its recent invocations and their log lines; a deploy form
(a zip archive, or the CLI command) and an invoke form that shows the result and the
invocation's logs.

Changes and invocations are requests to the JSON API from the page (``functions.js``,
served here, on top of the UI's ``app.js``):

=============================================  ====================================
deploy a zip                                   ``POST /v1/functions/NAME/zip?handler=``
invoke with a payload                          ``POST /v1/functions/NAME/invoke``
one invocation's log lines                     ``GET /v1/functions/NAME/logs?request_id=``
roll back / remove                             ``POST .../rollback``, ``DELETE ...``
=============================================  ====================================

Counters of other nodes arrive through the replicated ``fn_stats`` table, which raises no
event here: the list re-renders every few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from apps.functions.service import FunctionService
    from meshcloud.kit.ui import UiKit

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
SCRIPT = HERE / "static" / "functions.js"
DEFAULT_INGRESS = "127.0.0.1:7080"


def function_view(fn: dict[str, Any]) -> dict[str, Any]:
    """A function's JSON with what the page shows beside it: its current version and
    the stats in display form."""
    cur = next((v for v in fn["versions"] if v["version"] == fn["current"]), None)
    stats = fn.get("stats") or {}
    instances = stats.get("instances") or {}
    return {**fn, "cur": cur, "stats": stats, "instances_total": sum(instances.values()),
            "error_rate": (round(100 * stats["errors"] / stats["invocations"], 1)
                           if stats.get("invocations") else 0.0)}


def routes(ui: UiKit, fns: FunctionService) -> list[Route]:
    ui.use_templates(TEMPLATES)

    def context() -> dict[str, Any]:
        ingress = ui.service("ingress")
        address = str(getattr(ingress, "http_address", "") or "") or DEFAULT_INGRESS
        return {"functions": [function_view(f) for f in fns.overview()],
                "ingress": address}

    async def page(request: Request) -> Response:
        return ui.render("functions.html", **ui.base("functions", "Functions"), **context())

    async def fragment(request: Request) -> Response:
        return ui.render("_functions.html", **context())

    async def script(request: Request) -> Response:
        return FileResponse(SCRIPT, media_type="text/javascript",
                            headers={"cache-control": "no-cache"})

    return [Route("/ui/functions", page), Route("/ui/frag/functions", fragment),
            Route("/ui/functions/functions.js", script)]
