"""Leases for singletons: at most one node runs a singleton replica, even when views differ.

A singleton (a database primary, a Spark master) must never run twice. Placement alone
cannot promise that: two nodes with different views of who is alive can both believe they
rank first. So the would-be holder asks the workload's **granters** — the top
:data:`GRANTERS` nodes for that workload by rendezvous hash over *all* known members, alive
or not, so that the set does not move when a node merely looks dead — for a lease, and
runs the singleton only while a **majority** of them have granted it.

Safety argument (the invariant tests check):

* a granter grants a workload to one holder at a time, until ``received + duration``;
* the holder counts its lease from *before* it sent the request: it believes it holds the
  lease until ``sent + duration × (1 − drift) − margin``, which is earlier than any
  granter's expiry;
* two majorities of the same granter set intersect, so while one holder believes it holds
  the lease, a majority still refuses everyone else.

A holder that cannot renew (partitioned, frozen) stops the singleton by its own deadline,
before any granter would accept another holder. Each new lease has a higher **term**, the
fencing token written into the replica's claim and the runtime's labels, so a late write
by a deposed holder can be recognised and refused.

Granters refuse a request whose granter set differs from their own (their views of the
membership differ); the holder retries when views agree. Known limit: if the set changes
(a node added or removed that ranks in the top five for this workload) *during* a partition,
two disjoint majorities are possible in theory; a membership change is rare and is an
admin act, and the window closes once the change has spread.

Sans-IO: :class:`GranterCore` and :class:`HolderCore` take ``now`` (monotonic seconds) and
return messages; the reconciler's driver sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

GRANTERS = 5
"""Granters per singleton: any 3 can grant, so 2 may be down or cut off."""

LEASE_DURATION = 10.0
"""Seconds a grant lasts. A deposed holder stops within this; so does failover."""

RENEW_EVERY = 3.0
"""Seconds between renewals: three tries before the lease would run out."""

DRIFT = 0.01
"""Clock rate error we tolerate between nodes (1 %: far above real quartz drift)."""

MARGIN = 1.0
"""Seconds the holder stops early, for scheduling delays between deciding and acting."""


@message(TagBlock.APPS + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRequest:
    workload: str
    holder: bytes
    term: int
    duration_ms: int
    granters: tuple[bytes, ...]
    request_id: int


@message(TagBlock.APPS + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseReply:
    workload: str
    granted: bool
    term: int
    request_id: int
    holder: bytes | None = None
    """Who holds the grant now (when refused)."""
    highest_term: int = 0
    reason: str = ""


@message(TagBlock.APPS + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRelease:
    workload: str
    holder: bytes
    term: int


@dataclass
class Grant:
    holder: bytes
    term: int
    expires: float


class GranterCore:
    """The granting side: one per node, for every singleton it is a granter of."""

    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.grants: dict[str, Grant] = {}
        self.highest_term: dict[str, int] = {}

    def on_request(self, request: LeaseRequest, my_granters: tuple[bytes, ...],
                   now: float) -> LeaseReply:
        def refuse(reason: str, holder: bytes | None = None) -> LeaseReply:
            return LeaseReply(workload=request.workload, granted=False, term=request.term,
                              request_id=request.request_id, holder=holder,
                              highest_term=self.highest_term.get(request.workload, 0),
                              reason=reason)

        if self.node_id not in my_granters:
            return refuse("not a granter of this workload")
        if tuple(request.granters) != tuple(my_granters):
            return refuse("granter sets differ (membership views disagree)")
        if request.duration_ms <= 0 or request.duration_ms > 120_000:
            return refuse("lease duration out of range")
        current = self.grants.get(request.workload)
        if current is not None and current.expires > now and current.holder != request.holder:
            return refuse("held by another node", current.holder)
        highest = self.highest_term.get(request.workload, 0)
        if request.term < highest or (current is not None and current.expires > now
                                      and request.term < current.term):
            return refuse("term is stale")
        self.grants[request.workload] = Grant(request.holder, request.term,
                                              now + request.duration_ms / 1000)
        self.highest_term[request.workload] = max(highest, request.term)
        return LeaseReply(workload=request.workload, granted=True, term=request.term,
                          request_id=request.request_id, highest_term=request.term)

    def on_release(self, release: LeaseRelease) -> None:
        current = self.grants.get(release.workload)
        if current is not None and current.holder == release.holder and \
                current.term == release.term:
            del self.grants[release.workload]


@dataclass
class _Attempt:
    request_id: int
    term: int
    sent: float
    granters: tuple[bytes, ...]
    granted: set[bytes] = field(default_factory=set)
    refused: set[bytes] = field(default_factory=set)


@dataclass
class HeldLease:
    term: int
    valid_until: float


class HolderCore:
    """The would-be holder's side: one per node, for every singleton it should run."""

    def __init__(self, node_id: bytes, *, duration: float = LEASE_DURATION) -> None:
        self.node_id = node_id
        self.duration = duration
        self.held: dict[str, HeldLease] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._terms: dict[str, int] = {}
        self._next_id = 0

    def holds(self, workload: str, now: float) -> HeldLease | None:
        lease = self.held.get(workload)
        if lease is not None and lease.valid_until > now:
            return lease
        return None

    def observe_term(self, workload: str, term: int) -> None:
        """A term seen elsewhere (the claim of the last holder): the next new lease asks
        for a higher one at once instead of learning it from refusals."""
        if term > self._terms.get(workload, 0):
            self._terms[workload] = term

    def known_term(self, workload: str) -> int:
        """The highest term this holder knows of for ``workload`` (0: none)."""
        return self._terms.get(workload, 0)

    def request(self, workload: str, granters: tuple[bytes, ...], now: float
                ) -> list[tuple[bytes, LeaseRequest]]:
        """Start (or renew) a lease; returns (granter, request) pairs to send."""
        held = self.holds(workload, now)
        known = self._terms.get(workload, 0)
        # renew with the held term; move to a new one when refusals taught of a higher
        # term (granters refuse stale terms forever, so keeping the old one would lose the
        # lease): the holder is the same, so the new term only raises its fencing token
        term = held.term if held is not None and held.term >= known else known + 1
        self._terms[workload] = max(self._terms.get(workload, 0), term)
        self._next_id += 1
        attempt = _Attempt(self._next_id, term, now, tuple(granters))
        self._attempts[workload] = attempt
        request = LeaseRequest(workload=workload, holder=self.node_id, term=term,
                               duration_ms=int(self.duration * 1000), granters=tuple(granters),
                               request_id=attempt.request_id)
        return [(granter, request) for granter in granters]

    def on_reply(self, granter: bytes, reply: LeaseReply, now: float) -> HeldLease | None:
        """Count a reply; returns the lease once a majority has granted this attempt."""
        attempt = self._attempts.get(reply.workload)
        if attempt is None or reply.request_id != attempt.request_id or \
                granter not in attempt.granters:
            return None
        if reply.highest_term > self._terms.get(reply.workload, 0):
            self._terms[reply.workload] = reply.highest_term
        if reply.granted:
            attempt.granted.add(granter)
        else:
            attempt.refused.add(granter)
        if len(attempt.granted) * 2 > len(attempt.granters):
            valid = attempt.sent + self.duration * (1 - DRIFT) - MARGIN
            lease = HeldLease(attempt.term, valid)
            current = self.held.get(reply.workload)
            if current is None or current.term != attempt.term or current.valid_until < valid:
                self.held[reply.workload] = lease
            return self.held[reply.workload]
        return None

    def release(self, workload: str) -> list[tuple[bytes, LeaseRelease]]:
        lease = self.held.pop(workload, None)
        attempt = self._attempts.pop(workload, None)
        if lease is None or attempt is None:
            return []
        message = LeaseRelease(workload=workload, holder=self.node_id, term=lease.term)
        return [(granter, message) for granter in attempt.granters]
