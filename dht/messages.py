"""The DHT's wire messages (Kademlia §2.3's four RPCs, with libp2p-style records).

Tags (``TagBlock.DHT + n``, append-only: a number once used is never reused)::

    1  PeerInfo          2  PeerRecord (records.py)   3  ProviderRecord (records.py)
    10 Ping              11 Pong
    12 FindNode          13 FindNodeReply
    14 FindValue         15 FindValueReply
    16 Store             17 StoreReply

Every request and reply carries ``rid`` (the requester's number for it; a reply echoes it)
and ``sender_addresses`` (where the sender listens: every message refreshes the sender's
routing-table entry, so a node that moved is found at its new address by whoever hears
from it). Requests carry ``serving``: a node in client mode (a phone on a metered link)
sets it false and is then never added to anyone's routing table.

``FindNode`` and ``FindValue`` carry ``count``: how many closest peers the requester
wants (k normally; more when the lookup has met dead nodes near the target and needs to
see past them, see :mod:`dht.lookup`). A reply with more peers than asked for is hostile.

Messages are plain frozen data; what a peer may put in them (sizes, counts, valid ids) is
checked by :func:`peer_info_problem` and by the core, which drops and counts bad ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dht.ids import ID_BYTES
from dht.records import PeerRecord, ProviderRecord
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

PROTOCOL = "/meshcloud/dht/1"
"""The stream protocol name: one request and one reply per stream."""


@message(TagBlock.DHT + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """A contact: a node id and the addresses it is believed to listen on."""

    node_id: bytes
    addresses: tuple[str, ...] = ()


class ValueKind(enum.IntEnum):
    PEER = 1  # the PeerRecord of the node whose id is the key
    PROVIDERS = 2  # the ProviderRecords of a content key


@message(TagBlock.DHT + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    rid: int
    sender_addresses: tuple[str, ...] = ()
    serving: bool = True


@message(TagBlock.DHT + 11)
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    rid: int
    sender_addresses: tuple[str, ...] = ()


@message(TagBlock.DHT + 12)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    rid: int
    target: bytes
    count: int
    sender_addresses: tuple[str, ...] = ()
    serving: bool = True


@message(TagBlock.DHT + 13)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindNodeReply:
    rid: int
    peers: tuple[PeerInfo, ...]
    sender_addresses: tuple[str, ...] = ()


@message(TagBlock.DHT + 14)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindValue:
    rid: int
    key: bytes
    kind: ValueKind
    count: int
    sender_addresses: tuple[str, ...] = ()
    serving: bool = True


@message(TagBlock.DHT + 15)
@dataclass(frozen=True, slots=True, kw_only=True)
class FindValueReply:
    rid: int
    peers: tuple[PeerInfo, ...]
    peer_record: PeerRecord | None = None
    providers: tuple[ProviderRecord, ...] = ()
    sender_addresses: tuple[str, ...] = ()


@message(TagBlock.DHT + 16)
@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """Keep one record: exactly one of ``peer_record`` and ``provider_record`` is set."""

    rid: int
    peer_record: PeerRecord | None = None
    provider_record: ProviderRecord | None = None
    sender_addresses: tuple[str, ...] = ()
    serving: bool = True


@message(TagBlock.DHT + 17)
@dataclass(frozen=True, slots=True, kw_only=True)
class StoreReply:
    rid: int
    accepted: bool
    reason: str = ""  # a RecordError code when refused
    sender_addresses: tuple[str, ...] = ()


Request = Ping | FindNode | FindValue | Store
Reply = Pong | FindNodeReply | FindValueReply | StoreReply
REQUEST_TYPES = (Ping, FindNode, FindValue, Store)
REPLY_TYPES = (Pong, FindNodeReply, FindValueReply, StoreReply)
REPLY_TO: dict[type, type] = {Ping: Pong, FindNode: FindNodeReply, FindValue: FindValueReply,
                              Store: StoreReply}
"""Which reply answers which request (a reply of another type is hostile)."""


def addresses_problem(addresses: tuple[str, ...], max_addresses: int,
                      max_length: int) -> str | None:
    """Why a peer-supplied address list is unacceptable, or None."""
    if len(addresses) > max_addresses:
        return "too_many_addresses"
    for address in addresses:
        if len(address) > max_length:
            return "address_too_long"
    return None


def peer_info_problem(info: PeerInfo, max_addresses: int, max_length: int) -> str | None:
    """Why a peer-supplied contact is garbage, or None."""
    if type(info) is not PeerInfo:
        return "garbage_peer"
    if type(info.node_id) is not bytes or len(info.node_id) != ID_BYTES:
        return "garbage_peer"
    return addresses_problem(info.addresses, max_addresses, max_length)
