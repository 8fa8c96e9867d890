"""The sites service of a node (built in :mod:`meshcloud.agent.compose`): tables, the
ingress host lookup, a loop publishing this node's request counters, API routes, UI page
and navigation."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from apps.ingress.targets import HostHandler, HostRequest, HostResponse
from apps.sites.core import Sites, cache_bytes_from_env
from apps.sites.storage import BlobStorage
from apps.sites.tables import SITE_STATS, SITES
from meshcloud.clock import next_tick
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

STATS_EVERY = 2.0
PHONE_STATS_EVERY = 30.0
"""A phone serves few site requests: its counters go out rarely (it sleeps between)."""
"""Seconds between writes of this node's request counters (only changed ones)."""


class SiteHandler:
    """The ingress's handler for one site's domains."""

    __slots__ = ("name", "sites")

    def __init__(self, sites: Sites, name: str) -> None:
        self.sites = sites
        self.name = name

    async def respond(self, request: HostRequest) -> HostResponse:
        return await self.sites.respond(self.name, request)


class SiteService(ServiceBase):
    name = "sites"
    events = ("site.deployed", "site.rolled_back", "site.removed")

    def __init__(self, node: NodeContext, blobs: Any) -> None:
        self.node = node
        node.state.open_table(SITES)
        node.state.open_table(SITE_STATS)
        self.sites = Sites(node.state, BlobStorage(blobs), node_id=node.node_id,
                           wall_ms=node.clock.wall_ms, monotonic=node.clock.monotonic,
                           emit=node.events.emit, cache_bytes=cache_bytes_from_env())

    def tables(self) -> tuple[Any, ...]:
        return (SITES, SITE_STATS)

    def lookup(self, host: str, path: str) -> HostHandler | None:
        """The ingress's :data:`~apps.ingress.targets.HostLookup`."""
        name = self.sites.site_for(host)
        return SiteHandler(self.sites, name) if name is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        every = PHONE_STATS_EVERY if self.node.config.profile == "phone" else STATS_EVERY
        while True:
            await trio.sleep_until(next_tick(trio.current_time(), every))
            try:
                self.sites.publish_stats()
            except Exception:  # counters are best effort; serving goes on
                log.exception("publishing site counters failed")

    def api_routes(self) -> list[Any]:
        from apps.sites.api import routes

        return routes(self.sites)

    def ui_routes(self, ui: Any) -> list[Any]:
        from apps.sites.ui import routes

        return routes(ui, self.sites)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("sites", "Sites", "/ui/sites", True)]

    def status(self) -> dict[str, Any]:
        cache = self.sites.cache
        return {"sites": len(set(self.sites.domains().values())), "cache_bytes": cache.size,
                "cache_files": len(cache), "cache_hits": cache.hits,
                "cache_misses": cache.misses}
