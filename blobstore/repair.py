"""RepairPlanner: which chunks lost shards, and where to rebuild each one (sans-IO).

Input: manifests, the set of live nodes (from gossip), and shards known bad (reported by
readers or the scrubber). Output: a :class:`RepairPlan`:

* :class:`RebuildChunk` per chunk that has at least k good shards but fewer than k+m on
  distinct live nodes: the surviving shards to read from, and for each missing shard
  index a target node that is live and holds no other shard of the chunk;
* :class:`ChunkLost` per chunk with fewer than k good shards (data loss: reported, never
  silently skipped).

Rules:

* a shard counts as surviving only if its holder is live and it is not known bad;
* two surviving shards of one chunk on the same node count as one holder: the extra one is
  rebuilt elsewhere, so one node's loss can never cost a chunk two shards;
* targets come from the holder picker in its order for the chunk's placement key (the same
  nodes a fresh write would choose), skipping current holders; with too few nodes the
  chunk is rebuilt as far as possible and listed in ``short``;
* tasks are ordered most endangered first (fewest spare shards), then by object and
  chunk, so a run that stops early has fixed what mattered most and two planners agree.

Executing a task (:mod:`blobstore.rebuild`) needs no key: shards are re-encoded from the
sealed chunk, and because codes are deterministic the rebuilt shards have the same ids;
only their locations in the manifest change (:meth:`RebuildChunk.apply`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from blobstore.erasure import Scheme
from blobstore.holders import HolderPicker, placement_key
from blobstore.manifest import ChunkRef, Manifest, ShardRef

NodeId = bytes


@dataclass(frozen=True, slots=True)
class RebuildChunk:
    object_id: bytes
    scheme: Scheme
    k: int
    m: int
    chunk: ChunkRef
    sources: tuple[ShardRef, ...]
    """Good shards to read from (distinct indexes), best first."""
    targets: tuple[tuple[int, NodeId], ...]
    """(shard index, node) pairs to rebuild."""

    @property
    def spare(self) -> int:
        """Surviving shards beyond k: 0 means one more loss makes the chunk unreadable."""
        return len(self.sources) - self.k

    def apply(self, manifest: Manifest, rebuilt: list[ShardRef]) -> Manifest:
        """The manifest with ``rebuilt`` shards recorded at their new holders."""
        return manifest.with_shards(self.chunk.index, rebuilt)


@dataclass(frozen=True, slots=True)
class ChunkLost:
    object_id: bytes
    chunk_index: int
    surviving: int
    k: int


@dataclass(slots=True)
class RepairPlan:
    rebuild: list[RebuildChunk] = field(default_factory=list)
    lost: list[ChunkLost] = field(default_factory=list)
    short: list[RebuildChunk] = field(default_factory=list)
    """Tasks that could not get a target for every missing shard (too few live nodes)."""

    @property
    def healthy(self) -> bool:
        return not (self.rebuild or self.lost)


class RepairPlanner:
    def __init__(self, picker: HolderPicker, *, spare_candidates: int = 4) -> None:
        self.picker = picker
        self.spare_candidates = spare_candidates

    def plan(
        self,
        manifests: Iterable[Manifest],
        live: Collection[NodeId],
        bad: Collection[tuple[NodeId, bytes]] = (),
        *,
        limit: int | None = None,
    ) -> RepairPlan:
        """See the module docstring. ``bad`` holds (node, shard id) pairs known corrupt."""
        live_set = set(live)
        bad_set = set(bad)
        plan = RepairPlan()
        for manifest in manifests:
            for chunk in manifest.chunks:
                self._plan_chunk(manifest, chunk, live_set, bad_set, plan)
        plan.rebuild.sort(key=lambda t: (t.spare, t.object_id, t.chunk.index))
        plan.lost.sort(key=lambda c: (c.object_id, c.chunk_index))
        if limit is not None:
            plan.rebuild = plan.rebuild[:limit]
        return plan

    def _plan_chunk(
        self, manifest: Manifest, chunk: ChunkRef, live: set[NodeId],
        bad: set[tuple[NodeId, bytes]], plan: RepairPlan,
    ) -> None:
        k, n = manifest.k, manifest.n
        sources = [
            ref for ref in sorted(chunk.shards, key=lambda s: s.index)
            if ref.node in live and (ref.node, ref.shard_id) not in bad
        ]
        distinct_indexes = {s.index for s in sources}
        if len(distinct_indexes) < k:
            plan.lost.append(ChunkLost(manifest.object_id, chunk.index, len(distinct_indexes), k))
            return
        # One shard per node counts as placed; a second shard on the same node stays
        # readable (a source) but is rebuilt elsewhere.
        kept: dict[int, ShardRef] = {}
        placed_on: set[NodeId] = set()
        for ref in sources:
            if ref.index not in kept and ref.node not in placed_on:
                kept[ref.index] = ref
                placed_on.add(ref.node)
        missing = [i for i in range(n) if i not in kept]
        if not missing:
            return
        candidates = [
            node
            for node in self.picker.pick(
                placement_key(manifest.object_id, chunk.index),
                n + len(missing) + self.spare_candidates,
                exclude=placed_on,
            )
            if node in live and node not in placed_on
        ]
        targets = tuple(zip(missing, candidates, strict=False))
        # Read from the distinct-holder shards first, duplicates last.
        ordered = list(kept.values()) + [s for s in sources if kept.get(s.index) is not s]
        task = RebuildChunk(
            manifest.object_id, manifest.scheme, manifest.k, manifest.m, chunk,
            tuple(_dedupe_index(ordered)), targets,
        )
        if targets:
            plan.rebuild.append(task)
        if len(targets) < len(missing):
            plan.short.append(task)


def _dedupe_index(refs: list[ShardRef]) -> list[ShardRef]:
    seen: set[int] = set()
    out = []
    for ref in refs:
        if ref.index not in seen:
            seen.add(ref.index)
            out.append(ref)
    return out
