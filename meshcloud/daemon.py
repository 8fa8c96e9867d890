"""`meshcloud up`: the agent process.

One trio run, one root nursery holding the node. SIGINT and SIGTERM cancel it, which
stops every service in order (structured concurrency: nothing outlives the nursery), then
the process exits 0. A second signal while stopping exits at once.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import trio

from meshcloud.client import pid_alive
from meshcloud.config import NodeConfig, load_config
from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError
from meshcloud.logs import setup_logging

if TYPE_CHECKING:
    from meshcloud.node import Node

log = logging.getLogger("meshcloud.agent")


def run_agent(datadir: DataDir, settings: dict[str, object], *, log_level: str | None) -> int:
    datadir.require()
    info = datadir.runtime_info()
    if info and info.get("pid") and pid_alive(info["pid"]):
        raise MeshError(f"an agent is already running for {datadir.path} (pid {info['pid']})")
    config = load_config(datadir.config_path).with_overrides(**settings)
    setup_logging(log_level or config.log_level, datadir.log_path)
    return trio.run(_main, datadir, config)


async def _main(datadir: DataDir, config: NodeConfig) -> int:
    from meshcloud.node import Node

    node = Node(datadir, config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            print_ready(node)

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("stopping", extra={"signal": signal.Signals(signum).name})
                    break
                nursery.cancel_scope.cancel()

            async def on_request() -> None:
                await node.stop_requested.wait()
                log.info("stopping", extra={"why": "left the mesh"})
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_request)
    return 0


def print_ready(node: Node) -> None:
    api = node.api_urls[0] if node.api_urls else "-"
    print(f"meshcloud agent up: node {node.node_id.hex()[:12]} of mesh "
          f"{node.mesh.mesh_name!r}; peers on {', '.join(node.transport.listen_addresses)}; "
          f"API {api}", flush=True)
