"""SwimCore: SWIM membership with Lifeguard, sans-IO.

One object per node. It holds the member table, the broadcast queue, the probe rounds and
the suspicion timers, and reacts to three kinds of input, each returning a list of
:mod:`gossip.outputs`:

* ``on_message(peer, msg, now)`` — a decoded datagram (one message or a Compound);
  ``on_push_pull(peer, msg, now)`` / ``on_push_pull_reply`` — a full-state sync;
  ``on_peer_lost(peer, now)`` — a hint from the transport that a connection died;
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
import heapq
import random
from collections.abc import Iterable

from gossip.awareness import Awareness
from gossip.capacity import Capacity, significant_change
from gossip.config import GossipConfig
from gossip.formulas import confirmations_needed, push_pull_interval, suspicion_timeout
from gossip.hooks import GossipHooks
from gossip.member import (
    MAX_INCARNATION,
    Member,
    MemberInfo,
    MemberState,
    alive_overrides,
    dead_overrides,
    refutation_incarnation,
    refutes,
    suspect_confirms,
    suspect_overrides,
)
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
    PushPullEntry,
    Suspect,
    leave_bytes,
)
from gossip.outputs import (
    LeaveSpread,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    Output,
    Refuted,
    Send,
    Sync,
)
from gossip.probe import ProbeRound, Relay, Stage, failure_health_delta
from gossip.queue import TransmitQueue
from gossip.stats import Counters, GossipStatistics
from gossip.suspicion import Suspicion
from gossip.table import MemberTable
from meshcloud.codec.messages import encode_message
from meshcloud.errors import LocalProtocolError

PRIMARY_RESERVE = 64
"""Bytes of a packet's budget kept for its primary message (a Ping is ~50 bytes)."""

MAX_INCARNATION_JUMP = 1 << 32
"""Suspect/Dead news more than this above the incarnation we know is refused: it could
only come from a member trying to push the accused past the incarnations it can sign."""

RELAY_SHARE = 0.8
"""A relay sends its Nack after this share of the requester's indirect window
(``indirect_timeout``), so the Nack lands before the requester's round ends
(Lifeguard counts only nacks that arrive in time)."""

# Timer kinds in the heap (periodic ticks have their own fields).
_ROUND, _RELAY, _SUSPICION, _REAP = range(4)


