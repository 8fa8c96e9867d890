"""Repair, scrub and GC as throttled background workers of a node's blob service.

Each worker has a visible state (``meshcloud.workers.WorkerState``: busy, throttled,
idle), does a bounded step at a time, and rests ``tranquility x`` the wall time of its
last busy step (``meshcloud.workers.Tranquilizer``) so a phone serving shards is not
swamped. Progress is in ``/v1/status`` (section ``storage``) and in events.

**Repair** (:class:`RepairWorker`): a pass walks this node's local rows of the object
index and handles the objects whose bucket partition it *coordinates* (first live holder
of the partition under the current view: one node per object, without asking anyone).
For each, :class:`~blobstore.repair.RepairPlanner` lists the chunks with fewer than k+m
good shards on distinct live nodes, with targets ranked first by placement among the
nodes not already holding one; :func:`~blobstore.rebuild.rebuild_chunk` fetches any k
survivors, re-encodes and stores the missing shards there. The new locations are written
back with the record's *own* HLC stamp and writer and ``generation + 1``
(:mod:`blobstore.records`): the repaired record beats the one it repaired but never a
newer write. A member failing, leaving or joining starts a pass at once (events from
the node); otherwise passes run every ``repair_interval``.

**Scrub** (:class:`ScrubWorker`, plan from :class:`~blobstore.scrub.ScrubCore`): re-hashes
local shards at ``scrub_rate``; a rotten shard is deleted and rebuilt in place from k
good ones of its chunk (its object found through ``blobrefs``), keeping its id and node,
so the manifest needs no change.

**GC** (:class:`GcWorker`, two phases from :class:`~blobstore.gc.ShardGc`): every
``gc_interval`` it lists the local store; a shard past ``gc_grace`` is referenced if the
owner its object id names (``blobrefs``: an object row or an open upload's parts) still
lists this very node for it. Anything it cannot decide (index unreachable) counts as
referenced. Only this node's own store is ever collected.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from blobstore.errors import BlobstoreError
from blobstore.fetch import BadShard
from blobstore.gc import GcConfig, ShardGc, StoredShard
from blobstore.index import Found
from blobstore.layout import (
    LayoutPlan,
    code_text,
    goal_code,
    make_code,
    plan_layout,
    reachable_code,
)
from blobstore.manifest import Manifest
from blobstore.rebuild import rebuild_chunk
from blobstore.records import BLOBREFS, OBJECTS, UPLOADS, BlobRef, BucketRecord, ObjectRecord
from blobstore.reencode import reencode_object
from blobstore.repair import RebuildChunk, RepairPlanner
from blobstore.scrub import (
    SCHEDULE_NOTE,
    PassFinished,
    ScrubConfig,
    ScrubCore,
    ScrubResult,
    ScrubSchedule,
    ShardCorrupt,
    VerifyBatch,
    core_schedule,
    first_schedule,
)
from blobstore.shards import parse_header, unpack_shard
from meshcloud.errors import MeshError
from meshcloud.workers import Tranquilizer, WorkerState

if TYPE_CHECKING:
    from blobstore.node_service import BlobService

log = logging.getLogger(__name__)

TRANQUILITY = 2.0
"""Rest twice as long as the last busy step: at most a third of a core per worker."""

PAGE = 100
"""Index rows examined per repair step."""

REENCODE_PATIENCE = 900.0
"""Seconds (and at least three repair intervals) a holder that does not coordinate an
object waits before re-encoding it itself: the coordinator may have a backlog."""

REENCODE_STEP_BYTES = 16 << 20
"""A repair step ends once it has re-encoded this many bytes (then rests, see
``BlobConfig.reencode_rate``)."""

TRIGGERS = ("member.failed", "member.left", "member.joined", "peer.connected",
            "peer.disconnected")
"""Node events that start a repair pass (peer.* until gossip reports members)."""

_TRANSIENT = (MeshError, trio.TooSlowError, trio.BrokenResourceError,
              trio.ClosedResourceError, OSError)


class AsyncWorker:
    """State, counters and the throttled loop shared by the three workers."""

    name = "worker"

    def __init__(self) -> None:
        self.state = WorkerState.IDLE
        self.steps = 0
        self.errors = 0
        self.last_error: str | None = None
        self.next_run: float | None = 0.0
        self.tranquilizer = Tranquilizer(TRANQUILITY)
        self.min_rest = 0.0
        """Set by a busy step that must rest at least this long (a byte rate)."""
        self._wake = trio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def step(self, now: float) -> WorkerState:
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        return None

    async def loop(self) -> None:
        while True:
            deadline = self.next_run
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            self._wake = trio.Event()  # a poke during the step wakes the next wait at once
            begin = trio.current_time()
            self.state = WorkerState.BUSY
            try:
                state = await self.step(begin)
            except Exception as exc:  # a worker's bug must not stop the node (as WorkerSet)
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                expected = isinstance(exc, (BlobstoreError, *_TRANSIENT))
                log.log(logging.INFO if expected else logging.ERROR, "%s worker: %s",
                        self.name, self.last_error, exc_info=not expected)
                self.state = WorkerState.IDLE
                self.next_run = trio.current_time() + 10.0
                continue
            self.steps += 1
            if state is WorkerState.BUSY:
                rest = self.tranquilizer.observe(trio.current_time() - begin)
                rest, self.min_rest = max(rest, self.min_rest), 0.0
                self.state = WorkerState.THROTTLED if rest > 0 else WorkerState.BUSY
                self.next_run = trio.current_time() + rest
            else:
                self.state = WorkerState.IDLE
                self.tranquilizer.clear()
                self.next_run = self.next_deadline()

    def status(self) -> dict[str, Any]:
        return {"state": self.state.value, "steps": self.steps, "errors": self.errors,
                "last_error": self.last_error}


class RepairWorker(AsyncWorker):
    name = "repair"

    def __init__(self, service: BlobService) -> None:
        super().__init__()
        self.service = service
        self.cursor: bytes | None = None
        """Next index row key of the running pass; None between passes."""
        self.again = False
        self.passes = 0
        self.checked = 0
        self.objects_repaired = 0
        self.shards_rebuilt = 0
        self.chunks_lost = 0
        self.objects_reencoded = 0
        self.bytes_reencoded = 0
        self.below_target: int | None = None
        """Objects coordinated here below their target layout in the last full pass."""
        self.waiting: int | None = None
        """Of those, the ones that need more live nodes first (last full pass)."""
        self._counting = (0, 0)
        self._pass_counts = (0, 0)
        self._needy: set[bytes] = set()
        self._next_needy: set[bytes] = set()
        self._waited: dict[bytes, float] = {}
        self._next_waited: dict[bytes, float] = {}

    def poke(self) -> None:
        if self.cursor is not None:
            self.again = True  # restart once the current pass ends
        super().poke()

    def next_deadline(self) -> float | None:
        return trio.current_time() + self.service.config.repair_interval

    def _layout(self, record: ObjectRecord, bucket: BucketRecord | None,
                live: frozenset[bytes], mesh_size: int) -> LayoutPlan:
        service = self.service
        assert service.objects is not None
        explicit = service.objects.explicit_code(bucket) if bucket is not None else None
        return plan_layout(record.manifest, goal_code(explicit, mesh_size),
                           reachable_code(explicit, len(live)), live,
                           inline=record.inline is not None)

    async def step(self, now: float) -> WorkerState:
        service = self.service
        assert service.client is not None and service.objects is not None
        table = service.node.state.core.table(OBJECTS.name)
        if self.cursor is None:
            self.cursor = b""
            self._pass_counts = (self.shards_rebuilt, self.chunks_lost)
            self._counting = (0, 0)
        rows = table.scan_entries(self.cursor, None, limit=PAGE)
        live = service.alive()
        mesh_size = service.mesh_size()
        buckets = {r.bucket_id: r for _, r in service.objects.buckets()}
        planner = RepairPlanner(service.picker)
        me = service.node.node_id
        budget = REENCODE_STEP_BYTES
        moved = 0
        for key, _data in rows:
            self.cursor = key + b"\x00"
            bucket_id = table.schema.key_from_bytes(key)[0]
            holders = service.index.holders(OBJECTS.name, (bucket_id,))
            if me not in holders:
                continue  # a row left over from an older view: its holders handle it
            entry = table.get_entry(key)
            record = table.value_of_entry(entry)
            if record is None:
                continue
            self.checked += 1
            # The first holder coordinates; another holder steps in when an object still
            # needs work one pass later (the first may be new and not have the row yet).
            mine = holders[0] == me or key in self._needy
            layout = self._layout(record, buckets.get(bucket_id), live, mesh_size)
            if layout.reencode is not None:
                # A re-encode moves the whole object: another holder steps in only after
                # the coordinator left it undone for a long while (no duplicate work
                # while the coordinator is merely busy with a backlog).
                since = self._waited.get(key, now)
                if holders[0] != me and now - since < max(
                        REENCODE_PATIENCE, 3 * service.config.repair_interval):
                    self._next_waited[key] = since
                    self._count(holders[0] == me, layout, short=False)
                    continue
                try:
                    done = await self._reencode(table.schema.key_from_bytes(key), record,
                                                layout)
                except (BlobstoreError, *_TRANSIENT) as exc:
                    # one object that cannot move now must not hold up the pass
                    done = False
                    self.errors += 1
                    self.last_error = f"re-encode: {type(exc).__name__}: {exc}"[:300]
                    log.info("repair: %s", self.last_error)
                self._count(holders[0] == me, layout, short=False,
                            fixed=done and layout.reencode == layout.goal)
                moved += record.size if done else 0
                if moved >= budget:
                    break
                continue
            plan = planner.plan([record.manifest], live)
            self._count(holders[0] == me, layout, short=bool(plan.short))
            if plan.lost:
                self.chunks_lost += len(plan.lost)
                service.node.events.emit("repair.lost", object=record.manifest.object_id.hex(),
                                         key=record.key[:200], chunks=len(plan.lost))
            if not plan.rebuild:
                continue
            if mine:
                await self._repair(table.schema.key_from_bytes(key), record, planner, live)
            else:
                self._next_needy.add(key)
        if moved:
            self.min_rest = moved / max(service.config.reencode_rate, 1.0)
        if moved >= budget:
            return WorkerState.BUSY  # the rest of the page after a rest
        if len(rows) < PAGE:
            self.cursor = None
            self.passes += 1
            self.below_target, self.waiting = self._counting
            self._needy, self._next_needy = self._next_needy, set()
            self._waited, self._next_waited = self._next_waited, {}
            rebuilt = self.shards_rebuilt - self._pass_counts[0]
            lost = self.chunks_lost - self._pass_counts[1]
            if rebuilt or lost:
                service.node.events.emit("repair.finished", shards_rebuilt=rebuilt,
                                         chunks_lost=lost)
            if self.again:
                self.again = False
                return WorkerState.BUSY
            return WorkerState.IDLE
        return WorkerState.BUSY

    def _count(self, coordinator: bool, layout: LayoutPlan, *, short: bool,
               fixed: bool = False) -> None:
        """Tally the pass's objects below target (only the coordinator counts one)."""
        if not coordinator or fixed or (layout.at_target and not short):
            return
        below, waiting = self._counting
        self._counting = (below + 1, waiting + (layout.waiting or short))

    async def _reencode(self, key: tuple[Any, ...], seen: ObjectRecord,
                        layout: LayoutPlan) -> bool:
        """Raise one object to ``layout.reencode``; True once the index points at it."""
        service = self.service
        assert service.client is not None and service.objects is not None
        assert layout.reencode is not None
        found = await service.index.get(OBJECTS.name, key)
        if found is None or found.value is None:
            return False
        record: ObjectRecord = found.value
        if record.manifest != seen.manifest:
            return False  # overwritten or repaired meanwhile: the next pass looks again
        objects = service.objects
        manifest = await reencode_object(record.manifest, make_code(layout.reencode),
                                         client=service.client, picker=service.picker,
                                         writer=objects.writer, reader=objects.reader)
        # Only now, with every new shard stored, does the index point at the new layout;
        # the old shards are unreferenced from here on and GC drops them on each holder.
        await write_repaired(service, key, found, manifest)
        self.objects_reencoded += 1
        self.bytes_reencoded += record.size
        service.node.events.emit("repair.reencoded", object=manifest.object_id.hex(),
                                 key=record.key[:200], size=record.size,
                                 code_from=code_text(layout.current),
                                 code_to=code_text(layout.reencode))
        return True

    async def _repair(self, key: tuple[Any, ...], seen: ObjectRecord, planner: RepairPlanner,
                      live: frozenset[bytes]) -> None:
        service = self.service
        assert service.client is not None
        found = await service.index.get(OBJECTS.name, key)
        if found is None or found.value is None:
            return
        record: ObjectRecord = found.value
        if record.manifest.object_id != seen.manifest.object_id:
            return  # overwritten meanwhile: the new object was written whole
        manifest = record.manifest
        rebuilt = 0
        view = getattr(planner.picker, "view", None)
        metered = frozenset(i.node_id for i in view() if i.metered) if callable(view) \
            else frozenset()
        for task in planner.plan([manifest], live).rebuild:
            # repair traffic avoids metered links: their shards are read only if needed
            refs = await rebuild_chunk(task, service.client, avoid=metered)
            if refs:
                manifest = task.apply(manifest, refs)
                rebuilt += len(refs)
        if not rebuilt:
            return
        await write_repaired(service, key, found, manifest)
        self.objects_repaired += 1
        self.shards_rebuilt += rebuilt
        service.node.events.emit("repair.rebuilt", object=manifest.object_id.hex(),
                                 key=record.key[:200], shards=rebuilt)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "passes": self.passes, "checked": self.checked,
                "objects_repaired": self.objects_repaired,
                "shards_rebuilt": self.shards_rebuilt, "chunks_lost": self.chunks_lost,
                "objects_reencoded": self.objects_reencoded,
                "bytes_reencoded": self.bytes_reencoded,
                "objects_below_target": self.below_target,
                "objects_short_of_nodes": self.waiting,
                "in_pass": self.cursor is not None}


