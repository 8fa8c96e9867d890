"""The database service's replicated tables (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.db.messages import DbMember, DbSpec
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
