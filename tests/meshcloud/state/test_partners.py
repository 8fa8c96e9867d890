"""Anti-entropy partners: a connected peer it did not sync with lately, mostly."""

from __future__ import annotations

import random

import pytest

from meshcloud.state.config import StateConfig
from meshcloud.state.core import StateCore
from meshcloud.state.kv import MemoryKv
from meshcloud.state.outputs import StartSync
from meshcloud.state.tables import NODES

IDS = [bytes([i]) * 32 for i in range(20)]


def partners(core: StateCore, rounds: int, before_each=None) -> list[bytes]:
    """Run ``rounds`` anti-entropy rounds (each session closed at once)."""
    out: list[bytes] = []
    now = 0.0
    core.on_timer(now)  # the worker's first run picks its phase
    for _ in range(20 * rounds):
        if len(out) == rounds:
            break
        now = core.next_deadline()
        assert now is not None
        if before_each is not None:
            before_each(now)
        for o in core.on_timer(now):
            if isinstance(o, StartSync):
                out.append(o.session.peer)
                core.on_sync_closed(o.session, now)
    return out


def make(connected: list[bytes] | None, explore: float) -> StateCore:
    core = StateCore(IDS[0], MemoryKv(), lambda: IDS, rng=random.Random(3),
                     config=StateConfig(sync_explore=explore),
                     connected=(lambda: connected) if connected is not None else None)
    core.open_table(NODES)
    return core


def test_anti_entropy_prefers_connected_peers_it_did_not_just_sync_with():
    held = [IDS[4], IDS[7]]
    chosen = partners(make(held, 0.0), 100)
    # both are fresh unless the last two rounds came within 30 s: then a draw from all
    assert len(chosen) == 100 and sum(p in held for p in chosen) >= 80
    # 4 ran a session with us (we served it) just before each round: it is not fresh
    core = make(held, 0.0)
    peer = StateCore(IDS[4], MemoryKv(), lambda: IDS)
    peer.open_table(NODES)

    def served_one(now: float) -> None:
        hello = peer.start_sync(IDS[0], now - 1.0).next_request()
        core.on_sync_request(IDS[4], hello, now - 1.0)
    served = partners(core, 60, served_one)
    # 7 whenever our last session with it is older than 30 s, else a draw from all
    assert served.count(IDS[7]) >= 36 and served.count(IDS[4]) <= 6


def test_anti_entropy_without_connections_or_exploring_reaches_everyone():
    assert len(set(partners(make(None, 0.25), 300))) == 19  # the old uniform rule
    assert len(set(partners(make([], 0.25), 300))) == 19
    chosen = partners(make([IDS[4]], 0.25), 400)
    assert len(set(chosen)) == 19
    # 4 is fresh whenever the last session with it is older than sync_interval (rounds
    # are 15-45 s apart): about two rounds in three go to it
    assert 0.4 < chosen.count(IDS[4]) / len(chosen) < 0.8


def test_sync_explore_out_of_range_is_refused():
    with pytest.raises(ValueError):
        StateConfig(sync_explore=2.0)