async def write_repaired(service: BlobService, key: tuple[Any, ...], found: Found,
                         manifest: Manifest) -> None:
    """Write a repaired record at its own stamp and writer, one generation up."""
    record: ObjectRecord = found.value
    repaired = ObjectRecord(generation=record.generation + 1, key=record.key,
                            manifest=manifest, content_type=record.content_type,
                            metadata=dict(record.metadata), modified_ms=record.modified_ms)
    await service.index.put(OBJECTS.name, key, repaired, ts=found.entry.ts,
                            writer=found.entry.writer)


async def owner_refs(service: BlobService, object_id: bytes) -> set[tuple[bytes, bytes]] | None:
    """(node, shard id) pairs the owner of ``object_id`` references; None if it is gone."""
    ref = await service.index.get_value(BLOBREFS.name, (object_id,))
    if not isinstance(ref, BlobRef):
        return None
    refs: set[tuple[bytes, bytes]] = set()
    if ref.upload_id:
        from blobstore.uploads import Uploads

        upload = await service.index.get_value(UPLOADS.name, (ref.bucket_id, ref.upload_id))
        if upload is None:
            return None
        assert service.objects is not None
        for _, part in await Uploads(service.objects).parts(ref.bucket_id, ref.upload_id):
            refs.update((s.node, s.shard_id) for c in part.chunks for s in c.shards)
        return refs
    record = await service.index.get_value(OBJECTS.name, (ref.bucket_id, ref.sort_key))
    if not isinstance(record, ObjectRecord) or record.manifest.object_id != object_id:
        return None
    refs.update((s.node, s.shard_id) for _, s in record.manifest.shard_refs())
    return refs


