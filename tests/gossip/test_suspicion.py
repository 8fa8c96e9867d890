from __future__ import annotations

import math

import pytest

from gossip.suspicion import Suspicion

A, B, C, D, E = (bytes([i]) * 32 for i in range(1, 6))


def make(k: int = 3, start: float = 10.0) -> Suspicion:
    return Suspicion(b"x" * 32, 4, A, start=start, k=k, min_timeout=2.0, max_timeout=30.0)


def test_starts_at_max_timeout():
    assert make().deadline() == 40.0


def test_accuser_never_confirms_its_own_suspicion():
    s = make()
    assert not s.confirm(A)
    assert s.confirmations == 0 and s.deadline() == 40.0


def test_distinct_confirmations_shrink_the_timeout_to_min():
    s = make()
    assert s.confirm(B)
    assert s.deadline() == pytest.approx(10.0 + 30.0 - 28.0 * math.log(2) / math.log(4))
    assert not s.confirm(B)  # the same node twice counts once
    assert s.confirm(C) and s.confirm(D)
    assert s.confirmed and s.deadline() == 12.0
    assert not s.confirm(E)  # past k: nothing changes, nothing to re-gossip
    assert s.deadline() == 12.0


def test_zero_k_means_min_at_once_but_never_confirmed():
    # nobody else can confirm (two nodes): the minimum applies, then a last check decides
    s = make(k=0)
    assert not s.confirmed and s.deadline() == 12.0
    assert not s.confirm(b"other") or not s.confirmed


def test_restart_gives_a_full_timeout_again():
    s = make()
    s.checking = True
    s.restart(50.0)
    assert not s.checking and s.deadline() == 80.0


def test_min_above_max_is_refused():
    with pytest.raises(ValueError):
        Suspicion(b"x", 1, A, start=0, k=3, min_timeout=5.0, max_timeout=1.0)
