"""News: applying Alive, Suspect and Dead to the member table (the other half of SwimCore).

Every piece of news goes through the precedence rules of :mod:`gossip.member`; only news
that would change something is checked further (an Alive's signature, a new member's
proof, a leave's signature), so a duplicate costs one dict lookup. News that wins is
applied, reported (MemberJoined, MemberUpdated, MemberSuspected, MemberFailed,
MemberLeft) and queued for gossip; news that fails a check is dropped and counted
(``dropped_bad_signature``, ``dropped_non_member``, ``dropped_no_proof``).

Suspicions (SWIM §4.2, Lifeguard §4.2): a suspicion runs a :class:`~gossip.suspicion.Suspicion`
timer, shortened by confirmations from distinct nodes (the accuser excluded; a push-pull is
never a confirmation). When it runs out **with** its ``k`` confirmations the member is
declared DEAD; **without** them (weak evidence: one accuser on a lossy path, or a refutation
we missed) this node first probes the member itself: no answer means DEAD, an answer
starts the suspicion over. That last check is what keeps false deaths at zero under 10 %
loss, where one node in a million misses a given refutation.

Refutation: news that we are suspect or dead at an incarnation >= ours is outbid with a new
signed Alive (health +1); stale news (an incarnation we already outbid) gets our current
Alive sent straight back to its sender, who evidently missed it.

Push-pull merge follows memberlist ``mergeState``: Alives by the usual rules; a remote
SUSPECT or DEAD only makes us *suspect* (we may know better); for a remote DEAD we run the
last check at once (up to :data:`MERGE_CHECKS` per sync), so a node back from a freeze
agrees within one probe round instead of a whole suspicion timeout. Unlike memberlist, a node we
never knew that is DEAD or LEFT there is recorded as such (silently): a fresh node then
refuses stale Alives of the dead like everyone else.

:class:`NewsApplier` is a mixin: it works on the core's state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from gossip.formulas import confirmations_needed, suspicion_timeout
from gossip.member import (
    MAX_INCARNATION,
    Member,
    MemberState,
    alive_overrides,
    dead_overrides,
    plausible_incarnation,
    refutation_incarnation,
    refutes,
    suspect_confirms,
    suspect_overrides,
)
from gossip.messages import (
    Ack,
    Alive,
    Broadcastable,
    Dead,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    leave_bytes,
)
from gossip.outputs import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    MemberUpdated,
    Output,
    Refuted,
)
from gossip.suspicion import Suspicion
from gossip.timers import TimerKind
from meshcloud.errors import LocalProtocolError

_ALIVE_ENTRIES: dict[int, tuple[Alive, PushPullEntry]] = {}
"""Push-pull entries of ALIVE members with no proof and no leave signature, by the
identity of their Alive: such an entry is a pure function of the Alive, and a table
sends the same Alive in every sync until it changes (a memo only: outputs are equal)."""
_ALIVE_ENTRIES_MAX = 1 << 16


def _alive_entry(alive: Alive) -> PushPullEntry:
    hit = _ALIVE_ENTRIES.get(id(alive))
    if hit is not None and hit[0] is alive:
        return hit[1]
    entry = PushPullEntry(alive=alive, state=MemberState.ALIVE, incarnation=alive.incarnation)
    if len(_ALIVE_ENTRIES) >= _ALIVE_ENTRIES_MAX:
        _ALIVE_ENTRIES.clear()
    _ALIVE_ENTRIES[id(alive)] = (alive, entry)
    return entry


if TYPE_CHECKING:
    from gossip.awareness import Awareness
    from gossip.capacity import Capacity
    from gossip.config import GossipConfig
    from gossip.hooks import GossipHooks
    from gossip.probe import ProbeRound, Relay
    from gossip.stats import Counters
    from gossip.table import MemberTable
    from gossip.timers import TimerHeap


MERGE_CHECKS = 16
"""Members a single push-pull may send to an immediate last check (those the remote holds
DEAD and we hold alive); the rest wait out a normal suspicion, so one sync after a long
partition does not start thousands of probe rounds at once."""

HEARSAY_CHECK_ROUNDS = 2
"""Failed probe rounds in a row before a member that a sync said was DEAD is declared
dead here. One round fails now and then on a lossy network (at 10 % loss about 1 in 130:
ping or ack lost, and all three indirect paths of four hops too); after a partition heals
every sync says DEAD of half the mesh, so one round cost a live node its life in a
1,000-node run. Two rounds in a row: about 1 in 18,000."""


class NewsApplier:
    """Applying news to the member table: SwimCore's state machine (mixin)."""

    node_id: bytes
    config: GossipConfig
    hooks: GossipHooks
    table: MemberTable
    awareness: Awareness
    counters: Counters
    timers: TimerHeap
    _suspicions: dict[bytes, Suspicion]
    _rounds: dict[bytes, ProbeRound]
    _revoked: set[bytes]
    _left: bool
    _incarnation: int
    _addresses: tuple[str, ...]
    _capacity: Capacity
    _latest_capacity: Capacity
    _last_announce: float
    _next_capacity: float | None
    _me: Member
    _settle_at: float
    _heard: dict[bytes, float]

    if TYPE_CHECKING:  # provided by the other parts of the core
        def settled(self, now: float) -> bool: ...
        def shaky(self, now: float) -> bool: ...
        def _stalled_since(self, since: float) -> bool: ...
        def _send(self, to: bytes, primary: Ping | PingReq | Ack | Nack | Broadcastable,
                  now: float, out: list[Output], extra: tuple[Broadcastable, ...] = ()
                  ) -> None: ...
        def _queue_news(self, m: Member, msg: Broadcastable, now: float) -> None: ...
        def _start_round(self, m: Member, now: float, out: list[Output], *, escalate: bool,
                         relay: Relay | None = None) -> None: ...
        def _end_round(self, rnd: ProbeRound) -> None: ...

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
        if not plausible_incarnation(m.incarnation, s.incarnation):
            self.counters.dropped_implausible += 1
            return
        if (suspect_confirms(m.state, m.incarnation, s.incarnation)
                or suspect_overrides(m.state, m.incarnation, s.incarnation)):
            self._apply_suspect(m, s, now, out)

    def _apply_suspect(self, m: Member, s: Suspect, now: float, out: list[Output], *,
                       spread: bool = True) -> None:
        """Suspect ``m``. ``spread=False``: a suspicion of our own that is not news for
        others (see :meth:`_merge`)."""
        if suspect_confirms(m.state, m.incarnation, s.incarnation):
            suspicion = self._suspicions.get(m.node_id)
            if suspicion is not None and suspicion.confirm(s.from_node):
                self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION, m.node_id)
                self._queue_news(m, s, now)
            return
        config = self.config
        n = self.table.live_count
        # Stretched by our health score (Lifeguard scales probes; we scale this too): a
        # node whose own loop lags reads the accused's refutation late, and one busy
        # moment of the accused is all it takes for peers as starved as we are to agree.
        min_timeout = self.awareness.scale(
            suspicion_timeout(config.suspicion_mult, n, config.probe_interval))
        suspicion = Suspicion(m.node_id, s.incarnation, s.from_node, start=now,
                              k=confirmations_needed(config.suspicion_confirmations, n),
                              min_timeout=min_timeout,
                              max_timeout=min_timeout * config.suspicion_max_timeout_mult)
        suspicion.hearsay = not spread
        self._suspicions[m.node_id] = suspicion
        self.table.set_state(m, MemberState.SUSPECT, s.incarnation, now)
        self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION, m.node_id)
        if spread:
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
        if self._postpone(suspicion, now):
            return
        if self._heard.get(m.node_id, -math.inf) > suspicion.start and not self._left:
            self._renew(m, suspicion, now, out)
            return
        weak = self.shaky(now) and not suspicion.witnessed  # only others' word, and ours
        if (not suspicion.confirmed or weak) and not suspicion.checking and not self._left:
            # hearsay alone (no probe of anyone's accused it): as many rounds as at once
            hearsay = suspicion.hearsay and not suspicion.confirmers
            self._check_now(m, now, out, rounds=HEARSAY_CHECK_ROUNDS if hearsay else 1)
            return
        del self._suspicions[suspicion.node_id]
        self.counters.deaths_declared += 1
        self._apply_dead(m, Dead(node=m.node_id, incarnation=m.incarnation,
                                 from_node=self.node_id), now, out)

    def _renew(self, m: Member, suspicion: Suspicion, now: float, out: list[Output]) -> None:
        """The suspect sent us something itself after the suspicion began: it lives. Its
        silence to the probes was slowness (a loop starved for seconds) or deafness (its
        inbound path lost for a while), not a crash: a crashed process sends nothing. It
        stays suspect, with the full unconfirmed timeout again (the confirmations were
        about the same silence), and is told directly so that it can refute."""
        self.counters.suspicions_renewed += 1
        suspicion.confirmers.clear()
        suspicion.restart(now)
        self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION, m.node_id)
        self._send(m.node_id, Suspect(node=m.node_id, incarnation=suspicion.incarnation,
                                      from_node=suspicion.accuser), now, out)

    def _postpone(self, suspicion: Suspicion, now: float) -> bool:
        """Give a running-out suspicion more time when its end is no evidence:

        * during our start-up grace (our view has not settled), until the grace ends;
        * when our own loop stalled in the last probe timeout before it ran out (the
          refutation may be unread in our buffers), by one probe timeout, at most
          ``stall_extensions`` times."""
        config = self.config
        if not self.settled(now):
            wait = self._settle_at - now
        elif (suspicion.postponed < config.stall_extensions and self._stalled_since(
                suspicion.deadline() - self.awareness.scale(config.probe_timeout))):
            wait = self.awareness.scale(config.probe_timeout)
            suspicion.postponed += 1
        else:
            return False
        suspicion.extra += now + wait - suspicion.deadline()
        self.counters.suspicions_postponed += 1
        self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION, suspicion.node_id)
        return True

    def _last_check_done(self, rnd: ProbeRound, acked: bool, now: float,
                         out: list[Output]) -> None:
        suspicion = self._suspicions.get(rnd.target)
        m = self.table.get(rnd.target)
        if (suspicion is None or m is None or m.state is not MemberState.SUSPECT
                or m.incarnation != suspicion.incarnation):
            return
        if acked:  # it answers: its refutation may still be on the way; start over
            suspicion.restart(now)
            self.timers.schedule(suspicion.deadline(), TimerKind.SUSPICION, rnd.target)
        elif suspicion.checks_left > 1 and not self._left:
            suspicion.checks_left -= 1
            self._start_round(m, now, out, escalate=False)
            self._rounds[m.node_id].final = True
        else:
            self._suspicion_expired(suspicion, now, out)

    def _on_dead(self, peer: bytes, d: Dead, now: float, out: list[Output]) -> None:
        node = d.node
        if node == self.node_id:
            if not d.is_leave:
                self._accused(peer, d.from_node, d.incarnation, now, out)
            elif not self._left and d.incarnation >= self._incarnation:
                # Our signed leave from an earlier life: outbid it. A forged one: drop it
                # (no member applies it, so there is nothing to refute).
                if not self.hooks.verifier.verify(node, self._me.alive.public_key,
                                                  d.leave_bytes(), d.signature):
                    self.counters.dropped_bad_signature += 1
                    return
                self._accused(peer, d.from_node, d.incarnation, now, out, health=False)
            return
        m = self.table.get(node)
        if m is None:
            self.counters.ignored_unknown += 1
            return
        if not plausible_incarnation(m.incarnation, d.incarnation):
            self.counters.dropped_implausible += 1
            return
        if not dead_overrides(m.state, m.incarnation, d.incarnation):
            return
        if d.is_leave and not self.hooks.verifier.verify(
                node, m.alive.public_key, d.leave_bytes(), d.signature):
            self.counters.dropped_bad_signature += 1
            return
        if not d.is_leave and self._spoke_lately(m, now) and not self._left:
            # Our own evidence says otherwise: the declarer did not hear it, we did.
            # Check it ourselves first (one probe round; a crash costs that much more).
            self.counters.deaths_checked += 1
            if m.state is not MemberState.SUSPECT or m.incarnation != d.incarnation:
                self._apply_suspect(m, Suspect(node=node, incarnation=d.incarnation,
                                               from_node=d.from_node), now, out, spread=False)
            self._check_now(m, now, out)
            return
        self._apply_dead(m, d, now, out)

    def _spoke_lately(self, m: Member, now: float) -> bool:
        """Did ``m`` send us something itself since we suspect it, or, if we do not,
        since the declarer's suspicion began? Any declarer's suspicion ran at least the
        minimum timeout before it declared, so a message newer than that is one the
        declarer did not weigh; a crashed member's last one is older (it precedes the
        declarer's probe round too), so crashes are not checked twice."""
        heard = self._heard.get(m.node_id)
        if heard is None:
            return False
        suspicion = self._suspicions.get(m.node_id)
        if suspicion is not None and suspicion.incarnation == m.incarnation:
            return heard > suspicion.start
        config = self.config
        return heard > now - suspicion_timeout(config.suspicion_mult, self.table.live_count,
                                               config.probe_interval)

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
        self.timers.schedule(now + self.config.dead_retention, TimerKind.REAP, m.node_id)
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
        if not plausible_incarnation(self._incarnation, incarnation):
            self.counters.dropped_implausible += 1
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

    # --- push-pull ------------------------------------------------------------------------

    def _local_state(self) -> tuple[PushPullEntry, ...]:
        entries = []
        proofs = self.table.proofs
        leaves = self.table.leave_signatures
        alive_state = MemberState.ALIVE
        for node, m in self.table.members.items():
            alive = m.alive
            proof = proofs.get(node)
            leave = leaves.get(node, b"")
            if (not proof and not leave and m.state is alive_state
                    and m.incarnation == alive.incarnation):
                entries.append(_alive_entry(alive))  # the common case, memoized
                continue
            if proof:
                alive = dataclasses.replace(alive, proof=proof)
            entries.append(PushPullEntry(alive=alive, state=m.state, incarnation=m.incarnation,
                                         leave_signature=leave))
        return tuple(entries)

    def _merge(self, peer: bytes, msg: PushPull, now: float) -> list[Output]:
        """Merge a remote state (memberlist ``mergeState``, with two changes): Alives by
        the usual rules; a remote SUSPECT or DEAD only makes us *suspect* (we may know
        better), never confirms, and that suspicion stays ours: it is not gossiped, so it
        cannot confirm anyone else's. (memberlist gossips it. After a partition heals
        every sync says DEAD of half the mesh; gossiped, these hearsay suspicions
        confirmed each other within a second and, with our short confirmed-suspicion
        timeout, killed hundreds of live nodes for a moment: 533 wrong deaths in 10 s at
        400 nodes and 10 % loss. Evidence for others comes from probes.) An unknown node
        that is DEAD or LEFT there is recorded here as such, silently, so a stale Alive
        cannot bring it back to life in our view (memberlist ignores it)."""
        out: list[Output] = []
        checks = MERGE_CHECKS
        members = self.table.members
        me = self.node_id
        alive_state = MemberState.ALIVE
        for entry in msg.entries:
            alive = entry.alive
            node = alive.node
            state = entry.state
            if state is alive_state and node != me:
                # what _on_alive does first, inlined: most entries are old news
                m = members.get(node)
                if m is not None and not alive_overrides(m.state, m.incarnation,
                                                         alive.incarnation):
                    continue
            if state.gone and node != self.node_id and node not in self.table.members:
                self._learn_gone(entry, now)
                continue
            self._on_alive(alive, now, out)
            if state is MemberState.ALIVE:
                continue
            if state is MemberState.LEFT:
                self._on_dead(peer, Dead(node=node, incarnation=entry.incarnation,
                                         from_node=node, signature=entry.leave_signature),
                              now, out)
            elif node == self.node_id:
                self._accused(peer, peer, entry.incarnation, now, out)
            else:
                m = self.table.get(node)
                if m is not None and suspect_overrides(m.state, m.incarnation,
                                                       entry.incarnation):
                    self._apply_suspect(m, Suspect(node=node, incarnation=entry.incarnation,
                                                   from_node=peer), now, out, spread=False)
                    if state is MemberState.DEAD and checks and not self._left:
                        checks -= 1
                        self._check_now(m, now, out, rounds=HEARSAY_CHECK_ROUNDS)
        return out

    def _check_now(self, m: Member, now: float, out: list[Output], rounds: int = 1) -> None:
        """Run the last check of ``m`` now: ``rounds`` probe rounds in a row must fail for
        it to be declared dead. After a suspicion ran out, one; when the only evidence is
        that another node holds ``m`` dead (checked at once, so that a node back from a
        freeze, or a joiner, agrees quickly; or when such a suspicion ran out), two."""
        suspicion = self._suspicions.get(m.node_id)
        if suspicion is None or suspicion.checking:
            return
        suspicion.checking = True
        suspicion.checks_left = rounds
        rnd = self._rounds.get(m.node_id)
        if rnd is None:
            self._start_round(m, now, out, escalate=False)
            rnd = self._rounds[m.node_id]
        rnd.final = True

    def _learn_gone(self, entry: PushPullEntry, now: float) -> None:
        """Record a member we never knew as DEAD or LEFT, checked like any news.

        Silently: it is secondhand and may be stale (the node may be back already, with a
        higher incarnation on its way), and we never believed it alive, so no belief of
        ours changed. Nothing is gossiped either: it is old news to everyone else."""
        alive = entry.alive
        node = alive.node
        if node in self._revoked or not plausible_incarnation(alive.incarnation,
                                                              entry.incarnation):
            return
        if not self._verify_alive(alive):
            return
        if not self.hooks.membership.is_member(node, alive.proof):
            self.counters.dropped_non_member += 1
            return
        leave = entry.state is MemberState.LEFT
        if leave and not self.hooks.verifier.verify(
                node, alive.public_key, leave_bytes(node, entry.incarnation),
                entry.leave_signature):
            self.counters.dropped_bad_signature += 1
            return
        m = Member(dataclasses.replace(alive, proof=b"") if alive.proof else alive, now=now)
        self.table.add(m, alive.proof)
        self.table.set_state(m, entry.state, entry.incarnation, now)
        if leave:
            self.table.leave_signatures[node] = entry.leave_signature
        self.timers.schedule(now + self.config.dead_retention, TimerKind.REAP, node)
