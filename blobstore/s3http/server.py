"""Serving the S3 app: hypercorn on trio, bound to the node's ``s3`` address.

Slow clients are bounded by :class:`~meshcloud.kit.limits.HttpLimits`: headers within
``header_timeout``, bodies piece by piece (:class:`~meshcloud.kit.guard.BodyDeadline`;
a cut upload reads as a client that went away, so nothing is stored).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshcloud.kit.guard import BodyDeadline, server_config
from meshcloud.kit.limits import DEFAULT_LIMITS, HttpLimits

log = logging.getLogger(__name__)


def s3_config(bind: str, limits: HttpLimits = DEFAULT_LIMITS) -> Config:
    return server_config(bind, limits)


async def serve_s3(app: Any, bind: str, *, limits: HttpLimits = DEFAULT_LIMITS,
                   task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` (the :class:`~blobstore.s3http.app.S3App`) until cancelled;
    ``task_status.started`` gets the bound URLs."""
    await serve(BodyDeadline(app, limits), s3_config(bind, limits),  # type: ignore[arg-type]
                task_status=task_status)
