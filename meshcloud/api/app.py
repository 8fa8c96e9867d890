"""The API's ASGI application: routes, token check, errors as JSON.

Errors are ``{"error": {"code": ..., "message": ...}}`` with a status that fits:
401 without a valid token, 400 for bad input, 404 for unknown things, 409 for conflicts,
503 when this node cannot do it right now.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from meshcloud.api.auth import TokenAuth
from meshcloud.errors import (
    AuthError,
    ConfigError,
    InviteError,
    MeshError,
    NotFoundError,
    TransportError,
)

if TYPE_CHECKING:
    from meshcloud.node import Node

MAX_JSON_BODY = 1 << 20
"""API request bodies are small documents; 1 MiB is plenty and stops memory abuse."""

PUBLIC_PATHS = ("/ui/login", "/ui/static/")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def status_for(exc: MeshError) -> int:
    if isinstance(exc, InviteError | ConfigError):
        return 400
    if isinstance(exc, AuthError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, TransportError):
        return 503
    return {"conflict": 409, "not_admin": 403, "bad_request": 400}.get(exc.code, 400)


class RequireToken:
    """ASGI middleware: 401 and no data unless the request carries the token."""

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            conn = HTTPConnection(scope)
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


async def read_json(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise MeshError(f"request body over {MAX_JSON_BODY} bytes", code="bad_request")
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
        raise MeshError(f"request body is not JSON: {exc}", code="bad_request") from None
    except RecursionError:
        raise MeshError("request body is nested too deeply", code="bad_request") from None
    if not isinstance(value, dict):
        raise MeshError("request body must be a JSON object", code="bad_request")
    return value


def field(body: dict[str, Any], name: str, kind: type, default: Any = None,
          *, required: bool = False, items: type | None = None) -> Any:
    """``body[name]`` checked to be a ``kind`` (a list's members ``items``); floats finite."""
    if name not in body or body[name] is None:
        if required:
            raise MeshError(f"missing field {name!r}", code="bad_request")
        return default
    value = body[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1000 else math.inf
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MeshError(f"field {name!r} must be {kind.__name__}", code="bad_request")
    if kind is float and not math.isfinite(value):  # JSON's NaN, Infinity, 1e999
        raise MeshError(f"field {name!r} must be a finite number", code="bad_request")
    if items is not None and not all(type(item) is items for item in value):
        raise MeshError(f"field {name!r} must hold only {items.__name__} values",
                        code="bad_request")
    return value


def build_app(node: Node) -> Starlette:
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

    async def events(request: Request) -> Response:
        limit = min(int(request.query_params.get("limit", "100")), 2000)
        kind = request.query_params.get("kind")
        return JSONResponse(node.events.recent(limit, kind))

    async def ping_peer(request: Request) -> Response:
        from meshcloud.diagnostics import parse_peer

        peer = parse_peer(node, request.path_params["peer"])
        return JSONResponse(await node.diagnostics.ping(peer))

    async def hold_stream(request: Request) -> Response:
        from meshcloud.diagnostics import parse_peer

        body = await read_json(request)
        peer = parse_peer(node, field(body, "peer", str, required=True))
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
        return JSONResponse({"ticket": auth.new_login_ticket()})

    async def on_mesh_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MeshError)
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
        middleware=[Middleware(RequireToken, auth=auth)],
        exception_handlers={MeshError: on_mesh_error, HTTPException: on_http_error},
    )
    app.state.node = node
    app.state.auth = auth
    return app


def node_routes(node: Node) -> list[Route]:
    """Routes contributed by the node's services (membership, workloads, storage...)."""
    routes: list[Route] = []
    for provider in getattr(node, "route_providers", []):
        routes.extend(provider())
    return routes
