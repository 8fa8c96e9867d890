"""The V-Nets' replicated tables.

=============  ==============================  ==============  =====
table          key (partition | sort)          value           entry
=============  ==============================  ==============  =====
vnets          name                            VNetRecord      LWW
vnet_members   V-Net name | member id          MemberRecord    LWW
vnet_attach    V-Net name | workload name      AttachRecord    LWW
=============  ==============================  ==============  =====

A member id is ``host:<node hex>`` or ``wl:<workload>/<replica index>``; each member row
is written only by the node it names, so rows never conflict between writers.
"""

from __future__ import annotations

from typing import Any

from meshcloud.state.schema import TableSchema, record_codec
from vnet.records import AttachRecord, MemberRecord, VNetRecord

_vn_enc, _vn_dec = record_codec(VNetRecord)
VNETS: TableSchema[VNetRecord] = TableSchema(
    "vnets", partition=(str,), encode=_vn_enc, decode=_vn_dec, max_value_bytes=1024)

_m_enc, _m_dec = record_codec(MemberRecord)
MEMBERS: TableSchema[MemberRecord] = TableSchema(
    "vnet_members", partition=(str,), sort=(str,), encode=_m_enc, decode=_m_dec,
    max_value_bytes=1024)

_a_enc, _a_dec = record_codec(AttachRecord)
ATTACHMENTS: TableSchema[AttachRecord] = TableSchema(
    "vnet_attach", partition=(str,), sort=(str,), encode=_a_enc, decode=_a_dec,
    max_value_bytes=256)

VNET_TABLES: tuple[TableSchema[Any], ...] = (VNETS, MEMBERS, ATTACHMENTS)


def host_member(node: bytes) -> str:
    return f"host:{node.hex()}"


def replica_member(workload: str, index: int) -> str:
    return f"wl:{workload}/{index}"


def all_vnets(state: Any) -> dict[str, VNetRecord]:
    return {k[0]: v for k, v in state.scan(VNETS.name)
            if v is not None and len(k) == 1 and isinstance(v, VNetRecord)}


def all_members(state: Any) -> dict[tuple[str, str], MemberRecord]:
    return {(k[0], k[1]): v for k, v in state.scan(MEMBERS.name)
            if v is not None and len(k) == 2 and isinstance(v, MemberRecord)}


def all_attachments(state: Any) -> dict[tuple[str, str], AttachRecord]:
    return {(k[0], k[1]): v for k, v in state.scan(ATTACHMENTS.name)
            if v is not None and len(k) == 2 and isinstance(v, AttachRecord)}
