"""Sans-IO choices of the HTTP ingress: the route table (host + path prefix → endpoint),
request checks against hostile input, and header rewriting. Pure functions, no I/O.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
              b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
DEFAULT_ROUTE_TIMEOUT = 60.0
"""Seconds a replica may take to start its response (and between two of its reads)."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods retried on another replica when the first fails before any response byte."""
_HOST_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_.-]{0,252})|\[[0-9a-f:.]{2,45}\])(?::\d{1,5})?$")


class BadRequest(Exception):
    """A request the ingress refuses before routing: ``status`` and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HttpRoute:
    host: str
    prefix: str
    """"" (every path) or ``/seg[/seg…]`` without a trailing slash."""
    workload: str
    endpoint: str
    timeout: float = DEFAULT_ROUTE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Checked:
    host: str
    """Lower case, no port, no trailing dot ("" for an HTTP/1.0 request without one)."""
    path: str
    """The percent-encoded path of the target (no query)."""
    upgrade: bool
    """A websocket (or other) ``Upgrade`` the replica may accept with a 101."""


# --- routes -----------------------------------------------------------------------------------


def split_domain(text: str) -> tuple[str, str]:
    """``shop.home/api/`` → (``shop.home``, ``/api``); ``shop.home`` → (``shop.home``, "")."""
    host, slash, rest = text.partition("/")
    prefix = ("/" + rest).rstrip("/") if slash else ""
    return host.lower().rstrip("."), prefix


def route_table(entries: Mapping[str, Any]) -> dict[str, list[HttpRoute]]:
    """{host: routes, longest prefix first} from the workloads' specs: each domain
    (``host[/prefix]``) goes to its workload's first published endpoint; a host+prefix
    claimed twice goes to the workload first by name."""
    table: dict[str, dict[str, HttpRoute]] = {}
    for name in sorted(entries):
        spec = entries[name].spec
        if not (spec.domains and spec.publish):
            continue
        timeout = float(getattr(spec, "route_timeout", 0) or DEFAULT_ROUTE_TIMEOUT)
        for domain in spec.domains:
            host, prefix = split_domain(domain)
            table.setdefault(host, {}).setdefault(
                prefix, HttpRoute(host, prefix, name, spec.publish[0][0], timeout))
    return {host: sorted(routes.values(), key=lambda r: -len(r.prefix))
            for host, routes in table.items()}


def match_route(table: Mapping[str, list[HttpRoute]], host: str, path: str
                ) -> HttpRoute | None:
    """The route of the longest prefix of ``path`` (whole segments) under ``host``."""
    for route in table.get(host, ()):
        p = route.prefix
        if not p or path == p or path.startswith(p + "/"):
            return route
    return None


# --- request checks ---------------------------------------------------------------------------


def _host_part(text: str) -> str:
    text = text.strip().lower()
    if text.startswith("["):
        return text.split("]")[0] + "]"
    return (text.rsplit(":", 1)[0] if ":" in text else text).rstrip(".")


def host_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's host name, lower case, without port or trailing dot."""
    for name, value in headers:
        if name.lower() == b"host":
            return _host_part(value.decode("latin-1"))
    return ""


def _has_token(headers: Iterable[tuple[bytes, bytes]], name: bytes, token: bytes) -> bool:
    return any(n.lower() == name and token in [t.strip().lower() for t in v.split(b",")]
               for n, v in headers)


def check_request(method: str, target: str, headers: Headers) -> Checked:
    """Refuse what a proxy must not pass on: several or malformed Host headers, a body
    framed both by ``Content-Length`` and ``Transfer-Encoding`` (two parsers on the way
    could disagree where the request ends: request smuggling), an absolute target
    naming another host, CONNECT, dot segments in the path (plain or percent-encoded)
    and backslashes. BadRequest says which."""
    hosts = [v.decode("latin-1").strip() for n, v in headers if n.lower() == b"host"]
    if len(hosts) > 1:
        raise BadRequest(400, "more than one Host header")
    names = {n.lower() for n, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise BadRequest(400, "both Content-Length and Transfer-Encoding")
    host = ""
    if hosts:
        if not _HOST_RE.match(hosts[0].lower()):
            raise BadRequest(400, "malformed Host header")
        host = _host_part(hosts[0])
    if method == "CONNECT":
        raise BadRequest(405, "CONNECT is not supported")
    if target == "*":
        return Checked(host, "*", False)
    if target.lower().startswith(("http://", "https://")):
        url = urlsplit(target)
        if not url.hostname:
            raise BadRequest(400, "bad absolute target")
        if _host_part(url.netloc) != host:
            raise BadRequest(400, "the target's host is not the Host header")
        path = url.path or "/"
    elif target.startswith("/"):
        path = target.split("?", 1)[0].split("#", 1)[0]
    else:
        raise BadRequest(400, "bad request target")
    decoded = unquote(path)
    if "\\" in decoded or "\x00" in decoded or \
            any(seg in (".", "..") for seg in decoded.split("/")):
        raise BadRequest(400, "dot segments or backslashes in the path")
    upgrade = _has_token(headers, b"connection", b"upgrade") and \
        any(n.lower() == b"upgrade" for n, _ in headers)
    return Checked(host, path, upgrade)


# --- headers ----------------------------------------------------------------------------------


def _strip(headers: Iterable[tuple[bytes, bytes]], keep: frozenset[bytes] = frozenset()
           ) -> Headers:
    named = set(HOP_BY_HOP)
    for name, value in headers:  # headers a Connection header names are hop-by-hop too
        if name.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",") if t.strip()}
    named -= keep
    return [(n, v) for n, v in headers if n.lower() not in named]


