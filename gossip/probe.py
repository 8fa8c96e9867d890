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

These are plain records; :class:`gossip.core.SwimCore` drives them.
"""

from __future__ import annotations

import enum


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
    __slots__ = ("ack_deadline", "end", "escalate", "expected_nacks", "final", "nacks",
                 "relay", "seq", "stage", "start", "target")

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
        self.expected_nacks = 0
        self.nacks = 0

    @property
    def next_at(self) -> float:
        return self.ack_deadline if self.stage is Stage.DIRECT else self.end


def failure_health_delta(expected_nacks: int, nacks: int) -> int:
    """Lifeguard: health penalty of a failed round (missing nacks, or +1 if none asked)."""
    if expected_nacks > 0:
        return max(0, expected_nacks - nacks)
    return 1
