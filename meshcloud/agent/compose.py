"""The composition root: which services a node runs, its CLI verbs, and its HTTP server.

This is the only module that imports the domain packages (``blobstore/``, ``apps/``) and
the agent's API server (tests/test_layers.py holds the code to that). A service is built
from the node's :class:`~meshcloud.kit.service.NodeContext` and implements
:class:`~meshcloud.kit.service.Service`; adding one is a line in :func:`build_services`
(and one in :func:`load_cli_verbs` for its verbs). See docs/architecture.md, "How to add
a service".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

    from meshcloud.api.face import AgentFace
    from meshcloud.kit.service import NodeContext, Service


def build_services(ctx: NodeContext) -> list[Service]:
    """Every service of a node, in start order."""
    from apps.ingress.service import IngressService
    from apps.sites.service import SiteService
    from apps.spark.service import SparkService
    from apps.workloads.service import WorkloadService
    from blobstore.node_service import BlobService
    from vnet.service import VNetService

    workloads, vnets = WorkloadService(ctx), VNetService(ctx)
    workloads.network = vnets.replica_network  # replicas of attached workloads
    blobs, ingress = BlobService(ctx), IngressService(ctx, workloads)
    sites = SiteService(ctx, blobs)
    if ctx.config.profile == "phone":  # no databases, function executors or Spark on a phone
        ingress.add_host_lookup(sites.lookup)
        return [workloads, blobs, ingress, sites, vnets]
    from apps.db.service import DbService
    from apps.functions.service import FunctionService

    functions = FunctionService(ctx, blobs, workloads)
    ingress.add_host_lookup(functions.lookup)  # POST /fn/NAME on any host
    ingress.add_host_lookup(sites.lookup)
    return [workloads, blobs, ingress, sites, functions, DbService(ctx, blobs),
            vnets, SparkService(ctx, workloads, blobs)]


def load_cli_verbs() -> None:
    """Import every service's CLI module: each registers its verbs with
    :mod:`meshcloud.kit.cli`. An import error here fails the command line loudly."""
    import apps.db.cli
    import apps.functions.cli
    import apps.ingress.cli
    import apps.sites.cli
    import apps.spark.cli
    import apps.workloads.cli
    import apps.workloads.policy_cli  # noqa: F401  policy allow-root, revoke-root, list
    import blobstore.cli  # noqa: F401  bucket, ls, cp, s3 key
    import vnet.cli  # noqa: F401  vnet create, ls, rm, attach, detach, show


def clean_workloads(data_dir: Path) -> list[str]:
    """Stop what a stopped agent's replicas left running; what it did, one line each."""
    from apps.runtimes.cleanup import clean_workloads as clean

    return clean(data_dir)


async def serve_faces(node: AgentFace, *, task_status: trio.TaskStatus[list[str]]) -> None:
    """The node's API and web UI until cancelled (``nursery.start``: ``task_status`` gets
    the bound URLs). trio is imported by the agent only, not at module level here: every
    CLI command imports this module for its verbs and needs no event loop."""
    from meshcloud.api.server import serve_api

    await serve_api(node, task_status=task_status)
