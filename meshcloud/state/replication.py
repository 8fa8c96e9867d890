"""Replication strategies: which nodes store a partition, and the quorums to use.

Model: Garage ``src/table/replication/{parameters,fullcopy,sharded}.rs``: the table code
is written once and asks its :class:`Replication` who stores what; it is never forked per
strategy.

* :class:`FullCopy`: every live node stores every entry (cluster metadata: nodes,
  workloads, buckets, keys...). Reads are local; writes are local and spread
  epidemically; anti-entropy compares whole-table roots with any live peer.
* :class:`Sharded`: each of the 256 partitions (:data:`~.keys.PARTITIONS`) is stored by
  ``rf`` nodes: the top ``rf`` of the partition's rendezvous ranking over the live view
  (:func:`meshcloud.placement.holders`). Reads and writes go to those nodes with
  ``read_quorum`` / ``write_quorum`` (rf = 3, quorums 2 + 2 > 3 for the blobstore's object
  index: every read quorum meets every write quorum). Anti-entropy compares the roots of
  the partitions two holders share.

Holders are a pure function of (live view, partition): every node with the same view
agrees. Views differ briefly after a join or a failure; the quorum code and
anti-entropy repair what a disagreement leaves behind.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from meshcloud import placement
from meshcloud.state.keys import PARTITIONS

NodeId = bytes

PARTITION_ITEM = b"meshcloud/state/partition/"
"""Rendezvous item prefix for partition p (+ one byte p): fixed forever."""


class Replication(Protocol):
    @property
    def full_copy(self) -> bool: ...
    @property
    def read_quorum(self) -> int: ...
    @property
    def write_quorum(self) -> int: ...

    def storage_nodes(self, partition: int, view: frozenset[NodeId]) -> tuple[NodeId, ...]:
        """Nodes of ``view`` that store ``partition``, best first."""
        ...

    def partitions_of(self, node: NodeId, view: frozenset[NodeId]) -> frozenset[int]:
        """The partitions ``node`` stores under ``view``."""
        ...


@dataclass(frozen=True)
class FullCopy:
    """Every live node stores everything."""

    full_copy: bool = True
    read_quorum: int = 1
    write_quorum: int = 1

    def storage_nodes(self, partition: int, view: frozenset[NodeId]) -> tuple[NodeId, ...]:
        return tuple(sorted(view))

    def partitions_of(self, node: NodeId, view: frozenset[NodeId]) -> frozenset[int]:
        return ALL_PARTITIONS


ALL_PARTITIONS = frozenset(range(PARTITIONS))


@dataclass(frozen=True)
class Sharded:
    """``rf`` holders per partition by rendezvous hashing, with read and write quorums."""

    rf: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    full_copy: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.read_quorum <= self.rf or not 1 <= self.write_quorum <= self.rf:
            raise ValueError("quorums are between 1 and rf")

    def storage_nodes(self, partition: int, view: frozenset[NodeId]) -> tuple[NodeId, ...]:
        return holders_table(view, self.rf)[partition]

    def partitions_of(self, node: NodeId, view: frozenset[NodeId]) -> frozenset[int]:
        return partitions_by_node(view, self.rf).get(node, frozenset())

    @property
    def consistent(self) -> bool:
        """True when every read quorum meets every write quorum."""
        return self.read_quorum + self.write_quorum > self.rf


@lru_cache(maxsize=16)
def holders_table(view: frozenset[NodeId], rf: int) -> tuple[tuple[NodeId, ...], ...]:
    """Holders of each of the 256 partitions under ``view`` (cached: a pure function, and
    1,000 simulated nodes sharing one view compute it once)."""
    ranker = placement.Ranker(placement.members_of(sorted(view)))
    return tuple(
        tuple(ranker.rank(PARTITION_ITEM + bytes([p]), placement.NO_CONSTRAINTS)[:rf])
        for p in range(PARTITIONS)
    )


@lru_cache(maxsize=16)
def partitions_by_node(view: frozenset[NodeId], rf: int) -> dict[NodeId, frozenset[int]]:
    found: dict[NodeId, set[int]] = {}
    for p, nodes in enumerate(holders_table(view, rf)):
        for node in nodes:
            found.setdefault(node, set()).add(p)
    return {node: frozenset(ps) for node, ps in found.items()}


def shared_partitions(replication: Replication, me: NodeId, peer: NodeId,
                      view: Collection[NodeId]) -> frozenset[int]:
    """Partitions both ``me`` and ``peer`` store under ``view`` (what they sync)."""
    frozen = frozenset(view) | {me, peer}
    return replication.partitions_of(me, frozen) & replication.partitions_of(peer, frozen)
