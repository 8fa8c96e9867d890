"""Real nodes in one process for workload tests: the genuine ``Node`` (state, API, the
workload service) on the in-memory transport, with the process runtime.

Nothing is faked but the network medium (in memory, with crashes and partitions) and,
where a test asks for it, the clock. A node can be stopped like a killed agent (its
replicas keep running) and started again on the same data dir.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from apps.runtimes.homes import default_homes
from apps.workloads.service import WorkloadService
from meshcloud.agent.lifecycle import init_mesh, join_mesh
from meshcloud.agent.node import Node
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError
from meshcloud.transport.memory import MemoryNetwork

CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0",
                    profile="local")
SLEEPER = ["/bin/sh", "-c", "echo started $MESHCLOUD_NAME; exec sleep 3600"]
"""A replica that prints one line and then waits to be stopped."""


@dataclass
class Member:
    datadir: DataDir
    node: Node | None = None
    scope: trio.CancelScope | None = None
    history: list[Node] = field(default_factory=list)
    done: trio.Event | None = None

    @property
    def running(self) -> Node:
        assert self.node is not None, "node is down"
        return self.node

    @property
    def service(self) -> WorkloadService:
        return workloads_of(self.running)

    @property
    def node_id(self) -> bytes:
        return self.datadir.node_key().id


def workloads_of(node: Node) -> WorkloadService:
    return next(s for s in node.services if isinstance(s, WorkloadService))


class LocalMesh:
    def __init__(self, root: Path, nursery: trio.Nursery, network: MemoryNetwork) -> None:
        self.root = root
        self.nursery = nursery
        self.network = network
        self.members: list[Member] = []

    def factory(self) -> Callable[..., Any]:
        return lambda key, auth, config: self.network.add(key, auth)

    async def start(self, member: Member) -> Node:
        if member.done is not None:  # the previous agent of this data dir must be gone
            await member.done.wait()
            member.history[-1].state.core.kv.close()
        node = Node(member.datadir, CONFIG, transport_factory=self.factory())
        scope = trio.CancelScope()
        done = member.done = trio.Event()

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(run)
        member.node, member.scope = node, scope
        member.history.append(node)
        self.network.revive(node.node_id)
        with trio.fail_after(30):
            await workloads_of(node).started.wait()
        return node

    def stop(self, member: Member) -> None:
        """Like a killed agent: the node stops at once, its replicas keep running."""
        assert member.scope is not None and member.node is not None
        self.network.crash(member.node.node_id)
        member.scope.cancel()
        member.node = None

    async def add(self) -> Member:
        datadir = DataDir(self.root / f"n{len(self.members)}")
        if not self.members:
            init_mesh(datadir, "test", {})
        else:
            admin = self.members[0].running
            token = admin.create_invite(ttl_s=600, uses=1)
            await join_mesh(datadir, token.encode(), {}, transport_factory=self.factory())
        member = Member(datadir)
        self.members.append(member)
        await self.start(member)
        return member

    @classmethod
    async def create(cls, root: Path, nursery: trio.Nursery, n: int,
                     network: MemoryNetwork | None = None) -> LocalMesh:
        mesh = cls(root, nursery, network or MemoryNetwork())
        for _ in range(n):
            await mesh.add()
        await mesh.wait_all_connected()
        await mesh.wait_offers()
        return mesh

    def up(self) -> list[Member]:
        return [m for m in self.members if m.node is not None]

    async def wait_all_connected(self) -> None:
        async def connected(node: Node, other: bytes) -> None:
            with trio.fail_after(20):
                while not (other in node.peers and node.peers[other].connected):
                    await node.book.changed.wait()

        for member in self.up():
            for other in self.up():
                if other is not member:
                    await connected(member.running, other.node_id)

    async def wait_offers(self) -> None:
        """Until every running node sees every running node's offer, and holds every one
        of them alive (admission counts only the nodes gossip holds alive)."""
        ids = {m.node_id for m in self.up()}

        def settled() -> bool:
            return all(set(m.service.known_nodes()) >= ids
                       and {n.node_id for n in m.service.view()} >= ids for m in self.up())

        await wait_for(settled, "every offer everywhere, every node alive everywhere")

    def member_of(self, node_id: bytes) -> Member:
        return next(m for m in self.members if m.node_id == node_id)

    async def close(self) -> None:
        """Stop every agent, then every replica (tests must leave no process behind). The
        agents first: a running reconciler would restart a replica killed under it."""
        for member in self.members:
            if member.scope is not None:
                member.scope.cancel()
        for member in self.members:
            if member.done is not None:
                with trio.move_on_after(30):
                    await member.done.wait()
        for member in self.members:
            for path in member.datadir.path.glob("runtimes/process/*/state.json"):
                kill_recorded(path)
            # a root agent's replicas live outside the data dir (apps.runtimes.homes)
            shutil.rmtree(default_homes(member.datadir.path), ignore_errors=True)


def kill_recorded(state_file: Path) -> None:
    """SIGKILL a process replica's group if its recorded pid is still that process."""
    from apps.runtimes import pidfile
    from apps.runtimes.process_state import ReplicaRecord

    try:
        record = ReplicaRecord.load(state_file.parent)
    except (OSError, ValueError, KeyError, MeshError):
        return
    if record.pid > 0 and pidfile.is_alive(record.ident):
        try:
            os.killpg(record.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def wait_for(predicate: Callable[[], Any], what: str, within: float = 20.0,
                   interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy, at most ``within`` seconds (trio's clock)."""
    with trio.move_on_after(within):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def alive_replicas(member: Member, workload: str | None = None) -> list[Any]:
    """What the member's own runtimes say runs there (the ground truth)."""
    statuses = []
    for runtime in member.service.runtimes.values():
        statuses.extend(await runtime.list())
    return [s for s in statuses if s.alive and (workload is None or s.workload == workload)]
