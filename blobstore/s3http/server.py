"""Serving the S3 app: hypercorn on trio, bound to the node's ``s3`` address."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from blobstore.s3http.app import S3App

log = logging.getLogger(__name__)


def s3_config(bind: str) -> Config:
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 60
    config.graceful_timeout = 2
    config.h11_max_incomplete_size = 64 * 1024  # headers; bodies stream
    config.include_server_header = False
    return config


async def serve_s3(app: S3App, bind: str, *,
                   task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound URLs."""
    await serve(app, s3_config(bind), task_status=task_status)  # type: ignore[arg-type]
