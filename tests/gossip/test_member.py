"""The incarnation precedence table of gossip.member, case by case."""

from __future__ import annotations

import pytest

from gossip.capacity import Capacity
from gossip.member import (
    Member,
    MemberState,
    alive_overrides,
    dead_overrides,
    refutation_incarnation,
    refutes,
    suspect_confirms,
    suspect_overrides,
)
from gossip.messages import Alive

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)


@pytest.mark.parametrize(("state", "current", "inc", "expected"), [
    (None, 0, 0, True),  # unknown node: any Alive is news
    (ALIVE, 3, 4, True), (ALIVE, 3, 3, False), (ALIVE, 3, 2, False),
    (SUSPECT, 3, 4, True), (SUSPECT, 3, 3, False),  # refuting needs a higher incarnation
    (DEAD, 3, 4, True), (DEAD, 3, 3, False),
    (LEFT, 3, 4, True), (LEFT, 3, 3, False),
])
def test_alive_overrides(state, current, inc, expected):
    assert alive_overrides(state, current, inc) is expected


@pytest.mark.parametrize(("state", "current", "inc", "expected"), [
    (None, 0, 5, False),  # unknown: nothing to suspect
    (ALIVE, 3, 3, True), (ALIVE, 3, 4, True), (ALIVE, 3, 2, False),
    (SUSPECT, 3, 3, False), (SUSPECT, 3, 4, True), (SUSPECT, 3, 2, False),
    (DEAD, 3, 9, False), (LEFT, 3, 9, False),
])
def test_suspect_overrides(state, current, inc, expected):
    assert suspect_overrides(state, current, inc) is expected


@pytest.mark.parametrize(("state", "current", "inc", "expected"), [
    (SUSPECT, 3, 3, True), (SUSPECT, 3, 4, False), (ALIVE, 3, 3, False), (None, 0, 0, False),
])
def test_suspect_confirms(state, current, inc, expected):
    assert suspect_confirms(state, current, inc) is expected


@pytest.mark.parametrize(("state", "current", "inc", "expected"), [
    (ALIVE, 3, 3, True), (ALIVE, 3, 2, False), (SUSPECT, 3, 3, True), (SUSPECT, 3, 5, True),
    (SUSPECT, 3, 2, False), (DEAD, 3, 9, False), (LEFT, 3, 9, False), (None, 0, 0, False),
])
def test_dead_overrides(state, current, inc, expected):
    assert dead_overrides(state, current, inc) is expected


@pytest.mark.parametrize(("own", "accused", "must", "new"), [
    (0, 0, True, 1), (5, 5, True, 6), (5, 9, True, 10), (5, 4, False, 6),
])
def test_refutation(own, accused, must, new):
    assert refutes(own, accused) is must
    assert refutation_incarnation(own, accused) == new


def test_member_incarnation_never_goes_backwards():
    alive = Alive(node=b"n" * 32, incarnation=4, addresses=(), capacity=Capacity(),
                  public_key=b"", signature=b"")
    m = Member(alive, now=1.0)
    m.set_state(SUSPECT, 5, 2.0)
    assert (m.state, m.incarnation, m.changed_at) == (SUSPECT, 5, 2.0)
    with pytest.raises(ValueError):
        m.set_state(ALIVE, 4, 3.0)
    assert m.info().node_id == b"n" * 32 and m.info().incarnation == 5


def test_gone_states():
    assert DEAD.gone and LEFT.gone and not ALIVE.gone and not SUSPECT.gone
