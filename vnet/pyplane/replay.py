"""The sliding replay window of one receiving key.

A counter is accepted once, if it is newer than the newest seen or at most ``size - 1``
behind it; duplicates and older counters are refused. :meth:`ReplayWindow.check` does not
change the window: the caller authenticates the packet first and only then
:meth:`ReplayWindow.mark` s it, so a forged packet cannot move the window.
"""

from __future__ import annotations

DEFAULT_SIZE = 2048


class ReplayWindow:
    __slots__ = ("_bits", "_mask", "greatest", "size")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("the replay window holds at least one counter")
        self.size = size
        self.greatest = -1
        """The newest counter accepted (-1: none yet)."""
        self._bits = 0  # bit i: counter greatest - i was seen
        self._mask = (1 << size) - 1

    def check(self, counter: int) -> bool:
        """True if ``counter`` may be accepted (not seen, not too old)."""
        if counter < 0:
            return False
        if counter > self.greatest:
            return True
        behind = self.greatest - counter
        if behind >= self.size:
            return False
        return not (self._bits >> behind) & 1

    def mark(self, counter: int) -> None:
        """Record ``counter`` as seen (after :meth:`check` said yes and it authenticated)."""
        if counter > self.greatest:
            shift = counter - self.greatest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.greatest = counter
        else:
            self._bits |= 1 << (self.greatest - counter)

    def accept(self, counter: int) -> bool:
        """check + mark in one call (for counters that need no authentication)."""
        if not self.check(counter):
            return False
        self.mark(counter)
        return True
