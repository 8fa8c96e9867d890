"""SwimCore: SWIM membership with Lifeguard, sans-IO.

One object per node. It holds the member table, the broadcast queue, the probe rounds and
the suspicion timers, and reacts to three kinds of input, each returning a list of
:mod:`gossip.outputs`:

* ``on_message(peer, msg, now)`` — a decoded datagram (one message or a Compound);
  ``on_push_pull(peer, msg, now)`` / ``on_push_pull_reply`` — a full-state sync;
  ``on_peer_lost(peer, now)`` — a hint from the transport that a connection died;
  ``on_peer_unreachable(peer, now)`` — the same for a datagram that came back
  unreachable (its probe round then skips the wait for a direct ack);
* ``on_timer(now)`` — call at (or after) ``next_deadline()``;
* commands: ``join(seeds, now)``, ``leave(now)``, ``update_capacity(capacity, now)``,
  ``update_addresses(addresses, now)``, ``revoke(node_id, now)``.

Papers: SWIM (Das, Gupta, Motivala, DSN 2002) §3-4: probe, indirect probe, suspicion,
incarnations, infection-style dissemination, round-robin targets. Lifeguard (Dadgar,
Phillips, Currey, 2018): local health (:mod:`gossip.awareness`), suspicion timeouts that
shrink with confirmations (:mod:`gossip.suspicion`), and the buddy system (a probe of a
suspect carries the suspicion, so the suspect hears it at once). Model: memberlist.

Theory of operation:

* Each ``probe_interval`` (stretched by health) a probe round starts on the next member in
  the shuffled round-robin order (:mod:`gossip.probe`). A failed round suspects the member
  and tells it directly. Relays asked by a regular round escalate into rounds of their
  own, so a real crash collects confirmations within half a round.
* News (Alive, Suspect, Dead) that wins its precedence check (:mod:`gossip.member`) is
  applied and queued (:mod:`gossip.queue`); every datagram we send carries queued news up
  to the byte budget, and while the queue is not empty, every ``gossip_interval`` a
  packet goes to ``gossip_nodes`` random members (and to the recently dead).
* Every Alive is signed by its node; a new member must carry a membership proof the
  :class:`~gossip.hooks.Membership` hook accepts. Anything failing either is dropped and
  counted, never applied. Checks run only when the news would change something, so a
  duplicate costs a dict lookup.
* Accused at an incarnation >= ours, we refute: sign an Alive with a higher incarnation,
  gossip it, send it to the accuser, and count a health point against ourselves.
* Periodically, a full state sync with one random member (push-pull) repairs whatever
  gossip missed; its period grows with N so its bytes per node stay flat.

Invariants: this node never declares itself dead (only a signed leave makes it LEFT);
member incarnations never go backwards; a suspicion cancelled by a higher incarnation is
forgotten (its timer cannot fire); no work per message is O(N) (only push-pull is).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable

from gossip.awareness import Awareness
from gossip.capacity import Capacity, dynamic_change, static_change
from gossip.config import GossipConfig
from gossip.digest import delta_for, make_digest, wanted_entries
from gossip.formulas import push_pull_interval
from gossip.hooks import GossipHooks
from gossip.member import MAX_INCARNATION, Member, MemberInfo, MemberState
from gossip.messages import (
    Ack,
    Alive,
    Broadcastable,
    Compound,
    Dead,
    Nack,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    SyncDelta,
    SyncDigest,
    leave_bytes,
)
from gossip.news import NewsApplier
from gossip.outputs import LeaveSpread, MemberReaped, Output, Send, Sync
from gossip.partners import RecentPartners, prefer_connected
from gossip.probe import RELAY_SHARE, Prober, ProbeRound, Relay
from gossip.queue import TransmitQueue
from gossip.stats import Counters, GossipStatistics
from gossip.suspicion import Suspicion
from gossip.table import MemberTable
from gossip.timers import TimerHeap, TimerKey, TimerKind
from meshcloud.codec.messages import encode_message
from meshcloud.errors import LocalProtocolError

PRIMARY_RESERVE = 64
"""Bytes of a packet's budget kept for its primary message (a Ping is ~50 bytes)."""