class ScrubWorker(AsyncWorker):
    name = "scrub"

    def __init__(self, service: BlobService, rng: random.Random) -> None:
        super().__init__()
        self.service = service
        self.rng = rng
        cfg = service.config
        self.core = ScrubCore(ScrubConfig(max_rate=cfg.scrub_rate,
                                          pass_interval=cfg.scrub_interval), rng)
        self.core.next_at = None  # until load() has read the kept schedule
        self.next_run = None
        self.repaired = 0
        self.unrepaired = 0

    def _wall(self) -> float:
        return self.service.node.clock.wall_ms() / 1000

    async def load(self) -> None:
        """Take up the schedule kept in the shard store (see :mod:`blobstore.scrub`)."""
        shards = self.service.shards
        assert shards is not None
        saved = ScrubSchedule.decode(await shards.note(SCHEDULE_NOTE))
        plan = first_schedule(saved, self._wall(), self.core.config, self.rng)
        self.core.cursor = plan.cursor
        self.core.next_at = trio.current_time() + max(0.0, plan.next_wall - self._wall())
        self.next_run = self.core.next_deadline()
        if saved is None:
            await shards.set_note(SCHEDULE_NOTE, plan.encode())

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    async def step(self, now: float) -> WorkerState:
        shards = self.service.shards
        assert shards is not None
        outputs: list[Any] = self.core.on_timer(now)
        if not outputs:
            self.next_run = self.core.next_deadline()
            return WorkerState.IDLE
        while outputs:
            output = outputs.pop(0)
            if isinstance(output, VerifyBatch):
                results, end = await shards.verify_batch(output.after, output.limit)
                outputs.extend(self.core.on_batch(
                    [ScrubResult(r.shard_id, r.ok, r.size) for r in results],
                    trio.current_time(), exhausted=end))
            elif isinstance(output, ShardCorrupt):
                await self._fix(output.shard_id)
            elif isinstance(output, PassFinished) and output.checked:
                self.service.node.events.emit("scrub.finished", checked=output.checked,
                                              corrupt=output.corrupt, bytes=output.bytes)
        # kept after every batch: a restart resumes here instead of starting over
        await shards.set_note(SCHEDULE_NOTE, core_schedule(
            self.core, trio.current_time(), self._wall()).encode())
        self.next_run = self.core.next_deadline()
        return WorkerState.IDLE

    async def _fix(self, sid: bytes) -> None:
        service = self.service
        assert service.shards is not None and service.client is not None
        me = service.node.node_id
        service.node.events.emit("scrub.corrupt", shard=sid.hex())
        try:
            header, _ = unpack_shard(await service.shards.get(sid))
            refs = await owner_refs(service, header.object_id)
            record = await _record_of(service, header.object_id)
        except _TRANSIENT:
            self.unrepaired += 1
            return
        await service.shards.delete(sid)
        if record is None or refs is None or (me, sid) not in refs:
            return  # nobody needs it: deleting it was the fix
        for chunk in record.manifest.chunks:
            mine = [r for r in chunk.shards if r.node == me and r.shard_id == sid]
            if not mine:
                continue
            others = tuple(r for r in chunk.shards if r.shard_id != sid)
            task = RebuildChunk(record.manifest.object_id, record.manifest.scheme,
                                record.manifest.k, record.manifest.m, chunk, others,
                                ((mine[0].index, me),))
            if await rebuild_chunk(task, service.client):
                self.repaired += 1
                service.node.events.emit("scrub.repaired", shard=sid.hex())
                return
        self.unrepaired += 1

    def status(self) -> dict[str, Any]:
        return {**super().status(), "passes": self.core.passes, "checked": self.core.checked,
                "corrupt": self.core.corrupt, "repaired": self.repaired,
                "unrepaired": self.unrepaired}


