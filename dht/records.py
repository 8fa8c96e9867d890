"""Signed, numbered, expiring records: where a node is, and who provides a key.

Two kinds, both signed by the key of the node they speak for (the idea of libp2p's
signed peer records and provider records, on Kademlia's STORE of §2.3):

* :class:`PeerRecord`: node X is reachable at these addresses. Signed by X, with a
  sequence number and an absolute expiry. A phone that changes network signs a new
  record with a higher ``seq`` and stores it again at the k nodes closest to its id.
* :class:`ProviderRecord`: node X holds content key K (and is reachable at these
  addresses). Signed by X; one per (K, X); also numbered and expiring.

Acceptance rules (:func:`check_peer_record`, :func:`check_provider_record`), cheapest
first, each failure one :class:`~dht.errors.RecordError` with its code:

1. shape: ids 32 bytes, at most ``max_addresses`` addresses of bounded length
   (``too_large``);
2. not expired at ``now_ms`` (``expired``), and not expiring further ahead than
   ``max_ttl_ms`` (``too_far``: a record that would outlive every republish is refused);
3. the signing key hashes to the node the record speaks for (``forged``: a record for X
   signed by anyone but X is refused, whatever its signature);
4. the signature verifies over the canonical CBOR of the fields (``forged``).

:class:`RecordStore` keeps verified records: per node the newest ``seq`` wins (an older
or equal one is ``stale`` and changes nothing), expired records are never served and are
dropped by :meth:`RecordStore.expire`, and the number of records is bounded
(``store_full``). Invariants: a refused record changes nothing; the store never holds two
records for one node, nor two for one (key, provider).

Expiry and ``seq`` are wall-clock milliseconds (``*_ms``): records travel between nodes,
so they cannot use a node's monotonic ``now``. The core converts with its ``epoch_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dht.errors import RecordError
from dht.hooks import Signer, Verifier
from dht.ids import ID_BYTES
from meshcloud.codec.cbor import encode_canonical
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

PEER_RECORD_DOMAIN = "meshcloud/dht/peer-record/1"
PROVIDER_RECORD_DOMAIN = "meshcloud/dht/provider-record/1"
"""Signed payloads start with a domain string, so no signature can be replayed as another."""


@message(TagBlock.DHT + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRecord:
    """Node ``node_id`` is at ``addresses``, says the owner of ``public_key``."""

    node_id: bytes
    public_key: bytes
    addresses: tuple[str, ...]
    seq: int
    expires_ms: int
    signature: bytes

    def payload(self) -> bytes:
        return encode_canonical([PEER_RECORD_DOMAIN, self.node_id, self.public_key,
                                 list(self.addresses), self.seq, self.expires_ms])


@message(TagBlock.DHT + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRecord:
    """Node ``provider`` holds content ``key`` and is at ``addresses``."""

    key: bytes
    provider: bytes
    public_key: bytes
    addresses: tuple[str, ...]
    seq: int
    expires_ms: int
    signature: bytes

    def payload(self) -> bytes:
        return encode_canonical([PROVIDER_RECORD_DOMAIN, self.key, self.provider,
                                 self.public_key, list(self.addresses), self.seq,
                                 self.expires_ms])


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """Bounds a record must respect to be accepted (see DhtConfig for the reasons)."""

    max_addresses: int = 8
    max_address_length: int = 200
    max_ttl_ms: int = 48 * 3600 * 1000


# --- making -----------------------------------------------------------------------------


def make_peer_record(signer: Signer, addresses: tuple[str, ...] | list[str], *, seq: int,
                     expires_ms: int) -> PeerRecord:
    unsigned = PeerRecord(node_id=signer.node_id, public_key=signer.public_key,
                          addresses=tuple(addresses), seq=seq, expires_ms=expires_ms,
                          signature=b"")
    return replace(unsigned, signature=signer.sign(unsigned.payload()))


def make_provider_record(signer: Signer, key: bytes, addresses: tuple[str, ...] | list[str],
                         *, seq: int, expires_ms: int) -> ProviderRecord:
    unsigned = ProviderRecord(key=key, provider=signer.node_id, public_key=signer.public_key,
                              addresses=tuple(addresses), seq=seq, expires_ms=expires_ms,
                              signature=b"")
    return replace(unsigned, signature=signer.sign(unsigned.payload()))


# --- checking ---------------------------------------------------------------------------


def check_peer_record(record: PeerRecord, verifier: Verifier, now_ms: int,
                      limits: RecordLimits) -> None:
    """Raise RecordError unless ``record`` may be believed and stored at ``now_ms``."""
    _check_common(record.node_id, record.public_key, record.addresses, record.seq,
                  record.expires_ms, now_ms, limits)
    _check_signature(record, record.node_id, verifier)


def check_provider_record(record: ProviderRecord, verifier: Verifier, now_ms: int,
                          limits: RecordLimits) -> None:
    if type(record.key) is not bytes or len(record.key) != ID_BYTES:
        raise RecordError("provider record key is not 32 bytes", code="too_large")
    _check_common(record.provider, record.public_key, record.addresses, record.seq,
                  record.expires_ms, now_ms, limits)
    _check_signature(record, record.provider, verifier)


def _check_common(node_id: bytes, public_key: bytes, addresses: tuple[str, ...], seq: int,
                  expires_ms: int, now_ms: int, limits: RecordLimits) -> None:
    if len(node_id) != ID_BYTES or len(public_key) > 64:
        raise RecordError("record ids have the wrong size", code="too_large")
    if len(addresses) > limits.max_addresses or any(
        len(a) > limits.max_address_length for a in addresses
    ):
        raise RecordError(
            f"record carries more than {limits.max_addresses} addresses or one longer than "
            f"{limits.max_address_length} characters", code="too_large")
    if seq < 0:
        raise RecordError("record sequence number is negative", code="too_large")
    if expires_ms <= now_ms:
        raise RecordError("record has expired", code="expired")
    if expires_ms > now_ms + limits.max_ttl_ms:
        raise RecordError("record expires too far in the future", code="too_far")


def _check_signature(record: PeerRecord | ProviderRecord, subject: bytes,
                     verifier: Verifier) -> None:
    if verifier.node_id_of(record.public_key) != subject:
        raise RecordError("record signed by a key that is not the node's own", code="forged")
    if not verifier.verify(record.public_key, record.payload(), record.signature):
        raise RecordError("record signature does not verify", code="forged")


def newer(candidate: PeerRecord | None, current: PeerRecord | None) -> bool:
    """True when ``candidate`` should replace ``current`` (newest seq wins)."""
    if candidate is None:
        return False
    return current is None or candidate.seq > current.seq


# --- storing ----------------------------------------------------------------------------


class RecordStore:
    """Verified records held for other nodes, bounded, newest wins, expired never served.

    Callers check records (``check_*``) before storing them; the store only orders them.
    """

    def __init__(self, *, max_peer_records: int = 10_000, max_provider_records: int = 100_000,
                 max_providers_per_key: int = 20) -> None:
        self.max_peer_records = max_peer_records
        self.max_provider_records = max_provider_records
        self.max_providers_per_key = max_providers_per_key
        self._peers: dict[bytes, PeerRecord] = {}
        self._providers: dict[bytes, dict[bytes, ProviderRecord]] = {}
        self._provider_count = 0

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def provider_count(self) -> int:
        return self._provider_count

    # peer records

    def put_peer(self, record: PeerRecord, now_ms: int) -> bool:
        """Keep ``record``; True if it is new or newer. Raises ``stale`` or ``store_full``."""
        current = self._peers.get(record.node_id)
        if current is not None and current.expires_ms <= now_ms:
            current = None
        if current is not None:
            if record == current:
                return False
            if record.seq <= current.seq:
                raise RecordError(
                    f"a record with sequence {current.seq} is already held", code="stale")
        elif record.node_id not in self._peers and len(self._peers) >= self.max_peer_records:
            self.expire(now_ms)
            if len(self._peers) >= self.max_peer_records:
                raise RecordError("peer record store is full", code="store_full")
        self._peers[record.node_id] = record
        return True

    def peer(self, node_id: bytes, now_ms: int) -> PeerRecord | None:
        record = self._peers.get(node_id)
        if record is None or record.expires_ms <= now_ms:
            return None
        return record

    # provider records

    def add_provider(self, record: ProviderRecord, now_ms: int) -> bool:
        """Keep ``record``; True if new or newer. Raises ``stale`` or ``store_full``."""
        holders = self._providers.get(record.key)
        current = holders.get(record.provider) if holders else None
        if current is not None and current.expires_ms <= now_ms:
            current = None
        if current is not None:
            if record == current:
                return False
            if record.seq <= current.seq:
                raise RecordError(
                    f"a provider record with sequence {current.seq} is already held",
                    code="stale")
        elif holders is None or record.provider not in holders:
            if (self._provider_count >= self.max_provider_records
                    or (holders is not None and len(holders) >= self.max_providers_per_key)):
                self.expire(now_ms)
                holders = self._providers.get(record.key)
                if (self._provider_count >= self.max_provider_records or (
                        holders is not None and len(holders) >= self.max_providers_per_key)):
                    raise RecordError("provider record store is full", code="store_full")
            self._provider_count += 1
        if holders is None:
            holders = self._providers[record.key] = {}
        holders[record.provider] = record
        return True

    def providers(self, key: bytes, now_ms: int, limit: int) -> list[ProviderRecord]:
        """Unexpired providers of ``key``, the longest-lived first, at most ``limit``."""
        holders = self._providers.get(key)
        if not holders:
            return []
        live = [r for r in holders.values() if r.expires_ms > now_ms]
        live.sort(key=lambda r: (-r.expires_ms, r.provider))
        return live[:limit]

    # expiry

    def expire(self, now_ms: int) -> int:
        """Drop every expired record; returns how many went."""
        gone = [node for node, r in self._peers.items() if r.expires_ms <= now_ms]
        for node in gone:
            del self._peers[node]
        removed = len(gone)
        for key in list(self._providers):
            holders = self._providers[key]
            dead = [p for p, r in holders.items() if r.expires_ms <= now_ms]
            for provider in dead:
                del holders[provider]
            removed += len(dead)
            self._provider_count -= len(dead)
            if not holders:
                del self._providers[key]
        return removed
