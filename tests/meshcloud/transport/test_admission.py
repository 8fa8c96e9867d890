"""HandshakeSlots: the bounds hold under any sequence of events, and a flood of silent
sockets from one address only ever sheds its own kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshcloud.transport.admission import HandshakeSlots

SOURCES = ["10.0.0.1", "10.0.0.2", "127.0.0.1"]


def slots(**kw) -> HandshakeSlots:
    limits = {"total": 4, "per_source": 2, "silent_total": 6, "silent_per_source": 3} | kw
    return HandshakeSlots(**limits)


def test_limits_are_checked():
    with pytest.raises(ValueError):
        slots(per_source=5)
    with pytest.raises(ValueError):
        slots(silent_per_source=0)
    table = slots()
    table.admit(1, "a")
    with pytest.raises(ValueError):
        table.admit(1, "a")


def test_a_newcomer_sheds_the_oldest_silent_socket_of_its_own_address():
    table = slots()
    for key in (1, 2, 3):
        assert table.admit(key, "flood") == []
    assert table.admit(4, "member") == []  # another address: no shedding
    assert table.admit(5, "flood") == [1]  # the flood's own oldest
    assert table.admit(6, "flood") == [2]
    assert table.count("flood", silent=True) == 3 and table.count("member", silent=True) == 1


def test_a_socket_whose_first_bytes_wait_is_shed_last():
    table = slots()
    for key in (1, 2, 3):
        table.admit(key, "a")
    assert table.admit(4, "a", ready=lambda key: key in (1, 2)) == [3]
    assert table.admit(5, "a", ready=lambda key: True) == [1]  # nobody else to shed


def test_promoted_sockets_are_never_shed_and_the_active_pool_is_bounded():
    table = slots()
    for key in (1, 2, 3):
        table.admit(key, "a")
    assert table.promote(1) and table.promote(2)
    assert not table.promote(3)  # a's active share (2) is full
    assert table.admit(4, "a") == [] and table.admit(5, "a") == []  # 3 silent now
    assert table.admit(6, "a") == [3]  # 1 and 2 are active: not candidates
    assert table.promote(1)  # promoting twice is harmless
    table.release(1)
    assert table.promote(4)
    assert not table.promote(99)


def test_a_full_table_sheds_the_busiest_address():
    table = slots()
    for key, source in enumerate(["a", "a", "a", "b", "b", "c"], start=1):
        table.admit(key, source)
    assert table.silent == 6
    assert table.admit(7, "d") == [1]
    assert table.count("d", silent=True) == 1


class SlotsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = slots()
        self.next_key = 1
        self.live: dict[int, str] = {}  # key -> source, as the driver sees it
        self.promoted: set[int] = set()

    @rule(source=st.sampled_from(SOURCES), ready=st.sets(st.integers(1, 60)))
    def admit(self, source, ready):
        key = self.next_key
        self.next_key += 1
        shed = self.table.admit(key, source, ready=lambda k: k in ready)
        for victim in shed:
            assert victim in self.live and victim not in self.promoted
            assert self.live[victim] == source or self.table.silent == self.table.silent_total
            del self.live[victim]
        self.live[key] = source

    @rule(data=st.data())
    def promote(self, data):
        if not self.live:
            return
        key = data.draw(st.sampled_from(sorted(self.live)))
        if self.table.promote(key):
            self.promoted.add(key)

    @rule(data=st.data())
    def release(self, data):
        if not self.live:
            return
        key = data.draw(st.sampled_from(sorted(self.live)))
        self.table.release(key)
        del self.live[key]
        self.promoted.discard(key)

    @invariant()
    def bounds_hold(self):
        table = self.table
        assert len(table) == len(self.live)
        assert table.active == len(self.promoted) <= table.total
        assert table.silent <= table.silent_total
        for source in SOURCES:
            assert table.count(source, silent=True) <= table.silent_per_source
            assert table.count(source, silent=False) <= table.per_source


TestSlotsMachine = SlotsMachine.TestCase


@given(st.lists(st.sampled_from(SOURCES), max_size=80))
def test_any_arrival_order_keeps_every_address_within_its_share(sources):
    table = slots()
    for key, source in enumerate(sources):
        table.admit(key, source)
        assert all(table.count(s, silent=True) <= 3 for s in SOURCES)
        assert table.silent <= 6