async def _record_of(service: BlobService, object_id: bytes) -> ObjectRecord | None:
    ref = await service.index.get_value(BLOBREFS.name, (object_id,))
    if not isinstance(ref, BlobRef) or ref.upload_id:
        return None
    record = await service.index.get_value(OBJECTS.name, (ref.bucket_id, ref.sort_key))
    return record if isinstance(record, ObjectRecord) else None


class GcWorker(AsyncWorker):
    name = "gc"

    def __init__(self, service: BlobService, wall: Callable[[], float]) -> None:
        super().__init__()
        self.service = service
        self.wall = wall
        grace = service.config.gc_grace
        self.core = ShardGc(GcConfig(grace_ttl=grace, confirm_delay=min(3600.0, grace)))
        self.next_run = trio.current_time() + min(service.config.gc_interval, 60.0)
        self.scans = 0

    def next_deadline(self) -> float | None:
        wait = self.service.config.gc_interval
        if self.core.marks:  # come back for phase 2 as soon as marks are due
            wait = min(wait, self.core.config.confirm_delay)
        return trio.current_time() + wait

    async def step(self, now: float) -> WorkerState:
        service = self.service
        assert service.shards is not None
        me = service.node.node_id
        wall = self.wall()
        infos = await service.shards.list()
        grace = self.core.config.grace_ttl
        due = [i for i in infos if wall - i.stored_at_ms / 1000 >= grace]
        by_object: dict[bytes, list[bytes]] = {}
        for info in due:
            try:
                header = parse_header(await service.shards.head(info.shard_id))
            except MeshError:
                continue  # rot or gone meanwhile: the scrubber's business
            by_object.setdefault(header.object_id, []).append(info.shard_id)
        garbage: set[bytes] = set()
        for object_id, sids in by_object.items():
            try:
                refs = await owner_refs(service, object_id)
            except _TRANSIENT:
                continue  # undecided counts as referenced
            garbage.update(s for s in sids if refs is None or (me, s) not in refs)
        deletes = self.core.on_scan(
            [StoredShard(i.shard_id, i.stored_at_ms, i.size) for i in infos],
            lambda sid: sid not in garbage, wall)
        freed = 0
        for delete in deletes:
            if await service.shards.delete(delete.shard_id):
                self.core.on_deleted(delete.shard_id, delete.size)
                freed += delete.size
        self.scans += 1
        if deletes:
            service.node.events.emit("gc.deleted", shards=len(deletes), bytes=freed)
        return WorkerState.IDLE

    def status(self) -> dict[str, Any]:
        stats = self.core.stats
        return {**super().status(), "scans": self.scans, "marked": len(self.core.marks),
                "deleted": stats.deleted, "deleted_bytes": stats.deleted_bytes}


