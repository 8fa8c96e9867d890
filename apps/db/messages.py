"""Stored rows of the database service (tags ``APPS + 90`` … ``APPS + 96``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

DB_FORWARD_PROTOCOL = "/meshcloud/db-forward/1"
"""One stream = one client connection to the database's primary on the serving node
(``ForwardOpen(workload=NAME, endpoint="pg", index=0)``; the target checks that it runs
that database's primary itself)."""


@message(TagBlock.APPS + 90, version=3)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbSpec:
    """A database the user asked for. Key in ``databases``: its name."""

    port: int
    """The TCP port every node's ingress listens on for it."""
    password: str = ""
    """(versions 1-2) The generated password of the user NAME, in clear. Rows written
    now keep it empty: the passwords are in ``sealed``; an old row's are read from here
    and sealed by the node running the primary."""
    home: bytes
    """The node chosen at creation to run the primary."""
    standbys: int = 0
    version: int = 15
    created_ms: int = 0
    restore_from: str = ""
    """(version 2) The pgBackRest stanza this database was restored from ("" for a new
    one); its first primary runs ``pgbackrest restore`` instead of ``initdb``."""
    restore_at: str = ""
    """The point in time (ISO 8601, UTC) of that restore."""
    restore_user: str = ""
    """The user (and database) name inside the restored copy (the source database's)."""
    restore_password: str = ""
    """(versions 1-2, in clear; now in ``sealed``) The source's password at restore time
    (to log in once and rename)."""
    backup_every_s: int = 86_400
    """Scheduled backups: one when the last is older than this (0: none)."""
    ro_port: int = 0
    """The TCP port every node's ingress listens on for read-only connections (to a
    standby; 0: none)."""
    size: int = 0
    """Bytes asked for with ``--size`` (0: not given): each copy is placed on a node with
    that much disk free at creation. Not a quota: the database may grow past it."""
    params: tuple[str, ...] = ()
    """``--param k=v`` settings (checked against the server's own list), written before
    the settings meshcloud owns in every copy's ``meshcloud.conf``."""
    key_id: bytes = b""
    """(version 3) The data key ``sealed`` is encrypted under; its boxes, one per member
    node, are the rows ``(key_id, node)`` of ``db_secret_keys``."""
    sealed: bytes = b""
    """The passwords (``password``, ``restore_password``) as one XSalsa20-Poly1305 box
    under that key (see :mod:`apps.db.sealing`); empty in an old row."""


@message(TagBlock.APPS + 91, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbMember:
    """One node's copy of a database, written only by that node.

    Key in ``db_members``: (name, node id)."""

    role: str
    """``primary``, ``standby`` or ``stopped``."""
    port: int
    """The postgres port on that node's 127.0.0.1 (0 when not running)."""
    healthy: bool
    term: int = 0
    updated_ms: int = 0
    incarnation: int = 0
    """(version 2) The ``created_ms`` of the database spec this copy belongs to (a database
    restored in place is a new incarnation: rows of the old one are ignored)."""
    lsn: int = 0
    """The last WAL position written (primary) or replayed (standby), for switchover and
    the UI's lag."""
    handover: bytes = b""
    """Set by a primary that shut down for a planned switchover: the standby that should
    take over (the others leave the lease to it)."""
    excluded: tuple[bytes, ...] = ()
    """Written by the primary: nodes it counted gone (down longer than the replace delay).
    They leave the database's group for good (this incarnation): their places go to the
    next ranked nodes, and a copy they still have is dropped when they return."""
    synced: tuple[bytes, ...] = ()
    """Written by the primary: the standbys its PostgreSQL reports streaming as
    synchronous (``pg_stat_replication.sync_state`` sync or quorum) while it commits
    synchronously. Only these may be promoted after it: any other standby may lack
    commits it acknowledged."""


@message(TagBlock.APPS + 92)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbBackups:
    """What the repository holds for one database, written by its primary after each
    backup or look. Key in ``db_backups``: the database name."""

    stanza: str
    backups: str = "[]"
    """JSON list of ``Backup.as_json()``, oldest first."""
    updated_ms: int = 0
    error: str = ""


DB_CALL_PROTOCOL = "/meshcloud/db-call/1"
"""One stream = one request to the node running a database's primary (backup, switchover,
archive check)."""


@message(TagBlock.APPS + 93)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbCall:
    name: str
    op: str
    args: dict[str, str]
    incarnation: int = 0


@message(TagBlock.APPS + 94)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbCallReply:
    ok: bool
    code: str = ""
    message: str = ""
    result: str = "{}"
    """JSON."""


@message(TagBlock.APPS + 95)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbSecretKey:
    """A database's data key ``key_id`` sealed (X25519 SealedBox) to one node's key (the
    one ``ingress_keys`` publishes). Key in ``db_secret_keys``: (key id, node id)."""

    key_id: bytes
    box: bytes


@message(TagBlock.APPS + 96)
@dataclass(frozen=True, slots=True, kw_only=True)
class DbKept:
    """The backups of a removed database, kept in the repository (``db rm`` without
    ``--delete-backups``): what a restore from them needs. Key in ``db_kept``: the
    stanza."""

    name: str
    created_ms: int
    """The removed incarnation's ``created_ms`` (its stanza is ``NAME-created_ms``)."""
    removed_ms: int
    version: int = 15
    standbys: int = 0
    params: tuple[str, ...] = ()
    key_id: bytes = b""
    sealed: bytes = b""
    """Its passwords, sealed as in its ``DbSpec`` (a restore logs in once with them)."""
    backups: str = "[]"
    """JSON list of ``Backup.as_json()`` as last seen before the removal."""
