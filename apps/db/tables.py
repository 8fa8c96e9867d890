"""The database service's replicated tables (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.db.messages import DbBackups, DbKept, DbMember, DbSecretKey, DbSpec
from meshcloud.state.schema import TableSchema, record_codec

_spec_enc, _spec_dec = record_codec(DbSpec)
DATABASES: TableSchema[DbSpec] = TableSchema(
    "databases", partition=(str,), encode=_spec_enc, decode=_spec_dec,
    max_value_bytes=4096)

_mem_enc, _mem_dec = record_codec(DbMember)
DB_MEMBERS: TableSchema[DbMember] = TableSchema(
    "db_members", partition=(str,), sort=(bytes,), encode=_mem_enc, decode=_mem_dec,
    max_value_bytes=1024)
"""Key (database, node id): each node writes only its own rows."""


def all_databases(state: Any) -> dict[str, DbSpec]:
    return {k[0]: v for k, v in state.scan(DATABASES.name)
            if v is not None and k and isinstance(k[0], str)}


def all_members(state: Any) -> dict[str, dict[bytes, DbMember]]:
    out: dict[str, dict[bytes, DbMember]] = {}
    for k, v in state.scan(DB_MEMBERS.name):
        if v is not None and len(k) == 2:
            out.setdefault(k[0], {})[k[1]] = v
    return out


_bk_enc, _bk_dec = record_codec(DbBackups)
DB_BACKUPS: TableSchema[DbBackups] = TableSchema(
    "db_backups", partition=(str,), encode=_bk_enc, decode=_bk_dec,
    max_value_bytes=64 * 1024)
"""Key: the database name; written by its primary."""


def all_backups(state: Any) -> dict[str, DbBackups]:
    return {k[0]: v for k, v in state.scan(DB_BACKUPS.name)
            if v is not None and k and isinstance(k[0], str)}


_sk_enc, _sk_dec = record_codec(DbSecretKey)
DB_SECRET_KEYS: TableSchema[DbSecretKey] = TableSchema(
    "db_secret_keys", partition=(bytes,), sort=(bytes,), encode=_sk_enc, decode=_sk_dec,
    max_value_bytes=1024)
"""Key (key id, node id): a database's data key sealed to each member node."""

_kept_enc, _kept_dec = record_codec(DbKept)
DB_KEPT: TableSchema[DbKept] = TableSchema(
    "db_kept", partition=(str,), encode=_kept_enc, decode=_kept_dec,
    max_value_bytes=64 * 1024)
"""Key: the stanza of a removed database whose backups were kept."""


def all_kept(state: Any) -> dict[str, DbKept]:
    return {k[0]: v for k, v in state.scan(DB_KEPT.name)
            if v is not None and k and isinstance(k[0], str)}
