"""The API's ASGI application: routes, token check, errors as JSON.

Errors are ``{"error": {"code": ..., "message": ...}}`` with a status that fits:
401 without a valid token, 400 for bad input, 404 for unknown things, 409 for conflicts,
503 when this node cannot do it right now. A bad query parameter is a 400 whose error
also names it (``"param": "limit"``; see :func:`query_int`). A client that goes away
before its request body is complete is one INFO line in the log, not a traceback.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshcloud.api.auth import TokenAuth
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.kit.api import (  # noqa: F401  (re-exported for older callers)
    MAX_JSON_BODY,
    BadParam,
    error_response,
    field,
    query_int,
    query_str,
    read_json,
    status_for,
)
from meshcloud.web.origin import is_ui_path, ui_host_for, ui_redirect_target

if TYPE_CHECKING:
    from meshcloud.api.face import AgentFace

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/ui/login", "/ui/static/")


def only_disconnects(exc: BaseException) -> bool:
    """True when ``exc`` is a :class:`ClientDisconnect`, or a group of nothing else."""
    if isinstance(exc, ClientDisconnect):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(only_disconnects(inner) for inner in exc.exceptions)
    return False


class QuietDisconnect:
    """ASGI middleware: a client gone mid-body is logged as one INFO line (it is the
    client's doing, not a fault of ours) and, if nothing was sent yet, answered 400 (which
    the server drops when the connection is gone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except BaseException as exc:
            if not only_disconnects(exc):
                raise
            client = scope.get("client") or ("?", 0)
            log.info("HTTP %s %s from %s:%s: the client went away before its request body "
                     "was complete", scope.get("method"), scope.get("path"), *client)
            if not started:
                await error_response(400, "incomplete_body",
                                     "the request body ended early")(scope, receive, send)


class RequireToken:
    """ASGI middleware: 401 and no data unless the request carries the token."""

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            conn = HTTPConnection(scope)
            if scope["type"] == "http" and is_ui_path(path):
                raw_path = scope.get("raw_path") or path.encode()
                target = ui_redirect_target(conn.headers.get("host", ""),
                                            raw_path.decode("latin-1"),
                                            scope.get("query_string", b"").decode("latin-1"))
                if target is not None:  # the UI lives on its own name (web/origin.py)
                    await RedirectResponse(target, status_code=307)(scope, receive, send)
                    return
            if not path.startswith(PUBLIC_PATHS) and not self.auth.allowed(conn):
                if path.startswith("/ui") or path == "/":
                    from meshcloud.web.render import render_text

                    response: Response = HTMLResponse(
                        render_text("login_failed.html", heading="Not logged in"),
                        status_code=401)
                else:
                    response = error_response(401, "unauthorized",
                                              "missing or wrong API token (see api.token in "
                                              "the data dir, or `meshcloud ui` for a login link)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="meshcloud"'
                await response(scope, receive, send)
                return
            if scope.get("method") in ("POST", "PUT", "DELETE", "PATCH") and not same_origin(conn):
                await error_response(403, "cross_origin", "cross-site request refused")(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def same_origin(conn: HTTPConnection) -> bool:
    """A browser's state-changing request must come from a page of this very node."""
    origin = conn.headers.get("origin")
    if origin is None or (origin == "null" and not conn.cookies):
        return True  # not a browser (CLI, boto3...): the bearer token is the proof
    host = conn.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def build_app(node: AgentFace) -> Starlette:
    auth = TokenAuth(node.datadir.api_token())

    async def status(request: Request) -> Response:
        return JSONResponse(node.status())

    async def peers(request: Request) -> Response:
        return JSONResponse(node.status()["peers"])

    async def members(request: Request) -> Response:
        return JSONResponse(node.members_view())

    async def create_invite(request: Request) -> Response:
        body = await read_json(request)
        ttl = field(body, "ttl_s", float, 3600.0)
        uses = field(body, "uses", int, 1)
        bootstrap = field(body, "bootstrap", list, None, items=str)
        if ttl <= 0 or ttl > 30 * 86400:
            raise MeshError("ttl_s must be between 0 and 30 days", code="bad_request")
        if not 1 <= uses <= 1000:
            raise MeshError("uses must be between 1 and 1000", code="bad_request")
        token = node.create_invite(ttl_s=ttl, uses=uses, bootstrap=bootstrap)
        return JSONResponse({"token": token.encode(),
                             "invite_id": token.invite.invite_id.hex(),
                             "expires_at": token.invite.body.expires_at,
                             "uses": uses, "bootstrap": list(token.invite.body.bootstrap)})

    async def revoke(request: Request) -> Response:
        from meshcloud.revocation import resolve_subject

        body = await read_json(request)
        text = field(body, "id", str, required=True)
        kind = field(body, "kind", str, None)
        if kind not in (None, "node", "invite"):
            raise MeshError("kind must be node or invite", code="bad_request")
        kind, subject = resolve_subject(text, node.known_node_ids(),
                                        node.records.known_invites(), kind)
        return JSONResponse(node.revoke(kind, subject))

    async def revocations(request: Request) -> Response:
        return JSONResponse([{"kind": k, "id": s.hex(), "at": at}
                             for k, s, at in node.records.revocations()])

    async def events(request: Request) -> Response:
        limit = query_int(request, "limit", 100, minimum=1, maximum=2000)
        kind = query_str(request, "kind", max_length=200)
        return JSONResponse(node.events.recent(limit, kind))

    async def ping_peer(request: Request) -> Response:
        peer = parse_peer(node.known_node_ids(), request.path_params["peer"])
        return JSONResponse(await node.diagnostics.ping(peer))

    async def hold_stream(request: Request) -> Response:
        body = await read_json(request)
        peer = parse_peer(node.known_node_ids(), field(body, "peer", str, required=True))
        await node.diagnostics.hold(peer)
        return JSONResponse({"peer": peer.hex(), "holding": True})

    async def bench_transport(request: Request) -> Response:
        body = await read_json(request)
        address = field(body, "address", str, required=True)
        quick = field(body, "quick", bool, False)
        return JSONResponse(await node.diagnostics.benchmark(address, quick=quick))

    async def leave(request: Request) -> Response:
        await node.leave()
        # stop the agent once the answer is out
        return JSONResponse({"left": True, "node": node.node_id.hex()},
                            background=BackgroundTask(node.request_stop))

    async def login_ticket(request: Request) -> Response:
        ticket = auth.new_login_ticket()
        host = request.headers.get("host", "")
        url = f"http://{ui_host_for(host) or host}/ui/login?ticket={ticket}"
        return JSONResponse({"ticket": ticket, "url": url})

    async def on_mesh_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MeshError)
        if isinstance(exc, BadParam):
            return error_response(400, exc.code, exc.message, param=exc.param)
        return error_response(status_for(exc), exc.code, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, "http_error", str(exc.detail))

    routes = [
        Route("/v1/status", status),
        Route("/v1/peers", peers),
        Route("/v1/members", members),
        Route("/v1/leave", leave, methods=["POST"]),
        Route("/v1/invites", create_invite, methods=["POST"]),
        Route("/v1/events", events),
        Route("/v1/revocations", revoke, methods=["POST"]),
        Route("/v1/revocations", revocations),
        Route("/v1/ui/ticket", login_ticket, methods=["POST"]),
        Route("/v1/peers/{peer}/ping", ping_peer, methods=["POST"]),
        Route("/v1/debug/hold", hold_stream, methods=["POST"]),
        Route("/v1/debug/bench-transport", bench_transport, methods=["POST"]),
    ]
    routes.extend(node_routes(node))
    from meshcloud.web.routes import ui_routes

    routes.extend(ui_routes(node, auth))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(QuietDisconnect), Middleware(RequireToken, auth=auth)],
        exception_handlers={MeshError: on_mesh_error, HTTPException: on_http_error},
    )
    app.state.node = node
    app.state.auth = auth
    return app


def node_routes(node: AgentFace) -> list[Route]:
    """Routes contributed by the node's services (workloads, storage, ingress...)."""
    return [route for service in node.services for route in service.api_routes()]


def parse_peer(known: list[bytes], text: str) -> bytes:
    """A peer id from full hex or a unique prefix of a ``known`` id."""
    text = text.strip().lower()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
    except ValueError:
        pass
    found = [p for p in known if p.hex().startswith(text)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"no known node id starts with {text!r}")
    raise MeshError(f"{text!r} matches {len(found)} nodes; give more digits",
                    code="bad_request")
