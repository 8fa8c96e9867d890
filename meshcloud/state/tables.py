"""The cluster's tables: schemas and record types (all full copy on every node).

Adding a table is: a record dataclass registered as a message (a tag in this package's
block, ``TagBlock.STATE + 50..99``, so stored rows carry a version and evolve by the
codec's rules), a :class:`~.schema.TableSchema`, and a line in :data:`CLUSTER_TABLES`.
This module holds only the core's tables; domain packages (workloads and replicas, blobstore
buckets and keys, later vnets, functions) define theirs the same way in their own modules
and open them with ``driver.open_table(schema, replication)``.

=============  ====================================  ==========================  ========
table          key (partition | sort)                value                       entry
=============  ====================================  ==========================  ========
nodes          node id                               NodeRecord (per field)      LwwMap
events         (one partition) | HLC ts, node id     EventRecord, kept 7 days    LWW
membership     kind, subject | other id              MembershipRecord            LWW
=============  ====================================  ==========================  ========

``nodes`` is per field so that an admin setting ``drain`` and the node refreshing its
``addresses`` never overwrite each other. ``last_seen_ms`` is refreshed rarely (at start
and every few minutes): liveness is gossip's job, not the table's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.state.crdt import LwwMap
from meshcloud.state.keys import Key
from meshcloud.state.schema import TableSchema, fields_codec, record_codec

RECORDS = TagBlock.STATE + 50
"""First tag of stored record types (wire messages use STATE + 1..49)."""

EVENT_RETENTION_MS = 7 * 24 * 3600 * 1000
"""Events are kept a week, then purged on every node alike (no tombstones)."""


@message(RECORDS + 0)
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    name: str = ""
    addresses: tuple[str, ...] = ()
    capacity: dict[str, Any] = field(default_factory=dict)
    """Summary from gossip: cpus, ram_mb, disk_free_mb, arch, runtimes, battery..."""
    last_seen_ms: int = 0
    drain: bool = False
    agent_version: str = ""


@message(RECORDS + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    kind: str
    message: str
    subject: str = ""
    level: str = "info"


@message(RECORDS + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipRecord:
    at_ms: int
    signature: bytes = b""
    """Revocations only: the mesh root key's signature (see :mod:`meshcloud.revocation`)."""


_node_enc, _node_dec = fields_codec(NodeRecord)
NODES: TableSchema[NodeRecord] = TableSchema(
    "nodes", partition=(bytes,), entry=LwwMap, encode=_node_enc, decode=_node_dec)

_ev_enc, _ev_dec = record_codec(EventRecord)
EVENTS: TableSchema[EventRecord] = TableSchema(
    "events", partition=(), sort=(int, bytes), encode=_ev_enc, decode=_ev_dec,
    max_value_bytes=4096, expires_after_ms=EVENT_RETENTION_MS)
"""Key: (HLC timestamp, writer node id): unique and time-ordered; scan reverse for
the newest first."""

_mb_enc, _mb_dec = record_codec(MembershipRecord)
MEMBERSHIP: TableSchema[MembershipRecord] = TableSchema(
    "membership", partition=(str, bytes), sort=(bytes,), encode=_mb_enc, decode=_mb_dec)
"""Keys: ("redemption", invite id, node id), ("revoked_node", node id, b""),
("revoked_invite", invite id, b"")."""

CLUSTER_TABLES: tuple[TableSchema[Any], ...] = (NODES, EVENTS, MEMBERSHIP)
"""The tables every node opens. A service's own tables (``workloads`` and ``replicas``:
:mod:`apps.workloads.tables`, tags ``RECORDS + 1`` and ``+ 2``) are opened by the service."""


class TableAccess(Protocol):
    """What :class:`TableMembershipRecords` needs: the driver's synchronous API."""

    def get(self, table: str, key: Key) -> Any: ...

    def put(self, table: str, key: Key, value: Any) -> None: ...

    def scan(self, table: str, partition: Key = (), prefix: str | bytes | None = None,
             ) -> list[tuple[Key, Any]]: ...


class TableMembershipRecords:
    """:class:`meshcloud.membership.MembershipRecords` backed by the ``membership`` table,
    so every member refuses a revoked node and counts an invite's uses mesh-wide."""

    def __init__(self, state: TableAccess, root_public: bytes) -> None:
        self.state = state
        self.root_public = root_public
        self._valid: dict[tuple[str, bytes, int, bytes], bool] = {}

    def is_revoked(self, node_id: bytes, invite_id: bytes) -> bool:
        return (self._signed("revoked_node", "node", node_id)
                or self._signed("revoked_invite", "invite", invite_id))

    def _signed(self, row: str, kind: str, subject: bytes) -> bool:
        """A revocation row counts only with a valid root signature (one member cannot
        revoke another); checked once per row."""
        record = self.state.get("membership", (row, subject, b""))
        if record is None:
            return False
        key = (kind, subject, record.at_ms, record.signature)
        if key not in self._valid:
            from meshcloud.revocation import revocation_valid

            self._valid[key] = revocation_valid(self.root_public, kind, subject,
                                                record.at_ms, record.signature)
        return self._valid[key]

    def revocations(self) -> list[tuple[str, bytes, int]]:
        """(kind, subject, at) of every validly signed revocation."""
        out = []
        for key, record in self.state.scan("membership"):
            row, subject = key[0], key[1]
            kind = {"revoked_node": "node", "revoked_invite": "invite"}.get(row)
            if kind and isinstance(subject, bytes) and self._signed(row, kind, subject):
                out.append((kind, subject, record.at_ms))
        return out

    def add_revocation(self, kind: str, subject: bytes, at_ms: int, signature: bytes) -> None:
        row = {"node": "revoked_node", "invite": "revoked_invite"}[kind]
        self.state.put("membership", (row, subject, b""),
                       MembershipRecord(at_ms=at_ms, signature=signature))

    def known_invites(self) -> list[bytes]:
        """Invites that admitted somebody (for `meshcloud revoke` by prefix)."""
        rows = self.state.scan("membership", ("redemption",))
        return [key[1] for key, _ in rows if isinstance(key[1], bytes)]

    def redeemed_by(self, invite_id: bytes) -> set[bytes]:
        rows = self.state.scan("membership", ("redemption", invite_id))
        return {key[2] for key, _ in rows if isinstance(key[2], bytes)}

    def record_redemption(self, invite_id: bytes, node_id: bytes, now_ms: int) -> None:
        self._first("redemption", invite_id, node_id, now_ms)


    def _first(self, kind: str, subject: bytes, other: bytes, now_ms: int) -> None:
        key = (kind, subject, other)
        if self.state.get("membership", key) is None:
            self.state.put("membership", key, MembershipRecord(at_ms=now_ms))
