"""Target layouts: which code each object should have now, and whether to re-encode it (sans-IO).

An object's *layout* is the code its manifest was written with (scheme, k, m). Writes
choose the code from the nodes live at that moment (automatic buckets: 4+2 from six live
nodes, else min(3, live) copies), so an object written during an outage is weaker than the
mesh promises: two copies on a 3-node mesh with one node down, three copies on a 6-node
mesh with nodes down. Repair alone never fixes that: it restores the object's *own* k+m.

The **goal** of an object is the code its bucket asks for on the whole mesh
(:func:`goal_code`): an explicit bucket code as written, or the automatic choice for the
mesh's *size*, i.e. the members not known to have left (a crashed node still counts until
gossip forgets it, so an outage does not lower the goal). What can be done *now* depends on
the live nodes (:func:`reachable_code`). :func:`plan_layout` decides per object:

* ``at_target``: its code is the goal or at least as good (:func:`better`) and every chunk
  has k+m shards on k+m distinct live nodes;
* ``reencode``: the code to re-encode it to, or None. It is the goal once enough nodes are
  live for it (this also turns three copies into 4+2 when a mesh reaches six nodes);
  before that, the reachable code if it survives more losses than the current one (two
  copies become three as soon as three nodes are live). Never a weaker code nor a
  costlier one for the same safety: a 4+2 object on a mesh that shrank below six nodes
  stays 4+2 (repair keeps as many of its shards as the nodes allow);
* ``waiting``: below target and nothing can be done until more nodes are live.

A chunk missing shards whose code is already the goal is repair's business
(:mod:`blobstore.repair`), not a re-encode.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from blobstore.erasure import ErasureCode, ReplicationCode, Scheme, ZfecCode, choose_code
from blobstore.manifest import Manifest

NodeId = bytes
Code = tuple[Scheme, int, int]
"""(scheme, k, m): a layout, comparable and hashable."""


def code_key(code: ErasureCode) -> Code:
    return (code.scheme, code.k, code.m)


def manifest_code(manifest: Manifest) -> Code:
    return (manifest.scheme, manifest.k, manifest.m)


def code_text(code: Code) -> str:
    scheme, k, m = code
    return f"r{k + m}" if scheme is Scheme.REPLICATION else f"{k}+{m}"


def make_code(code: Code) -> ErasureCode:
    scheme, k, m = code
    if scheme is Scheme.REPLICATION:
        return ReplicationCode(k + m)
    return ZfecCode(k, m)


def goal_code(explicit: ErasureCode | None, mesh_size: int) -> ErasureCode:
    """The code an object of a bucket should end up with on a mesh of ``mesh_size`` nodes."""
    return explicit if explicit is not None else choose_code(max(1, mesh_size))


def reachable_code(explicit: ErasureCode | None, live: int) -> ErasureCode | None:
    """The best code the ``live`` nodes can hold now (None: not even the bucket's own)."""
    if explicit is not None:
        return explicit if live >= explicit.n else None
    return choose_code(live) if live >= 1 else None


def complete(manifest: Manifest, live: Collection[NodeId]) -> bool:
    """Every chunk has its k+m shards on k+m distinct live nodes."""
    n = manifest.n
    for chunk in manifest.chunks:
        nodes = [s.node for s in chunk.shards]
        if len(nodes) != n or len(set(nodes)) != n or not all(x in live for x in nodes):
            return False
    return True


@dataclass(frozen=True, slots=True)
class LayoutPlan:
    current: Code
    goal: Code
    at_target: bool
    reencode: Code | None
    waiting: bool


def better(a: Code, b: Code) -> bool:
    """Layout ``a`` is worth re-encoding ``b`` into: it survives more lost holders, or as
    many at a lower storage cost (three copies -> 4+2). Never the other way round, so a
    node with a partial view of the mesh (just started) cannot make objects weaker."""
    if a[2] != b[2]:
        return a[2] > b[2]
    return (a[1] + a[2]) * b[1] < (b[1] + b[2]) * a[1]


def plan_layout(manifest: Manifest, goal: ErasureCode, reachable: ErasureCode | None,
                live: Collection[NodeId], *, inline: bool = False) -> LayoutPlan:
    """See the module docstring. ``inline``: the object lives in its index record (no
    shards: the index's own replicas are its copies), always at target."""
    current = manifest_code(manifest)
    want = code_key(goal)
    if inline or not manifest.chunks:
        return LayoutPlan(current, want, True, None, False)
    if not better(want, current):
        # the goal, or something at least as good: only missing shards (repair) remain
        return LayoutPlan(current, want, complete(manifest, live), None, False)
    now = code_key(reachable) if reachable is not None else None
    target: Code | None = None
    if now == want or (now is not None and better(now, current) and now[2] > current[2]):
        target = now
    return LayoutPlan(current, want, False, target, target is None)
