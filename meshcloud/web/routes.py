"""UI routes: the login link, the pages of every module, placeholders, static files.

Pages are GET only; changes go through the JSON API (``fetch`` / ``XMLHttpRequest`` from
the page, which the API's same-origin check lets through because they come from this very
node) or, for the invite form, a same-origin form post. The session cookie set by the
one-time login link is HttpOnly and SameSite=Strict, so another site can neither read it
nor make the browser send it; it is set by the UI's own name, ``ui.localhost:PORT``, so
that it never reaches other services on 127.0.0.1, and it is honoured only with that
Host (:mod:`.origin`).

Page modules: :mod:`.mesh`, :mod:`.events` (and the SSE stream), :mod:`.invite`,
:mod:`.storage` (when the node runs the storage service), :mod:`.workloads` (when it runs
the workload service). A service may also bring its own pages through ``ui_routes(base,
render)`` and ``nav()`` (see :mod:`meshcloud.agent.compose`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from meshcloud.api.auth import SESSION_COOKIE, TokenAuth
from meshcloud.web import events, invite, mesh, storage, workloads
from meshcloud.web.render import HERE, NAV, PLACEHOLDER_TEXT, UiContext, merge_nav, render

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

SESSION_MAX_AGE = 7 * 86400
"""Seconds a browser stays logged in (the session dies with the agent process anyway)."""

BUILT_IN_PAGES = {"storage": storage.routes, "workloads": workloads.routes}
"""Pages of services this package renders itself, mounted when the node runs the service."""


def ui_routes(node: Node, auth: TokenAuth) -> list[Route | Mount]:
    services = {s.name for s in getattr(node, "services", [])}
    built_in = [(page, label, href, True) for page, label, href, _ in NAV
                if page in BUILT_IN_PAGES and page in services]
    nav = merge_nav(merge_nav(NAV, built_in), node.extra_nav())
    ui = UiContext(node=node, auth=auth, nav=nav)

    async def login(request: Request) -> Response:
        session = auth.redeem_ticket(request.query_params.get("ticket", ""),
                                     request.headers.get("host", ""))
        if session is None:
            return render("login_failed.html", status_code=401,
                          heading="This login link has expired or was already used")
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict",
                            path="/", max_age=SESSION_MAX_AGE)
        return response

    def placeholder(page: str, title: str) -> Callable[[Request], Awaitable[Response]]:
        async def show(request: Request) -> Response:
            return render("placeholder.html", **ui.base(page, title),
                          text=PLACEHOLDER_TEXT.get(page, ""))

        return show

    async def to_mesh(request: Request) -> Response:
        return RedirectResponse("/ui/")

    routes: list[Route | Mount] = [
        Route("/ui/login", login),
        Route("/ui", to_mesh),
        Route("/", to_mesh),
        *mesh.routes(ui),
        *events.routes(ui),
        *invite.routes(ui),
        Mount("/ui/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    for page, build in BUILT_IN_PAGES.items():
        if page in services:
            routes.extend(build(ui))
    served = {entry[0] for entry in node.extra_nav()}
    for page, label, href, ready in nav:
        if not ready and page not in served:
            routes.append(Route(href, placeholder(page, label)))
    for extra in node.ui_route_providers:
        routes.extend(extra(ui.base, render))
    return routes
