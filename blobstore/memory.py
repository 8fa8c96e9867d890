"""Give memory back after large transfers: the agent's RSS returns near idle.

Two things keep an agent's RSS high after it moved big objects, neither of them live data:

* the shard store's LMDB map: every page read (a GET, a scrub, a rebuild) stays mapped
  into the process and counts in its RSS until evicted, so reading through 1 GiB of
  shards adds 1 GiB of RSS; :meth:`~blobstore.shardstore.ShardStore.release_pages`
  unmaps them (they stay in the page cache);
* freed heap memory glibc keeps for reuse in its arenas (chunk buffers are freed by
  worker threads, each with its own arena): :func:`tune_malloc` keeps big buffers out of
  the arenas, ``malloc_trim(0)`` returns what is left.

:class:`MemoryReleaser` watches a byte counter (shard store reads and writes, object
bytes in and out) and, once the transfers have *settled* (no progress for one tick) and at
least ``threshold`` bytes moved since the last release, runs a full garbage collection
(chunk buffers held by reference cycles are otherwise freed only when allocations happen
to trigger one) and then both of the above in a worker thread.
The trio driver is :meth:`MemoryReleaser.run`; the decision is :meth:`on_tick` (sans-IO).

A full collection walks every tracked object, and an agent holds a few hundred thousand
of them from start-up on (modules, classes, functions, the service graph): 45-90 ms of
CPU with the GIL held, the event loop stalled the whole time (a worker thread would
stall it just the same). So, once start-up is over (:data:`FREEZE_AFTER`), the releaser
collects once and then moves every object alive to the collector's permanent generation
(:func:`freeze_startup`, ``gc.freeze``): later collections, this releaser's and the
ones allocations trigger, only walk what was allocated since.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import sys
import time
from collections.abc import Callable

import trio

from meshcloud.clock import next_tick

log = logging.getLogger(__name__)

RELEASE_THRESHOLD = 16 << 20
"""Bytes moved since the last release before another one is worth it."""

TICK = 1.0
"""Seconds between looks at the counter."""

FREEZE_AFTER = 10.0
"""Seconds after the releaser starts (with the blob service, late in the agent's
start-up) before the objects then alive are frozen (see the module docstring)."""


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
"""Heap blocks this big or bigger are always their own mapping, unmapped when freed."""


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """libc, looked up once (``find_library`` runs ``ldconfig``: far too slow per call)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold at 1 MiB. By default it rises to the largest block freed
    so far, after which every 4 MiB chunk buffer comes from (and stays in) the heap
    arenas; fixed, chunk and shard buffers are mapped and returned as soon as they are
    freed. Called once when the blob service starts; False where it does not apply."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


def malloc_trim() -> bool:
    """Return free heap memory to the system (glibc); False where there is no such call."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def freeze_startup() -> int:
    """Collect once, then freeze every object left (all alive: the collection just freed
    the cyclic garbage, which would otherwise be frozen for good). Objects frozen here
    and later dropped are still freed by reference counting; only a cycle among them
    would stay, which is why this runs once, after start-up, on long-lived objects.
    Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class MemoryReleaser:
    """See the module docstring."""

    def __init__(self, moved: Callable[[], int], release: Callable[[], None], *,
                 threshold: int = RELEASE_THRESHOLD,
                 freeze_after: float | None = FREEZE_AFTER, tick: float = TICK) -> None:
        self.tick = tick
        self.moved = moved
        self.release = release
        self.threshold = threshold
        self.freeze_after = freeze_after
        self.frozen = 0
        """Objects frozen after start-up (0 until then)."""
        self.releases = 0
        self.last_collection: dict[str, float] = {}
        """The latest release's collection: wall and CPU milliseconds, objects freed."""
        self.slowest_collection_ms = 0.0
        self._seen = 0
        self._released_at = 0

    def on_tick(self, moved: int) -> bool:
        """The counter now reads ``moved``: True when a release is due."""
        settled = moved == self._seen
        self._seen = moved
        if settled and moved - self._released_at >= self.threshold:
            self._released_at = moved
            return True
        return False

    def freeze_due(self, elapsed: float) -> bool:
        """``elapsed`` seconds since :meth:`run` began: True once, when it is time to
        freeze the start-up objects."""
        return (self.freeze_after is not None and not self.frozen
                and elapsed >= self.freeze_after)

    async def run(self) -> None:
        self._seen = self._released_at = self.moved()
        started = trio.current_time()
        while True:
            await trio.sleep_until(next_tick(trio.current_time(), self.tick))
            if self.freeze_due(trio.current_time() - started):
                self.frozen = max(1, freeze_startup())
                log.info("froze %d start-up objects out of the collector's walks",
                         self.frozen)
            if self.on_tick(self.moved()):
                # buffers held by reference cycles (a cancelled fetch's traceback keeps its
                # frame's shard) wait for a full collection, which an idle process never
                # triggers; collected here, in the trio thread (finalizers stay in it)
                self.collect()
                await trio.to_thread.run_sync(self.release)
                self.releases += 1

    def collect(self) -> int:
        """One full collection, timed (:attr:`last_collection`); returns what it freed."""
        wall, cpu = time.perf_counter(), time.thread_time()
        freed = gc.collect()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        self.last_collection = {"wall_ms": round(wall * 1000, 1),
                                "cpu_ms": round(cpu * 1000, 1), "freed": freed}
        self.slowest_collection_ms = max(self.slowest_collection_ms, wall * 1000)
        log.info("memory release: full collection %.0f ms (CPU %.0f ms), %d objects freed",
                 wall * 1000, cpu * 1000, freed)
        return freed
