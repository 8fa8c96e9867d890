"""The transport's connections in the simulator: a bounded pool per node, set-up cost and
keepalives, so the load figure counts what the wire carries besides protocol messages.

It follows :mod:`meshcloud.transport` (docs/architecture.md, "Connections" and
"Keepalive and dead peers"):

* **one connection per pair**, in both nodes' pools, whoever dialled. A message to a peer
  without one dials first: TCP connect (one round trip) and the Noise XX handshake (its
  first two messages: one more round trip; the third rides with the first frame), so the
  first message waits ``handshake_rtts`` round trips. The dialer writes XX messages 1 and
  3, the listener message 2 and its admission verdict: ``handshake_messages`` messages and
  ``handshake_bytes`` bytes (two certificates) in all. Messages sent while the dial is
  under way wait for it; a dial to a peer that cannot answer fails (the message is lost).
* **the pool is bounded**: when a new connection takes a node past ``max_connections``
  (64), its least recently used connection without an open stream is retired (GOAWAY
  each way); a connection unused for ``idle_timeout`` (120 s) is retired the same way
  (swept each sample). Both ends lose it.
* **keepalives only while a stream is open**: a stream (a DHT request, a push-pull sync)
  silent for ``keepalive_interval`` (1 s) sends a PING each interval, answered by a PONG
  while the peer can; a stream whose peer cannot answer dies after ``dead_timeout``. A
  connection carrying only datagrams (gossip) sends nothing when idle.
* every message on a connection pays the frame header and the Noise tag and length
  (``frame_overhead``).
* **gossip datagrams go as sealed UDP packets** (``sealed_datagrams``, as the transport's
  :mod:`~meshcloud.transport.udp`): once a connection's handshake proved a pair to each
  other, their datagrams need no connection (:meth:`ConnectionModel.datagram` counts one
  packet and ``datagram_overhead`` bytes: the sealed header, AEAD tag and protocol index);
  a pair not proven yet sends its first datagram on a connection (dialled first), which
  proves it. A crashed node forgets every key; its peers keep its (their datagrams to a
  killed process come back unreachable: the cluster's hint), and its restarted process
  proves each sender again with a connection.
  Connections then carry streams only, and close after ``idle_timeout`` (30 s) unused.

Counting: each node's ``sent`` (messages) and ``overhead_bytes`` (bytes besides protocol
messages) on its :class:`~sim.cluster.Host`, and totals in :class:`ConnectionStats`.
Sans-IO: times are passed in; the model never schedules anything itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from meshcloud.transport.muxframes import HEADER_SIZE
from meshcloud.transport.noise import TAG_SIZE
from meshcloud.transport.sealed import OVERHEAD as SEALED_OVERHEAD

NodeId = bytes

NOISE_LENGTH = 2
"""The length prefix of every Noise message on TCP."""
CERTIFICATE_BYTES = 220
"""A membership certificate with its admission payload, as a handshake carries it (an
estimate: id, key, roles, expiry and two signatures)."""


@dataclass(frozen=True)
class PoolConfig:
    max_connections: int = 64
    idle_timeout: float = 30.0
    keepalive_interval: float = 1.0
    dead_timeout: float = 4.0
    handshake_rtts: float = 2.0
    handshake_messages: int = 4
    handshake_bytes: int = (
        (NOISE_LENGTH + 32)                                        # XX 1: e
        + (NOISE_LENGTH + 32 + 32 + TAG_SIZE + CERTIFICATE_BYTES + TAG_SIZE)  # 2: e, s, cert
        + (NOISE_LENGTH + 32 + TAG_SIZE + CERTIFICATE_BYTES + TAG_SIZE)       # 3: s, cert
        + (NOISE_LENGTH + 16 + TAG_SIZE))                          # the verdict
    frame_overhead: int = NOISE_LENGTH + TAG_SIZE + HEADER_SIZE
    ping_bytes: int = NOISE_LENGTH + TAG_SIZE + HEADER_SIZE + 8
    goaway_bytes: int = NOISE_LENGTH + TAG_SIZE + HEADER_SIZE + 8
    sealed_datagrams: bool = True
    datagram_overhead: int = SEALED_OVERHEAD + 1  # header, AEAD tag, 0 + protocol index


@dataclass
class ConnectionStats:
    dials: int = 0
    dials_failed: int = 0
    handshake_messages: int = 0
    handshake_bytes: int = 0
    keepalive_messages: int = 0
    keepalive_bytes: int = 0
    goaway_messages: int = 0
    idle_closes: int = 0
    evictions: int = 0
    dead: int = 0
    frame_bytes: int = 0
    datagrams: int = 0
    """Sealed UDP datagrams sent (no connection)."""
    datagram_bytes: int = 0
    """Their overhead: sealed header, AEAD tag, protocol index."""


@dataclass(slots=True)
class Conn:
    a: NodeId
    b: NodeId
    ready_at: float
    last_used: float
    streams: int = 0


Counter = Callable[[NodeId, int, int], None]
"""``count(node, messages, bytes)``: what a node sent besides protocol messages."""


@dataclass
class ConnectionModel:
    config: PoolConfig = field(default_factory=PoolConfig)
    count: Counter = field(default=lambda node, messages, size: None)
    stats: ConnectionStats = field(default_factory=ConnectionStats)

    def __post_init__(self) -> None:
        self.pools: dict[NodeId, OrderedDict[NodeId, Conn]] = {}
        self.proven: dict[NodeId, set[NodeId]] = {}
        """The peers whose keys each node holds (proven by a handshake)."""
        self._warm: set[NodeId] = set()
        self._warm_holders: set[NodeId] = set()

    # --- queries --------------------------------------------------------------------------

    def peers(self, node: NodeId) -> list[NodeId]:
        """Nodes ``node`` holds a connection to (ready or being dialled)."""
        return list(self.pools.get(node, ()))

    def connected(self, a: NodeId, b: NodeId) -> bool:
        pool = self.pools.get(a)
        return pool is not None and b in pool

    def size(self, node: NodeId) -> int:
        return len(self.pools.get(node, ()))

    def knows(self, a: NodeId, b: NodeId) -> bool:
        """Does ``a`` hold ``b``'s keys (a handshake proved ``b`` to it)?"""
        known = self.proven.get(a)
        return ((known is not None and b in known)
                or (a in self._warm_holders and b in self._warm))

    def warm_start(self, nodes: list[NodeId]) -> None:
        """``nodes`` are a converged mesh: every pair met once (its connection long
        closed), so each holds the others' keys (kept as two sets, not N² pairs)."""
        self._warm.update(nodes)
        self._warm_holders.update(nodes)

    # --- traffic --------------------------------------------------------------------------

    def datagram(self, src: NodeId, dst: NodeId, now: float, rtt: float, *,
                 can_connect: bool | Callable[[], bool]) -> float | None:
        """A datagram (gossip) from ``src`` to ``dst`` is about to leave. If ``src`` holds
        the pair's keys it goes sealed over UDP (one packet, no connection); if ``dst``
        has forgotten them (it restarted) it dials ``src`` to prove it first, like the
        transport's unknown-sender path. Otherwise it rides a connection like
        :meth:`send`, whose handshake proves the pair. Returns the extra seconds it
        waits, or None when a needed dial fails (the datagram is lost)."""
        cfg = self.config
        if cfg.sealed_datagrams and self.knows(src, dst):
            self.count(src, 0, cfg.datagram_overhead)
            self.stats.datagrams += 1
            self.stats.datagram_bytes += cfg.datagram_overhead
            if self.knows(dst, src):
                return 0.0
            if not (can_connect if type(can_connect) is bool else can_connect()):
                return None  # lost (a killed process: ICMP, the cluster's hint)
            return self.send(dst, src, now, rtt, can_connect=True)
        return self.send(src, dst, now, rtt, can_connect=can_connect)

    def send(self, src: NodeId, dst: NodeId, now: float, rtt: float, *,
             can_connect: bool | Callable[[], bool], size: int = 0) -> float | None:
        """A message from ``src`` to ``dst`` is about to leave: the extra seconds it waits
        for the connection (0 on a ready one), or None when a needed dial fails.
        ``can_connect`` may be a function, then called only when a dial is needed."""
        pools = self.pools
        pool = pools.get(src)
        if pool is None:
            pool = self._pool(src)
        conn = pool.get(dst)
        cfg = self.config
        stats = self.stats
        count = self.count
        if conn is None:
            stats.dials += 1
            if not (can_connect if type(can_connect) is bool else can_connect()):
                stats.dials_failed += 1
                return None
            conn = Conn(src, dst, now + cfg.handshake_rtts * rtt, now)
            pool[dst] = conn
            peer_pool = pools.get(dst)
            if peer_pool is None:
                peer_pool = self._pool(dst)
            peer_pool[src] = conn
            if cfg.sealed_datagrams:  # the handshake proves the pair for datagrams
                self.proven.setdefault(src, set()).add(dst)
                self.proven.setdefault(dst, set()).add(src)
            half = cfg.handshake_messages // 2
            count(src, half, cfg.handshake_bytes // 2)
            count(dst, cfg.handshake_messages - half,
                  cfg.handshake_bytes - cfg.handshake_bytes // 2)
            stats.handshake_messages += cfg.handshake_messages
            stats.handshake_bytes += cfg.handshake_bytes
            limit = cfg.max_connections
            if len(pool) > limit:
                self._trim(src, now)
            if len(peer_pool) > limit:
                self._trim(dst, now)
        else:
            pool.move_to_end(dst)
            peer_pool = pools.get(dst)
            if peer_pool is not None and src in peer_pool:
                peer_pool.move_to_end(src)
        conn.last_used = now
        overhead = cfg.frame_overhead
        count(src, 0, overhead)
        stats.frame_bytes += overhead
        wait = conn.ready_at - now
        return wait if wait > 0.0 else 0.0

    def stream(self, src: NodeId, dst: NodeId, opened: float, duration: float | None,
               *, answered: bool) -> None:
        """A stream from ``src`` to ``dst`` was open ``duration`` seconds (None: its peer
        never answered, so it lasted until the connection was declared dead). Counts the
        keepalives it cost; a dead connection leaves both pools."""
        cfg = self.config
        lasted = cfg.dead_timeout if duration is None else duration
        pings = int(lasted / cfg.keepalive_interval)
        if pings:
            self.count(src, pings, pings * cfg.ping_bytes)
            self.stats.keepalive_messages += pings
            self.stats.keepalive_bytes += pings * cfg.ping_bytes
            if answered:
                self.count(dst, pings, pings * cfg.ping_bytes)
                self.stats.keepalive_messages += pings
                self.stats.keepalive_bytes += pings * cfg.ping_bytes
        if duration is None:
            self.stats.dead += 1
            self.drop(src, dst)

    # --- the pool -------------------------------------------------------------------------

    def _pool(self, node: NodeId) -> OrderedDict[NodeId, Conn]:
        pool = self.pools.get(node)
        if pool is None:
            pool = self.pools[node] = OrderedDict()
        return pool

    def _trim(self, node: NodeId, now: float) -> None:
        pool = self.pools[node]
        excess = len(pool) - self.config.max_connections
        if excess <= 0:
            return
        victims = []
        for peer, conn in pool.items():  # least recently used first
            if conn.streams == 0:
                victims.append(peer)
                if len(victims) == excess:
                    break
        for peer in victims:
            self.retire(node, peer)
            self.stats.evictions += 1

    def retire(self, a: NodeId, b: NodeId) -> None:
        """A graceful close: GOAWAY each way, then both ends forget it."""
        cfg = self.config
        self.count(a, 1, cfg.goaway_bytes)
        self.count(b, 1, cfg.goaway_bytes)
        self.stats.goaway_messages += 2
        self.drop(a, b)

    def drop(self, a: NodeId, b: NodeId) -> None:
        """The connection is gone (no bytes: a reset, or already said goodbye)."""
        pool = self.pools.get(a)
        if pool is not None:
            pool.pop(b, None)
        pool = self.pools.get(b)
        if pool is not None:
            pool.pop(a, None)

    def sweep(self, now: float) -> None:
        """Retire connections idle for ``idle_timeout`` (each once, by its older end)."""
        limit = now - self.config.idle_timeout
        for node in list(self.pools):
            pool = self.pools[node]
            stale = []
            for peer, conn in pool.items():  # least recently used first
                if conn.last_used > limit:
                    break
                if conn.streams == 0:
                    stale.append(peer)
            for peer in stale:
                self.retire(node, peer)
                self.stats.idle_closes += 1

    def crashed(self, node: NodeId) -> list[NodeId]:
        """``node`` died: its connections reset, its pairs are forgotten (a restarted
        process proves them again). Returns the peers that held a connection."""
        self.proven.pop(node, None)  # (its peers keep its keys, as the transport does)
        self._warm_holders.discard(node)
        pool = self.pools.pop(node, None)
        if not pool:
            return []
        peers = list(pool)
        for peer in peers:
            other = self.pools.get(peer)
            if other is not None:
                other.pop(node, None)
        return peers
