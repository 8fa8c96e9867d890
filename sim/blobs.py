"""The blobstore in the simulator: the production placement and repair planner over a fake
shard store. Objects, shards, failures and repair, without moving bytes.

What is production code here, and what is modelled:

* a **write** asks :func:`blobstore.holders.assign_holders` for k+m holders plus the
  writer's spare holders, from :class:`blobstore.picker.PlacementPicker` over the nodes
  membership *believes* alive (free disk, battery and metered flags from each node's
  capacity, as the node's picker reads them); shard i goes to the i-th node, moving to
  the next spare when a holder is really down (the writer's alternates). The object is
  **acknowledged** only when all k+m shards are stored on distinct nodes that were really
  up (the writer's rule), and its :class:`blobstore.manifest.Manifest` is kept;
* **repair**: every tick, each object whose manifest names a holder that membership has
  declared failed (for ``repair_delay`` seconds; 0, as the node's repair worker starts a
  pass at once) goes through :class:`blobstore.repair.RepairPlanner` with the believed
  live set; each :class:`~blobstore.repair.RebuildChunk` is executed against the
  :class:`FakeShardStore` (it needs k of its sources really readable, else it is retried
  next tick; a target that is really down is skipped, retried next tick) and recorded
  with :meth:`RebuildChunk.apply`, as :mod:`blobstore.rebuild` does;
* the :class:`FakeShardStore` holds, per node, the shard ids it really stores: a
  **crash** makes them unreadable until the node **restarts** (the disk survives);
  **leaving** or being **gone** loses them;
* **reads**: every ``read_interval`` every acknowledged object is read (readable iff at
  least k distinct shard indexes are on nodes that are up and still hold them).

Membership as the model sees it is one *believed* set: a node leaves it as soon as one
observer declares it failed or left (the node that hears it starts repair) and comes back
when one declares it joined or alive.

Trace records (``trace.record(name, ...)``), all with ``t`` and ``object`` (hex id):

* ``object_acked``: ``holders`` (hex node per shard index), ``k``, ``m``;
* ``object_repaired``: the new ``holders`` after a rebuild;
* ``object_read``: ``ok`` (readable), ``readable_shards``;
* ``object_write_failed``: why.

Sans-IO: time is passed in, randomness from the injected ``random.Random``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from blobstore.crypto import KEY_SIZE, SEAL_OVERHEAD
from blobstore.erasure import Scheme
from blobstore.errors import NotEnoughHolders
from blobstore.holders import assign_holders, placement_key
from blobstore.manifest import ChunkRef, Manifest, ShardRef
from blobstore.picker import PlacementPicker
from blobstore.repair import RebuildChunk, RepairPlanner
from blobstore.writer import WriterConfig
from meshcloud import placement
from sim.trace import Trace

NodeId = bytes
CHUNK_BYTES = 1 << 20
"""The plaintext size of every modelled object (one chunk)."""
DISK_FREE = 100 << 30


def shard_id_of(object_id: bytes, index: int) -> bytes:
    """A stable 32-byte content id for shard ``index`` of a modelled object."""
    return hashlib.blake2b(object_id + bytes([index]), digest_size=32).digest()


@dataclass
class FakeShardStore:
    """The shard stores of every node: which shard ids each really holds, who is up."""

    shards: dict[NodeId, set[bytes]] = field(default_factory=dict)
    up: set[NodeId] = field(default_factory=set)

    def put(self, node: NodeId, shard_id: bytes) -> bool:
        """Store a shard; False when the node is down (the put fails)."""
        if node not in self.up:
            return False
        self.shards.setdefault(node, set()).add(shard_id)
        return True

    def readable(self, node: NodeId, shard_id: bytes) -> bool:
        return node in self.up and shard_id in self.shards.get(node, ())

    def wipe(self, node: NodeId) -> None:
        self.shards[node] = set()


@dataclass
class ModelObject:
    manifest: Manifest
    acked_at: float

    @property
    def object_id(self) -> bytes:
        return self.manifest.object_id

    @property
    def holders(self) -> list[NodeId]:
        """The node of each shard index (one chunk)."""
        return [ref.node for ref in self.manifest.chunks[0].shards]


class ViewCachingPicker(PlacementPicker):
    """The production picker over the model's believed nodes, with its view and ranker
    kept while the believed set and the capacities known are unchanged (they change
    rarely; writes and repairs are many): the same picks, without rebuilding both over
    every node for every object."""

    def __init__(self, model: BlobModel) -> None:
        super().__init__(lambda: model.believed, model._members)
        self._model = model
        self._key: tuple[frozenset[NodeId], int, int] | None = None
        self._view: list[placement.NodeInfo] = []
        self._ranker: placement.Ranker | None = None

    def view(self) -> list[placement.NodeInfo]:
        model = self._model
        key = (frozenset(model.believed), id(model.capacity), len(model.capacity))
        if key != self._key:
            self._key = key
            self._view = super().view()
            self._ranker = None
        return self._view

    def pick(self, key: bytes, count: int, *, exclude: Collection[NodeId] = ()
             ) -> list[NodeId]:
        view = self.view()
        if self._ranker is None:
            self._ranker = placement.Ranker(placement.members_of(view))
        rule = placement.Constraints(avoid_battery=True, avoid_metered=True,
                                     exclude=frozenset(exclude))
        return self._ranker.rank(key, rule)[:count]


@dataclass
class BlobModel:
    trace: Trace
    rng: random.Random
    k: int = 4
    m: int = 2
    writes_per_tick: float = 0.5
    """Expected new objects per tick."""
    max_objects: int = 300
    repair_delay: float = 0.0
    """Seconds after a holder is declared failed before repair rebuilds its shards."""
    read_interval: float = 10.0
    store: FakeShardStore = field(default_factory=FakeShardStore)
    believed: set[NodeId] = field(default_factory=set)
    """Nodes membership currently declares alive (what placement and repair see)."""
    capacity: dict[NodeId, Mapping[str, Any]] = field(default_factory=dict)
    """Each node's gossip capacity (free disk, on_ac, metered) for the picker: written once
    per node (or replaced whole), as the picker's cache assumes."""
    failed_at: dict[NodeId, float] = field(default_factory=dict)
    objects: list[ModelObject] = field(default_factory=list)
    next_read: float = 0.0
    rebuilds: int = 0
    _counter: int = 0

    def __post_init__(self) -> None:
        self.picker = ViewCachingPicker(self)
        self.planner = RepairPlanner(self.picker)
        self.spares = WriterConfig().spare_holders

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def up(self) -> set[NodeId]:
        return self.store.up

    @property
    def stored(self) -> dict[NodeId, set[bytes]]:
        return self.store.shards

    def _members(self) -> Iterable[Mapping[str, Any]]:
        return [{"id": node.hex(), "capacity": self.capacity.get(node)
                 or {"disk_free": DISK_FREE}} for node in self.believed]

    # --- what the runner calls ----------------------------------------------------------------

    def start(self, t: float, nodes: list[NodeId]) -> None:
        for node in nodes:
            self.on_join(t, node)
            self.on_member_alive(t, node)
        self.next_read = t + self.read_interval

    def on_join(self, t: float, node: NodeId) -> None:
        self.store.up.add(node)
        self.store.shards.setdefault(node, set())

    def on_restart(self, t: float, node: NodeId) -> None:
        self.store.up.add(node)  # the disk kept its shards

    def on_crash(self, t: float, node: NodeId) -> None:
        self.store.up.discard(node)

    def on_leave(self, t: float, node: NodeId) -> None:
        """The node left for good (or is gone): its shards are lost."""
        self.store.up.discard(node)
        self.store.wipe(node)

    def on_member_failed(self, t: float, node: NodeId) -> None:
        """Membership declared ``node`` failed or left."""
        if node in self.believed:
            self.believed.discard(node)
            self.failed_at[node] = t

    def on_member_alive(self, t: float, node: NodeId) -> None:
        """Membership declared ``node`` alive (joined, or refuted / restarted)."""
        self.believed.add(node)
        self.failed_at.pop(node, None)

    def on_tick(self, t: float) -> None:
        writes = int(self.writes_per_tick) + (self.rng.random() < self.writes_per_tick % 1)
        for _ in range(writes):
            if len(self.objects) < self.max_objects:
                self._write(t)
        self._repair(t)
        if t >= self.next_read:
            self.next_read = t + self.read_interval
            self._read_all(t)

    def finish(self, t: float) -> None:
        self._read_all(t)

    # --- the rules ------------------------------------------------------------------------

    def _readable(self, obj: ModelObject) -> int:
        return len({ref.index for ref in obj.manifest.chunks[0].shards
                    if self.store.readable(ref.node, ref.shard_id)})

    def _write(self, t: float) -> None:
        self._counter += 1
        object_id = self.rng.randbytes(8) + self._counter.to_bytes(4, "big")
        try:
            nodes = assign_holders(self.picker, placement_key(object_id, 0), self.n,
                                   spares=self.spares)
        except NotEnoughHolders as exc:
            self.trace.record("object_write_failed", t=t, object=object_id.hex(), why=str(exc))
            return
        refs: list[ShardRef] = []
        candidates = iter(nodes)
        for index in range(self.n):
            sid = shard_id_of(object_id, index)
            for node in candidates:  # a holder that is really down refuses: next one
                if self.store.put(node, sid):
                    refs.append(ShardRef(index=index, shard_id=sid, node=node))
                    break
        if len(refs) < self.n:
            self.trace.record("object_write_failed", t=t, object=object_id.hex(),
                              why=f"{len(refs)} of {self.n} holders took their shard")
            return
        chunk = ChunkRef(index=0, length=CHUNK_BYTES, sealed_length=CHUNK_BYTES + SEAL_OVERHEAD,
                         shards=tuple(refs))
        manifest = Manifest(object_id=object_id, size=CHUNK_BYTES, etag="", scheme=Scheme.ZFEC,
                            k=self.k, m=self.m, key=bytes(KEY_SIZE), chunks=(chunk,))
        self.objects.append(ModelObject(manifest, t))
        self.trace.record("object_acked", t=t, object=object_id.hex(), k=self.k, m=self.m,
                          holders=[r.node.hex() for r in refs])

    def _repair(self, t: float) -> None:
        due = {n for n, at in self.failed_at.items() if t - at >= self.repair_delay}
        if not due:
            return
        live = set(self.believed)
        for obj in self.objects:
            if not any(ref.node in due for ref in obj.manifest.chunks[0].shards):
                continue
            for task in self.planner.plan([obj.manifest], live).rebuild:
                self._rebuild(t, obj, task)

    def _rebuild(self, t: float, obj: ModelObject, task: RebuildChunk) -> None:
        """What :func:`blobstore.rebuild.rebuild_chunk` does, on the fake store."""
        readable = [s for s in task.sources if self.store.readable(s.node, s.shard_id)]
        if len(readable) < task.k:
            return  # cannot fetch k survivors now: retried next tick
        rebuilt = []
        for index, node in task.targets:
            sid = shard_id_of(obj.object_id, index)
            if self.store.put(node, sid):
                rebuilt.append(ShardRef(index=index, shard_id=sid, node=node))
        if not rebuilt:
            return
        self.rebuilds += len(rebuilt)
        obj.manifest = task.apply(obj.manifest, rebuilt)
        self.trace.record("object_repaired", t=t, object=obj.object_id.hex(),
                          holders=[h.hex() for h in obj.holders])

    def _read_all(self, t: float) -> None:
        for obj in self.objects:
            readable = self._readable(obj)
            self.trace.record("object_read", t=t, object=obj.object_id.hex(),
                              ok=readable >= self.k, readable_shards=readable)


