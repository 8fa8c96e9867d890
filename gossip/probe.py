"""ProbeRound and Relay: the state of SWIM's failure detector for one target.

A **probe round** (SWIM §3.1, memberlist ``probeNode``) checks one member:

1. ping it directly and wait ``probe_timeout`` (stretched by the health score);
2. no ack: ask ``indirect_checks`` random members to ping it for us (PingReq), and ping
   it directly once more (a second chance for a lost packet, as memberlist's TCP
   fallback); wait ``indirect_timeout`` more (also stretched);
3. no ack by then: suspect it. Lifeguard: every relay that did reach *us* but not the
   target sends a Nack; missing nacks mean the problem is probably ours (health +1 each).

A **relay** answers a PingReq: it pings the target with its own sequence number and
forwards the ack, or sends a Nack after ``probe_timeout``. When the PingReq says
``escalate``, the relay also turns its ping into a probe round of its own (if it has none
running for that target): a quick, independent second opinion that confirms the
suspicion about half a round after it starts (Lifeguard's confirmations, from the nodes
best placed to give them). Such a round never escalates further.

:class:`ProbeRound` and :class:`Relay` are plain records; :class:`Prober` holds the
probing half of :class:`gossip.core.SwimCore` (a mixin: it works on the core's state).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from gossip.member import Member, MemberState
from gossip.messages import Ack, Broadcastable, Dead, Nack, Ping, PingReq, Suspect
from gossip.timers import TimerKind

if TYPE_CHECKING:
    from gossip.awareness import Awareness
    from gossip.config import GossipConfig
    from gossip.outputs import Output
    from gossip.stats import Counters
    from gossip.suspicion import Suspicion
    from gossip.table import MemberTable
    from gossip.timers import TimerHeap

RELAY_SHARE = 0.8
"""A relay sends its Nack after this share of the requester's indirect window
(``indirect_timeout``), so the Nack lands before the requester's round ends
(Lifeguard counts only nacks that arrive in time)."""


class Stage(enum.Enum):
    DIRECT = 1
    INDIRECT = 2


class Relay:
    """A PingReq we are serving: ``seq`` is ours, ``requester_seq`` the requester's."""

    __slots__ = ("answered", "deadline", "requester", "requester_seq", "seq", "target")

    def __init__(self, seq: int, target: bytes, requester: bytes, requester_seq: int,
                 deadline: float) -> None:
        self.seq = seq
        self.target = target
        self.requester = requester
        self.requester_seq = requester_seq
        self.deadline = deadline
        self.answered = False


class ProbeRound:
    __slots__ = ("ack_deadline", "confirm_to", "end", "escalate", "expected_nacks",
                 "extensions", "final", "hinted", "nacks", "relay", "retry", "seq", "stage",
                 "start", "step_start", "target")

    def __init__(self, target: bytes, seq: int, *, start: float, ack_deadline: float,
                 end: float, escalate: bool, relay: Relay | None = None) -> None:
        self.target = target
        self.seq = seq
        self.start = start
        self.ack_deadline = ack_deadline
        self.end = end
        self.escalate = escalate
        """Whether our PingReqs ask relays to run rounds of their own."""
        self.relay = relay
        """Set when this round grew out of a relayed ping (escalation)."""
        self.final = False
        """The last check of an unconfirmed suspicion: failure means DEAD, success means
        the suspicion starts over."""
        self.stage = Stage.DIRECT
        self.step_start = start
        """When the current stage's wait began (a stall of ours since then voids it)."""
        self.extensions = 0
        """Times a stage was extended because our own loop stalled during it."""
        self.expected_nacks = 0
        self.nacks = 0
        self.retry = False
        """The second round of a node whose judgement was weak when the first failed
        (GossipConfig.stall_memory): its failure accuses."""
        self.confirm_to = relay.requester if relay is not None else None
        """Who asked us to escalate: our suspicion is sent to it as a confirmation."""
        self.hinted = False
        """Started because the transport lost its last connection to the member: evidence
        that does not come from our own (maybe starved) timing, so a failure accuses at
        once even when our judgement is weak (a killed process closes its sockets)."""

    @property
    def next_at(self) -> float:
        return self.ack_deadline if self.stage is Stage.DIRECT else self.end


def failure_health_delta(expected_nacks: int, nacks: int) -> int:
    """Lifeguard: health penalty of a failed round (missing nacks, or +1 if none asked)."""
    if expected_nacks > 0:
        return max(0, expected_nacks - nacks)
    return 1