class Maintenance:
    """The three workers and what starts them."""

    def __init__(self, service: BlobService) -> None:
        self.service = service
        self.repair = RepairWorker(service)
        self.scrub: ScrubWorker | None = None
        self.gc: GcWorker | None = None
        self.bad_reads = 0

    def on_bad_shard(self, bad: BadShard) -> None:
        """A reader met a missing or corrupt shard: count it and check that object soon."""
        self.bad_reads += 1
        self.repair.poke()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.scrub = ScrubWorker(self.service, random.Random())
        await self.scrub.load()
        self.gc = GcWorker(self.service, lambda: self.service.node.clock.wall_ms() / 1000)
        events = self.service.node.events.subscribe()
        async with trio.open_nursery() as nursery:
            for worker in (self.repair, self.scrub, self.gc):
                nursery.start_soon(worker.loop)
            nursery.start_soon(self._watch, events)
            task_status.started()

    async def _watch(self, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        async for event in events:
            if event.get("kind") in TRIGGERS:
                self.repair.poke()

    def status(self) -> dict[str, Any]:
        workers = [w for w in (self.repair, self.scrub, self.gc) if w is not None]
        return {"repair": self.repair.status(),
                "scrub": self.scrub.status() if self.scrub else None,
                "gc": self.gc.status() if self.gc else None,
                "bad_reads": self.bad_reads,
                "workers": {w.name: w.state.value for w in workers}}

