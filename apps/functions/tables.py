"""The functions service's replicated table (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.functions.messages import FunctionRecord
from meshcloud.state.schema import TableSchema, record_codec

_enc, _dec = record_codec(FunctionRecord)
FUNCTIONS: TableSchema[FunctionRecord] = TableSchema(
    "functions", partition=(str,), encode=_enc, decode=_dec, max_value_bytes=64 * 1024)


def all_functions(state: Any) -> dict[str, FunctionRecord]:
    return {k[0]: v for k, v in state.scan(FUNCTIONS.name)
            if v is not None and k and isinstance(k[0], str)}
