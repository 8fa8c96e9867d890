"""Who holds a chunk's shards: distinct nodes, chosen the same way by every node.

The blobstore asks a :class:`HolderPicker` for an ordered list of distinct live nodes for
a placement key (one per chunk, :func:`placement_key`); shard ``i`` goes to the i-th node,
and the nodes after the first k+m are the alternates tried when a holder refuses a write
and the targets repair rebuilds onto. The real picker is the node's placement service
(weighted rendezvous hashing over the gossip view with capacity constraints,
``meshcloud.placement``); it plugs in through this small protocol.

:class:`RendezvousHolders` is a self-contained stand-in with the same contract: plain
highest-random-weight hashing (Thaler & Ravishankar, 1998) over a fixed node list, so
tests, the simulator and single-node setups need nothing else. Any node computing it over
the same list gets the same answer, and removing a node only moves the shards it held.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from blobstore.errors import NotEnoughHolders

NodeId = bytes


class HolderPicker(Protocol):
    def pick(self, key: bytes, count: int, *, exclude: Collection[NodeId] = ()) -> list[NodeId]:
        """Up to ``count`` distinct live nodes for ``key``, best first, none in ``exclude``."""
        ...


def placement_key(object_id: bytes, chunk_index: int) -> bytes:
    """The key a chunk's holders are chosen by."""
    return b"blob/" + object_id + struct.pack(">Q", chunk_index)


class RendezvousHolders:
    """Highest-random-weight hashing over a fixed list of nodes (see module docstring)."""

    def __init__(self, nodes: Iterable[NodeId]) -> None:
        self.nodes = tuple(dict.fromkeys(nodes))  # distinct, order kept

    def pick(self, key: bytes, count: int, *, exclude: Collection[NodeId] = ()) -> list[NodeId]:
        excluded = set(exclude)
        scored = sorted(
            (
                (hashlib.blake2b(key, key=node[:64], digest_size=16).digest(), node)
                for node in self.nodes
                if node not in excluded
            ),
            reverse=True,
        )
        return [node for _, node in scored[:count]]


def assign_holders(picker: HolderPicker, key: bytes, n: int, *, spares: int = 0) -> list[NodeId]:
    """n distinct holders plus up to ``spares`` alternates; NotEnoughHolders if < n exist."""
    nodes = picker.pick(key, n + spares)
    if len(set(nodes)) != len(nodes):
        raise NotEnoughHolders("the holder picker returned the same node twice")
    if len(nodes) < n:
        raise NotEnoughHolders(f"need {n} distinct holders, only {len(nodes)} available")
    return list(nodes)


def distinct(nodes: Sequence[NodeId]) -> bool:
    return len(set(nodes)) == len(nodes)
