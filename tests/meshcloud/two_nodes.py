"""Two genuine nodes joined on the in-memory transport, for tests of what an idle mesh
does (run them under the autojump clock)."""

from __future__ import annotations

import trio

from meshcloud.agent.lifecycle import init_mesh, join_mesh
from meshcloud.agent.node import Node
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.transport.memory import MemoryNetwork


async def two_joined_nodes(tmp_path, nursery: trio.Nursery, network: MemoryNetwork,
                           config: NodeConfig) -> tuple[Node, Node]:
    """Node ``a`` makes a mesh, ``b`` joins it; returns once each holds the other alive."""
    def factory(key, auth, _config):
        return network.add(key, auth)

    a_dir, b_dir = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    init_mesh(a_dir, "home", {})
    a = Node(a_dir, config, transport_factory=factory)
    await nursery.start(a.run)
    token = a.create_invite(ttl_s=60, uses=1)
    await join_mesh(b_dir, token.encode(), {}, transport_factory=factory)
    b = Node(b_dir, config, transport_factory=factory)
    await nursery.start(b.run)
    with trio.fail_after(120):
        while not (b.node_id in a.alive_peer_ids() and a.node_id in b.alive_peer_ids()):
            await trio.sleep(1)
    return a, b
