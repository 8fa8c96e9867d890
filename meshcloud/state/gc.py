"""Two-phase tombstone garbage collection (sans-IO).

Model: Garage ``src/table/gc.rs``. A tombstone cannot simply be dropped: a replica that
never saw it would hand the deleted entry back at the next anti-entropy round. So a
tombstone older than ``gc_delay`` is removed in two phases by one **coordinator**:

1. **push**: send the tombstone (``GcPush``) to every live member storing its partition;
   each merges it (ending at the tombstone or something newer) and acknowledges.
   Members that do not answer get it again every ``gc_retry_interval``.
2. **delete**: only once *every* member has acknowledged phase 1, send ``GcDelete``
   (key, hash of the tombstone): each member deletes the entry **only if it still hashes
   the same** (a newer write wins and stays), and acknowledges; then the coordinator
   deletes its own copy the same way.

A round not completed within ``gc_round_timeout`` is abandoned and retried at the next
pass: GC never deletes a tombstone that a live member has not acknowledged. Members not
in the live view at that moment are not asked: a node away for longer than ``gc_delay``
may bring deleted entries back (Garage has the same limit; operations docs say to wipe
the state of a node that was away that long).

**Coordinator**: for each partition, the first node of its rendezvous ranking over the
live view (``holders_table(view, 1)``). Garage uses "the partition's first node" too,
with a TODO about layout changes; here every replica keeps a GC to-do item for each
tombstone it stores, so when the view changes the new coordinator simply finds it.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcloud.clock import hlc_pack
from meshcloud.state.config import StateConfig
from meshcloud.state.messages import GcAck, GcDelete, GcPush
from meshcloud.state.outputs import SendDatagram
from meshcloud.state.replication import Replication, holders_table
from meshcloud.state.table import Change, TableCore

NodeId = bytes


class GcPhase(enum.IntEnum):
    PUSH = 1
    DELETE = 2


@dataclass(slots=True)
class GcRound:
    round_id: int
    table: str
    members: frozenset[NodeId]
    items: list[tuple[bytes, bytes, bytes]]
    """(key, value hash, tombstone bytes)."""
    deadline: float
    phase: GcPhase = GcPhase.PUSH
    acked: set[NodeId] = field(default_factory=set)
    next_send: float = 0.0


@dataclass(slots=True)
class GcStatistics:
    rounds_started: int = 0
    rounds_completed: int = 0
    rounds_abandoned: int = 0
    deleted_here: int = 0
    deleted_on_request: int = 0


class GcCore:
    """Runs GC rounds for the tables of one node. See the module docstring."""

    def __init__(self, me: NodeId, tables: Mapping[str, TableCore[Any]],
                 replications: Mapping[str, Replication], config: StateConfig) -> None:
        self.me = me
        self.tables = tables
        self.replications = replications
        self.config = config
        self.rounds: dict[int, GcRound] = {}
        self.stats = GcStatistics()
        self._ids = itertools.count(1)

    # --- coordinator ----------------------------------------------------------------------

    def start_rounds(self, now: float, now_ms: int, view: frozenset[NodeId]) -> list[SendDatagram]:
        """Start a round per (table, member set) for due tombstones we coordinate."""
        out: list[SendDatagram] = []
        busy = {(r.table, key) for r in self.rounds.values() for key, _, _ in r.items}
        before = hlc_pack(max(0, now_ms - int(self.config.gc_delay * 1000)), 0)
        full_view = view | {self.me}
        coordinators = holders_table(full_view, 1)
        for name, table in self.tables.items():
            replication = self.replications[name]
            groups: dict[frozenset[NodeId], list[tuple[bytes, bytes, bytes]]] = {}

            def ours(key: bytes, table: TableCore[Any] = table, name: str = name) -> bool:
                partition = table.schema.partition_of_key_bytes(key)
                return coordinators[partition][0] == self.me and (name, key) not in busy

            for key, value_hash, data in table.gc_candidates(before, self.config.gc_batch,
                                                             accept=ours):
                partition = table.schema.partition_of_key_bytes(key)
                members = frozenset(replication.storage_nodes(partition, full_view)) - {
                    self.me}
                groups.setdefault(members, []).append((key, value_hash, data))
            for members, items in groups.items():
                items = _fit(items, self.config.datagram_budget)
                round_ = GcRound(next(self._ids), name, members, items,
                                 deadline=now + self.config.gc_round_timeout)
                self.rounds[round_.round_id] = round_
                self.stats.rounds_started += 1
                out.extend(self._advance(round_, now))
        return out

    def on_ack(self, peer: NodeId, ack: GcAck, now: float) -> list[SendDatagram]:
        round_ = self.rounds.get(ack.round)
        if round_ is None or ack.table != round_.table or ack.phase != round_.phase:
            return []
        if peer in round_.members:
            round_.acked.add(peer)
        return self._advance(round_, now)

    def on_timer(self, now: float) -> list[SendDatagram]:
        out: list[SendDatagram] = []
        for round_ in list(self.rounds.values()):
            if now >= round_.deadline:
                del self.rounds[round_.round_id]
                self.stats.rounds_abandoned += 1
            elif now >= round_.next_send:
                out.extend(self._send(round_, now))
        return out

    def next_deadline(self) -> float | None:
        times = [min(r.next_send, r.deadline) for r in self.rounds.values()]
        return min(times) if times else None

    def _advance(self, round_: GcRound, now: float) -> list[SendDatagram]:
        if round_.acked < round_.members:
            if round_.next_send <= now:
                return self._send(round_, now)
            return []
        if round_.phase is GcPhase.PUSH:
            round_.phase = GcPhase.DELETE
            round_.acked = set()
            round_.next_send = now
            return self._advance(round_, now)
        # Every live member has seen the tombstone and deleted it if unchanged: our turn.
        table = self.tables[round_.table]
        for key, value_hash, _ in round_.items:
            if table.delete_if_equal(key, value_hash, tombstone_only=True):
                self.stats.deleted_here += 1
        del self.rounds[round_.round_id]
        self.stats.rounds_completed += 1
        return []

    def _send(self, round_: GcRound, now: float) -> list[SendDatagram]:
        round_.next_send = now + self.config.gc_retry_interval
        if round_.phase is GcPhase.PUSH:
            msg: Any = GcPush(table=round_.table, round=round_.round_id,
                              entries=tuple((k, d) for k, _, d in round_.items))
        else:
            msg = GcDelete(table=round_.table, round=round_.round_id,
                           items=tuple((k, h) for k, h, _ in round_.items))
        return [SendDatagram(peer, msg) for peer in sorted(round_.members - round_.acked)]

    # --- member ---------------------------------------------------------------------------

    def on_push(self, peer: NodeId, msg: GcPush, now_ms: int) -> tuple[GcAck, list[Change]]:
        """Phase 1 at a member: merge the tombstones, then acknowledge. Raises CodecError
        (no ack, nothing stored) if the batch is malformed."""
        table = self.tables.get(msg.table)
        if table is None:
            return GcAck(table=msg.table, round=msg.round, phase=GcPhase.PUSH), []
        changes = table.merge_encoded(msg.entries, now_ms)
        return GcAck(table=msg.table, round=msg.round, phase=GcPhase.PUSH), changes

    def on_delete(self, peer: NodeId, msg: GcDelete) -> GcAck:
        """Phase 2 at a member: delete each tombstone that is unchanged."""
        table = self.tables.get(msg.table)
        if table is not None:
            for key, value_hash in msg.items:
                if table.delete_if_equal(key, value_hash, tombstone_only=True):
                    self.stats.deleted_on_request += 1
        return GcAck(table=msg.table, round=msg.round, phase=GcPhase.DELETE)


def _fit(items: list[tuple[bytes, bytes, bytes]], budget: int) -> list[tuple[bytes, bytes, bytes]]:
    """As many items as fit one datagram (at least one)."""
    out: list[tuple[bytes, bytes, bytes]] = []
    size = 0
    for item in items:
        cost = len(item[0]) + len(item[2]) + 8
        if out and size + cost > budget:
            break
        out.append(item)
        size += cost
    return out

