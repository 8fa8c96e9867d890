"""Awareness: the local health score of Lifeguard (LHA-Probe).

A node that is itself slow (overloaded CPU, a phone's radio asleep, a saturated link)
misses acks and blames its peers: in plain SWIM it floods the mesh with false suspicions.
Lifeguard (Dadgar et al. 2018, §4.1) keeps a *health score* in ``[0, max)``, raised by
evidence that the fault is local and lowered by evidence that all is well, and stretches
the probe interval and probe timeout by ``score + 1``. The core applies these deltas
(memberlist ``awareness.go`` does the same):

* +1 for every nack that an indirect probe should have produced but did not (the
  intermediaries could not even reach *us* in time), or +1 if a probe failed with no
  intermediary to ask;
* +1 when we must refute a suspicion about ourselves (others cannot hear us);
* -1 for every probe answered directly within its timeout.

Pure: no clock, no I/O. Invariant: ``0 <= score < max_multiplier``.
"""

from __future__ import annotations

from gossip.formulas import scale_by_health


class Awareness:
    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("awareness needs max_multiplier >= 1")
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> int:
        """Move the score by ``delta``, clamped to ``[0, max_multiplier - 1]``."""
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)
        return self.score

    def scale(self, value: float) -> float:
        """``value`` stretched by the current score."""
        return scale_by_health(value, self.score)

    @property
    def healthy(self) -> bool:
        return self.score == 0
