"""Operation: what one DHT command is doing, from its lookup to its result.

A command (find a node, find a peer, find providers, publish our record, provide a key,
bootstrap, refresh) is one :class:`Operation`:

1. a :class:`~dht.lookup.Lookup` towards ``target``; for FIND_PEER and FIND_PROVIDERS it
   sends ``FindValue`` and collects the records in the replies (:meth:`take_values`);
2. for PUBLISH_PEER and PROVIDE, once the lookup ends, a store phase: one ``Store`` to
   each of the k closest nodes found, counted as they answer (:meth:`store_answered`);
3. a result, :meth:`result`, the operation's one ``LookupFinished``.

Values found on the way follow the record rules (:mod:`dht.records`): for a peer the
newest valid record wins; providers are kept per provider, newest wins. A record in a
reply that is *forged*, or is not for this operation's key, condemns the whole reply (the
caller drops it and counts the replier as failed); one merely expired or too far ahead
(clock skew, not malice) is skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dht.errors import RecordError
from dht.hooks import Verifier
from dht.lookup import Lookup
from dht.messages import FindValueReply, ValueKind
from dht.outputs import LookupFinished, Purpose
from dht.records import (
    PeerRecord,
    ProviderRecord,
    RecordLimits,
    check_peer_record,
    check_provider_record,
    newer,
)


@dataclass(slots=True, eq=False)
class Operation:
    lookup_id: int
    purpose: Purpose
    target: bytes
    lookup: Lookup
    started: float
    value_kind: ValueKind | None = None
    record: PeerRecord | ProviderRecord | None = None  # to store once the lookup ends
    storing: bool = False
    store_pending: set[int] = field(default_factory=set)
    stored: int = 0
    best_record: PeerRecord | None = None
    target_addresses: tuple[str, ...] | None = None  # the target itself answered us there
    providers: dict[bytes, ProviderRecord] = field(default_factory=dict)

    def take_values(self, msg: FindValueReply, verifier: Verifier, now_ms: int,
                    limits: RecordLimits, dropped: Counter[str]) -> str | None:
        """Keep the valid records of a reply; returns why the reply is hostile, or None."""
        record = msg.peer_record
        if record is not None:
            if self.value_kind is not ValueKind.PEER or record.node_id != self.target:
                return "wrong_record"
            try:
                check_peer_record(record, verifier, now_ms, limits)
            except RecordError as exc:
                if exc.code == "forged":
                    return "forged_record"
                dropped[f"record_{exc.code}"] += 1
            else:
                if newer(record, self.best_record):
                    self.best_record = record
        if not msg.providers:
            return None
        if self.value_kind is not ValueKind.PROVIDERS:
            return "wrong_record"
        fresh: list[ProviderRecord] = []
        for provider in msg.providers:
            if provider.key != self.target:
                return "wrong_record"
            try:
                check_provider_record(provider, verifier, now_ms, limits)
            except RecordError as exc:
                if exc.code == "forged":
                    return "forged_record"
                dropped[f"record_{exc.code}"] += 1
                continue
            fresh.append(provider)
        for provider in fresh:
            held = self.providers.get(provider.provider)
            if held is None or provider.seq > held.seq:
                self.providers[provider.provider] = provider
        return None

    def store_answered(self, rid: int, accepted: bool) -> bool:
        """A Store was answered (or failed: ``accepted`` false). True when none is left."""
        if rid not in self.store_pending:
            return False
        self.store_pending.discard(rid)
        if accepted:
            self.stored += 1
        return not self.store_pending

    @property
    def found_addresses(self) -> tuple[str, ...] | None:
        """FIND_PEER: the newest record's addresses, else where the node answered us."""
        if self.best_record is not None:
            return self.best_record.addresses
        return self.target_addresses

    def result(self, now: float) -> LookupFinished:
        lookup = self.lookup
        closest = tuple(lookup.closest())
        addresses: tuple[str, ...] = ()
        if self.purpose is Purpose.FIND_PEER:
            found = self.found_addresses
            succeeded = found is not None
            addresses = found or ()
        elif self.purpose is Purpose.FIND_PROVIDERS:
            succeeded = bool(self.providers)
        elif self.record is not None:
            succeeded = self.stored > 0
        else:
            succeeded = bool(closest)
        providers = sorted(self.providers.values(), key=lambda r: (-r.expires_ms, r.provider))
        return LookupFinished(
            lookup_id=self.lookup_id, purpose=self.purpose, target=self.target,
            succeeded=succeeded, closest=closest, peer_record=self.best_record,
            addresses=addresses, providers=tuple(providers), stored=self.stored,
            rounds=lookup.rounds, queries=lookup.queries, failures=lookup.failures,
            started=self.started, ended=now)
