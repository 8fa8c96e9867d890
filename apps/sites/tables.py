"""The sites service's replicated tables (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.sites.messages import SiteRecord, SiteStats
from meshcloud.state.schema import TableSchema, record_codec

_site_enc, _site_dec = record_codec(SiteRecord)
SITES: TableSchema[SiteRecord] = TableSchema(
    "sites", partition=(str,), encode=_site_enc, decode=_site_dec,
    max_value_bytes=16 * 1024)

_stats_enc, _stats_dec = record_codec(SiteStats)
SITE_STATS: TableSchema[SiteStats] = TableSchema(
    "site_stats", partition=(str,), sort=(bytes,), encode=_stats_enc, decode=_stats_dec,
    max_value_bytes=1024)
"""Key (site, node id): each node writes only its own row."""


def all_sites(state: Any) -> dict[str, SiteRecord]:
    return {k[0]: v for k, v in state.scan(SITES.name)
            if v is not None and k and isinstance(k[0], str)}


def site_stats(state: Any) -> dict[str, dict[bytes, SiteStats]]:
    out: dict[str, dict[bytes, SiteStats]] = {}
    for k, v in state.scan(SITE_STATS.name):
        if v is not None and len(k) == 2:
            out.setdefault(k[0], {})[k[1]] = v
    return out
