"""The scrubber's plan: re-hash every local shard now and then, gently (sans-IO).

Disks rot silently; a shard that no longer hashes to its id is useless, and the sooner
repair hears of it the fewer chunks are one loss away from being unreadable. The scrubber
walks the local store in shard-id order, a batch at a time, and reports corrupt shards.

It is a worker with a visible state (:class:`ScrubState`: busy, throttled, idle) and a
throttle: after verifying ``b`` bytes it rests ``b / max_rate`` seconds, so a pass over a
phone's 20 GiB at the default 8 MiB/s takes 45 minutes of gentle reading, not one burst.
Between passes it waits ``pass_interval`` (30 days, jittered by +-10% with the injected
``random.Random`` so a mesh's nodes do not all scrub at once; Garage does the same).

The driver loop: at :meth:`ScrubCore.next_deadline` call :meth:`on_timer`; perform each
:class:`VerifyBatch` (``ShardStore.verify_batch(after, limit)``), feed the results to
:meth:`on_batch`; queue a repair for each :class:`ShardCorrupt`.

The schedule survives restarts (:class:`ScrubSchedule`, kept in the shard store): when the
next batch or pass is due, in wall-clock seconds, and the cursor of a pass under way. A
restarted node resumes a pass where it stopped and otherwise waits for the next one; a
store with no schedule yet (a new node, or one from before the schedule was kept) gets
its first pass at a random point within one interval (:func:`first_schedule`), so a mesh
upgraded at once does not scrub everything at once.
"""

from __future__ import annotations

import enum
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from blobstore.shards import ShardId


class ScrubState(enum.Enum):
    IDLE = "idle"  # between passes
    BUSY = "busy"  # a batch is out
    THROTTLED = "throttled"  # resting after a batch


@dataclass(frozen=True, slots=True)
class ScrubConfig:
    batch: int = 64
    """Shards verified per batch (64 x 1 MiB: a few hundred ms of disk)."""

    max_rate: float = 8 * 1024 * 1024
    """Bytes per second on average while a pass runs (8 MiB/s: unnoticeable on an SD card)."""

    pass_interval: float = 30 * 24 * 3600.0
    """Seconds between the end of one pass and the start of the next."""

    jitter: float = 0.1
    """Fraction of ``pass_interval`` added or removed at random."""

    def __post_init__(self) -> None:
        if self.batch < 1 or self.max_rate <= 0 or self.pass_interval < 0:
            raise ValueError("scrub batch and rate must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be within [0, 1)")


@dataclass(frozen=True, slots=True)
class VerifyBatch:
    after: ShardId
    limit: int


@dataclass(frozen=True, slots=True)
class ShardCorrupt:
    shard_id: ShardId


@dataclass(frozen=True, slots=True)
class PassFinished:
    checked: int
    corrupt: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ScrubResult:
    shard_id: ShardId
    ok: bool
    size: int


ScrubOutput = VerifyBatch | ShardCorrupt | PassFinished


@dataclass
class ScrubCore:
    config: ScrubConfig
    rng: random.Random
    cursor: ShardId = b""
    state: ScrubState = ScrubState.IDLE
    next_at: float | None = 0.0
    """Start the first pass at once unless told otherwise."""
    checked: int = 0
    corrupt: int = 0
    scrubbed_bytes: int = 0
    passes: int = 0
    _pass_started: bool = field(default=False, repr=False)

    def next_deadline(self) -> float | None:
        return None if self.state is ScrubState.BUSY else self.next_at

    def on_timer(self, now: float) -> list[ScrubOutput]:
        if self.state is ScrubState.BUSY or self.next_at is None or now < self.next_at:
            return []
        if not self._pass_started:
            self._pass_started = True
            self.checked = self.corrupt = self.scrubbed_bytes = 0
        self.state = ScrubState.BUSY
        return [VerifyBatch(self.cursor, self.config.batch)]

    def on_batch(
        self, results: Sequence[ScrubResult], now: float, *, exhausted: bool
    ) -> list[ScrubOutput]:
        """Results of the last VerifyBatch; ``exhausted``: the store has nothing after them."""
        if self.state is not ScrubState.BUSY:
            return []
        out: list[ScrubOutput] = []
        size = 0
        for result in results:
            size += result.size
            self.checked += 1
            if not result.ok:
                self.corrupt += 1
                out.append(ShardCorrupt(result.shard_id))
        self.scrubbed_bytes += size
        if results:
            self.cursor = max(r.shard_id for r in results)
        if exhausted or not results:
            out.append(PassFinished(self.checked, self.corrupt, self.scrubbed_bytes))
            self.passes += 1
            self.cursor = b""
            self._pass_started = False
            self.state = ScrubState.IDLE
            spread = self.config.pass_interval * self.config.jitter
            self.next_at = now + self.config.pass_interval + self.rng.uniform(-spread, spread)
        else:
            self.state = ScrubState.THROTTLED
            self.next_at = now + size / self.config.max_rate
        return out


SCHEDULE_NOTE = "scrub.schedule"
"""Name of the shard store note holding the encoded :class:`ScrubSchedule`."""

_WALL = struct.Struct(">d")


@dataclass(frozen=True, slots=True)
class ScrubSchedule:
    next_wall: float
    """Wall-clock seconds when the next batch (mid-pass) or pass is due."""
    cursor: ShardId = b""
    """Last shard id verified by the pass under way; empty between passes."""

    def encode(self) -> bytes:
        return _WALL.pack(self.next_wall) + self.cursor

    @classmethod
    def decode(cls, raw: bytes | None) -> ScrubSchedule | None:
        """The schedule, or None for nothing or anything malformed (then start afresh)."""
        if raw is None or len(raw) not in (_WALL.size, _WALL.size + 32):
            return None
        (next_wall,) = _WALL.unpack_from(raw)
        if next_wall != next_wall or next_wall in (float("inf"), float("-inf")):
            return None
        return cls(next_wall, bytes(raw[_WALL.size:]))


def first_schedule(saved: ScrubSchedule | None, now_wall: float, config: ScrubConfig,
                   rng: random.Random) -> ScrubSchedule:
    """Where a starting scrubber begins: the saved schedule (a due time more than one
    interval ahead, after the clock went back, is pulled in), or for a store without one
    a first pass at a random point within one interval (at once for intervals up to an
    hour: tests and small setups)."""
    if saved is not None:
        latest = now_wall + config.pass_interval * (1 + config.jitter)
        return ScrubSchedule(min(saved.next_wall, latest), saved.cursor)
    if config.pass_interval <= 3600:
        return ScrubSchedule(now_wall)
    return ScrubSchedule(now_wall + rng.uniform(0, config.pass_interval))


def core_schedule(core: ScrubCore, now: float, now_wall: float) -> ScrubSchedule:
    """The schedule to keep for ``core`` (monotonic ``now``, wall-clock ``now_wall``)."""
    due = core.next_at if core.next_at is not None else now
    return ScrubSchedule(now_wall + max(0.0, due - now),
                         core.cursor if core.state is not ScrubState.IDLE else b"")
