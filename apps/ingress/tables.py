"""The ingress's replicated tables: ``endpoints`` (live replicas) and ``exposures``."""

from __future__ import annotations

from typing import Any

from apps.ingress.messages import EndpointRecord, Exposure
from meshcloud.state.schema import TableSchema, record_codec

_ep_enc, _ep_dec = record_codec(EndpointRecord)
ENDPOINTS: TableSchema[EndpointRecord] = TableSchema(
    "endpoints", partition=(str, str), sort=(int,), encode=_ep_enc, decode=_ep_dec,
    max_value_bytes=1024)
"""Key (workload, endpoint, index). Like claims: one row per replica index, written by the
node running it, so a replica that moves overwrites its row."""

_ex_enc, _ex_dec = record_codec(Exposure)
EXPOSURES: TableSchema[Exposure] = TableSchema(
    "exposures", partition=(int,), encode=_ex_enc, decode=_ex_dec, max_value_bytes=1024)


def endpoint_rows(state: Any) -> dict[tuple[str, str, int], EndpointRecord]:
    return {(k[0], k[1], k[2]): v for k, v in state.scan(ENDPOINTS.name)
            if v is not None and len(k) == 3}


def exposures(state: Any) -> dict[int, Exposure]:
    return {k[0]: v for k, v in state.scan(EXPOSURES.name) if v is not None and k}
