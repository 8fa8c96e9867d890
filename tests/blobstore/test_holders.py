from __future__ import annotations

import pytest

from blobstore.errors import NotEnoughHolders
from blobstore.holders import RendezvousHolders, assign_holders, placement_key
from tests.blobstore.fakes import node

NODES = [node(i) for i in range(1, 21)]


def test_picks_are_distinct_deterministic_and_respect_exclude():
    picker = RendezvousHolders(NODES)
    key = placement_key(b"obj", 3)
    first = picker.pick(key, 6)
    assert len(set(first)) == 6
    assert RendezvousHolders(reversed(NODES)).pick(key, 6) == first  # order-independent
    assert picker.pick(key, 6, exclude=first[:2]) == picker.pick(key, 8)[2:8]


def test_removing_a_node_only_moves_its_own_keys():
    picker = RendezvousHolders(NODES)
    smaller = RendezvousHolders(NODES[1:])
    moved = 0
    for i in range(300):
        key = placement_key(b"o", i)
        before, after = picker.pick(key, 1)[0], smaller.pick(key, 1)[0]
        if before != NODES[0]:
            assert before == after
        else:
            moved += 1
    assert 0 < moved < 40  # about 1/20 of the keys


def test_assign_needs_enough_nodes():
    with pytest.raises(NotEnoughHolders):
        assign_holders(RendezvousHolders(NODES[:3]), b"k", 6)
    assert len(assign_holders(RendezvousHolders(NODES), b"k", 6, spares=3)) == 9