FAILED_EVENTS = ("MemberFailed", "MemberLeft")
ALIVE_EVENTS = ("MemberJoined", "MemberUpdated")


class BlobSimModel:
    """:class:`BlobModel` plugged into ``sim.runner.Run`` (``Run(..., models=[...])``).

    * ``attach(run)``: every live host is a node; membership events of every host reach
      :meth:`on_membership` through ``run.cluster.listeners``: a node is believed failed
      as soon as one observer reports it failed or left (the node that hears it starts
      repair), alive again when one reports it joined;
    * ``sample(now)`` (each second): the hosts' real state is compared with the model's
      (crash, restart, leave, join), then :meth:`BlobModel.on_tick`;
    * ``finish(now)``: a last read of every object.
    """

    name = "blobstore"

    def __init__(self, **settings: float) -> None:
        self.settings = settings
        self.model: BlobModel | None = None
        self.cluster: Any = None
        self._known: dict[NodeId, str] = {}

    def attach(self, run: Any) -> None:
        cluster = run.cluster
        rng = run.engine.derive_random("blobstore")
        self.cluster = cluster
        self.model = BlobModel(run.trace, rng, **self.settings)  # type: ignore[arg-type]
        now = run.engine.now
        states = self._states()
        self.model.start(now, [n for n, s in states.items() if s == "up"])
        self._known = states
        cluster.listeners.append(self.on_membership)

    def _states(self) -> dict[NodeId, str]:
        out = {}
        assert self.model is not None
        for host in self.cluster.by_index:
            out[host.node_id] = "left" if host.left else "up" if host.up else "down"
            if host.node_id not in self.model.capacity:
                phone = bool(getattr(host, "phone", False))
                self.model.capacity[host.node_id] = {
                    "disk_free": DISK_FREE, "on_ac": not phone, "metered": phone}
        return out

    def on_membership(self, t: float, observer: NodeId, output: object) -> None:
        assert self.model is not None
        kind = type(output).__name__
        member = getattr(output, "member", None)
        subject = getattr(member, "node_id", None)
        if subject is None or subject == observer:
            return
        if kind in FAILED_EVENTS:
            self.model.on_member_failed(t, subject)
        elif kind == "MemberJoined" or (kind in ALIVE_EVENTS and _is_alive(member)):
            self.model.on_member_alive(t, subject)

    def sample(self, now: float) -> None:
        assert self.model is not None
        for node, state in self._states().items():
            before = self._known.get(node)
            if state == before:
                continue
            if state == "up":
                (self.model.on_restart if before == "down" else self.model.on_join)(now, node)
            elif state == "down":
                self.model.on_crash(now, node)
            else:
                self.model.on_leave(now, node)
            self._known[node] = state
        self.model.on_tick(now)

    def finish(self, now: float) -> None:
        if self.model is not None:
            self.model.finish(now)


def _is_alive(member: object) -> bool:
    state = getattr(member, "state", "alive")
    return str(getattr(state, "value", state)).lower() == "alive"
