"""GossipConfig: every knob of SWIM + Lifeguard, with the reason for each default.

``GossipConfig()`` is the LAN preset (:meth:`GossipConfig.lan`); :meth:`wan`,
:meth:`local` and :meth:`phone` are edits of it (memberlist ``config.go`` style). Values
are checked in ``__post_init__``; a bad one raises :class:`~meshcloud.errors.ConfigError`
naming the field.

**The LAN defaults are tuned to these targets** (measured by the in-test harness
``sim/swimmesh.py`` and later by ``python -m bench membership``):

* 5 real nodes on loopback: a ``kill -9``'d node is DEAD on every survivor within 6 s;
* 1,000 nodes: failure detection median <= 3 s, p99 <= 8 s;
* 10 % packet loss for an hour: zero false deaths;
* messages per node per second flat (+-20 %) from 100 to 5,000 nodes.

How a crash is detected, with the defaults (N = 1,000, no loss): the dead node is probed
by someone about once per ``probe_interval`` (every node probes one member per period,
round-robin), so the first probe comes after ~0.7 s (median; p99 ~4.6 s). That prober
pings, waits ``probe_timeout``, asks ``indirect_checks`` relays and suspects the node
``probe_timeout + indirect_timeout`` = 0.8 s after it began; when its ping to a killed
process comes back unreachable (ICMP), it asks the relays at once and suspects 0.4 s
after the ping. The relays, seeing no answer either, each run their own probe round at
once (``escalate``) and confirm 0.4 s later (about when it starts, if their pings bounce), so
the suspicion has its ``k`` confirmations before its *minimum* timeout (0.75 s) is up. The
Dead news then reaches every node in about ``log4(N)`` gossip rounds. Measured: median
2.7 s, p99 6.0 s until every survivor marks it DEAD.

A false suspicion (a healthy node that lost packets) gets no confirmations, so it runs for
the *maximum* timeout: time for the accused to hear it (it is sent to it directly, and
piggybacked on every probe of it) and for its refutation to spread. A node whose
unconfirmed suspicion still runs out probes the member itself before declaring it dead
(:mod:`gossip.news`): a node that missed a refutation (about one in a million per rumour)
does not turn it into a false death. Measured: no false death at 10 % loss in an hour
(100 nodes) or five minutes (1,000 nodes).

The steady-state message rate is one probe (ping + ack) per node per period, whatever N:
gossip fan-outs run only while there is news, and syncs grow rarer as N grows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from meshcloud.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig:
    # --- failure detection (SWIM §3, Lifeguard §4) ------------------------------------

    probe_interval: float = 1.0
    """Seconds between two probes by this node (stretched by the health score).

    1 s (memberlist LAN, SWIM's protocol period): each member is probed by someone about
    once a second, which bounds the wait before a crash is first noticed (mean ~1 s).
    Halving it would halve that wait and double the steady-state message rate."""

    probe_timeout: float = 0.4
    """Seconds to wait for a direct ack before asking relays (stretched by health).

    Forty times a slow LAN round trip (10 ms), and room for a busy Python agent's
    scheduling hiccups. memberlist LAN uses 500 ms; 400 ms here (and as much again for
    the indirect stage) ends a failed round 0.2 s sooner, which the 1,000-node detection
    median needs."""

    indirect_timeout: float = 0.4
    """Seconds to wait for a relayed ack (or the second direct one) after the PingReqs;
    the round fails ``probe_timeout + indirect_timeout`` after it began (memberlist waits
    until the end of the probe interval). Relays nack after 80 % of it, so their nacks
    arrive in time to count (Lifeguard)."""

    indirect_checks: int = 3
    """Relays asked to ping a target that missed its direct ack (SWIM's k).

    With 10 % loss a probe round fails wrongly only if the direct ping, a second direct
    ping and all three 4-hop relay paths fail: about 1.5e-3 of rounds. Each extra relay
    divides that by ~3 but costs 4 messages per missed ack."""

    awareness_max_multiplier: int = 8
    """Upper bound of the health score's stretch (Lifeguard): an unhealthy node probes up
    to 8x slower and waits 8x longer, instead of accusing healthy peers. memberlist: 8."""

    suspicion_mult: float = 0.25
    """Minimum suspicion timeout = ``suspicion_mult * max(1, log10 N) * probe_interval``.

    Reached only with ``suspicion_confirmations`` independent confirmations (strong
    evidence), so it can be short: 0.75 s at N = 1,000, 0.25 s below 10 nodes, just above
    the 0.4 s the escalating relays need to confirm. It still grows with log N, the time a
    refutation needs to cross the mesh. memberlist LAN: 4 (12 s at N = 1,000), which alone
    would break the 3 s detection target."""

    suspicion_max_timeout_mult: float = 6.0
    """Maximum suspicion timeout = this times the minimum (memberlist LAN: 6).

    What an unconfirmed (probably false) suspicion gets: 4.5 s at N = 1,000, 1.5 s in a
    5-node mesh. A refutation normally lands within 1-2 s; the rare node that misses it
    probes the member itself when the timeout runs out, so a longer maximum would only
    delay the detection of crashes whose confirmations were lost."""

    suspicion_confirmations: int = 3
    """k: confirmations from distinct nodes that bring a suspicion to its minimum.

    The escalating relays supply up to ``indirect_checks`` of them about half a second
    after the suspicion starts. Lifeguard's paper and memberlist (SuspicionMult - 2) use 3."""

    # --- dissemination (SWIM §4.1) -----------------------------------------------------

    gossip_interval: float = 0.2
    """Seconds between gossip fan-outs while there is news to spread (none when idle).

    With ``gossip_nodes = 3`` news reaches N nodes in about log4(N) rounds: ~1 s for
    1,000 nodes, ~1.3 s for 5,000. memberlist LAN: 200 ms."""

    gossip_nodes: int = 3
    """Random members each fan-out goes to (memberlist LAN: 3)."""

    retransmit_mult: int = 4
    """Each node sends each broadcast ``retransmit_mult * ceil(log10(N + 1))`` times:
    16 at N = 1,000. A node then misses a broadcast with probability ~e^-16 (memberlist: 4)."""

    packet_budget: int = 1400
    """Bytes a datagram may fill with piggybacked news: a UDP-safe size (memberlist's
    UDPBufferSize), also a fair share of a TCP segment when datagrams ride the transport.
    A new member's Alive with its certificate is ~1.1 KB, so it fits (alone)."""

    max_queue: int = 20_000
    """Broadcasts held at most; past it the most-sent are dropped (a mass join of 5,000
    nodes queues one Alive each)."""

    gossip_to_the_dead_time: float = 30.0
    """Seconds after a death during which fan-outs may still pick the dead node, so a
    node wrongly declared dead (a partition that healed) hears it and refutes (memberlist)."""

    # --- anti-entropy ---------------------------------------------------------------------

    push_pull_interval: float = 30.0
    """Seconds between full-state syncs with one random member, up to
    ``push_pull_scale_threshold`` nodes; beyond, scaled linearly with N so that the sync
    bytes per node per second stay flat: about 4 x 32 entries per 30 s, ~1 KB/s (6 KB/s
    with certificates, 1.1 KB per entry). memberlist LAN: 30 s."""

    push_pull_scale_threshold: int = 32
    """Mesh size from which the sync period grows (memberlist: 32)."""

    push_pull_explore: float = 0.25
    """Share of periodic syncs whose partner is any live member, drawn uniformly; the
    others go to a live member this node already holds a connection to, if any (a sync
    to an unconnected member costs a handshake first: see :mod:`gossip.partners`)."""

    reconnect_interval: float = 30.0
    """Seconds between attempts to sync with one member we hold DEAD (Serf's reconnect,
    every 30 s). Not scaled with N like push-pull: after a partition of a large mesh heals,
    each side holds the other dead, and these syncs are what reunite them quickly. One
    random DEAD member per period; a mesh with no dead member pays nothing."""

    # --- lifecycle ------------------------------------------------------------------------

    dead_retention: float = 300.0
    """Seconds a DEAD or LEFT member is kept before it is reaped (forgotten). While kept,
    stale Alives (queued elsewhere, or in a sync from a lagging node) cannot resurrect it,
    and each push-pull period may try to *reconnect* to one dead member, which reunites
    the two sides of a healed partition (Serf keeps failed members far longer, 24 h).
    A restarted node outbids its dead entry anyway. Memory: ~150 bytes per dead member."""

    proof_window: float = 30.0
    """Seconds after a node first appears during which Alives about it carry its
    membership proof (certificate), so every member can admit it. Later, a node that
    missed it learns the node from a push-pull (which always carries proofs)."""

    capacity_interval: float = 10.0
    """Minimum seconds between two capacity re-announcements (each is a broadcast through
    the whole mesh); only significant changes are announced (gossip.capacity). Also how
    often the driver reads the machine's capacity."""

    capacity_refresh_interval: float = 600.0
    """Minimum seconds between two announcements of changed *readings* only (load, free
    RAM and disk, battery: :func:`gossip.capacity.dynamic_change`), up to
    ``push_pull_scale_threshold`` nodes; beyond, scaled linearly with N. The whole mesh
    then announces readings at most ``threshold / refresh`` times a second (0.05/s), so
    each node's share of their retransmissions stays bounded (~250 B/s at worst) whatever
    N. A change of what a node offers (runtimes, labels, cores, power source) still goes
    out within ``capacity_interval``."""

    resume_gap: float = 3.0
    """A timer that fires this many seconds late means this process was frozen (a phone's
    app suspended, a laptop lid closed, a VM paused). Its suspicions and probe rounds are
    then stale: suspicions start over (unconfirmed, so they end with a last check) and
    rounds are dropped, instead of declaring deaths the moment it wakes. Far above
    scheduling jitter (milliseconds), below any real sleep."""

    stall_threshold: float = 0.1
    """Event-loop lag (seconds) that counts as a *stall* of this node (the driver measures
    how late trio wakes it and calls ``on_loop_lag``; a timer of the core firing this
    late counts too). While our loop was stalled, the acks and refutations we were waiting
    for may sit unread in our own buffers: a probe step whose window saw a stall is
    extended instead of failed, a suspicion that runs out during one is postponed, and
    the health score rises (Lifeguard: the fault is probably ours)."""

    stall_extensions: int = 2
    """How many times one probe round (or one suspicion) may be extended for our own
    stalls. Bounded, so a node stalled for good still detects crashes, only later."""

    lag_health_cap: int = 1
    """The health score our own loop lag alone may raise (each stall +1, at most once
    per probe interval, never above this): probes and suspicion timeouts at most 2x
    longer because of lag, so crashes are still found within seconds while the node is
    busy (a cap of 2 made detection right after a loaded phase take 6 s with 3
    survivors: the repairs that follow kills keep agents stalling now and then)."""

    startup_grace: float = 2.0
    """Seconds after the full sync of a join during which this node does not accuse
    anyone: its view has not settled (a joiner learns the whole mesh at
    once, and its first probes race the Alives its new peers gossip), and neither has
    its loop. Suspicions that run out meanwhile wait for the end of the grace. Two probe
    intervals: a crash is noticed at most that much later, and only right after a start."""

    startup_grace_max: float = 15.0
    """Seconds after the join's full sync beyond which the start-up grace ends even if our
    loop still stalls. Within it, each stall of ours pushes the grace's end to
    ``startup_grace`` after the stall: a newcomer starved by its own start (and by a
    burst of others starting beside it) waits until its loop has been calm for a while
    before it accuses anyone, and a node stalled for good still detects crashes."""

    stall_memory: float = 3.0
    """Seconds after our own last stall during which our judgement of others is weak
    (also while the health score is above 0, and for ``startup_grace_max`` after a
    join): a probe round that fails then is run once
    more before we accuse the member, and a suspicion that runs out, even one with all
    its confirmations, ends with a last probe round of our own before we declare the
    member dead (unless a round of ours, so repeated, failed on it too). Starved nodes
    confirm each other's suspicions about a peer that is merely slow; a node at rest
    (health 0, no stall for 3 s) keeps the fast path."""

    leave_timeout: float = 3.0
    """Driver: how long ``leave()`` waits for the leave broadcast to go out."""

    sync_timeout: float = 10.0
    """Driver: how long one push-pull exchange may take before it is abandoned."""

    max_datagram: int = 64 * 1024
    """Driver: largest gossip datagram decoded; anything bigger is dropped and counted."""

    max_sync_bytes: int = 16 * 1024 * 1024
    """Driver: largest push-pull message (~1.3 KB per member with certificates)."""

    def __post_init__(self) -> None:
        positive = ("probe_interval", "probe_timeout", "indirect_timeout", "gossip_interval",
                    "push_pull_interval", "suspicion_mult", "dead_retention", "leave_timeout",
                    "sync_timeout", "resume_gap", "stall_threshold", "startup_grace_max")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"gossip.{name} must be positive")
        if self.probe_timeout + self.indirect_timeout > self.probe_interval:
            raise ConfigError("gossip.probe_timeout + indirect_timeout must not exceed "
                              "probe_interval (rounds of one node would overlap)")
        if self.suspicion_max_timeout_mult < 1:
            raise ConfigError("gossip.suspicion_max_timeout_mult must be at least 1")
        for name in ("indirect_checks", "gossip_nodes", "suspicion_confirmations",
                     "stall_extensions", "lag_health_cap", "startup_grace", "stall_memory"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gossip.{name} must not be negative")
        for name in ("awareness_max_multiplier", "retransmit_mult", "max_queue",
                     "push_pull_scale_threshold", "max_datagram", "max_sync_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gossip.{name} must be at least 1")
        if not 0.0 <= self.push_pull_explore <= 1.0:
            raise ConfigError("gossip.push_pull_explore must be within [0, 1]")
        if self.packet_budget < 256:
            raise ConfigError("gossip.packet_budget must be at least 256 bytes")
        if self.reconnect_interval <= 0:
            raise ConfigError("gossip.reconnect_interval must be positive")
        for name in ("gossip_to_the_dead_time", "proof_window", "capacity_interval",
                     "capacity_refresh_interval"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gossip.{name} must not be negative")

    def replace(self, **changes: Any) -> GossipConfig:
        return dataclasses.replace(self, **changes)

    # --- presets --------------------------------------------------------------------------

    @classmethod
    def lan(cls) -> GossipConfig:
        """Machines on one LAN (the default)."""
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        """Nodes across the internet: round trips of 100-300 ms, more jitter and loss.

        Longer timeouts (memberlist WAN: 3 s probe timeout, 5 s period, suspicion mult 6)
        so a slow path is not mistaken for a dead node; slower, wider gossip."""
        return cls().replace(probe_interval=5.0, probe_timeout=3.0, indirect_timeout=2.0,
                             suspicion_mult=1.5,
                             suspicion_max_timeout_mult=6.0, gossip_interval=0.5,
                             gossip_nodes=4, retransmit_mult=4, push_pull_interval=60.0,
                             gossip_to_the_dead_time=60.0, dead_retention=900.0,
                             resume_gap=10.0,
                             leave_timeout=5.0, sync_timeout=30.0)

    @classmethod
    def local(cls) -> GossipConfig:
        """One machine (tests, loopback demos): everything fast."""
        return cls().replace(probe_interval=0.2, probe_timeout=0.08, indirect_timeout=0.08,
                             suspicion_mult=0.5,
                             gossip_interval=0.05, push_pull_interval=5.0,
                             gossip_to_the_dead_time=5.0, dead_retention=30.0,
                             proof_window=5.0, capacity_interval=1.0,
                             capacity_refresh_interval=5.0, leave_timeout=1.0,
                             sync_timeout=5.0)

    @classmethod
    def phone(cls) -> GossipConfig:
        """A phone (Termux) on Wi-Fi or mobile data: radios doze (hundreds of ms of
        latency), batteries and metered links make every packet count. Slower probing and
        gossip, longer timeouts, rare syncs and capacity updates; the battery is read every
        30 s (a phone going low hands its work off within that plus a reconcile pass)."""
        return cls().replace(probe_interval=3.0, probe_timeout=0.9, indirect_timeout=0.9,
                             suspicion_mult=1.0,
                             gossip_interval=2.0, push_pull_interval=120.0,
                             capacity_interval=30.0, capacity_refresh_interval=1800.0,
                             sync_timeout=30.0)
