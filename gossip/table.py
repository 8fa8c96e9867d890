"""MemberTable: one node's view of the mesh, with cheap sampling and a probe order.

It owns the members dict and the structures kept in step with it:

* a list of ids for random sampling, so relays and gossip targets are picked in O(k),
  not O(N) (memberlist's ``kRandomNodes`` scans). Reaped ids are left in it and skipped,
  and the list is rebuilt once half of it is stale: O(1) amortised, no per-member index;
* the **probe order**: a shuffled list walked round-robin and reshuffled at the end
  (SWIM §4.3 "round-robin probe target selection": every member is probed within one
  pass, bounding the detection time). A new member is inserted at a random place in the
  part not yet walked, so it is probed in the current pass;
* side tables for the rare extras: membership proofs (while the table needs them) and
  the signatures of leaves.

Counts per state are maintained on every transition, so ``live_count`` (the N of the
formulas) costs nothing. All state changes go through :meth:`set_state`.
"""

from __future__ import annotations

import random

from gossip.member import Member, MemberState

SCAN_BELOW = 64
"""Tables this small are sampled by a scan (exact); larger ones by random probing."""


class MemberTable:
    def __init__(self, rng: random.Random) -> None:
        self.random = rng
        self.members: dict[bytes, Member] = {}
        self.proofs: dict[bytes, bytes] = {}
        """Membership proofs (certificate bytes) by node id, for push-pull and relays."""
        self.leave_signatures: dict[bytes, bytes] = {}
        """Signed leaves of LEFT members, so a push-pull can carry them."""
        self._ids: list[bytes] = []
        self._stale = 0
        self._probe: list[bytes] = []
        self._probe_next = 0
        self.counts: dict[MemberState, int] = dict.fromkeys(MemberState, 0)

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self.members

    def get(self, node_id: bytes) -> Member | None:
        return self.members.get(node_id)

    @property
    def live_count(self) -> int:
        """ALIVE + SUSPECT members, this node included: the N of the formulas."""
        return self.counts[MemberState.ALIVE] + self.counts[MemberState.SUSPECT]

    def add(self, member: Member, proof: bytes = b"") -> None:
        node_id = member.node_id
        if node_id in self.members:
            raise ValueError("member already in the table")
        self.members[node_id] = member
        if proof:
            self.proofs[node_id] = proof
        self._ids.append(node_id)
        self.counts[member.state] += 1
        probe = self._probe
        probe.append(node_id)
        j = self.random.randint(min(self._probe_next, len(probe) - 1), len(probe) - 1)
        probe[j], probe[-1] = probe[-1], probe[j]

    def remove(self, node_id: bytes) -> Member | None:
        member = self.members.pop(node_id, None)
        if member is None:
            return None
        self.counts[member.state] -= 1
        self.proofs.pop(node_id, None)
        self.leave_signatures.pop(node_id, None)
        self._stale += 1
        if self._stale * 2 > len(self._ids):
            self._ids = list(self.members)
            self._stale = 0
        return member  # the probe order forgets it at the next reshuffle

    def set_state(self, member: Member, state: MemberState, incarnation: int,
                  now: float) -> None:
        self.counts[member.state] -= 1
        member.set_state(state, incarnation, now)
        self.counts[state] += 1

    # --- selection ------------------------------------------------------------------------

    def next_probe_target(self, self_id: bytes) -> bytes | None:
        """The next ALIVE or SUSPECT member in probe order, or None if there is none."""
        for _ in range(2):
            probe = self._probe
            while self._probe_next < len(probe):
                node_id = probe[self._probe_next]
                self._probe_next += 1
                member = self.members.get(node_id)
                if member is not None and node_id != self_id and not member.state.gone:
                    return node_id
            self._reshuffle(self_id)
        return None

    def _reshuffle(self, self_id: bytes) -> None:
        self._probe = [i for i, m in self.members.items()
                       if i != self_id and not m.state.gone]
        self.random.shuffle(self._probe)
        self._probe_next = 0

    def random_members(self, k: int, exclude: tuple[bytes, ...], *,
                       dead_since: float | None = None) -> list[bytes]:
        """Up to ``k`` distinct random members that are ALIVE or SUSPECT (or DEAD since
        ``dead_since``, when given), none of them in ``exclude``."""
        if k <= 0:
            return []
        ids = self._ids
        n = len(ids)
        if len(self.members) <= SCAN_BELOW:
            candidates = [i for i in self.members if self._eligible(i, exclude, dead_since)]
            if len(candidates) <= k:
                self.random.shuffle(candidates)
                return candidates
            return self.random.sample(candidates, k)
        chosen: list[bytes] = []
        for _ in range(4 * k + 8):
            node_id = ids[self.random.randrange(n)]
            if node_id not in chosen and self._eligible(node_id, exclude, dead_since):
                chosen.append(node_id)
                if len(chosen) == k:
                    return chosen
        # Mostly dead or excluded members: fall back to an exact scan (rare).
        candidates = [i for i in self.members
                      if i not in chosen and self._eligible(i, exclude, dead_since)]
        extra = min(k - len(chosen), len(candidates))
        return chosen + self.random.sample(candidates, extra)

    def random_dead(self, k: int = 1) -> list[bytes]:
        """Up to ``k`` distinct random DEAD members (not LEFT: they said goodbye)."""
        if not self.counts[MemberState.DEAD] or k <= 0:
            return []
        ids = self._ids
        chosen: list[bytes] = []
        for _ in range(16 * k):
            node_id = ids[self.random.randrange(len(ids))]
            member = self.members.get(node_id)
            if (member is not None and member.state is MemberState.DEAD
                    and node_id not in chosen):
                chosen.append(node_id)
                if len(chosen) == k:
                    return chosen
        rest = [i for i, m in self.members.items()
                if m.state is MemberState.DEAD and i not in chosen]
        return chosen + self.random.sample(rest, min(k - len(chosen), len(rest)))

    def _eligible(self, node_id: bytes, exclude: tuple[bytes, ...],
                  dead_since: float | None) -> bool:
        if node_id in exclude:
            return False
        member = self.members.get(node_id)
        if member is None:
            return False  # reaped, still in the sampling list
        state = member.state
        if state is MemberState.ALIVE or state is MemberState.SUSPECT:
            return True
        return (dead_since is not None and state is MemberState.DEAD
                and member.changed_at >= dead_since)
