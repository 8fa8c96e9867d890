"""TCP and HTTP health probes (trio), and the loop that drives a :class:`HealthCore`.

A probe returns ``(ok, detail)`` and never raises for the probed program's faults (refused,
reset, garbage, timeout): those are failed probes. Callers bound each probe with the check's
timeout; the loop does it for them. Command probes are runtime-specific (``podman exec`` or
a host process), so runtimes pass their own ``probe`` callable to :func:`health_loop`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from apps.runtimes.base import HealthState
from apps.runtimes.health import HealthCore

log = logging.getLogger(__name__)

MAX_STATUS_LINE = 1024
"""Bytes read looking for the HTTP status line; a server sending more without CRLF fails."""

Probe = Callable[[], Awaitable[tuple[bool, str]]]


async def probe_tcp(host: str, port: int) -> tuple[bool, str]:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        return False, f"tcp {host}:{port}: {exc.strerror or exc}"
    await stream.aclose()
    return True, f"tcp {host}:{port} accepted"


async def probe_http(host: str, port: int, path: str) -> tuple[bool, str]:
    """``GET path`` over HTTP/1.0; 2xx and 3xx are healthy."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        return False, f"http {host}:{port}: {exc.strerror or exc}"
    try:
        request = (f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: meshcloud-health"
                   "\r\nConnection: close\r\n\r\n").encode()
        await stream.send_all(request)
        buf = b""
        while b"\r\n" not in buf and len(buf) < MAX_STATUS_LINE:
            chunk = await stream.receive_some(MAX_STATUS_LINE)
            if not chunk:
                break
            buf += chunk
    except (OSError, trio.BrokenResourceError) as exc:
        return False, f"http {host}:{port}{path}: {exc}"
    finally:
        await stream.aclose()
    line = buf.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"http {host}:{port}{path}: not an HTTP response ({line[:60]!r})"
    status = int(parts[1])
    return 200 <= status < 400, f"http {host}:{port}{path}: {status}"


async def health_loop(core: HealthCore, probe: Probe,
                      on_change: Callable[[HealthState], None] | None = None) -> None:
    """Probe forever at the core's deadlines (trio's clock); cancel to stop."""
    while True:
        await trio.sleep_until(core.next_deadline())
        core.on_probe_started(trio.current_time())
        ok, detail = False, f"timed out after {core.check.timeout:g}s"
        with trio.move_on_after(core.check.timeout):
            ok, detail = await probe()
        changed = core.on_probe_result(ok, detail, trio.current_time())
        if changed is not None:
            log.info("health %s: %s", changed.value, core.detail)
            if on_change is not None:
                on_change(changed)
