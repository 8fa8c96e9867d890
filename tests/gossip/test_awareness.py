from __future__ import annotations

import pytest

from gossip.awareness import Awareness


def test_score_is_clamped_to_zero_and_below_max():
    awareness = Awareness(8)
    assert awareness.apply_delta(-1) == 0
    assert awareness.apply_delta(3) == 3
    assert awareness.apply_delta(100) == 7
    assert awareness.apply_delta(-2) == 5
    assert not awareness.healthy


def test_scale_stretches_by_score_plus_one():
    awareness = Awareness(8)
    assert awareness.scale(0.5) == 0.5
    awareness.apply_delta(2)
    assert awareness.scale(0.5) == pytest.approx(1.5)


def test_max_multiplier_one_never_stretches():
    awareness = Awareness(1)
    awareness.apply_delta(5)
    assert awareness.score == 0 and awareness.scale(1.0) == 1.0


def test_invalid_max_is_refused():
    with pytest.raises(ValueError):
        Awareness(0)
