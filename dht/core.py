"""DhtCore: one node's Kademlia, sans-IO. Routes messages and timers to routing, lookups
and records.

Inputs (each returns ``list[Output]``, see :mod:`dht.outputs`):

* commands: :meth:`~DhtCore.bootstrap`, :meth:`~DhtCore.find_node`,
  :meth:`~DhtCore.find_peer`, :meth:`~DhtCore.find_providers`,
  :meth:`~DhtCore.publish_self`, :meth:`~DhtCore.provide`;
* :meth:`~DhtCore.on_message` ``(peer, msg, now)``: a request or a reply from ``peer``
  (an id the transport authenticated);
* :meth:`~DhtCore.on_request_failed` ``(peer, rid, now)``: the driver knows a request
  failed (unreachable, stream reset) before its timeout;
* :meth:`~DhtCore.on_timer` ``(now)``: call at or after :meth:`~DhtCore.next_deadline`.

Every request the core sends has a deadline ``request_timeout`` later; the core times it
out itself, so a driver (or simulator) that loses messages needs to do nothing more.

What the core does with what it hears (Kademlia §2.2-2.5, libp2p kad-dht):

* every valid message from a serving node refreshes that node in the routing table; a
  full bucket pings its least-recently-seen contact and evicts it only if the ping fails;
* requests are answered from the routing table and the record store;
* replies feed the lookup that asked; a hostile reply (more peers than asked, garbage
  ids or addresses, a forged record, a reply of the wrong type or from the wrong node)
  is dropped, counted in ``statistics().dropped`` by reason, and the query counts as
  failed (a hostile node is treated like a dead one);
* a peer record is believed only if signed by the node's own key (see :mod:`dht.records`);
  the newest wins;
* maintenance every ``maintenance_interval``: expire records, refresh buckets no lookup
  touched for about ``refresh_interval`` (each bucket of each node its own period, see
  :func:`refresh_period`), republish our peer record and provider records.

Operations: a command starts one *operation* (a :class:`~dht.lookup.Lookup`, then for
publish/provide a store phase at the k closest found) and emits ``LookupStarted`` then,
later, exactly one ``LookupFinished`` with the same id.

Time: ``now`` is float seconds on the driver's monotonic clock. Records need wall time;
``epoch_ms`` is the wall-clock millisecond at ``now == 0``, so wall time is
``epoch_ms + now * 1000`` (a driver sets it when it starts).

Driving a core (what :mod:`dht.driver` and :mod:`sim.dhtmesh` do)::

    core = DhtCore(FakeSigner(node_id), FakeVerifier(), DhtConfig(),
                   rng=random.Random(seed), addresses=("sim://7",), epoch_ms=EPOCH_MS)
    outputs = core.bootstrap([PeerInfo(node_id=seed_id, addresses=("sim://0",))], now)
    # for each Send(to, msg, addresses): deliver msg to core[to].on_message(self_id, msg, t)
    #   (replies travel back the same way); drop it if `to` is down: the sender times out
    # at core.next_deadline(): outputs = core.on_timer(now)
    # LookupFinished(lookup_id, ...) ends what LookupStarted(lookup_id, ...) began
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from dht.config import DhtConfig
from dht.errors import RecordError
from dht.hooks import Signer, Verifier
from dht.ids import ID_BYTES, random_id_in_bucket
from dht.lookup import Lookup, Query
from dht.messages import (
    FindNode,
    FindNodeReply,
    FindValue,
    FindValueReply,
    PeerInfo,
    Ping,
    Pong,
    Reply,
    Request,
    Store,
    StoreReply,
    ValueKind,
    addresses_problem,
    peer_info_problem,
)
from dht.operation import Operation
from dht.outputs import LookupStarted, Output, PeerFound, Purpose, Send
from dht.records import (
    PeerRecord,
    ProviderRecord,
    RecordStore,
    check_peer_record,
    check_provider_record,
    make_peer_record,
    make_provider_record,
)
from dht.routing import RoutingTable


class _Kind(enum.Enum):
    PING = "ping"  # decides a bucket eviction
    LOOKUP = "lookup"
    STORE = "store"


@dataclass(slots=True, eq=False)
class _Pending:
    rid: int
    peer: bytes
    kind: _Kind
    reply_type: type
    op_id: int = 0
    count: int = 0  # peers asked for (lookup queries)
    addresses: tuple[str, ...] = ()  # where we sent it


@dataclass(frozen=True, slots=True)
class DhtStatistics:
    """A snapshot of one core's counters (trio's ``statistics()`` habit)."""

    node_id: bytes
    routing_table_size: int
    buckets: int
    peer_records: int
    provider_records: int
    lookups_active: int
    lookups_started: int
    lookups_finished: int
    requests_sent: int
    requests_received: int
    replies_received: int
    timeouts: int
    dropped: dict[str, int]


class DhtCore:
    """One node's DHT. See the module docstring; nothing here does I/O or reads a clock."""

    def __init__(self, signer: Signer, verifier: Verifier, config: DhtConfig | None = None,
                 *, rng: random.Random, addresses: Iterable[str] = (), epoch_ms: int = 0,
                 now: float = 0.0) -> None:
        self.config = config or DhtConfig()
        self.signer = signer
        self.verifier = verifier
        self.rng = rng
        self.local_id: bytes = signer.node_id
        self.addresses: tuple[str, ...] = tuple(addresses)
        self.epoch_ms = epoch_ms
        c = self.config
        self.table = RoutingTable(self.local_id, k=c.k,
                                  replacement_cache_size=c.replacement_cache_size,
                                  stale_after_failures=c.stale_after_failures)
        self.store = RecordStore(max_peer_records=c.max_peer_records,
                                 max_provider_records=c.max_provider_records,
                                 max_providers_per_key=c.max_providers_per_key)
        self._limits = c.record_limits
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, rid), lazily cleaned
        self._ops: dict[int, Operation] = {}
        self._lookup_ids = itertools.count(1)
        self._next_rid = rng.getrandbits(32)
        self._maintenance_at = now + c.maintenance_interval
        self._created = now
        self._touched: dict[int, float] = {}  # bucket index -> last lookup into it
        self._own_record: PeerRecord | None = None
        self._own_due: float | None = None
        self._seq = 0
        self._provided: dict[bytes, ProviderRecord] = {}
        self._provided_due: dict[bytes, float] = {}
        self.dropped: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()

    # --- time ---------------------------------------------------------------------------

    def set_clock(self, now: float, epoch_ms: int) -> None:
        """Align with a driver's clock: ``now`` is its current time, ``epoch_ms`` the wall
        clock (ms) at its time 0. Call before any other input."""
        self.epoch_ms = epoch_ms
        self._created = now
        self._maintenance_at = now + self.config.maintenance_interval

    def wall_ms(self, now: float) -> int:
        return self.epoch_ms + int(now * 1000)

    def next_deadline(self) -> float:
        heap = self._deadlines
        while heap and heap[0][1] not in self._pending:
            heapq.heappop(heap)
        if heap and heap[0][0] < self._maintenance_at:
            return heap[0][0]
        return self._maintenance_at

    def on_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            pending = self._pending.pop(rid, None)
            if pending is not None:
                self._counts["timeouts"] += 1
                out += self._failed(pending, now)
        if now >= self._maintenance_at:
            self._maintenance_at = now + self.config.maintenance_interval
            out += self._maintain(now)
        return out

    # --- commands -----------------------------------------------------------------------

    def bootstrap(self, seeds: Iterable[PeerInfo], now: float) -> list[Output]:
        """Join: put the seeds in the table, then look up our own id (Kademlia §2.3)."""
        out: list[Output] = []
        for seed in seeds:
            if seed.node_id != self.local_id and peer_info_problem(
                    seed, self.config.max_addresses, self.config.max_address_length) is None:
                out += self._observe(seed, now)
        return out + self._start(Purpose.BOOTSTRAP, self.local_id, now)

    def find_node(self, target: bytes, now: float) -> list[Output]:
        """The k live nodes closest to ``target``."""
        return self._start(Purpose.FIND_NODE, _checked_id(target), now)

    def find_peer(self, node_id: bytes, now: float) -> list[Output]:
        """Where ``node_id`` is: its newest signed record, or the node itself answering."""
        return self._start(Purpose.FIND_PEER, _checked_id(node_id), now,
                           value_kind=ValueKind.PEER)

    def find_providers(self, key: bytes, now: float) -> list[Output]:
        return self._start(Purpose.FIND_PROVIDERS, _checked_id(key), now,
                           value_kind=ValueKind.PROVIDERS)

    def publish_self(self, addresses: Iterable[str], now: float) -> list[Output]:
        """Sign a new peer record for ``addresses`` (higher seq) and store it at the k closest."""
        self.addresses = tuple(addresses)
        problem = addresses_problem(self.addresses, self.config.max_addresses,
                                    self.config.max_address_length)
        if problem is not None:
            raise ValueError(f"cannot publish these addresses: {problem}")
        wall = self.wall_ms(now)
        self._seq = max(self._seq + 1, wall)
        self._own_record = make_peer_record(
            self.signer, self.addresses, seq=self._seq,
            expires_ms=wall + int(self.config.peer_record_ttl * 1000))
        self._own_due = now + self.config.peer_republish_interval
        return self._start(Purpose.PUBLISH_PEER, self.local_id, now, record=self._own_record)

    def provide(self, key: bytes, now: float) -> list[Output]:
        """Announce that we hold ``key``: a signed provider record at the k closest to it."""
        key = _checked_id(key)
        wall = self.wall_ms(now)
        self._seq = max(self._seq + 1, wall)
        record = make_provider_record(
            self.signer, key, self.addresses, seq=self._seq,
            expires_ms=wall + int(self.config.provider_record_ttl * 1000))
        self._provided[key] = record
        self._provided_due[key] = now + self.config.provider_republish_interval
        return self._start(Purpose.PROVIDE, key, now, record=record)

    def stop_providing(self, key: bytes) -> None:
        """Stop republishing ``key`` (the records already stored expire on their own)."""
        self._provided.pop(key, None)
        self._provided_due.pop(key, None)

    @property
    def own_record(self) -> PeerRecord | None:
        return self._own_record

    @property
    def active_lookups(self) -> int:
        """Operations started and not yet finished."""
        return len(self._ops)

    # --- messages -----------------------------------------------------------------------

    def on_message(self, peer: bytes, msg: object, now: float) -> list[Output]:
        match msg:
            case Ping() | FindNode() | FindValue() | Store():
                self._counts["requests_received"] += 1
                return self._on_request(peer, msg, now)
            case Pong() | FindNodeReply() | FindValueReply() | StoreReply():
                self._counts["replies_received"] += 1
                return self._on_reply(peer, msg, now)
        self.dropped["unexpected_message"] += 1
        return []

    def on_malformed(self, peer: bytes, reason: str) -> None:
        """The driver could not decode what ``peer`` sent (counted with the other drops)."""
        self.dropped[reason] += 1

    def on_request_failed(self, peer: bytes, rid: int, now: float) -> list[Output]:
        pending = self._pending.get(rid)
        if pending is None or pending.peer != peer:
            return []
        del self._pending[rid]
        return self._failed(pending, now)

    # --- serving requests ----------------------------------------------------------------

    def _on_request(self, peer: bytes, msg: Request, now: float) -> list[Output]:
        c = self.config
        if (addresses_problem(msg.sender_addresses, c.max_addresses,
                              c.max_address_length) is not None
                or (isinstance(msg, FindNode) and len(msg.target) != ID_BYTES)
                or (isinstance(msg, FindValue) and len(msg.key) != ID_BYTES)):
            self.dropped["garbage_request"] += 1
            return []
        out: list[Output] = []
        if msg.serving and peer != self.local_id:
            out += self._observe(PeerInfo(node_id=peer, addresses=msg.sender_addresses), now)
        reply: Reply
        match msg:
            case Ping():
                reply = Pong(rid=msg.rid, sender_addresses=self.addresses)
            case FindNode():
                reply = FindNodeReply(rid=msg.rid,
                                      peers=self._closest_for(msg.target, msg.count, peer),
                                      sender_addresses=self.addresses)
            case FindValue():
                reply = self._find_value_reply(peer, msg, now)
            case Store():
                reply = self._store_reply(msg, now, out)
        out.append(Send(peer, reply))
        return out

    def _closest_for(self, target: bytes, count: int, requester: bytes) -> tuple[PeerInfo, ...]:
        count = max(0, min(count, self.config.max_find_count))
        return tuple(c.info for c in self.table.closest(target, count, exclude=requester))

    def _find_value_reply(self, peer: bytes, msg: FindValue, now: float) -> FindValueReply:
        wall = self.wall_ms(now)
        peers = self._closest_for(msg.key, msg.count, peer)
        if msg.kind is ValueKind.PEER:
            if msg.key == self.local_id:
                record = self._own_record
                if record is not None and record.expires_ms <= wall:
                    record = None
            else:
                record = self.store.peer(msg.key, wall)
            return FindValueReply(rid=msg.rid, peers=peers, peer_record=record,
                                  sender_addresses=self.addresses)
        limit = self.config.max_providers_per_key
        providers = self.store.providers(msg.key, wall, limit)
        own = self._provided.get(msg.key)
        if own is not None and own.expires_ms > wall:
            providers = [own, *(p for p in providers if p.provider != self.local_id)][:limit]
        return FindValueReply(rid=msg.rid, peers=peers, providers=tuple(providers),
                              sender_addresses=self.addresses)

    def _store_reply(self, msg: Store, now: float, out: list[Output]) -> StoreReply:
        wall = self.wall_ms(now)
        try:
            if (msg.peer_record is None) == (msg.provider_record is None):
                raise RecordError("a Store carries exactly one record", code="bad_request")
            if msg.peer_record is not None:
                record = msg.peer_record
                check_peer_record(record, self.verifier, wall, self._limits)
                if record.node_id == self.local_id:
                    raise RecordError("we sign our own record", code="own_record")
                if self.store.put_peer(record, wall):
                    self.table.update_addresses(record.node_id, record.addresses)
                    out.append(PeerFound(record.node_id, record.addresses, record))
            else:
                assert msg.provider_record is not None
                check_provider_record(msg.provider_record, self.verifier, wall, self._limits)
                self.store.add_provider(msg.provider_record, wall)
        except RecordError as exc:
            self.dropped[f"store_{exc.code}"] += 1
            return StoreReply(rid=msg.rid, accepted=False, reason=exc.code,
                              sender_addresses=self.addresses)
        return StoreReply(rid=msg.rid, accepted=True, sender_addresses=self.addresses)

    # --- replies --------------------------------------------------------------------------

    def _on_reply(self, peer: bytes, msg: Reply, now: float) -> list[Output]:
        pending = self._pending.get(msg.rid)
        if pending is None or pending.peer != peer or type(msg) is not pending.reply_type:
            self.dropped["unexpected_reply"] += 1
            return []
        del self._pending[msg.rid]
        c = self.config
        problem = addresses_problem(msg.sender_addresses, c.max_addresses, c.max_address_length)
        # the reply has the class the request asked for: these two answer a lookup's query
        if problem is None and isinstance(msg, FindNodeReply | FindValueReply):
            problem = self._lookup_reply_problem(msg, pending)
        if problem is not None:
            self.dropped[problem] += 1
            return self._failed(pending, now)
        out = self._observe(PeerInfo(node_id=peer, addresses=msg.sender_addresses), now)
        match msg:
            case FindNodeReply() | FindValueReply():
                out += self._lookup_reply(pending, msg, now)
            case StoreReply():
                op = self._ops.get(pending.op_id)
                if op is not None and op.store_answered(msg.rid, msg.accepted):
                    out += self._finish(op, now)
        return out

    def _lookup_reply_problem(self, msg: FindNodeReply | FindValueReply,
                              pending: _Pending) -> str | None:
        c = self.config
        if len(msg.peers) > pending.count:
            return "too_many_peers"
        max_addresses, max_length = c.max_addresses, c.max_address_length
        for info in msg.peers:  # peer_info_problem, inlined: this runs for every reply
            if (type(info) is not PeerInfo or type(info.node_id) is not bytes
                    or len(info.node_id) != ID_BYTES):
                return "garbage_peer"
            if len(info.addresses) > max_addresses:
                return "too_many_addresses"
            for address in info.addresses:
                if len(address) > max_length:
                    return "address_too_long"
        if isinstance(msg, FindValueReply) and len(msg.providers) > c.max_providers_per_key:
            return "too_many_providers"
        return None

    def _lookup_reply(self, pending: _Pending, msg: FindNodeReply | FindValueReply,
                      now: float) -> list[Output]:
        op = self._ops.get(pending.op_id)
        if op is None or op.lookup.finished:
            return []
        peer = pending.peer
        if isinstance(msg, FindValueReply):
            problem = op.take_values(msg, self.verifier, self.wall_ms(now), self._limits,
                                     self.dropped)
            if problem is not None:
                self.dropped[problem] += 1
                return self._failed(pending, now)
            if peer == op.target:
                op.target_addresses = pending.addresses
        queries = op.lookup.on_reply(peer, msg.peers)
        if (op.value_kind is ValueKind.PROVIDERS
                and len(op.providers) >= self.config.max_providers_per_key):
            op.lookup.stop()
        return self._continue(op, queries, now)

    # --- failures -------------------------------------------------------------------------

    def _failed(self, pending: _Pending, now: float) -> list[Output]:
        out: list[Output] = []
        self.table.failed(pending.peer)
        if pending.kind is _Kind.LOOKUP:
            op = self._ops.get(pending.op_id)
            if op is not None and not op.lookup.finished:
                out += self._continue(op, op.lookup.on_failure(pending.peer), now)
        elif pending.kind is _Kind.STORE:
            op = self._ops.get(pending.op_id)
            if op is not None and op.store_answered(pending.rid, False):
                out += self._finish(op, now)
        return out

    # --- routing table ------------------------------------------------------------------

    def _observe(self, info: PeerInfo, now: float) -> list[Output]:
        """``info`` talked to us; ping the oldest of its bucket if the bucket is full."""
        oldest = self.table.observe(info)
        if oldest is None:
            return []
        contact = self.table.get(oldest)
        addresses = contact.addresses if contact is not None else ()
        rid = self._track(oldest, _Kind.PING, Pong, now, addresses)
        msg = Ping(rid=rid, sender_addresses=self.addresses, serving=self.config.serving)
        return [Send(oldest, msg, addresses)]

    def _track(self, peer: bytes, kind: _Kind, reply_type: type, now: float,
               addresses: tuple[str, ...], op_id: int = 0, count: int = 0) -> int:
        self._next_rid = (self._next_rid + 1) & 0xFFFFFFFFFFFF
        rid = self._next_rid
        self._pending[rid] = _Pending(rid, peer, kind, reply_type, op_id, count, addresses)
        heapq.heappush(self._deadlines, (now + self.config.request_timeout, rid))
        self._counts["requests_sent"] += 1
        return rid

    # --- operations -----------------------------------------------------------------------

    def _start(self, purpose: Purpose, target: bytes, now: float, *,
               value_kind: ValueKind | None = None,
               record: PeerRecord | ProviderRecord | None = None) -> list[Output]:
        c = self.config
        lookup_id = next(self._lookup_ids)
        lookup = Lookup(target, local_id=self.local_id, k=c.k, alpha=c.alpha,
                        max_count=c.max_find_count,
                        ask=c.find_count or c.max_find_count,
                        stop_at_target=purpose is Purpose.FIND_PEER)
        op = Operation(lookup_id, purpose, target, lookup, now, value_kind, record)
        self._ops[lookup_id] = op
        self._counts["lookups_started"] += 1
        if target != self.local_id:
            self._touched[self.table.index_of(target)] = now
        # 2k seeds: only the k closest are asked first, the rest stand in for dead ones.
        seeds = [contact.info for contact in self.table.closest(target, c.max_find_count)]
        out: list[Output] = [LookupStarted(lookup_id, purpose, target)]
        return out + self._continue(op, lookup.start(seeds), now)

    def _continue(self, op: Operation, queries: list[Query], now: float) -> list[Output]:
        out: list[Output] = []
        for query in queries:
            info = query.node
            contact = self.table.get(info.node_id)
            addresses = contact.addresses if contact is not None else info.addresses
            if op.value_kind is None:
                rid = self._track(info.node_id, _Kind.LOOKUP, FindNodeReply, now, addresses,
                                  op.lookup_id, query.count)
                msg: Request = FindNode(rid=rid, target=op.target, count=query.count,
                                        sender_addresses=self.addresses,
                                        serving=self.config.serving)
            else:
                rid = self._track(info.node_id, _Kind.LOOKUP, FindValueReply, now, addresses,
                                  op.lookup_id, query.count)
                msg = FindValue(rid=rid, key=op.target, kind=op.value_kind, count=query.count,
                                sender_addresses=self.addresses, serving=self.config.serving)
            out.append(Send(info.node_id, msg, addresses))
        if op.lookup.finished and not op.storing:
            out += self._lookup_done(op, now)
        return out

    def _lookup_done(self, op: Operation, now: float) -> list[Output]:
        if op.record is None:
            return self._finish(op, now)
        op.storing = True
        out: list[Output] = []
        for info in op.lookup.closest():
            contact = self.table.get(info.node_id)
            addresses = contact.addresses if contact is not None else info.addresses
            rid = self._track(info.node_id, _Kind.STORE, StoreReply, now, addresses,
                              op.lookup_id)
            if isinstance(op.record, PeerRecord):
                msg = Store(rid=rid, peer_record=op.record, sender_addresses=self.addresses,
                            serving=self.config.serving)
            else:
                msg = Store(rid=rid, provider_record=op.record,
                            sender_addresses=self.addresses, serving=self.config.serving)
            op.store_pending.add(rid)
            out.append(Send(info.node_id, msg, addresses))
        if not op.store_pending:
            out += self._finish(op, now)
        return out

    def _finish(self, op: Operation, now: float) -> list[Output]:
        if self._ops.pop(op.lookup_id, None) is None:
            return []
        self._counts["lookups_finished"] += 1
        result = op.result(now)
        out: list[Output] = []
        if op.purpose is Purpose.FIND_PEER and result.succeeded:
            self.table.update_addresses(op.target, result.addresses)
            out.append(PeerFound(op.target, result.addresses, op.best_record))
        out.append(result)
        if op.purpose is Purpose.BOOTSTRAP and self.config.join_refresh and result.closest:
            out += self._refresh(now, force=True)
        return out

    # --- maintenance ----------------------------------------------------------------------

    def _maintain(self, now: float) -> list[Output]:
        self.store.expire(self.wall_ms(now))
        out = self._refresh(now, force=False)
        if self._own_due is not None and now >= self._own_due:
            out += self.publish_self(self.addresses, now)
        for key, due in list(self._provided_due.items()):
            if now >= due:
                out += self.provide(key, now)
        return out

    def _refresh(self, now: float, *, force: bool) -> list[Output]:
        """Look up a random id in each bucket farther than our closest neighbour that no
        lookup touched for refresh_interval (or in all of them, when joining)."""
        indices = self.table.bucket_indices()
        if not indices:
            return []
        out: list[Output] = []
        first = indices[0] + 1 if force else indices[0]
        for index in range(first, 256):
            touched = self._touched.get(index, self._created)
            if force or now - touched >= refresh_period(self.local_id, index,
                                                         self.config.refresh_interval):
                target = random_id_in_bucket(self.local_id, index, self.rng)
                out += self._start(Purpose.REFRESH, target, now)
        return out

    # --- reporting ------------------------------------------------------------------------

    def statistics(self) -> DhtStatistics:
        counts = self._counts
        return DhtStatistics(
            node_id=self.local_id, routing_table_size=len(self.table),
            buckets=len(self.table.bucket_indices()), peer_records=self.store.peer_count,
            provider_records=self.store.provider_count, lookups_active=len(self._ops),
            lookups_started=counts["lookups_started"],
            lookups_finished=counts["lookups_finished"],
            requests_sent=counts["requests_sent"],
            requests_received=counts["requests_received"],
            replies_received=counts["replies_received"], timeouts=counts["timeouts"],
            dropped=dict(self.dropped))


def refresh_period(local_id: bytes, index: int, interval: float) -> float:
    """How long bucket ``index`` of node ``local_id`` may go untouched before it is
    refreshed: ``interval`` times a factor in [0.5, 1.5) fixed by the node's id and the
    bucket (mean ``interval``). Nodes started or joined together (every bucket touched at
    once by the join's refresh) would otherwise all refresh at the same moment, one
    interval later, a burst of lookups across the whole mesh."""
    digest = hashlib.blake2b(local_id + index.to_bytes(2, "big"), digest_size=4).digest()
    return interval * (0.5 + int.from_bytes(digest, "big") / 2**32)


def _checked_id(value: bytes) -> bytes:
    if type(value) is not bytes or len(value) != ID_BYTES:
        raise ValueError("DHT ids and keys are 32 bytes")
    return value
