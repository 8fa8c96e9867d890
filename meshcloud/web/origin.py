"""The web UI's own origin: ``http://ui.localhost:PORT``, not ``http://127.0.0.1:PORT``.

Browsers send a cookie to every port of the host that set it, so a session cookie set by
``127.0.0.1:7947`` would also go to a workload published on ``127.0.0.1:8080`` whenever
the user opened it. Browsers resolve every ``*.localhost`` name to the loopback address,
so the UI moves to the name ``ui.localhost``: its host-only cookie goes to that name
only. A UI request (``/``, ``/ui/...``) that arrives through a loopback address or plain
``localhost`` is redirected to the same path on ``ui.localhost`` (a login link keeps its
unused ticket), and a session is honoured only with the Host it was issued for (see
:class:`~meshcloud.api.auth.TokenAuth`). The JSON API is still reached on the address
itself with the bearer token. An API bound to another address (a LAN address) is used
as it is: there is no name to move it to.

Everything here is plain string work on the Host header (no I/O).
"""

from __future__ import annotations

import ipaddress

UI_HOSTNAME = "ui.localhost"


def split_host(host: str) -> tuple[str, str]:
    """``("name", "port")`` of a Host header value (port ``""`` when absent); IPv6
    addresses keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port


def is_loopback_name(name: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``[::1]``)."""
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def ui_host_for(host: str) -> str | None:
    """The Host the UI should be used through when a request came with ``host``: the
    ``ui.localhost`` name with the same port for a loopback host, else None (already
    the UI's name, or an address with no name to move to)."""
    name, port = split_host(host)
    if not is_loopback_name(name):
        return None
    if port and not port.isdigit():
        return None
    return f"{UI_HOSTNAME}:{port}" if port else UI_HOSTNAME


def ui_redirect_target(host: str, path: str, query: str) -> str | None:
    """Where to send a UI request that came with ``host`` (None: serve it here)."""
    target = ui_host_for(host)
    if target is None:
        return None
    return f"http://{target}{path}" + (f"?{query}" if query else "")


def is_ui_path(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")