class Prober:
    """Probe rounds and relays: the failure detector part of SwimCore (mixin)."""

    node_id: bytes
    config: GossipConfig
    table: MemberTable
    awareness: Awareness
    counters: Counters
    timers: TimerHeap
    _rounds: dict[bytes, ProbeRound]
    _acks: dict[int, ProbeRound | Relay]
    _suspicions: dict[bytes, Suspicion]
    _left: bool
    _relay_timeout: float

    if TYPE_CHECKING:  # provided by the other parts of the core
        def _stalled_since(self, since: float) -> bool: ...
        def settled(self, now: float) -> bool: ...
        def shaky(self, now: float) -> bool: ...
        def _next_seq(self) -> int: ...
        def _send(self, to: bytes, primary: Ping | PingReq | Ack | Nack | Broadcastable,
                  now: float, out: list[Output], extra: tuple[Broadcastable, ...] = ()
                  ) -> None: ...
        def _apply_suspect(self, m: Member, s: Suspect, now: float, out: list[Output], *,
                           spread: bool = True) -> None: ...
        def _last_check_done(self, rnd: ProbeRound, acked: bool, now: float,
                             out: list[Output]) -> None: ...

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
        self.timers.schedule(rnd.next_at, TimerKind.ROUND, m.node_id)
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

    def _extend_for_stall(self, rnd: ProbeRound, now: float) -> bool:
        """Our own loop stalled while this stage waited: the ack may be sitting unread in
        our buffers, so the stage is no evidence. Wait once more (bounded)."""
        config = self.config
        if (rnd.extensions >= config.stall_extensions
                or not self._stalled_since(rnd.step_start)):
            return False
        rnd.extensions += 1
        rnd.step_start = now
        self.counters.probes_stalled += 1
        if rnd.stage is Stage.DIRECT:
            rnd.ack_deadline = now + self.awareness.scale(config.probe_timeout)
            rnd.end = rnd.ack_deadline + self.awareness.scale(config.indirect_timeout)
        else:
            rnd.end = now + self.awareness.scale(config.indirect_timeout)
        self.timers.schedule(rnd.next_at, TimerKind.ROUND, rnd.target)
        return True

    def _round_timer(self, rnd: ProbeRound, now: float, out: list[Output]) -> None:
        if self._extend_for_stall(rnd, now):
            return
        if rnd.stage is Stage.DIRECT:
            self._ask_relays(rnd, now, out)
            return
        # The round ended without an ack.
        self._end_round(rnd)
        self.counters.probes_failed += 1
        weak = self.shaky(now)  # as we were while it ran, before its own health penalty
        self.awareness.apply_delta(failure_health_delta(rnd.expected_nacks, rnd.nacks))
        if rnd.final:
            self._last_check_done(rnd, False, now, out)
            return
        m = self.table.get(rnd.target)
        if m is None or m.state.gone or self._left:
            return
        if not self.settled(now):  # our view and loop have not settled: accuse no one
            self.counters.probes_unsettled += 1
            return
        if weak and not rnd.retry and not rnd.hinted:
            # Our own loop has been starved: the silence may be ours. Ask once more.
            self.counters.probes_retried += 1
            self._start_round(m, now, out, escalate=rnd.escalate)
            again = self._rounds[m.node_id]
            again.retry = True
            again.confirm_to = rnd.confirm_to
            return
        suspect = Suspect(node=m.node_id, incarnation=m.incarnation, from_node=self.node_id)
        self._apply_suspect(m, suspect, now, out)
        suspicion = self._suspicions.get(m.node_id)
        if suspicion is not None and suspicion.incarnation == m.incarnation:
            suspicion.witnessed = True
        self._send(m.node_id, suspect, now, out)  # let it refute at once
        if rnd.confirm_to is not None and rnd.confirm_to in self.table.members:
            self._send(rnd.confirm_to, suspect, now, out)  # our confirmation

    def _ask_relays(self, rnd: ProbeRound, now: float, out: list[Output], *,
                    ping: bool = True) -> None:
        """The direct stage is over: ask the relays, ping the target once more (unless
        ``ping`` is False: one just went) and wait until ``rnd.end``. A round that grew out
        of a relayed ping owes its requester a Nack."""
        if rnd.relay is not None and not rnd.relay.answered:
            rnd.relay.answered = True
            self._send(rnd.relay.requester, Nack(seq=rnd.relay.requester_seq), now, out)
        rnd.stage = Stage.INDIRECT
        rnd.step_start = now
        target = rnd.target
        relays = self.table.random_members(self.config.indirect_checks,
                                           (self.node_id, target))
        rnd.expected_nacks = len(relays)
        req = PingReq(seq=rnd.seq, target=target, escalate=rnd.escalate)
        for relay in relays:
            self._send(relay, req, now, out)
        self.counters.indirect_probes += len(relays)
        m = self.table.get(target)
        if ping and m is not None:
            self._send(target, Ping(seq=rnd.seq, target=target), now, out, self._buddy(m))
        self.timers.schedule(rnd.next_at, TimerKind.ROUND, target)

    def _no_ack_can_come(self, rnd: ProbeRound, now: float, out: list[Output], *,
                         pinged: bool = False) -> None:
        """A datagram to the target came back unreachable: waiting out the direct stage
        would only wait for an ack that cannot come, so a round still in it asks its
        relays now and ends ``indirect_timeout`` later (``pinged``: its first ping went
        just now, so no second one). Still no verdict: the relays must fail too."""
        if rnd.stage is not Stage.DIRECT:
            return
        rnd.end = now + self.awareness.scale(self.config.indirect_timeout)
        self.counters.probes_hastened += 1
        self._ask_relays(rnd, now, out, ping=not pinged)

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
        self.timers.schedule(relay.deadline, TimerKind.RELAY, seq)
