"""UI routes: the login link, the pages of every module, placeholders, static files.

Pages are GET only; changes go through the JSON API (``fetch`` / ``XMLHttpRequest`` from
the page, which the API's same-origin check lets through because they come from this very
node) or, for the invite form, a same-origin form post. The session cookie set by the
one-time login link is HttpOnly and SameSite=Strict, so another site can neither read it
nor make the browser send it; it is set by the UI's own name, ``ui.localhost:PORT``, so
that it never reaches other services on 127.0.0.1, and it is honoured only with that
Host (:mod:`.origin`).

Page modules: :mod:`.mesh`, :mod:`.events` (and the SSE stream), :mod:`.invite`. Every
service brings its own pages through ``ui_routes(ui)`` and its navigation entries through
``nav()`` (see :mod:`meshcloud.kit.service`); a page no service serves yet shows its
placeholder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from meshcloud.api.auth import SESSION_COOKIE, TokenAuth
from meshcloud.web import events, invite, mesh
from meshcloud.web.render import HERE, NAV, PLACEHOLDER_TEXT, UiContext, merge_nav, render

if TYPE_CHECKING:
    from meshcloud.api.face import AgentFace

SESSION_MAX_AGE = 7 * 86400
"""Seconds a browser stays logged in (the session dies with the agent process anyway)."""


def ui_routes(node: AgentFace, auth: TokenAuth) -> list[Route | Mount]:
    service_nav = [entry for service in node.services for entry in service.nav()]
    nav = merge_nav(NAV, service_nav)
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
    for service in node.services:
        routes.extend(service.ui_routes(ui))
    served = {entry[0] for entry in service_nav}
    for page, label, href, ready in nav:
        if not ready and page not in served:
            routes.append(Route(href, placeholder(page, label)))
    return routes
