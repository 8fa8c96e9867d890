"""`meshcloud up`: the agent process.

One trio run, one root nursery holding the node. SIGINT and SIGTERM cancel it, which
stops every service in order (structured concurrency: nothing outlives the nursery), then
the process exits 0. A second signal while stopping exits at once.

One agent per data dir: the agent holds an exclusive ``flock`` on ``run/agent.lock`` for its
whole life. The kernel drops the lock when the process ends, however it ends (``kill -9``
included), so a stale ``run/agent.json`` naming a PID that now belongs to another program
(or to a zombie) never blocks a start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import trio

from meshcloud import priority
from meshcloud.config import NodeConfig, load_config
from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError
from meshcloud.logs import setup_logging

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

log = logging.getLogger("meshcloud.agent")


LOCK_NAME = "agent.lock"


class AgentRunning(MeshError):
    code = "agent_running"


def _lock_path(datadir: DataDir) -> Path:
    return datadir.path / "run" / LOCK_NAME


def _try_lock(datadir: DataDir) -> IO[str] | None:
    """The data dir's agent lock, held by the returned file; None if another process has it."""
    (datadir.path / "run").mkdir(mode=0o700, exist_ok=True)
    handle = open(_lock_path(datadir), "a+")  # noqa: SIM115 - held for the agent's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def agent_lock(datadir: DataDir) -> Iterator[None]:
    """Hold the data dir's agent lock, or raise :class:`AgentRunning` naming the holder."""
    handle = _try_lock(datadir)
    if handle is None:
        holder = lock_holder(datadir)
        who = f" (pid {holder})" if holder else ""
        raise AgentRunning(f"an agent is already running for {datadir.path}{who}")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def lock_holder(datadir: DataDir) -> int | None:
    """The PID written by the agent holding the lock (None if unknown)."""
    try:
        text = _lock_path(datadir).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def agent_running(datadir: DataDir) -> bool:
    """True while some process holds ``datadir``'s agent lock."""
    if not _lock_path(datadir).exists():
        return False
    handle = _try_lock(datadir)
    if handle is None:
        return True
    handle.close()
    return False


def run_agent(datadir: DataDir, settings: dict[str, object], *, log_level: str | None) -> int:
    datadir.require()
    with agent_lock(datadir):
        config = load_config(datadir.config_path).with_overrides(**settings)
        boost = priority.boost_setting(config.loop_priority, os.environ)
        scheduler = priority.scheduler_setting(config.loop_scheduler, os.environ)
        setup_logging(log_level or config.log_level, datadir.log_path)
        return trio.run(_main, datadir, config, boost, scheduler)


async def _main(datadir: DataDir, config: NodeConfig, boost: int, scheduler: str) -> int:
    from meshcloud.agent.loopguard import guard_realtime_loop
    from meshcloud.agent.node import Node

    # this thread runs the event loop: raised (if permitted) before it starts any other
    loop = priority.apply(boost, scheduler)
    log.info(f"event loop priority: {loop.note}",
             extra={"nice": loop.loop, "base_nice": loop.base})
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
            nursery.start_soon(guard_realtime_loop)
    return 0


def print_ready(node: Node) -> None:
    api = node.api_urls[0] if node.api_urls else "-"
    print(f"meshcloud agent up: node {node.node_id.hex()[:12]} of mesh "
          f"{node.mesh.mesh_name!r}; peers on {', '.join(node.transport.listen_addresses)}; "
          f"API {api}", flush=True)
