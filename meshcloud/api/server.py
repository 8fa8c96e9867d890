"""Serving the API: hypercorn on trio, bound where the config says (127.0.0.1 by default)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshcloud.api.app import build_app

if TYPE_CHECKING:
    from meshcloud.node import Node

log = logging.getLogger(__name__)


def hypercorn_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    config.graceful_timeout = 2
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def serve_api(
    node: Node, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    app = build_app(node)
    await serve(app, hypercorn_config(node.config.api), task_status=task_status)
