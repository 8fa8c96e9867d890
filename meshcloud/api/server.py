"""Serving the API: hypercorn on trio, bound where the config says (127.0.0.1 by default).

Slow clients are bounded by :class:`~meshcloud.kit.limits.HttpLimits` (headers and
bodies; see :mod:`meshcloud.kit.guard`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshcloud.api.app import build_app
from meshcloud.kit.guard import BodyDeadline, server_config
from meshcloud.kit.limits import DEFAULT_LIMITS, HttpLimits

if TYPE_CHECKING:
    from meshcloud.api.face import AgentFace

log = logging.getLogger(__name__)


def hypercorn_config(bind: str, limits: HttpLimits = DEFAULT_LIMITS) -> Config:
    return server_config(bind, limits)


async def serve_api(
    node: AgentFace, *, limits: HttpLimits = DEFAULT_LIMITS,
    bind: str | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the node's API and UI until cancelled (on ``bind``, by default the
    configured ``api`` address); ``task_status.started`` gets the bound URLs."""
    app = BodyDeadline(build_app(node), limits)
    await serve(app, hypercorn_config(bind or node.config.api, limits),  # type: ignore[arg-type]
                task_status=task_status)
