"""Suspicion: one suspected member's timer, shrunk by independent confirmations.

Lifeguard's LHA-Suspicion (Dadgar et al. 2018, §4.2; memberlist ``suspicion.go``): a
suspicion starts with the *maximum* timeout. Every **distinct** other node that also
reports the member suspect at the same incarnation is a confirmation; after ``c``
confirmations the timeout is ``timeout(c)`` (see :func:`gossip.formulas.suspicion_deadline_offset`),
reaching the minimum at ``k``. The accuser that started the suspicion here never counts
as its own confirmation, and neither does anyone twice.

Unlike memberlist's, this timer holds no clock and fires nothing: it knows when it started
and answers :meth:`deadline`; the core keeps the timers and checks ``deadline() <= now``.
"""

from __future__ import annotations

from gossip.formulas import suspicion_deadline_offset


class Suspicion:
    __slots__ = ("accuser", "checking", "checks_left", "confirmers", "extra", "hearsay",
                 "incarnation", "k", "max_timeout", "min_timeout", "node_id", "postponed",
                 "start", "witnessed")

    def __init__(self, node_id: bytes, incarnation: int, accuser: bytes, *, start: float,
                 k: int, min_timeout: float, max_timeout: float) -> None:
        if min_timeout > max_timeout:
            raise ValueError("min_timeout must not exceed max_timeout")
        self.node_id = node_id
        self.incarnation = incarnation
        self.accuser = accuser
        self.start = start
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.confirmers: set[bytes] = set()
        self.checking = False
        """Expired without ``k`` confirmations; a last probe round decides (see core)."""
        self.checks_left = 0
        """Failed rounds still needed before the last check declares the member dead."""
        self.hearsay = False
        self.extra = 0.0
        """Seconds added to the deadline because it ran out while the deciding node
        could not judge (its own loop stalled, or it was still starting)."""
        self.postponed = 0
        """Times the deadline was pushed back for a stall of the deciding node."""
        self.witnessed = False
        """A probe round of our own failed on this member too (retried first if our
        judgement was weak then): our own evidence, no last check needed for it."""
        """Started from a sync that held the member DEAD, not from a probe (see core)."""

    @property
    def confirmed(self) -> bool:
        """Has it all ``k`` confirmations (strong evidence: no last check needed)?

        Never with ``k == 0`` (a mesh too small for anyone to confirm): one accuser's
        word is weak evidence, and the suspicion ends with a last check."""
        return self.k > 0 and len(self.confirmers) >= self.k

    def restart(self, now: float) -> None:
        """Start over (a last check found the member answering): full timeout again."""
        self.start = now
        self.checking = False
        self.checks_left = 0
        self.extra = 0.0
        self.postponed = 0
        self.witnessed = False

    @property
    def confirmations(self) -> int:
        return len(self.confirmers)

    def confirm(self, node: bytes) -> bool:
        """Count ``node``'s confirmation. True if it is new (and so worth re-gossiping)."""
        if node == self.accuser or node in self.confirmers:
            return False
        if len(self.confirmers) >= self.k:
            return False  # already at the minimum; more changes nothing
        self.confirmers.add(node)
        return True

    def deadline(self) -> float:
        """Absolute time at which the member is declared dead, unless refuted before."""
        offset = suspicion_deadline_offset(len(self.confirmers), self.k, self.min_timeout,
                                           self.max_timeout)
        return self.start + offset + self.extra
