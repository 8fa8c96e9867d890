"""JSON API helpers for the services' routes: reading bodies and fields, query parameters,
errors as ``{"error": {"code": ..., "message": ...}}`` with a fitting status.

The agent's server (:mod:`meshcloud.api.app`) and every domain's ``api.py`` use these, so a
domain never imports the server.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from meshcloud.errors import (
    AuthError,
    ConfigError,
    InviteError,
    MeshError,
    NotFoundError,
    TransportError,
)

MAX_JSON_BODY = 1 << 20
"""API request bodies are small documents; 1 MiB is plenty and stops memory abuse."""

class BadParam(MeshError):
    """A query parameter that is missing, malformed or out of range."""

    code = "bad_param"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"query parameter {param!r} {message}")
        self.param = param


def error_response(status: int, code: str, message: str,
                   **extra: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}},
                        status_code=status)


def query_int(request: Request, name: str, default: int, *, minimum: int,
              maximum: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent or empty), or
    :class:`BadParam` unless it is a plain decimal integer in ``[minimum, maximum]``."""
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise BadParam(name, f"must be an integer, not {text[:40]!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise BadParam(name, f"must be between {minimum} and {maximum}, not {value}")
    return value


def query_str(request: Request, name: str, default: str | None = None, *,
              max_length: int = 1024) -> str | None:
    """The text query parameter ``name``, or :class:`BadParam` when it is too long."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if len(text) > max_length:
        raise BadParam(name, f"is longer than {max_length} characters")
    return text


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
