"""Digest-first syncs: periodic push-pull that moves full entries only where views differ.

A full push-pull sends every member's entry with its signed Alive and membership proof
(~1.3 KB each) both ways, so at 60 nodes a sync moves ~160 KB although two converged
views agree on everything. A periodic sync therefore starts with a :class:`SyncDigest`
(node, incarnation, state: ~40 bytes a member); the responder answers with the full
entries the initiator lacks or holds at another (incarnation, state) and names the ones
it wants; the initiator sends those last. Both sides merge exactly the entries a full
sync would have changed something with: a member held at the same (incarnation, state)
on both sides is a no-op in :meth:`~gossip.news.NewsApplier._merge`, and (incarnation,
state) identifies a member's signed statement (a new statement takes a new incarnation).

Proofs (certificates) travel only with entries the receiver does not know. A join is
still a full :class:`~gossip.messages.PushPull` (the joiner knows nobody).

Pure functions of the member table; :class:`~gossip.core.SwimCore` wraps them.
"""

from __future__ import annotations

import dataclasses

from gossip.messages import DigestEntry, PushPullEntry, SyncDelta, SyncDigest
from gossip.table import MemberTable


def make_digest(table: MemberTable) -> SyncDigest:
    return SyncDigest(entries=tuple(
        DigestEntry(node=node, incarnation=m.incarnation, state=m.state)
        for node, m in table.members.items()))


def entry(table: MemberTable, node: bytes, *, with_proof: bool) -> PushPullEntry | None:
    """A member's full sync entry (None if we do not hold it)."""
    m = table.members.get(node)
    if m is None:
        return None
    alive = m.alive
    proof = table.proofs.get(node) if with_proof else None
    if proof:
        alive = dataclasses.replace(alive, proof=proof)
    return PushPullEntry(alive=alive, state=m.state, incarnation=m.incarnation,
                         leave_signature=table.leave_signatures.get(node, b""))


def delta_for(table: MemberTable, digest: SyncDigest) -> SyncDelta:
    """Our answer to ``digest``: what its sender lacks or holds differently, and what we
    want from it. A digest naming a node twice is answered as if it named it once."""
    theirs: dict[bytes, DigestEntry] = {e.node: e for e in digest.entries}
    entries: list[PushPullEntry] = []
    wants: list[bytes] = []
    wants_new: list[bytes] = []
    members = table.members
    for node, m in members.items():
        d = theirs.get(node)
        if d is None:
            e = entry(table, node, with_proof=True)
        elif d.incarnation != m.incarnation or d.state is not m.state:
            e = entry(table, node, with_proof=False)
            wants.append(node)
        else:
            continue
        assert e is not None
        entries.append(e)
    for node in theirs:
        if node not in members:
            wants_new.append(node)
    return SyncDelta(entries=tuple(entries), wants=tuple(wants), wants_new=tuple(wants_new))


def wanted_entries(table: MemberTable, delta: SyncDelta) -> tuple[PushPullEntry, ...]:
    """The entries ``delta``'s sender asked for (those we still hold)."""
    out: list[PushPullEntry] = []
    for nodes, with_proof in ((delta.wants, False), (delta.wants_new, True)):
        for node in nodes:
            e = entry(table, node, with_proof=with_proof)
            if e is not None:
                out.append(e)
    return tuple(out)
