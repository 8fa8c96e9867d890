"""The ingress's replicated tables: ``endpoints`` (live replicas) and ``exposures``."""

from __future__ import annotations

from typing import Any

from apps.ingress.messages import EndpointRecord, Exposure, NodeSealKey, SiteCert
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


_nk_enc, _nk_dec = record_codec(NodeSealKey)
INGRESS_KEYS: TableSchema[NodeSealKey] = TableSchema(
    "ingress_keys", partition=(bytes,), encode=_nk_enc, decode=_nk_dec, max_value_bytes=256)
"""Key: node id; each node writes its own row at start."""

_sc_enc, _sc_dec = record_codec(SiteCert)
SITE_CERTS: TableSchema[SiteCert] = TableSchema(
    "site_certs", partition=(str,), encode=_sc_enc, decode=_sc_dec,
    max_value_bytes=256 * 1024)
"""Key: host; written by the admin node only (rows carry the root key's signature)."""


def site_certs(state: Any) -> dict[str, SiteCert]:
    return {k[0]: v for k, v in state.scan(SITE_CERTS.name) if v is not None and k}


def seal_keys(state: Any) -> dict[bytes, bytes]:
    return {k[0]: v.curve_public for k, v in state.scan(INGRESS_KEYS.name)
            if v is not None and k}