def upstream_headers(headers: Iterable[tuple[bytes, bytes]], client_ip: str,
                     proto: str = "http", upgrade: bool = False) -> Headers:
    """Request headers for the replica: hop-by-hop ones dropped, X-Forwarded-For appended
    to, X-Forwarded-Proto/Host set, ``Expect`` dropped (the ingress answers it),
    ``Connection: keep-alive`` (or, for an upgrade, the
    ``Upgrade`` header kept and ``Connection: upgrade``)."""
    headers = list(headers)
    keep = frozenset({b"upgrade"}) if upgrade else frozenset()
    out = [(n, v) for n, v in _strip(headers, keep)
           if n.lower() not in (b"x-forwarded-proto", b"x-forwarded-host",
                                b"x-forwarded-for", b"expect")]
    prior = [v for n, v in headers if n.lower() == b"x-forwarded-for"]
    chain = b", ".join([*prior, client_ip.encode()])
    host = next((v for n, v in headers if n.lower() == b"host"), b"")
    out += [(b"x-forwarded-for", chain), (b"x-forwarded-proto", proto.encode()),
            (b"x-forwarded-host", host),
            (b"connection", b"upgrade" if upgrade else b"keep-alive")]
    return out


def downstream_headers(headers: Iterable[tuple[bytes, bytes]], upgrade: bool = False
                       ) -> Headers:
    """Response headers for the client: hop-by-hop ones dropped (h11 frames the body);
    a 101 keeps ``Upgrade`` and says ``Connection: upgrade``."""
    if upgrade:
        return [*_strip(headers, frozenset({b"upgrade"})), (b"connection", b"upgrade")]
    return _strip(headers)


# --- the proxy's fast path: a request and a plain response without h11 ----------------------

_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_FIELD_RE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*")


@dataclass(frozen=True, slots=True)
class PlainResponse:
    """A response head the proxy may pass on without h11: a final status with a body
    of one declared ``Content-Length``."""

    status: int
    reason: bytes
    headers: Headers
    """Names lower case, as received otherwise."""
    length: int
    close: bool
    """The replica will close the connection after this response."""


def wants_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return _has_token(headers, b"connection", b"close")


def plain_response(head: bytes) -> PlainResponse | None:
    """``head`` (a response's status line and header lines, without the blank line) as a
    :class:`PlainResponse`; None when it is anything else (an informational status,
    204/304, no or several Content-Length, a Transfer-Encoding, HTTP/1.0, a line h11
    would refuse…): then h11 parses it."""
    lines = head.split(b"\r\n")
    status_line = _STATUS_RE.fullmatch(lines[0])
    if status_line is None or not lines[0].startswith(b"HTTP/1.1 "):
        return None
    status = int(status_line.group(1))
    if status < 200 or status in (204, 304):
        return None
    headers: Headers = []
    length = -1
    for line in lines[1:]:
        field = _FIELD_RE.fullmatch(line)
        if field is None:
            return None
        name, value = field.group(1).lower(), field.group(2)
        if name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        headers.append((name, value))
    if length < 0:
        return None
    return PlainResponse(status, status_line.group(2) or b"", headers, length,
                         wants_close(headers))


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """An HTTP/1.1 request head from parts h11 validated (the client's request) and the
    proxy's own headers."""
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        out += [name, b": ", value, b"\r\n"]
    out.append(b"\r\n")
    return b"".join(out)


def response_head(response: PlainResponse) -> bytes:
    """The head the client gets for ``response``: its status and its headers without
    the hop-by-hop ones (the declared length stays)."""
    out = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason)]
    for name, value in downstream_headers(response.headers):
        out += [name, b": ", value, b"\r\n"]
    out.append(b"\r\n")
    return b"".join(out)


def not_found_page(host: str) -> bytes:
    name = html.escape(host or "(none)")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>404 Not Found"
            f"</title></head>\n<body><h1>404 Not Found</h1>\n<p>No site or app of this mesh "
            f"answers to <code>{name}</code> at this path.</p>\n<p><small>meshcloud ingress"
            f"</small></p></body></html>\n").encode()
