"""The Events page and the event stream every live page listens to.

``GET /v1/events/stream`` is Server-Sent Events: one ``data:`` line of JSON per node event
(``kind``, ``at``, ``node``, facts), a comment line every :data:`SSE_KEEPALIVE` seconds
when idle. The page shows the node's recent events and prepends new ones as they arrive;
filtering (by family of kind, and by text) happens in the browser, so it never loses
events that arrive while a filter is set.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from meshcloud.web.render import fmt_bytes, render

if TYPE_CHECKING:
    from meshcloud.api.face import AgentFace
    from meshcloud.web.render import UiContext

SSE_KEEPALIVE = 15.0
"""Seconds between comment lines on an idle event stream (keeps proxies from closing it)."""
PAGE_EVENTS = 300
"""Events the page starts with (the feed keeps more; the API pages through them)."""
FAMILIES = ("member", "peer", "node", "workload", "replica", "object", "repair", "scrub",
            "gc", "invite", "storage")
"""Families offered as filters even before one of their events happened."""
HIDDEN_FACTS = ("kind", "at", "seq", "node")
_HEX_ID = re.compile(r"^[0-9a-f]{32,}$")


BYTE_FACTS = ("size", "bytes", "deleted_bytes")
"""Facts that are byte counts (shown as KiB, MiB...)."""


def fact_text(value: Any, key: str = "") -> str:
    """A fact as the feed shows it: long hex ids cut to 8 digits, sizes in KiB/MiB, lists
    joined."""
    if key in BYTE_FACTS and isinstance(value, int) and not isinstance(value, bool):
        return fmt_bytes(value)
    if isinstance(value, str) and _HEX_ID.match(value):
        return value[:8]
    if isinstance(value, list | tuple):
        return ", ".join(fact_text(v) for v in value)
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


FOLDED_KINDS = ("member.updated",)
"""Kinds whose runs (same kind, same peer) show as one line with a count (app.js folds the
live ones the same way)."""


def fold_repeats(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest-first views with each run of a folded kind for one peer made one line."""
    out: list[dict[str, Any]] = []
    for view in views:
        last = out[-1] if out else None
        if (last is not None and view["kind"] in FOLDED_KINDS and last["kind"] == view["kind"]
                and last["peer"] == view["peer"]):
            last["repeat"] += 1
            continue
        out.append(view)
    return out


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    return {"kind": event.get("kind", ""), "family": str(event.get("kind", "")).split(".")[0],
            "at": event.get("at"), "node": event.get("node", ""),
            "peer": str(event.get("peer", "")), "repeat": 1,
            "facts": [(k, fact_text(v, k), str(v), time_fact(k, v)) for k, v in event.items()
                      if k not in HIDDEN_FACTS]}


def time_fact(key: str, value: Any) -> int | None:
    """Wall-clock milliseconds of a fact named ``*_at`` (shown as a date), else None."""
    if key.endswith("_at") and isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def routes(ui: UiContext) -> list[Route]:
    async def page(request: Request) -> Response:
        events = fold_repeats([event_view(e)
                               for e in reversed(ui.node.events.recent(PAGE_EVENTS))])
        families = sorted({e["family"] for e in events} | set(FAMILIES))
        return render("events.html", **ui.base("events", "Events"), events=events,
                      families=families)

    async def stream(request: Request) -> Response:
        return event_stream(ui.node)

    return [Route("/ui/events", page), Route("/v1/events/stream", stream)]


def event_stream(node: AgentFace) -> Response:
    """Server-sent events: every node event, as JSON, as it happens."""
    receive = node.events.subscribe()

    async def lines() -> Any:
        yield ": meshcloud event stream\nretry: 2000\n\n"
        with receive:
            while True:
                with trio.move_on_after(SSE_KEEPALIVE) as scope:
                    event = await receive.receive()
                if scope.cancelled_caught:
                    yield ": keepalive\n\n"
                    continue
                yield f"data: {json.dumps(event, default=str)}\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