class SwimCore:
    def __init__(self, node_id: bytes, config: GossipConfig, hooks: GossipHooks,
                 rng: random.Random, *, now: float, addresses: Iterable[str] = (),
                 capacity: Capacity | None = None, incarnation: int = 0) -> None:
        if not 0 <= incarnation < MAX_INCARNATION:
            raise LocalProtocolError("incarnation out of range")
        self.node_id = node_id
        self.config = config
        self.hooks = hooks
        self.random = rng
        self.table = MemberTable(rng)
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.queue = TransmitQueue(config.retransmit_mult, config.max_queue)
        self.counters = Counters()
        self._suspicions: dict[bytes, Suspicion] = {}
        self._rounds: dict[bytes, ProbeRound] = {}
        self._acks: dict[int, ProbeRound | Relay] = {}
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_counter = 0
        self._seq = rng.getrandbits(32)
        self._revoked: set[bytes] = set()
        self._seeds: list[bytes] = []
        self._started = now
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
        self._relay_timeout = RELAY_SHARE * config.indirect_timeout
        self._queue_news(me, me.alive, now)

    # === queries ==========================================================================

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def left(self) -> bool:
        return self._left

    def members(self) -> list[MemberInfo]:
        """A snapshot of every known member (this node included)."""
        return [m.info() for m in self.table.members.values()]

    def member(self, node_id: bytes) -> MemberInfo | None:
        m = self.table.get(node_id)
        return m.info() if m is not None else None

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
        timers = self._timers
        while timers and not self._timer_valid(timers[0]):
            heapq.heappop(timers)
        best = timers[0][0] if timers else None
        for when in (self._next_probe, self._next_gossip, self._next_push_pull,
                     self._next_capacity):
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
            if seed != self.node_id:
                self.counters.syncs_started += 1
                out.append(Sync(seed, msg))
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
        self._queue_news(me, leave, now)
        out: list[Output] = []
        self._check_leave_spread(out)
        return out

    def update_capacity(self, capacity: Capacity, now: float) -> list[Output]:
        """Announce a significant capacity change (rate-limited by capacity_interval)."""
        self._latest_capacity = capacity
        if self._left or not significant_change(self._capacity, capacity):
            return []
        due = self._last_announce + self.config.capacity_interval
        if now >= due:
            out: list[Output] = []
            self._announce(self._incarnation + 1, now, out)
            return out
        if self._next_capacity is None:
            self._next_capacity = due
        return []

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
        if type(msg) is Compound:
            for part in msg.parts:
                self._dispatch(peer, part, now, out)
        else:
            self._dispatch(peer, msg, now, out)
        return out

    def on_push_pull(self, peer: bytes, msg: PushPull,
                     now: float) -> tuple[PushPull, list[Output]]:
        """Serve a sync: our state (as it was before merging) and the merge's outputs."""
        reply = PushPull(join=False, entries=self._local_state())
        if peer != self.node_id and (peer in self.table.members
                                     or self.hooks.membership.is_member(peer, None)):
            self.counters.syncs_received += 1
            out = self._merge(peer, msg, now)
        else:
            self.counters.dropped_non_member += 1
            out = []
        return reply, out

    def on_push_pull_reply(self, peer: bytes, msg: PushPull, now: float) -> list[Output]:
        if peer == self.node_id:
            return []
        return self._merge(peer, msg, now)

    def on_push_pull_failed(self, peer: bytes, now: float) -> list[Output]:
        """A sync could not complete (peer unreachable). Nothing to undo: SWIM will probe."""
        return []

    def on_peer_lost(self, peer: bytes, now: float) -> list[Output]:
        """The transport lost its connection to ``peer``: probe it now (not declare it)."""
        out: list[Output] = []
        m = self.table.get(peer)
        if (self._left or m is None or m.state.gone or peer == self.node_id
                or peer in self._rounds):
            return out
        self.counters.probe_hints += 1
        self._start_round(m, now, out, escalate=True)
        return out

    def on_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        timers = self._timers
        while True:
            while timers and not self._timer_valid(timers[0]):
                heapq.heappop(timers)
            when = timers[0][0] if timers else None
            which = 0
            for i, tick in enumerate((self._next_probe, self._next_gossip,
                                      self._next_push_pull, self._next_capacity), 1):
                if tick is not None and (when is None or tick < when):
                    when, which = tick, i
            if when is None or when > now:
                return out
            if which == 0:
                _, _, kind, key = heapq.heappop(timers)
                self._fire(kind, key, now, out)
            elif which == 1:
                self._probe_tick(now, out)
            elif which == 2:
                self._gossip_tick(now, out)
            elif which == 3:
                self._push_pull_tick(now, out)
            else:
                self._capacity_tick(now, out)

    # === timers ===========================================================================

    def _schedule(self, when: float, kind: int, key: object) -> None:
        self._timer_counter += 1
        heapq.heappush(self._timers, (when, self._timer_counter, kind, key))

    def _timer_valid(self, entry: tuple[float, int, int, object]) -> bool:
        when, _, kind, key = entry
        if kind == _ROUND:
            rnd = self._rounds.get(key)  # type: ignore[arg-type]
            return rnd is not None and rnd.next_at == when
        if kind == _RELAY:
            relay = self._acks.get(key)  # type: ignore[arg-type]
            return type(relay) is Relay and not relay.answered and relay.deadline == when
        if kind == _SUSPICION:
            suspicion = self._suspicions.get(key)  # type: ignore[arg-type]
            return suspicion is not None and suspicion.deadline() == when
        m = self.table.get(key)  # type: ignore[arg-type]
        return m is not None and m.state.gone and (
            m.changed_at + self.config.dead_retention == when)

    def _fire(self, kind: int, key: object, now: float, out: list[Output]) -> None:
        if kind == _ROUND:
            self._round_timer(self._rounds[key], now, out)  # type: ignore[index]
        elif kind == _RELAY:
            relay = self._acks.pop(key)  # type: ignore[arg-type]
            assert type(relay) is Relay
            relay.answered = True
            self._send(relay.requester, Nack(seq=relay.requester_seq), now, out)
        elif kind == _SUSPICION:
            self._suspicion_expired(self._suspicions[key], now, out)  # type: ignore[index]
        else:
            self.table.remove(key)  # type: ignore[arg-type]
            out.append(MemberReaped(key))  # type: ignore[arg-type]

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
        self._next_push_pull = now + push_pull_interval(config.push_pull_interval, n,
                                                        config.push_pull_scale_threshold)
        state = None
        peers = self.table.random_members(1, (self.node_id,))
        if peers and self.table.members[peers[0]].state is MemberState.ALIVE:
            state = PushPull(join=False, entries=self._local_state())
            self.counters.syncs_started += 1
            out.append(Sync(peers[0], state))
        # Reconnect (Serf's idea): a member we hold DEAD may be alive behind a healed
        # partition, with us dead in its view; nothing else would ever reunite us. Try
        # one, more often the larger the dead share; a node left alone tries several.
        dead = self.table.counts[MemberState.DEAD]
        if dead and self.random.random() < dead / max(1, n):
            tries = config.gossip_nodes if n <= 1 else 1
            for target in self.table.random_dead(tries):
                state = state or PushPull(join=False, entries=self._local_state())
                self.counters.syncs_started += 1
                out.append(Sync(target, state))
        if n <= 1 and self._seeds:  # alone: knock on the seeds' doors again
            out.extend(self.join(self._seeds, now))

    def _capacity_tick(self, now: float, out: list[Output]) -> None:
        self._next_capacity = None
        if not self._left and significant_change(self._capacity, self._latest_capacity):
            self._announce(self._incarnation + 1, now, out)

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

    # === probing ==========================================================================

    def _start_round(self, m: Member, now: float, out: list[Output], *, escalate: bool,
                     relay: Relay | None = None) -> None:
        config = self.config
        seq = relay.seq if relay is not None else self._next_seq()
        ack_deadline = (relay.deadline if relay is not None
                        else now + self.awareness.scale(config.probe_timeout))
        rnd = ProbeRound(m.node_id, seq, start=now, ack_deadline=ack_deadline,
                         end=now + self.awareness.scale(config.probe_timeout
                                                        + config.indirect_timeout),
                         escalate=escalate, relay=relay)
        self._rounds[m.node_id] = rnd
        self._acks[seq] = rnd
        self._schedule(rnd.next_at, _ROUND, m.node_id)
        self.counters.probes_started += 1
        if relay is None:
            self._send(m.node_id, Ping(seq=seq, target=m.node_id), now, out,
                       self._buddy(m))

    def _buddy(self, m: Member) -> tuple[Broadcastable, ...]:
        """Lifeguard's buddy system: tell a suspect (or a node we hold dead) about it."""
        if m.state is MemberState.SUSPECT:
            suspicion = self._suspicions.get(m.node_id)
            accuser = suspicion.accuser if suspicion is not None else self.node_id
            return (Suspect(node=m.node_id, incarnation=m.incarnation, from_node=accuser),)
        if m.state is MemberState.DEAD:
            return (Dead(node=m.node_id, incarnation=m.incarnation, from_node=self.node_id),)
        return ()

    def _round_timer(self, rnd: ProbeRound, now: float, out: list[Output]) -> None:
        if rnd.stage is Stage.DIRECT:
            if rnd.relay is not None and not rnd.relay.answered:
                rnd.relay.answered = True
                self._send(rnd.relay.requester, Nack(seq=rnd.relay.requester_seq), now, out)
            rnd.stage = Stage.INDIRECT
            target = rnd.target
            relays = self.table.random_members(self.config.indirect_checks,
                                               (self.node_id, target))
            rnd.expected_nacks = len(relays)
            req = PingReq(seq=rnd.seq, target=target, escalate=rnd.escalate)
            for relay in relays:
                self._send(relay, req, now, out)
            self.counters.indirect_probes += len(relays)
            m = self.table.get(target)
            if m is not None:
                self._send(target, Ping(seq=rnd.seq, target=target), now, out, self._buddy(m))
            self._schedule(rnd.next_at, _ROUND, target)
            return
        # The round ended without an ack.
        self._end_round(rnd)
        self.counters.probes_failed += 1
        self.awareness.apply_delta(failure_health_delta(rnd.expected_nacks, rnd.nacks))
        if rnd.final:
            self._last_check_done(rnd, False, now, out)
            return
        m = self.table.get(rnd.target)
        if m is None or m.state.gone or self._left:
            return
        suspect = Suspect(node=m.node_id, incarnation=m.incarnation, from_node=self.node_id)
        self._apply_suspect(m, suspect, now, out)
        self._send(m.node_id, suspect, now, out)  # let it refute at once
        if rnd.relay is not None and rnd.relay.requester in self.table.members:
            self._send(rnd.relay.requester, suspect, now, out)  # our confirmation

    def _end_round(self, rnd: ProbeRound) -> None:
        self._rounds.pop(rnd.target, None)
        if self._acks.get(rnd.seq) is rnd:
            del self._acks[rnd.seq]

    def _clear_rounds(self) -> None:
        self._rounds.clear()
        self._acks = {seq: a for seq, a in self._acks.items() if type(a) is Relay}

    def _on_ack(self, peer: bytes, ack: Ack, now: float, out: list[Output]) -> None:
        entry = self._acks.get(ack.seq)
        if entry is None:
            self.counters.dropped_stale_seq += 1
            return
        if type(entry) is Relay:
            del self._acks[ack.seq]
            if not entry.answered:
                entry.answered = True
                self._send(entry.requester, Ack(seq=entry.requester_seq), now, out)
            return
        rnd = entry
        assert type(rnd) is ProbeRound
        relay = rnd.relay
        if relay is not None and not relay.answered:
            relay.answered = True
            self._send(relay.requester, Ack(seq=relay.requester_seq), now, out)
        if rnd.stage is Stage.DIRECT and now <= rnd.ack_deadline:
            self.awareness.apply_delta(-1)
        self._end_round(rnd)
        if rnd.final:
            self._last_check_done(rnd, True, now, out)

    def _on_nack(self, nack: Nack) -> None:
        entry = self._acks.get(nack.seq)
        if type(entry) is ProbeRound and entry.stage is Stage.INDIRECT:
            entry.nacks += 1

    def _on_ping_req(self, peer: bytes, req: PingReq, now: float, out: list[Output]) -> None:
        if req.target == self.node_id:
            self._send(peer, Ack(seq=req.seq), now, out)
            return
        seq = self._next_seq()
        relay = Relay(seq, req.target, peer, req.seq, now + self._relay_timeout)
        m = self.table.get(req.target)
        self._send(req.target, Ping(seq=seq, target=req.target), now, out,
                   self._buddy(m) if m is not None else ())
        if (req.escalate and m is not None and not m.state.gone and not self._left
                and req.target not in self._rounds):
            # Our ping doubles as the first step of our own round (never escalating).
            self._start_round(m, now, out, escalate=False, relay=relay)
            return
        self._acks[seq] = relay
        self._schedule(relay.deadline, _RELAY, seq)

    # === news =============================================================================

    def _dispatch(self, peer: bytes, msg: object, now: float, out: list[Output]) -> None:
        kind = type(msg)
        if kind is Ping:
            if msg.target != self.node_id:  # type: ignore[attr-defined]
                self.counters.dropped_misaddressed += 1
                return
            m = self.table.get(peer)
            self._send(peer, Ack(seq=msg.seq), now, out,  # type: ignore[attr-defined]
                       self._buddy(m) if m is not None else ())
        elif kind is Ack:
            self._on_ack(peer, msg, now, out)  # type: ignore[arg-type]
        elif kind is Alive:
            self._on_alive(msg, now, out)  # type: ignore[arg-type]
        elif kind is Suspect:
            self._on_suspect(peer, msg, now, out)  # type: ignore[arg-type]
        elif kind is Dead:
            self._on_dead(peer, msg, now, out)  # type: ignore[arg-type]
        elif kind is PingReq:
            self._on_ping_req(peer, msg, now, out)  # type: ignore[arg-type]
        elif kind is Nack:
            self._on_nack(msg)  # type: ignore[arg-type]

    def _verify_alive(self, alive: Alive) -> bool:
        ok = self.hooks.verifier.verify(alive.node, alive.public_key, alive.signed_bytes(),
                                        alive.signature)
        if not ok:
            self.counters.dropped_bad_signature += 1
        return ok

    def _on_alive(self, alive: Alive, now: float, out: list[Output]) -> None:
        node = alive.node
        if node == self.node_id:
            self._alive_about_self(alive, now, out)
            return
        m = self.table.get(node)
        if m is not None and not alive_overrides(m.state, m.incarnation, alive.incarnation):
            return  # stale or duplicate: the common case
        if node in self._revoked:
            self.counters.dropped_non_member += 1
            return
        if not self._verify_alive(alive):
            return
        proof = alive.proof
        stripped = dataclasses.replace(alive, proof=b"") if proof else alive
        if m is None:
            if not self.hooks.membership.is_member(node, proof):
                if proof:
                    self.counters.dropped_non_member += 1
                else:
                    self.counters.dropped_no_proof += 1
                return
            m = Member(stripped, now=now)
            self.table.add(m, proof)
            self._queue_news(m, alive, now)
            out.append(MemberJoined(m.info()))
            return
        previous = m.state
        m.alive = stripped
        if proof and node not in self.table.proofs:
            self.table.proofs[node] = proof
        self._suspicions.pop(node, None)
        self.table.set_state(m, MemberState.ALIVE, alive.incarnation, now)
        self._queue_news(m, alive, now)
        if previous.gone:
            self.table.leave_signatures.pop(node, None)
            out.append(MemberJoined(m.info()))
        else:
            out.append(MemberUpdated(m.info(), refuted=previous is MemberState.SUSPECT))

    def _alive_about_self(self, alive: Alive, now: float, out: list[Output]) -> None:
        if self._left or alive.incarnation < self._incarnation:
            return
        if alive.incarnation == self._incarnation and alive.same_statement(self._me.alive):
            return
        # A statement of ours we did not make in this life: an older run of this node
        # (restarted with the same key), or a forgery. Outbid it.
        if not self._verify_alive(alive):
            return
        self._announce(refutation_incarnation(self._incarnation, alive.incarnation), now, out)

    def _on_suspect(self, peer: bytes, s: Suspect, now: float, out: list[Output]) -> None:
        node = s.node
        if node == self.node_id:
            self._accused(peer, s.from_node, s.incarnation, now, out)
            return
        m = self.table.get(node)
        if m is None:
            self.counters.ignored_unknown += 1
            return
        if s.incarnation > m.incarnation + MAX_INCARNATION_JUMP:
            self.counters.dropped_bad_signature += 1
            return
        if (suspect_confirms(m.state, m.incarnation, s.incarnation)
                or suspect_overrides(m.state, m.incarnation, s.incarnation)):
            self._apply_suspect(m, s, now, out)

    def _apply_suspect(self, m: Member, s: Suspect, now: float, out: list[Output]) -> None:
        if suspect_confirms(m.state, m.incarnation, s.incarnation):
            suspicion = self._suspicions.get(m.node_id)
            if suspicion is not None and suspicion.confirm(s.from_node):
                self._schedule(suspicion.deadline(), _SUSPICION, m.node_id)
                self._queue_news(m, s, now)
            return
        config = self.config
        n = self.table.live_count
        min_timeout = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
        suspicion = Suspicion(m.node_id, s.incarnation, s.from_node, start=now,
                              k=confirmations_needed(config.suspicion_confirmations, n),
                              min_timeout=min_timeout,
                              max_timeout=min_timeout * config.suspicion_max_timeout_mult)
        self._suspicions[m.node_id] = suspicion
        self.table.set_state(m, MemberState.SUSPECT, s.incarnation, now)
        self._schedule(suspicion.deadline(), _SUSPICION, m.node_id)
        self._queue_news(m, s, now)
        if s.from_node == self.node_id:
            self.counters.suspicions_started += 1
        out.append(MemberSuspected(m.info(), s.from_node))

    def _suspicion_expired(self, suspicion: Suspicion, now: float, out: list[Output]) -> None:
        """The timer ran out. Confirmed: declare the member dead. Unconfirmed (weak
        evidence: one accuser, maybe a lossy path, maybe a refutation we missed): probe it
        one last time ourselves; that round decides (:meth:`_last_check_done`)."""
        m = self.table.get(suspicion.node_id)
        if (m is None or m.state is not MemberState.SUSPECT
                or m.incarnation != suspicion.incarnation):
            del self._suspicions[suspicion.node_id]
            return
        if not suspicion.confirmed and not suspicion.checking and not self._left:
            suspicion.checking = True
            rnd = self._rounds.get(m.node_id)
            if rnd is None:
                self._start_round(m, now, out, escalate=False)
                rnd = self._rounds[m.node_id]
            rnd.final = True
            return
        del self._suspicions[suspicion.node_id]
        self.counters.deaths_declared += 1
        self._apply_dead(m, Dead(node=m.node_id, incarnation=m.incarnation,
                                 from_node=self.node_id), now, out)

    def _last_check_done(self, rnd: ProbeRound, acked: bool, now: float,
                         out: list[Output]) -> None:
        suspicion = self._suspicions.get(rnd.target)
        m = self.table.get(rnd.target)
        if (suspicion is None or m is None or m.state is not MemberState.SUSPECT
                or m.incarnation != suspicion.incarnation):
            return
        if acked:  # it answers: its refutation may still be on the way; start over
            suspicion.restart(now)
            self._schedule(suspicion.deadline(), _SUSPICION, rnd.target)
        else:
            self._suspicion_expired(suspicion, now, out)

    def _on_dead(self, peer: bytes, d: Dead, now: float, out: list[Output]) -> None:
        node = d.node
        if node == self.node_id:
            if not d.is_leave:
                self._accused(peer, d.from_node, d.incarnation, now, out)
            elif not self._left and d.incarnation >= self._incarnation:
                # Our signed leave from an earlier life (or a forged one): outbid it.
                self._accused(peer, d.from_node, d.incarnation, now, out, health=False)
            return
        m = self.table.get(node)
        if m is None:
            self.counters.ignored_unknown += 1
            return
        if d.incarnation > m.incarnation + MAX_INCARNATION_JUMP:
            self.counters.dropped_bad_signature += 1
            return
        if not dead_overrides(m.state, m.incarnation, d.incarnation):
            return
        if d.is_leave and not self.hooks.verifier.verify(
                node, m.alive.public_key, d.leave_bytes(), d.signature):
            self.counters.dropped_bad_signature += 1
            return
        self._apply_dead(m, d, now, out)

    def _apply_dead(self, m: Member, d: Dead, now: float, out: list[Output]) -> None:
        if m.node_id == self.node_id:
            raise LocalProtocolError("a node never declares itself dead")
        state = MemberState.LEFT if d.is_leave else MemberState.DEAD
        self._suspicions.pop(m.node_id, None)
        rnd = self._rounds.get(m.node_id)
        if rnd is not None:
            self._end_round(rnd)
        self.table.set_state(m, state, d.incarnation, now)
        if d.is_leave:
            self.table.leave_signatures[m.node_id] = d.signature
        self._schedule(now + self.config.dead_retention, _REAP, m.node_id)
        self._queue_news(m, d, now)
        info = m.info()
        out.append(MemberLeft(info) if d.is_leave else MemberFailed(info))

    def _accused(self, peer: bytes, accuser: bytes, incarnation: int, now: float,
                 out: list[Output], *, health: bool = True) -> None:
        """News says we are suspect or dead at ``incarnation``: refute if it is current.

        Stale news (an incarnation we already outbid) means the sender missed our
        refutation: we send it our current Alive directly."""
        if self._left:
            return
        if not refutes(self._incarnation, incarnation):
            if peer in self.table.members:
                self._send(peer, self._me.alive, now, out)
            return
        if incarnation > self._incarnation + MAX_INCARNATION_JUMP:
            self.counters.dropped_bad_signature += 1
            return
        self._announce(refutation_incarnation(self._incarnation, incarnation), now, out)
        self.counters.refutations += 1
        if health:
            self.awareness.apply_delta(1)
        out.append(Refuted(self._incarnation, accuser))
        alive = self._me.alive
        for to in (peer, accuser) if accuser != peer else (peer,):
            if to != self.node_id and to in self.table.members:
                self._send(to, alive, now, out)

    def _sign_alive(self, incarnation: int) -> Alive:
        unsigned = Alive(node=self.node_id, incarnation=incarnation, addresses=self._addresses,
                         capacity=self._capacity, public_key=self.hooks.signer.public_key,
                         signature=b"")
        signature = self.hooks.signer.sign(unsigned.signed_bytes())
        return dataclasses.replace(unsigned, signature=signature)

    def _announce(self, incarnation: int, now: float, out: list[Output]) -> None:
        """Sign and gossip a new Alive about ourselves at ``incarnation``."""
        if incarnation >= MAX_INCARNATION:
            return
        self._capacity = self._latest_capacity
        self._incarnation = incarnation
        self._last_announce = now
        self._next_capacity = None
        alive = self._sign_alive(incarnation)
        me = self._me
        me.alive = alive
        self.table.set_state(me, MemberState.ALIVE, incarnation, now)
        self._queue_news(me, alive, now)

    # === push-pull ========================================================================

    def _local_state(self) -> tuple[PushPullEntry, ...]:
        entries = []
        proofs = self.table.proofs
        leaves = self.table.leave_signatures
        for node, m in self.table.members.items():
            alive = m.alive
            proof = proofs.get(node)
            if proof:
                alive = dataclasses.replace(alive, proof=proof)
            entries.append(PushPullEntry(alive=alive, state=m.state, incarnation=m.incarnation,
                                         leave_signature=leaves.get(node, b"")))
        return tuple(entries)

    def _merge(self, peer: bytes, msg: PushPull, now: float) -> list[Output]:
        """Merge a remote state (memberlist ``mergeState``): Alives by the usual rules;
        a remote DEAD only makes us *suspect* (we may know better); unknown nodes are
        learnt only from ALIVE entries."""
        out: list[Output] = []
        for entry in msg.entries:
            alive = entry.alive
            node = alive.node
            known = node in self.table.members or node == self.node_id
            if entry.state is MemberState.ALIVE or known:
                self._on_alive(alive, now, out)
            if entry.state is MemberState.ALIVE:
                continue
            if entry.state is MemberState.LEFT:
                self._on_dead(peer, Dead(node=node, incarnation=entry.incarnation,
                                         from_node=node, signature=entry.leave_signature),
                              now, out)
            else:  # SUSPECT, or DEAD: suspect it ourselves (never a confirmation)
                m = self.table.get(node)
                if node == self.node_id:
                    self._accused(peer, peer, entry.incarnation, now, out)
                elif m is not None and suspect_overrides(m.state, m.incarnation,
                                                         entry.incarnation):
                    self._apply_suspect(m, Suspect(node=node, incarnation=entry.incarnation,
                                                   from_node=peer), now, out)
        return out
