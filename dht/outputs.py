"""What :class:`~dht.core.DhtCore` asks its driver to do, or reports to it.

* :class:`Send` — deliver a message. Requests expect a reply carrying the same ``rid``;
  if none comes, the core times the request out itself (a driver may report a failure
  sooner with ``on_request_failed``). Replies go back to the requester (a stream driver
  writes them on the stream the request came in on). ``addresses`` are where the core
  believes ``to`` listens (empty if it has no idea: a reply, or a node we are connected to).
* :class:`LookupStarted` / :class:`LookupFinished` — one operation (a lookup, possibly
  followed by stores) began / ended. Exactly one ``LookupFinished`` follows every
  ``LookupStarted``, with the same ``lookup_id``.
* :class:`PeerFound` — a node's addresses, from a verified signed record (or from the node
  itself answering a lookup for its id). Drivers tell the transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dht.messages import PeerInfo
from dht.records import PeerRecord, ProviderRecord


class Purpose(enum.Enum):
    FIND_NODE = "find_node"  # the k closest to an id
    BOOTSTRAP = "bootstrap"  # joining: a lookup of our own id
    REFRESH = "refresh"  # a random id in a stale bucket
    FIND_PEER = "find_peer"  # a node's addresses
    FIND_PROVIDERS = "find_providers"
    PUBLISH_PEER = "publish_peer"  # store our peer record at the k closest to our id
    PROVIDE = "provide"  # store our provider record at the k closest to a key


@dataclass(frozen=True, slots=True)
class Send:
    to: bytes
    msg: Any
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LookupStarted:
    lookup_id: int
    purpose: Purpose
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupFinished:
    lookup_id: int
    purpose: Purpose
    target: bytes
    succeeded: bool
    """FIND_PEER: a record or the node itself was found; FIND_PROVIDERS: a provider was;
    PUBLISH_PEER/PROVIDE: at least one node stored the record; others: a node answered."""
    closest: tuple[PeerInfo, ...] = ()
    peer_record: PeerRecord | None = None
    addresses: tuple[str, ...] = ()  # FIND_PEER: where the node is
    providers: tuple[ProviderRecord, ...] = ()
    stored: int = 0  # PUBLISH_PEER/PROVIDE: nodes that accepted the record
    rounds: int = 0  # see dht.lookup for the definition
    queries: int = 0  # lookup requests sent (stores not included)
    failures: int = 0  # lookup requests that failed
    started: float = 0.0  # `now` when it started
    ended: float = 0.0


@dataclass(frozen=True, slots=True)
class PeerFound:
    node_id: bytes
    addresses: tuple[str, ...]
    record: PeerRecord | None = None


Output = Send | LookupStarted | LookupFinished | PeerFound
