"""Choosing a periodic sync's partner so that an idle mesh dials little.

A periodic sync (membership's push-pull, the state store's anti-entropy) is a stream, so
a partner without an open connection costs a dial first: a Noise handshake with two
certificates, ~2 KB on the wire, more than the sync itself when the two agree. With
partners drawn uniformly from N members and connections closed after 30 s unused, nearly
every sync of a large mesh dials.

The rule (:func:`prefer_connected`): a sync goes to a member we already hold a connection
to, **with which this service has not exchanged within its sync period**
(:class:`RecentPartners`: syncs we started and syncs we served), if there is one; a share
``explore`` of the syncs, and every sync without such a member, draws its partner
uniformly from all (the old rule).

Why the freshness condition: a connection exists because some stream used it in the last
30 s. Had this service itself just synced over it, syncing again would exchange nothing
new, and preferring it would let the syncs circle inside small groups of connected nodes
(anti-entropy then spreads news about twice as slowly: tests/gossip/test_partners.py).
Excluding them leaves mostly connections another service opened to a partner *it* drew
uniformly (membership's push-pull and the state store's anti-entropy each run about every
30 s), so each service's partners stay about as random as before, while one handshake
serves both; the ``explore`` share keeps every member within reach even if a node's
connections always went to the same few peers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T", bytes, str)

EXPLORE = 0.25
"""Default share of syncs whose partner is drawn from all candidates."""


class RecentPartners:
    """When this service last synced with each peer (either side started it)."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[bytes, float] = {}

    def note(self, peer: bytes, now: float) -> None:
        self._at[peer] = now

    def fresh(self, peer: bytes, now: float, period: float) -> bool:
        """Not synced with ``peer`` within the last ``period`` seconds."""
        at = self._at.get(peer)
        return at is None or now - at >= period

    def prune(self, now: float, period: float) -> None:
        """Forget syncs older than ``period`` (they no longer matter)."""
        self._at = {p: t for p, t in self._at.items() if now - t < period}

    def __len__(self) -> int:
        return len(self._at)


def check_explore(explore: float) -> None:
    if not 0.0 <= explore <= 1.0:
        raise ValueError("explore must be within [0, 1]")


def prefer_connected(connected: Iterable[T], eligible: Callable[[T], bool],
                     rng: random.Random, explore: float = EXPLORE) -> T | None:
    """With probability ``1 - explore``, one of the ``connected`` peers that are
    ``eligible`` (uniformly; None if there is none); otherwise None. On None the caller
    draws its partner uniformly among all candidates, as it would without connections.

    ``connected`` is sorted here, so that a seeded ``rng`` repeats its choices."""
    check_explore(explore)
    if rng.random() < explore:
        return None
    held = sorted(p for p in connected if eligible(p))
    return rng.choice(held) if held else None


def choose_partner(candidates: list[T], connected: Iterable[T], rng: random.Random,
                   explore: float = EXPLORE) -> T | None:
    """A partner among ``candidates`` (None if there are none): a connected one with
    probability ``1 - explore`` if there is one, else any one, uniformly."""
    if not candidates:
        return None
    members = set(candidates)
    held = prefer_connected(connected, members.__contains__, rng, explore)
    return held if held is not None else rng.choice(candidates)
