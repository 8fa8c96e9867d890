"""The functions service's replicated table (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.functions.messages import (
    FnNodeStats,
    FnSecretKey,
    FnSecrets,
    FunctionRecord,
    QueuedInvocation,
    TickRecord,
)
from meshcloud.state.schema import TableSchema, record_codec

_enc, _dec = record_codec(FunctionRecord)
FUNCTIONS: TableSchema[FunctionRecord] = TableSchema(
    "functions", partition=(str,), encode=_enc, decode=_dec, max_value_bytes=64 * 1024)

_tenc, _tdec = record_codec(TickRecord)
TICKS: TableSchema[TickRecord] = TableSchema(
    "fn_ticks", partition=(str,), sort=(int,), encode=_tenc, decode=_tdec,
    max_value_bytes=4096, expires_after_ms=24 * 3_600_000)
"""Scheduled ticks run (key: function name, tick time in seconds), kept a day."""

_qenc, _qdec = record_codec(QueuedInvocation)
QUEUE: TableSchema[QueuedInvocation] = TableSchema(
    "fn_queue", partition=(str,), sort=(str,), encode=_qenc, decode=_qdec,
    max_value_bytes=64 << 10, expires_after_ms=24 * 3_600_000)
"""Asynchronous invocations (key: function name, invocation id), kept a day."""


def all_functions(state: Any) -> dict[str, FunctionRecord]:
    return {k[0]: v for k, v in state.scan(FUNCTIONS.name)
            if v is not None and k and isinstance(k[0], str)}


def recorded_ticks(state: Any, name: str) -> dict[int, TickRecord]:
    return {k[1]: v for k, v in state.scan(TICKS.name, (name,))
            if v is not None and len(k) == 2 and isinstance(k[1], int)}


def queued(state: Any, name: str | None = None) -> list[tuple[str, str, QueuedInvocation]]:
    rows = state.scan(QUEUE.name, (name,)) if name else state.scan(QUEUE.name)
    return [(k[0], k[1], v) for k, v in rows
            if v is not None and len(k) == 2 and isinstance(k[1], str)]


_senc, _sdec = record_codec(FnNodeStats)
STATS: TableSchema[FnNodeStats] = TableSchema(
    "fn_stats", partition=(str,), sort=(bytes,), encode=_senc, decode=_sdec,
    max_value_bytes=16 << 10, expires_after_ms=7 * 24 * 3_600_000)
"""Per-node invocation metrics (key: function name, node id)."""


def node_stats(state: Any, name: str) -> dict[bytes, FnNodeStats]:
    return {k[1]: v for k, v in state.scan(STATS.name, (name,))
            if v is not None and len(k) == 2 and isinstance(k[1], bytes)}


_xenc, _xdec = record_codec(FnSecrets)
SECRETS: TableSchema[FnSecrets] = TableSchema(
    "fn_secrets", partition=(str,), encode=_xenc, decode=_xdec, max_value_bytes=48 << 10)
"""Encrypted secrets per function (key: function name)."""

_kenc, _kdec = record_codec(FnSecretKey)
SECRET_KEYS: TableSchema[FnSecretKey] = TableSchema(
    "fn_secret_keys", partition=(str,), sort=(bytes,), encode=_kenc, decode=_kdec,
    max_value_bytes=1024)
"""A function's data key sealed to each node (key: function name, node id)."""


def secret_keys(state: Any, name: str) -> dict[bytes, FnSecretKey]:
    return {k[1]: v for k, v in state.scan(SECRET_KEYS.name, (name,))
            if v is not None and len(k) == 2 and isinstance(k[1], bytes)}
