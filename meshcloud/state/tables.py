"""The cluster's tables: schemas and record types (all full copy on every node).

Adding a table is: a record dataclass registered as a message (a tag in this package's
block, ``TagBlock.STATE + 50..99``, so stored rows carry a version and evolve by the
codec's rules), a :class:`~.schema.TableSchema`, and a line in :data:`CLUSTER_TABLES`.
Domain packages (blobstore buckets and keys, vnets, functions) define theirs the same way
in their own modules and open them with ``driver.open_table(schema, replication)``.

=============  ====================================  ==========================  ========
table          key (partition | sort)                value                       entry
=============  ====================================  ==========================  ========
nodes          node id                               NodeRecord (per field)      LwwMap
workloads      name                                  WorkloadRecord              LWW
replicas       workload name | replica index         ReplicaClaim                LWW
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


@message(RECORDS + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadRecord:
    kind: str
    """service, function, site, database, spark."""
    spec: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    constraints: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    """Bumped by every spec change: reconcilers restart replicas running an older one."""


class ReplicaState:
    CLAIMED = "claimed"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


@message(RECORDS + 2, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaClaim:
    node: bytes
    fencing: int
    """Fencing token: grows with every new claim of this replica; a runtime refuses
    orders carrying a smaller one (two nodes with different views cannot both win)."""
    state: str = ReplicaState.CLAIMED
    restarts: int = 0
    updated_ms: int = 0
    generation: int = 0
    message: str = ""
    """Why it is not running, in words (version 2): a start error, the last exit."""


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


_node_enc, _node_dec = fields_codec(NodeRecord)
NODES: TableSchema[NodeRecord] = TableSchema(
    "nodes", partition=(bytes,), entry=LwwMap, encode=_node_enc, decode=_node_dec)

_wl_enc, _wl_dec = record_codec(WorkloadRecord)
WORKLOADS: TableSchema[WorkloadRecord] = TableSchema(
    "workloads", partition=(str,), encode=_wl_enc, decode=_wl_dec)

_claim_enc, _claim_dec = record_codec(ReplicaClaim)
REPLICAS: TableSchema[ReplicaClaim] = TableSchema(
    "replicas", partition=(str,), sort=(int,), encode=_claim_enc, decode=_claim_dec)

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

CLUSTER_TABLES: tuple[TableSchema[Any], ...] = (NODES, WORKLOADS, REPLICAS, EVENTS,
                                                MEMBERSHIP)


class TableAccess(Protocol):
    """What :class:`TableMembershipRecords` needs: the driver's synchronous API."""

    def get(self, table: str, key: Key) -> Any: ...

    def put(self, table: str, key: Key, value: Any) -> None: ...

    def scan(self, table: str, partition: Key = (), prefix: str | bytes | None = None,
             ) -> list[tuple[Key, Any]]: ...


class TableMembershipRecords:
    """:class:`meshcloud.membership.MembershipRecords` backed by the ``membership`` table,
    so every member refuses a revoked node and counts an invite's uses mesh-wide."""

    def __init__(self, state: TableAccess) -> None:
        self.state = state

    def is_revoked(self, node_id: bytes, invite_id: bytes) -> bool:
        return (self.state.get("membership", ("revoked_node", node_id, b"")) is not None
                or self.state.get("membership", ("revoked_invite", invite_id, b""))
                is not None)

    def redeemed_by(self, invite_id: bytes) -> set[bytes]:
        rows = self.state.scan("membership", ("redemption", invite_id))
        return {key[2] for key, _ in rows if isinstance(key[2], bytes)}

    def record_redemption(self, invite_id: bytes, node_id: bytes, now_ms: int) -> None:
        self._first("redemption", invite_id, node_id, now_ms)

    def revoke_node(self, node_id: bytes, now_ms: int) -> None:
        self._first("revoked_node", node_id, b"", now_ms)

    def revoke_invite(self, invite_id: bytes, now_ms: int) -> None:
        self._first("revoked_invite", invite_id, b"", now_ms)

    def _first(self, kind: str, subject: bytes, other: bytes, now_ms: int) -> None:
        key = (kind, subject, other)
        if self.state.get("membership", key) is None:
            self.state.put("membership", key, MembershipRecord(at_ms=now_ms))
