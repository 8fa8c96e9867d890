"""Members, their states, and the incarnation precedence rules (all in this one file).

A member is what one node believes about another: a state, an incarnation number, and the
node's latest *signed* :class:`~gossip.messages.Alive` (addresses, capacity, public key).

Incarnation numbers (SWIM §4.2) order the news about one node. Only the node itself
raises its incarnation, by signing a new Alive: to refute a suspicion, to announce a
capacity or address change, or after a restart. Suspect and Dead news carry the
incarnation the accuser knew. The precedence rules, for news about node ``X`` whose
current entry has incarnation ``j``:

=============  =====================================================  ==================
news           overrides                                              when
=============  =====================================================  ==================
Alive(i)       ALIVE(j), SUSPECT(j), DEAD(j), LEFT(j)                 i > j
Suspect(i)     ALIVE(j)                                               i >= j
Suspect(i)     SUSPECT(j)                                             i > j (i == j: a confirmation)
Dead(i)        ALIVE(j), SUSPECT(j)                                   i >= j
Leave(i)       ALIVE(j), SUSPECT(j)                                   i >= j (signed by X)
=============  =====================================================  ==================

DEAD and LEFT are final for an incarnation: only an Alive with a higher one revives the
node. LEFT (a graceful leave, signed by the leaver) is distinct from DEAD (declared by
others after a suspicion timed out); both are reaped after a retention period.

Invariants the core keeps (and the stateful tests check): a node never declares itself
dead; a member's incarnation never goes backwards; a suspicion refuted by a higher
incarnation never ends in death.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gossip.capacity import Capacity
    from gossip.messages import Alive


class MemberState(enum.Enum):
    """What a node believes about a member. Values travel on the wire (push-pull)."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4

    @property
    def gone(self) -> bool:
        """DEAD or LEFT: not probed, not counted as a live member."""
        return self is MemberState.DEAD or self is MemberState.LEFT


MAX_INCARNATION = (1 << 63) - 1
"""Incarnations above 2^63 - 1 are refused on the wire: no honest node gets there."""


MAX_INCARNATION_JUMP = 1 << 32
"""Suspect or Dead news more than this above the incarnation we know is refused: only a
member trying to push the accused past the incarnations it can sign would send it."""


def plausible_incarnation(known: int, claimed: int) -> bool:
    """Is an *unsigned* claim (Suspect, Dead) of ``claimed`` credible when we know ``known``?"""
    return claimed <= known + MAX_INCARNATION_JUMP


def alive_overrides(state: MemberState | None, current: int, incarnation: int) -> bool:
    """Does an Alive at ``incarnation`` replace the entry (``state``, ``current``)?"""
    return state is None or incarnation > current


def suspect_overrides(state: MemberState | None, current: int, incarnation: int) -> bool:
    """Does a Suspect at ``incarnation`` start a (new) suspicion of the entry?

    A Suspect at the same incarnation as an existing suspicion is not an override but a
    confirmation (see :func:`suspect_confirms`).
    """
    if state is MemberState.ALIVE:
        return incarnation >= current
    if state is MemberState.SUSPECT:
        return incarnation > current
    return False  # unknown, DEAD or LEFT: nothing to suspect


def suspect_confirms(state: MemberState | None, current: int, incarnation: int) -> bool:
    """Is a Suspect at ``incarnation`` a confirmation of the entry's ongoing suspicion?"""
    return state is MemberState.SUSPECT and incarnation == current


def dead_overrides(state: MemberState | None, current: int, incarnation: int) -> bool:
    """Does a Dead (or a signed leave) at ``incarnation`` end the entry?"""
    if state is MemberState.ALIVE or state is MemberState.SUSPECT:
        return incarnation >= current
    return False


def refutes(own_incarnation: int, accused_incarnation: int) -> bool:
    """Must we refute news about ourselves at ``accused_incarnation``?"""
    return accused_incarnation >= own_incarnation


def refutation_incarnation(own_incarnation: int, accused_incarnation: int) -> int:
    """The incarnation that outbids both our own and the accusation's."""
    return max(own_incarnation, accused_incarnation) + 1


class Member:
    """One entry of a node's member table (mutable; owned by the core).

    Kept small on purpose: every node holds one per member, so a 5,000-node simulation
    holds 25 million. Rarely needed extras (membership proofs, leave signatures) live in
    side tables of :class:`gossip.table.MemberTable`.
    """

    __slots__ = ("alive", "changed_at", "first_seen", "incarnation", "state")

    def __init__(self, alive: Alive, *, now: float) -> None:
        self.alive: Alive = alive
        self.incarnation: int = alive.incarnation
        self.state: MemberState = MemberState.ALIVE
        self.changed_at: float = now
        """Time of the last change of state or incarnation."""
        self.first_seen: float = now
        """When this node first learnt of the member (its Alive carries a proof until
        ``proof_window`` after that)."""

    @property
    def node_id(self) -> bytes:
        return self.alive.node

    def set_state(self, state: MemberState, incarnation: int, now: float) -> None:
        if incarnation < self.incarnation:
            raise ValueError("a member's incarnation never goes backwards")
        if state is not self.state or incarnation != self.incarnation:
            self.changed_at = now
        self.state = state
        self.incarnation = incarnation

    def info(self) -> MemberInfo:
        alive = self.alive
        return MemberInfo(
            node_id=alive.node,
            state=self.state,
            incarnation=self.incarnation,
            addresses=alive.addresses,
            capacity=alive.capacity,
            changed_at=self.changed_at,
        )

    def __repr__(self) -> str:
        return f"<Member {self.node_id.hex()[:12]} {self.state.name} inc={self.incarnation}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInfo:
    """A snapshot of one member, for events, the API and the UI."""

    node_id: bytes
    state: MemberState
    incarnation: int
    addresses: tuple[str, ...]
    capacity: Capacity
    changed_at: float
    """Core time (``now`` seconds) of the last change of state or incarnation."""
