"""Two-phase GC of shards no manifest references (sans-IO, one per node).

A shard becomes garbage when the object that referenced it is deleted or overwritten,
when a put failed half-way, or when repair rebuilt it elsewhere while its holder was away
and the holder came back. Deleting a shard that *is* still needed loses data, so:

* **grace**: a shard stored less than ``grace_ttl`` ago is never a candidate. Puts write
  shards before their manifest is committed, and multipart parts wait for their
  completion; the grace period (24 h) outlasts both;
* **phase 1, mark**: a scan finds shards that are unreferenced and past grace, and marks
  them with the time;
* **phase 2, sweep**: a later scan, at least ``confirm_delay`` after the mark, checks the
  reference set *again* (it is eventually consistent: a manifest committed on another node
  may arrive late) and deletes only shards still unreferenced. A shard referenced again in
  between is unmarked.

References are (node, shard id) pairs, not shard ids: a copy on a node the manifest no
longer lists (because repair moved it) is garbage on that node even though the shard id
is still referenced elsewhere. The driver builds ``is_referenced`` from the object index
(plus in-progress multipart uploads) and runs scans at its pace (a throttled worker).

Time: ``now`` is wall-clock seconds (shards are stamped in wall ms when stored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from blobstore.shards import ShardId


@dataclass(frozen=True, slots=True)
class GcConfig:
    grace_ttl: float = 24 * 3600.0
    """Seconds a new shard is safe from GC (covers in-flight puts and multipart uploads)."""

    confirm_delay: float = 3600.0
    """Seconds between mark and sweep: time for late index updates to arrive everywhere."""

    max_deletes_per_scan: int = 10_000
    """Deletes emitted by one scan; the rest wait for the next (a phone's disk is slow)."""

    def __post_init__(self) -> None:
        if self.grace_ttl < 0 or self.confirm_delay < 0 or self.max_deletes_per_scan < 1:
            raise ValueError("GC durations must be >= 0 and max_deletes_per_scan >= 1")


@dataclass(frozen=True, slots=True)
class StoredShard:
    shard_id: ShardId
    stored_at_ms: int
    size: int = 0


@dataclass(frozen=True, slots=True)
class DeleteShard:
    """Delete this shard from the local store: unreferenced through both phases."""

    shard_id: ShardId
    size: int


@dataclass
class GcStats:
    marked: int = 0
    unmarked: int = 0
    deleted: int = 0
    deleted_bytes: int = 0


@dataclass
class ShardGc:
    """See the module docstring. ``marks`` survive between scans (persist them if wanted)."""

    config: GcConfig = field(default_factory=GcConfig)
    marks: dict[ShardId, float] = field(default_factory=dict)
    stats: GcStats = field(default_factory=GcStats)

    def on_scan(
        self, shards: Iterable[StoredShard], is_referenced: Callable[[ShardId], bool],
        now: float,
    ) -> list[DeleteShard]:
        """Feed one full listing of the local store; returns the deletes that are due."""
        out: list[DeleteShard] = []
        seen: set[ShardId] = set()
        for shard in shards:
            seen.add(shard.shard_id)
            if is_referenced(shard.shard_id):
                if self.marks.pop(shard.shard_id, None) is not None:
                    self.stats.unmarked += 1
                continue
            if now - shard.stored_at_ms / 1000 < self.config.grace_ttl:
                continue
            marked_at = self.marks.get(shard.shard_id)
            if marked_at is None:
                self.marks[shard.shard_id] = now
                self.stats.marked += 1
            elif now - marked_at >= self.config.confirm_delay and \
                    len(out) < self.config.max_deletes_per_scan:
                out.append(DeleteShard(shard.shard_id, shard.size))
        for sid in [s for s in self.marks if s not in seen]:
            del self.marks[sid]  # gone already (deleted by someone else)
        return out

    def on_deleted(self, shard_id: ShardId, size: int) -> None:
        """The driver deleted it: forget the mark and count it."""
        if self.marks.pop(shard_id, None) is not None:
            self.stats.deleted += 1
            self.stats.deleted_bytes += size
