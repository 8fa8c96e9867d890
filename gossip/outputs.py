"""What SwimCore returns from every call: requests to the driver and membership events.

Requests (imperative): :class:`Send` a datagram, :class:`Sync` a full state over a stream.
Reports (past tense): the membership events the node, the API and the UI listen to, and
:class:`LeaveSpread` once our leave has gone out.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.member import MemberInfo
from gossip.messages import Packet, PushPull


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` (one message or a Compound) as a datagram to ``to``; best effort."""

    to: bytes
    msg: Packet


@dataclass(frozen=True, slots=True)
class Sync:
    """Open a push-pull stream to ``to``, send ``msg``, and feed the reply back with
    ``on_push_pull_reply`` (or ``on_push_pull_failed`` if the exchange fails)."""

    to: bytes
    msg: PushPull


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A node we did not know (or knew as DEAD/LEFT) is alive."""

    member: MemberInfo


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    """An alive member announced a new incarnation: new capacity or addresses, or it
    refuted a suspicion (``refuted``)."""

    member: MemberInfo
    refuted: bool = False


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    member: MemberInfo
    accuser: bytes


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """The member is DEAD (its suspicion expired here, or another node declared it)."""

    member: MemberInfo


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """The member left gracefully (signed leave)."""

    member: MemberInfo


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A DEAD or LEFT member was forgotten after the retention period."""

    node_id: bytes


@dataclass(frozen=True, slots=True)
class Refuted:
    """We were accused (suspect or dead) and outbid it with a new incarnation."""

    incarnation: int
    accuser: bytes


@dataclass(frozen=True, slots=True)
class LeaveSpread:
    """Our leave has been sent as often as the retransmit limit asks (or nobody is left
    to tell): the driver may stop."""


MemberEvent = (MemberJoined | MemberUpdated | MemberSuspected | MemberFailed | MemberLeft
               | MemberReaped)

Output = Send | Sync | MemberEvent | Refuted | LeaveSpread
