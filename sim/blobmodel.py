"""A sans-IO model of the blobstore for the simulator: objects, shards, failures, repair.

It follows the real rules closely enough for the simulator to find placement and repair
mistakes, without moving bytes:

* a **write** places shard i of a new object on the i-th node of
  ``meshcloud.placement.rank`` over the nodes the membership *believes* alive (as
  :class:`~blobstore.picker.PlacementPicker` does), moving to the next node when one is
  really down (the writer's alternates); it is **acknowledged** only when all k+m shards
  are stored on k+m distinct nodes that were really up (the writer's rule);
* a **crash** makes a node's shards unreadable until it **restarts** (the disk survives);
  **leaving** or being **gone** loses them;
* **repair**: once membership has declared a holder failed for ``repair_delay`` seconds,
  each object with a shard there gets it rebuilt from any k readable shards onto the
  best-ranked believed-alive node holding none of that object's shards (the planner's
  rule); a target that is really down fails the rebuild, retried next tick;
* **reads**: every ``read_interval`` every acknowledged object is read (readable iff at
  least k of its shards are on nodes that are up and still have them).

Trace records (``trace.record(name, ...)``), all with ``t`` and ``object`` (hex id):

* ``object_acked``: ``holders`` (hex node per shard index), ``k``, ``m``;
* ``object_repaired``: the new ``holders`` after a rebuild;
* ``object_read``: ``ok`` (readable), ``readable_shards``;
* ``object_write_failed``: why.

Sans-IO: time is passed in, randomness from the injected ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshcloud import placement
from sim.trace import Trace

NodeId = bytes


@dataclass
class ModelObject:
    object_id: bytes
    holders: list[NodeId]
    acked_at: float


@dataclass
class BlobModel:
    trace: Trace
    rng: random.Random
    k: int = 4
    m: int = 2
    writes_per_tick: float = 0.5
    """Expected new objects per tick (Poisson-ish via the rng)."""
    max_objects: int = 300
    repair_delay: float = 5.0
    """Seconds after a holder is declared failed before its shards are rebuilt."""
    read_interval: float = 10.0
    up: set[NodeId] = field(default_factory=set)
    """Nodes really running (their shards readable)."""
    believed: set[NodeId] = field(default_factory=set)
    """Nodes membership currently declares alive (what placement and repair see)."""
    failed_at: dict[NodeId, float] = field(default_factory=dict)
    stored: dict[NodeId, set[bytes]] = field(default_factory=dict)
    """(object id + shard index) keys each node really holds."""
    objects: list[ModelObject] = field(default_factory=list)
    next_read: float = 0.0
    _counter: int = 0

    @property
    def n(self) -> int:
        return self.k + self.m

    # --- what the runner calls ----------------------------------------------------------------

    def start(self, t: float, nodes: list[NodeId]) -> None:
        for node in nodes:
            self.on_join(t, node)
            self.on_member_alive(t, node)
        self.next_read = t + self.read_interval

    def on_join(self, t: float, node: NodeId) -> None:
        self.up.add(node)
        self.stored.setdefault(node, set())

    def on_restart(self, t: float, node: NodeId) -> None:
        self.up.add(node)  # the disk kept its shards

    def on_crash(self, t: float, node: NodeId) -> None:
        self.up.discard(node)

    def on_leave(self, t: float, node: NodeId) -> None:
        """The node left for good (or is gone): its shards are lost."""
        self.up.discard(node)
        self.stored[node] = set()

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

    def _key(self, obj: bytes, index: int) -> bytes:
        return obj + bytes([index])

    def _readable(self, obj: ModelObject) -> int:
        return sum(1 for i, node in enumerate(obj.holders)
                   if node in self.up and self._key(obj.object_id, i) in self.stored[node])

    def _write(self, t: float) -> None:
        self._counter += 1
        object_id = self.rng.randbytes(8) + self._counter.to_bytes(4, "big")
        ranking = placement.rank(sorted(self.believed), b"blob/" + object_id)
        holders: list[NodeId] = []
        for node in ranking:
            if len(holders) == self.n:
                break
            if node in self.up:  # a holder that is really down refuses: next one
                holders.append(node)
        if len(holders) < self.n:
            self.trace.record("object_write_failed", t=t, object=object_id.hex(),
                              why=f"{len(holders)} of {self.n} holders up")
            return
        for i, node in enumerate(holders):
            self.stored[node].add(self._key(object_id, i))
        self.objects.append(ModelObject(object_id, holders, t))
        self.trace.record("object_acked", t=t, object=object_id.hex(), k=self.k, m=self.m,
                          holders=[h.hex() for h in holders])

    def _repair(self, t: float) -> None:
        due = {n for n, at in self.failed_at.items() if t - at >= self.repair_delay}
        if not due:
            return
        for obj in self.objects:
            lost = [i for i, node in enumerate(obj.holders) if node in due]
            if not lost or self._readable(obj) < self.k:
                continue
            ranking = placement.rank(sorted(self.believed), b"blob/" + obj.object_id)
            changed = False
            for index in lost:
                taken = {node for i, node in enumerate(obj.holders) if i != index}
                target = next((n for n in ranking if n not in taken), None)
                if target is None or target not in self.up:
                    continue  # no candidate, or it is really down: retry next tick
                self.stored[target].add(self._key(obj.object_id, index))
                obj.holders[index] = target
                changed = True
            if changed:
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
        self.cluster: object = None
        self._known: dict[NodeId, str] = {}

    def attach(self, run: object) -> None:
        cluster = run.cluster  # type: ignore[attr-defined]
        rng = run.engine.derive_random("blobstore")  # type: ignore[attr-defined]
        self.cluster = cluster
        self.model = BlobModel(run.trace, rng, **self.settings)  # type: ignore[attr-defined, arg-type]
        now = run.engine.now  # type: ignore[attr-defined]
        states = self._states()
        self.model.start(now, [n for n, s in states.items() if s == "up"])
        self._known = states
        cluster.listeners.append(self.on_membership)

    def _states(self) -> dict[NodeId, str]:
        out = {}
        for host in self.cluster.by_index:  # type: ignore[attr-defined]
            out[host.node_id] = "left" if host.left else "up" if host.up else "down"
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