class SwimCore(Prober, NewsApplier):
    def __init__(self, node_id: bytes, config: GossipConfig, hooks: GossipHooks,
                 rng: random.Random, *, now: float, addresses: Iterable[str] = (),
                 capacity: Capacity | None = None, incarnation: int = 0,
                 connected: Callable[[], Iterable[bytes]] | None = None) -> None:
        if not 0 <= incarnation < MAX_INCARNATION:
            raise LocalProtocolError("incarnation out of range")
        self.node_id = node_id
        self.config = config
        self.hooks = hooks
        self.random = rng
        self._connected = connected
        """The peers the transport holds a connection to (periodic syncs prefer them)."""
        self._synced = RecentPartners()
        """Whom we synced with lately, either side starting (see gossip.partners)."""
        self.table = MemberTable(rng)
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.queue = TransmitQueue(config.retransmit_mult, config.max_queue)
        self.counters = Counters()
        self._suspicions: dict[bytes, Suspicion] = {}
        self._rounds: dict[bytes, ProbeRound] = {}
        self._acks: dict[int, ProbeRound | Relay] = {}
        self.timers = TimerHeap(self._timer_valid)
        self._seq = rng.getrandbits(32)
        self._revoked: set[bytes] = set()
        self._seeds: list[bytes] = []
        self._joining = False
        self._left = False
        self._leave_reported = False
        self._incarnation = incarnation
        self._addresses = tuple(addresses)
        self._capacity = capacity or Capacity()
        self._latest_capacity = self._capacity
        self._last_announce = now
        me = Member(self._sign_alive(incarnation), now=now)
        self.table.add(me, hooks.proof)
        self._me = me
        self._next_probe: float | None = now + rng.uniform(0, config.probe_interval)
        self._next_gossip: float | None = None
        self._next_push_pull: float | None = now + config.push_pull_interval * rng.uniform(
            0.5, 1.0)
        self._next_capacity: float | None = None
        self._next_reconnect: float | None = now + config.reconnect_interval * rng.uniform(
            0.5, 1.0)
        self._relay_timeout = RELAY_SHARE * config.indirect_timeout
        self._stall_end = -math.inf
        """When our loop last came back from a stall (on_loop_lag, or a late timer)."""
        self._stall_penalty_at = -math.inf
        self._settle_at = -math.inf
        """Before this, our failed probes accuse no one: set by a join's full sync (see
        GossipConfig.startup_grace) and pushed back by our stalls during the grace. A
        node knows no one to accuse before it joins."""
        self._joined_at = -math.inf
        """When the join's full sync completed (the grace ends by startup_grace_max after)."""
        self._heard: dict[bytes, float] = {}
        """When each member last sent us something itself (a datagram, or its side of a
        sync): proof of life that outweighs a suspicion begun before it (gossip.news)."""
        self._queue_news(me, me.alive, now)

    # === queries ==========================================================================

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def left(self) -> bool:
        return self._left

    def members(self) -> list[MemberInfo]:
        """A snapshot of every known member (this node included, with its latest
        capacity reading: others see the announced one, see gossip.capacity)."""
        return [self._info(m) for m in self.table.members.values()]

    def member(self, node_id: bytes) -> MemberInfo | None:
        m = self.table.get(node_id)
        return self._info(m) if m is not None else None

    def _info(self, m: Member) -> MemberInfo:
        info = m.info()
        if m is self._me and info.capacity != self._latest_capacity:
            info = dataclasses.replace(info, capacity=self._latest_capacity)
        return info

    def state_of(self, node_id: bytes) -> MemberState | None:
        m = self.table.get(node_id)
        return m.state if m is not None else None

    def statistics(self) -> GossipStatistics:
        c = self.counters
        counts = self.table.counts
        return GossipStatistics(
            **{name: getattr(c, name) for name in Counters.__slots__},
            health_score=self.awareness.score,
            incarnation=self._incarnation,
            alive=counts[MemberState.ALIVE],
            suspect=counts[MemberState.SUSPECT],
            dead=counts[MemberState.DEAD],
            left=counts[MemberState.LEFT],
            queued_broadcasts=len(self.queue),
        )

    def next_deadline(self) -> float | None:
        best = self.timers.peek()
        for when in (self._next_probe, self._next_gossip, self._next_push_pull,
                     self._next_capacity, self._next_reconnect):
            if when is not None and (best is None or when < best):
                best = when
        return best

    # === commands =========================================================================

    def join(self, seeds: Iterable[bytes], now: float) -> list[Output]:
        """Start a full-state sync with each seed (node ids the driver has dialled).

        The seeds are remembered: while this node knows no other live member (every seed
        was down, or all its peers died), each push-pull period syncs with them again."""
        seeds = [seed for seed in seeds if seed != self.node_id]
        if seeds:
            self._seeds = seeds
        msg = PushPull(join=True, entries=self._local_state())
        out: list[Output] = []
        for seed in seeds:
            self.counters.syncs_started += 1
            out.append(Sync(seed, msg))
        self._joining = bool(seeds)
        return out

    def leave(self, now: float) -> list[Output]:
        """Leave gracefully: gossip a signed leave, stop probing; LeaveSpread when done."""
        if self._left:
            return []
        self._left = True
        inc = self._incarnation
        leave = Dead(node=self.node_id, incarnation=inc, from_node=self.node_id,
                     signature=self.hooks.signer.sign(leave_bytes(self.node_id, inc)))
        me = self._me
        self.table.set_state(me, MemberState.LEFT, inc, now)
        self.table.leave_signatures[self.node_id] = leave.signature
        self._clear_rounds()
        self._next_probe = None
        self._next_push_pull = None
        self._next_capacity = None
        self._next_reconnect = None
        self._queue_news(me, leave, now)
        out: list[Output] = []
        self._check_leave_spread(out)
        return out

    def update_capacity(self, capacity: Capacity, now: float) -> list[Output]:
        """Announce a significant capacity change: a change of what this node offers
        within ``capacity_interval``, moved readings within ``capacity_refresh_interval``
        (scaled with N; see gossip.capacity)."""
        self._latest_capacity = capacity
        out: list[Output] = []
        self._capacity_due(now, out)
        return out

    def _capacity_due(self, now: float, out: list[Output]) -> None:
        """Announce the latest capacity if it is due, or set the timer for when it is."""
        self._next_capacity = None
        old, new = self._capacity, self._latest_capacity
        if self._left:
            return
        config = self.config
        if static_change(old, new):
            wait = config.capacity_interval
        elif dynamic_change(old, new):
            wait = max(config.capacity_interval, push_pull_interval(
                config.capacity_refresh_interval, self.table.live_count,
                config.push_pull_scale_threshold))
        else:
            return
        due = self._last_announce + wait
        if now >= due:
            self._announce(self._incarnation + 1, now, out)
        else:
            self._next_capacity = due

    def update_addresses(self, addresses: Iterable[str], now: float) -> list[Output]:
        """Announce new addresses at once (peers need them to reach us)."""
        addresses = tuple(addresses)
        if addresses == self._addresses or self._left:
            return []
        self._addresses = addresses
        out: list[Output] = []
        self._announce(self._incarnation + 1, now, out)
        return out

    def revoke(self, node_id: bytes, now: float) -> list[Output]:
        """Expel a member whose certificate was revoked: DEAD now, its Alives refused."""
        if node_id == self.node_id:
            raise LocalProtocolError("a node does not revoke itself; use leave()")
        self._revoked.add(node_id)
        out: list[Output] = []
        m = self.table.get(node_id)
        if m is not None and not m.state.gone:
            self._apply_dead(m, Dead(node=node_id, incarnation=m.incarnation,
                                     from_node=self.node_id), now, out)
        return out

    def preload(self, alives: Iterable[Alive], now: float, *, verified: bool = False) -> int:
        """Add members known out of band, silently (no events, no broadcasts).

        For a simulator's warm start (a converged mesh of thousands without the O(N^2)
        joins) or a view restored from disk. Unless the caller vouches for them
        (``verified=True``), each Alive is checked like any other. Returns how many were
        added; known nodes and this node are skipped.
        """
        added = 0
        membership = self.hooks.membership
        old = now - self.config.proof_window  # not news to anyone
        for alive in alives:
            node = alive.node
            if node == self.node_id or node in self.table.members or node in self._revoked:
                continue
            if not verified and (not self._verify_alive(alive)
                                 or not membership.is_member(node, alive.proof)):
                continue
            proof = alive.proof
            stripped = dataclasses.replace(alive, proof=b"") if proof else alive
            m = Member(stripped, now=now)
            m.first_seen = old
            self.table.add(m, proof)
            added += 1
        self._reschedule_push_pull(now)
        return added

    # === inputs ===========================================================================

    def on_message(self, peer: bytes, msg: Packet, now: float) -> list[Output]:
        out: list[Output] = []
        if peer == self.node_id:
            return out
        if peer not in self.table.members and not self.hooks.membership.is_member(peer, None):
            self.counters.dropped_non_member += 1
            return out
        self.counters.messages_received += 1
        self._heard[peer] = now
        match msg:
            case Compound():
                for part in msg.parts:
                    self._dispatch(peer, part, now, out)
            case _:
                self._dispatch(peer, msg, now, out)
        return out

    def on_push_pull(self, peer: bytes, msg: PushPull,
                     now: float) -> tuple[PushPull, list[Output]]:
        """Serve a sync: our state (as it was before merging) and the merge's outputs.

        A sender that is not a member gets an empty state and changes nothing."""
        if peer == self.node_id or (peer not in self.table.members
                                    and not self.hooks.membership.is_member(peer, None)):
            self.counters.dropped_non_member += 1
            return PushPull(join=False, entries=()), []
        reply = PushPull(join=False, entries=self._local_state())
        self.counters.syncs_received += 1
        self._synced.note(peer, now)
        self._heard[peer] = now
        return reply, self._merge(peer, msg, now)

    def on_push_pull_reply(self, peer: bytes, msg: PushPull, now: float) -> list[Output]:
        if peer == self.node_id:
            return []
        self._heard[peer] = now
        out = self._merge(peer, msg, now)
        if self._joining:  # a join is a full sync: the periodic one can wait a period
            self._joining = False
            self._reschedule_push_pull(now)
            self._joined_at = now
            self._settle_at = max(self._settle_at, now + self.config.startup_grace)
        return out

    def sync_digest(self) -> SyncDigest:
        """The first message of a periodic (non-join) sync: see :mod:`gossip.digest`.

        A driver may run any non-join :class:`~gossip.outputs.Sync` this way instead of
        sending its full state: digest, :meth:`on_sync_digest` at the peer,
        :meth:`on_sync_delta` here, :meth:`on_sync_entries` at the peer."""
        return make_digest(self.table)

    def on_sync_digest(self, peer: bytes, digest: SyncDigest, now: float) -> SyncDelta:
        """Serve a digest sync: what the peer lacks or holds differently, and what we
        want. Nothing is merged yet (the peer's entries come with its last message). A
        sender that is not a member gets nothing."""
        if peer == self.node_id or (peer not in self.table.members
                                    and not self.hooks.membership.is_member(peer, None)):
            self.counters.dropped_non_member += 1
            return SyncDelta(entries=())
        self.counters.syncs_received += 1
        self._synced.note(peer, now)
        self._heard[peer] = now
        return delta_for(self.table, digest)

    def on_sync_delta(self, peer: bytes, delta: SyncDelta,
                      now: float) -> tuple[PushPull, list[Output]]:
        """The initiator's second step: the entries the peer wanted (as they were before
        merging, like a full sync), and the outputs of merging the peer's entries."""
        if peer == self.node_id:
            return PushPull(join=False, entries=()), []
        self._heard[peer] = now
        wanted = PushPull(join=False, entries=wanted_entries(self.table, delta))
        return wanted, self._merge(peer, PushPull(join=False, entries=delta.entries), now)

    def on_sync_entries(self, peer: bytes, msg: PushPull, now: float) -> list[Output]:
        """The responder's last step: merge the entries it wanted."""
        if peer == self.node_id or (peer not in self.table.members
                                    and not self.hooks.membership.is_member(peer, None)):
            self.counters.dropped_non_member += 1
            return []
        self._heard[peer] = now
        return self._merge(peer, msg, now)

    def on_push_pull_failed(self, peer: bytes, now: float) -> list[Output]:
        """A sync could not complete (peer unreachable). Nothing to undo: SWIM will probe."""
        return []

    def on_peer_lost(self, peer: bytes, now: float) -> list[Output]:
        """The transport lost its connection to ``peer`` (or, through
        :meth:`on_peer_unreachable`, a datagram to it came back unreachable): probe it now
        (not declare it). A round already running for it takes the hint (its failure then
        accuses even when our judgement is weak)."""
        out: list[Output] = []
        m = self.table.get(peer)
        if self._left or m is None or m.state.gone or peer == self.node_id:
            return out
        running = self._rounds.get(peer)
        if running is not None:
            running.hinted = True
            return out
        self.counters.probe_hints += 1
        self._start_round(m, now, out, escalate=True)
        self._rounds[peer].hinted = True
        return out

    def on_peer_unreachable(self, peer: bytes, now: float) -> list[Output]:
        """A datagram to ``peer`` came back as an ICMP error (nobody listens at its address,
        or its host is gone): the hint of :meth:`on_peer_lost`, and since no ack can come
        for that datagram, a round for ``peer`` still in its direct stage (or started here)
        asks its relays now instead of after ``probe_timeout``. Only a hint (ICMP can be
        forged): the relays' pings and a second direct ping must fail too."""
        running = self._rounds.get(peer)
        out = self.on_peer_lost(peer, now)
        rnd = self._rounds.get(peer)
        if rnd is not None:
            self._no_ack_can_come(rnd, now, out, pinged=running is None)
        return out

    def on_loop_lag(self, lag: float, now: float) -> list[Output]:
        """The driver's measure of this node's own event-loop lag: trio woke it ``lag``
        seconds late at ``now``. A stall (over ``stall_threshold``) is no evidence
        against anyone: probe steps and suspicions that spanned it are extended, and the
        health score rises (Lifeguard), at most once per probe interval and never above
        ``lag_health_cap`` on this account."""
        if lag > self.config.stall_threshold:
            self._note_stall(now)
        return []

    def settled(self, now: float) -> bool:
        """Past the start-up grace: our failed probes may accuse (see startup_grace)."""
        return now >= self._settle_at

    def shaky(self, now: float) -> bool:
        """Is our own judgement weak now: health score above 0, a stall of our loop
        within ``stall_memory``, or a join less than ``startup_grace_max`` ago (a
        newcomer's loop and connections are still busy with its start)? Then a failed
        probe round is repeated before we accuse, and we check a member ourselves before
        declaring it dead (see stall_memory)."""
        config = self.config
        return (self.awareness.score > 0
                or now - self._stall_end < config.stall_memory
                or now - self._joined_at < config.startup_grace_max)

    def _note_stall(self, now: float) -> None:
        self._stall_end = max(self._stall_end, now)
        self.counters.loop_stalls += 1
        config = self.config
        if now < self._settle_at:  # still starting: calm for a while before we accuse
            limit = self._joined_at + config.startup_grace_max
            self._settle_at = max(self._settle_at, min(now + config.startup_grace, limit))
        if (now - self._stall_penalty_at >= config.probe_interval
                and self.awareness.score < config.lag_health_cap):
            self._stall_penalty_at = now
            self.awareness.apply_delta(1)

    def _stalled_since(self, since: float) -> bool:
        """Did our loop stall (and come back) at or after ``since``?"""
        return self._stall_end >= since

    def on_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        due = self.next_deadline()
        if due is not None and now - due > self.config.resume_gap:
            self._resumed(now)
        while True:
            when = self.timers.peek()
            which = 0
            for i, tick in enumerate((self._next_probe, self._next_gossip,
                                      self._next_push_pull, self._next_capacity,
                                      self._next_reconnect), 1):
                if tick is not None and (when is None or tick < when):
                    when, which = tick, i
            if when is None or when > now:
                return out
            if which == 0:
                kind, key = self.timers.pop()
                self._fire(kind, key, now, out)
            elif which == 1:
                self._probe_tick(now, out)
            elif which == 2:
                self._gossip_tick(now, out)
            elif which == 3:
                self._push_pull_tick(now, out)
            elif which == 4:
                self._capacity_tick(now, out)
            else:
                self._reconnect_tick(now, out)

    # === timers ===========================================================================

    def _timer_valid(self, when: float, kind: TimerKind, key: TimerKey) -> bool:
        if kind is TimerKind.RELAY:
            assert type(key) is int
            relay = self._acks.get(key)
            return type(relay) is Relay and not relay.answered and relay.deadline == when
        assert type(key) is bytes  # the other timers are about a member
        if kind is TimerKind.ROUND:
            rnd = self._rounds.get(key)
            return rnd is not None and rnd.next_at == when
        if kind is TimerKind.SUSPICION:
            suspicion = self._suspicions.get(key)
            return suspicion is not None and suspicion.deadline() == when
        m = self.table.get(key)
        return m is not None and m.state.gone and (
            m.changed_at + self.config.dead_retention == when)

    def _fire(self, kind: TimerKind, key: TimerKey, now: float, out: list[Output]) -> None:
        if kind is TimerKind.RELAY:
            assert type(key) is int
            relay = self._acks.pop(key)
            assert type(relay) is Relay
            relay.answered = True
            self._send(relay.requester, Nack(seq=relay.requester_seq), now, out)
            return
        assert type(key) is bytes  # the other timers are about a member
        if kind is TimerKind.ROUND:
            self._round_timer(self._rounds[key], now, out)
        elif kind is TimerKind.SUSPICION:
            self._suspicion_expired(self._suspicions[key], now, out)
        else:
            self.table.remove(key)
            self._heard.pop(key, None)
            out.append(MemberReaped(key))

    def _resumed(self, now: float) -> None:
        """We were frozen (our timers fire late): nothing we timed meanwhile is evidence.

        Suspicions start over, without the confirmations gathered before the freeze (so
        each ends with a last check, never a blind declaration); probe rounds and relays
        are dropped, not failed; the periodic ticks restart from now, with a full sync at
        once (whatever changed while we slept, we missed its gossip)."""
        self.counters.resumes += 1
        for suspicion in self._suspicions.values():
            suspicion.confirmers.clear()
            suspicion.restart(now)
            self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION,
                                 suspicion.node_id)
        self._rounds.clear()
        self._acks.clear()
        config = self.config
        if self._next_probe is not None:
            self._next_probe = now + self.random.uniform(0, config.probe_interval)
        if self._next_gossip is not None:
            self._next_gossip = now
        if self._next_push_pull is not None:  # our view is stale: a full sync now
            self._next_push_pull = now

    def _probe_tick(self, now: float, out: list[Output]) -> None:
        self._next_probe = now + self.awareness.scale(self.config.probe_interval)
        target = self.table.next_probe_target(self.node_id)
        if target is None or target in self._rounds:
            return
        self._start_round(self.table.members[target], now, out, escalate=True)

    def _gossip_tick(self, now: float, out: list[Output]) -> None:
        config = self.config
        if not self.queue:
            self._next_gossip = None
            return
        self._next_gossip = now + config.gossip_interval
        targets = self.table.random_members(
            config.gossip_nodes, (self.node_id,),
            dead_since=now - config.gossip_to_the_dead_time)
        n = self.table.live_count
        budget = config.packet_budget
        for target in targets:
            news = self.queue.take(n, budget)
            if not news:
                break
            self.counters.broadcasts_sent += len(news)
            self.counters.messages_sent += 1
            out.append(Send(target, news[0] if len(news) == 1 else Compound(parts=tuple(news))))
        if not targets:
            if self._left:
                self.queue.remove(self.node_id)  # nobody left to tell
            self._next_gossip = None  # until news about a member arrives
        if not self.queue:
            self._next_gossip = None
        self._check_leave_spread(out)

    def _push_pull_tick(self, now: float, out: list[Output]) -> None:
        config = self.config
        n = self.table.live_count
        period = push_pull_interval(config.push_pull_interval, n,
                                    config.push_pull_scale_threshold)
        self._next_push_pull = now + period
        self._synced.prune(now, period)
        partner = self._sync_partner(now, period)
        if partner is not None:
            self._synced.note(partner, now)
            state = PushPull(join=False, entries=self._local_state())
            self.counters.syncs_started += 1
            out.append(Sync(partner, state))
        if n <= 1 and self._seeds:  # alone: knock on the seeds' doors again
            out.extend(self.join(self._seeds, now))

    def _sync_partner(self, now: float, period: float) -> bytes | None:
        """A live member for a periodic sync: one we hold a connection to and did not sync
        with within ``period``, if any (but a share ``push_pull_explore`` of the syncs),
        else one drawn from all (see :mod:`gossip.partners`)."""
        table = self.table
        if self._connected is not None:
            synced = self._synced

            def fresh(peer: bytes) -> bool:
                m = table.get(peer)
                return (peer != self.node_id and m is not None
                        and m.state is MemberState.ALIVE and synced.fresh(peer, now, period))
            held = prefer_connected(self._connected(), fresh, self.random,
                                    self.config.push_pull_explore)
            if held is not None:
                return held
        peers = table.random_members(1, (self.node_id,))
        if peers and table.members[peers[0]].state is MemberState.ALIVE:
            return peers[0]
        return None

    def _reconnect_tick(self, now: float, out: list[Output]) -> None:
        """Reconnect (Serf's idea): a member we hold DEAD may be alive behind a healed
        partition, with us dead in its view; nothing else would ever reunite us. Try one
        each period (a node left alone tries several); its own timer, not scaled with N
        like push-pull (config). Not Serf's dead/live odds: after a heal has mostly
        converged, a node that still holds one live member dead would then try it once in
        ~N periods. A healthy mesh pays nothing, and a truly dead member costs one failed
        dial per period until it is reaped."""
        config = self.config
        self._next_reconnect = now + config.reconnect_interval * self.random.uniform(0.75, 1.25)
        n = self.table.live_count
        if self.table.counts[MemberState.DEAD]:
            tries = config.gossip_nodes if n <= 1 else 1
            state = PushPull(join=False, entries=self._local_state())
            for target in self.table.random_dead(tries):
                self.counters.syncs_started += 1
                out.append(Sync(target, state))

    def _reschedule_push_pull(self, now: float) -> None:
        """Next sync at a random point of the period for the current N (after a join or
        a warm start, so 5,000 nodes do not all sync in the same first half minute)."""
        if self._next_push_pull is None:
            return
        config = self.config
        period = push_pull_interval(config.push_pull_interval, self.table.live_count,
                                    config.push_pull_scale_threshold)
        self._next_push_pull = now + period * self.random.uniform(0.5, 1.0)

    def _capacity_tick(self, now: float, out: list[Output]) -> None:
        self._capacity_due(now, out)

    # === sending ==========================================================================

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return self._seq

    def _send(self, to: bytes, primary: Ping | PingReq | Ack | Nack | Broadcastable,
              now: float, out: list[Output], extra: tuple[Broadcastable, ...] = ()) -> None:
        """Send ``primary`` (plus ``extra``) with queued news piggybacked up to the budget."""
        news = self.queue.take(self.table.live_count,
                               self.config.packet_budget - PRIMARY_RESERVE
                               - 80 * len(extra)) if self.queue else []
        self.counters.messages_sent += 1
        if not news and not extra:
            out.append(Send(to, primary))
            return
        self.counters.broadcasts_sent += len(news)
        out.append(Send(to, Compound(parts=(primary, *extra, *news))))
        if self._left:
            self._check_leave_spread(out)

    def _queue_news(self, m: Member, msg: Broadcastable, now: float) -> None:
        """Queue news about ``m`` (an Alive gets its proof while ``m`` is new)."""
        if type(msg) is Alive:
            young = now - m.first_seen < self.config.proof_window
            proof = self.table.proofs.get(m.node_id, b"") if young else b""
            if proof and msg.proof != proof:
                msg = dataclasses.replace(msg, proof=proof)
            elif not young and msg.proof:
                msg = dataclasses.replace(msg, proof=b"")
        self.queue.queue(m.node_id, msg, len(encode_message(msg)))
        if self._next_gossip is None:
            self._next_gossip = now + self.config.gossip_interval * self.random.random()

    def _check_leave_spread(self, out: list[Output]) -> None:
        if self._left and not self._leave_reported and self.node_id not in self.queue:
            self._leave_reported = True
            out.append(LeaveSpread())

    # === inbound ==========================================================================

    def _dispatch(self, peer: bytes, msg: object, now: float, out: list[Output]) -> None:
        match msg:
            case Ping():
                if msg.target != self.node_id:
                    self.counters.dropped_misaddressed += 1
                    return
                m = self.table.get(peer)
                self._send(peer, Ack(seq=msg.seq), now, out,
                           self._buddy(m) if m is not None else ())
            case Ack():
                self._on_ack(peer, msg, now, out)
            case Alive():
                self._on_alive(msg, now, out)
            case Suspect():
                self._on_suspect(peer, msg, now, out)
            case Dead():
                self._on_dead(peer, msg, now, out)
            case PingReq():
                self._on_ping_req(peer, msg, now, out)
            case Nack():
                self._on_nack(msg)
