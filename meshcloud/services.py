"""The node's pluggable services: storage, workloads, and whatever comes next.

A service is an object built from the node (after its identity, transport and state
exist) with an ``async run(task_status=...)`` the node starts in its nursery before the
API, and optionally:

* ``api_routes() -> list[Route]``: JSON API routes (token-protected like the rest);
* ``ui_routes(base, render) -> list[Route]``: web UI pages (``base(page, title)`` gives
  the layout context, ``render(template, **context)`` renders one);
* ``nav() -> list[tuple[page, label, href, ready]]``: entries for the UI's navigation;
* ``status() -> dict``: a section for ``GET /v1/status``.

To add one, write it in its own package and add one line to :func:`build_services`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    from meshcloud.node import Node


class Service(Protocol):
    name: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None: ...


def build_services(node: Node) -> list[Any]:
    """Every optional service of a node, in start order."""
    from apps.functions.service import FunctionService
    from apps.ingress.service import IngressService
    from apps.sites.service import SiteService
    from apps.workloads.service import WorkloadService
    from blobstore.node_service import BlobService

    workloads = WorkloadService(node)
    blobs, ingress = BlobService(node), IngressService(node, workloads)
    sites = SiteService(node, blobs)
    functions = FunctionService(node, blobs)
    ingress.add_host_lookup(functions.lookup)  # POST /fn/NAME on any host
    ingress.add_host_lookup(sites.lookup)
    services: list[Any] = [workloads, blobs, ingress, sites, functions]
    return services
