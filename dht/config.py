"""DhtConfig: every knob of the DHT with its default and the reason for it.

Presets are edits of the one base (``lan()`` is the default):

* :meth:`DhtConfig.lan` — machines at home or in an office: the defaults below.
* :meth:`DhtConfig.wan` — nodes across the internet: longer request timeout, larger
  ``alpha`` to hide slow peers.
* :meth:`DhtConfig.local` — tests and loopback demos: short timeouts and intervals.
* :meth:`DhtConfig.phone` — an Android phone: client mode (never in others' tables, so
  no one waits on it when it sleeps), rare refreshes (battery), and short peer-record
  lifetimes because it changes network often.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dht.records import RecordLimits


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    k: int = 20
    """Bucket size and replication of records (Kademlia's k, libp2p's 20): with k = 20 a
    bucket loses all its contacts only if 20 nodes fail within one refresh interval."""

    alpha: int = 3
    """Queries in flight per lookup before it converges (the paper's alpha = 3)."""

    max_find_count: int = 40
    """Most peers a FindNode may ask for (2k): room for a lookup to see past up to k dead
    nodes near its target (see dht.lookup), while bounding a reply's size."""

    find_count: int | None = None
    """Peers each FindNode of a lookup asks for (k to ``max_find_count``; unset, all of
    ``max_find_count``). Asking for 2k from the start lets a lookup see past dead nodes in
    its first replies: with 20 % of a mesh crashed, 4 rounds instead of 6 (dht.lookup),
    for replies twice as long."""

    replacement_cache_size: int = 20
    """Newcomers remembered per full bucket, to replace contacts that stop answering."""

    stale_after_failures: int = 3
    """Consecutive failed requests before a contact with no replacement is dropped."""

    request_timeout: float = 2.0
    """Seconds to wait for a reply. A LAN round trip is milliseconds; a dial to a sleeping
    machine takes seconds to fail; 2 s keeps a lookup through a dead node short."""

    maintenance_interval: float = 30.0
    """Seconds between maintenance passes (expire records, refresh buckets, republish)."""

    refresh_interval: float = 3600.0
    """A bucket no lookup has touched for this long gets a lookup of a random id in it:
    the hour of the Kademlia paper (§2.3; libp2p uses 10 min). Each bucket of each node
    waits its own 0.5-1.5 × this (:func:`dht.core.refresh_period`). A refresh is what an
    idle mesh's DHT costs: a lookup per stale bucket, to several peers, each stream
    usually a dial (a handshake of ~2 KB); at 10 min it was most of an idle 60-node
    mesh's traffic and dials (docs/benchmarks.md, "idle, part 6"). Contacts stay fresh
    meanwhile: every valid message refreshes its sender, a failed request counts against
    a contact, and the agent finds moved members by lookups of its own."""

    peer_record_ttl: float = 3600.0
    """Lifetime of our signed peer record: stale addresses of a node that vanished stop
    being served within the hour."""

    peer_republish_interval: float = 1200.0
    """Re-sign and re-store our peer record this often (a third of its lifetime, so two
    republishes can fail before it expires); also after every address change."""

    provider_record_ttl: float = 24 * 3600.0
    """Lifetime of a provider record (libp2p: 48 h; a day is plenty in one mesh)."""

    provider_republish_interval: float = 8 * 3600.0
    """Re-announce what we provide this often (a third of the lifetime)."""

    max_record_ttl: float = 48 * 3600.0
    """Records expiring further ahead than this are refused (they would outlive their
    holder's republishes and pin stale data)."""

    max_peer_records: int = 10_000
    """Peer records held for others (a record is ~250 bytes: 2.5 MB)."""

    max_provider_records: int = 100_000
    """Provider records held for others (~25 MB)."""

    max_providers_per_key: int = 20
    """Providers kept and returned per key: k of them are plenty to find a live one."""

    max_addresses: int = 8
    """Addresses in one contact or record (IPv4 + IPv6 + a few interfaces)."""

    max_address_length: int = 200
    """Characters in one address (a long multiaddr-like string fits)."""

    serving: bool = True
    """False = client mode: we query the DHT but are never put in routing tables."""

    join_refresh: bool = True
    """After the bootstrap lookup, refresh every bucket farther than our closest neighbour
    (Kademlia §2.3, joining) so the table holds contacts at every distance at once."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        if self.max_find_count < self.k:
            raise ValueError("max_find_count must be at least k")
        if self.find_count is not None and not self.k <= self.find_count <= self.max_find_count:
            raise ValueError("find_count must be between k and max_find_count")
        for name in ("request_timeout", "maintenance_interval", "refresh_interval",
                     "peer_record_ttl", "peer_republish_interval", "provider_record_ttl",
                     "provider_republish_interval", "max_record_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.peer_republish_interval >= self.peer_record_ttl:
            raise ValueError("peer_republish_interval must be shorter than peer_record_ttl")
        if self.provider_republish_interval >= self.provider_record_ttl:
            raise ValueError("provider_republish_interval must be shorter than its ttl")
        if max(self.peer_record_ttl, self.provider_record_ttl) > self.max_record_ttl:
            raise ValueError("our own records must live no longer than max_record_ttl")

    @property
    def record_limits(self) -> RecordLimits:
        return RecordLimits(max_addresses=self.max_addresses,
                            max_address_length=self.max_address_length,
                            max_ttl_ms=int(self.max_record_ttl * 1000))

    def replace(self, **changes: Any) -> DhtConfig:
        return replace(self, **changes)

    @classmethod
    def lan(cls) -> DhtConfig:
        return cls()

    @classmethod
    def wan(cls) -> DhtConfig:
        return cls(request_timeout=5.0, alpha=5)

    @classmethod
    def local(cls) -> DhtConfig:
        return cls(request_timeout=1.0, maintenance_interval=5.0, refresh_interval=60.0,
                   peer_record_ttl=600.0, peer_republish_interval=120.0)

    @classmethod
    def phone(cls) -> DhtConfig:
        return cls(serving=False, request_timeout=5.0, refresh_interval=4 * 3600.0,
                   maintenance_interval=120.0, peer_record_ttl=900.0,
                   peer_republish_interval=300.0)
