"""The Sites page of the web UI: every site with its domains, versions (roll back to any
kept one), request counters summed over the nodes, and how to deploy or reach it.

Changes go through the JSON API from the page (``POST /v1/sites/NAME/rollback``,
``DELETE /v1/sites/NAME``); deploying a directory is the CLI's job (the page shows the
command). The list re-renders on ``site.*`` events and every few seconds, since other
nodes' deploys and counters arrive through the replicated tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from apps.sites.core import Sites

HERE = Path(__file__).parent
_env: Environment | None = None


def environment() -> Environment:
    """This package's templates first, then the UI's own (``base.html``, filters)."""
    global _env
    if _env is None:
        from meshcloud.web import render as web

        _env = Environment(loader=ChoiceLoader([FileSystemLoader(HERE / "templates"),
                                                FileSystemLoader(web.HERE / "templates")]),
                           autoescape=select_autoescape(["html"]), trim_blocks=True,
                           lstrip_blocks=True)
        _env.filters.update({"bytes": web.fmt_bytes, "short": web.short, "ago": web.ago})
    return _env


def render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(environment().get_template(template).render(**context),
                        status_code=status_code)


def routes(sites: Sites, base: Callable[[str, str], dict[str, Any]],
           ingress_address: Callable[[], str] = lambda: "") -> list[Route]:
    def context() -> dict[str, Any]:
        address = ingress_address() or "127.0.0.1:7080"
        return {"sites": sites.overview(), "ingress": address}

    async def page(request: Request) -> Response:
        return render("sites.html", **base("sites", "Sites"), **context())

    async def fragment(request: Request) -> Response:
        return render("_sites.html", **context())

    return [Route("/ui/sites", page), Route("/ui/frag/sites", fragment)]
