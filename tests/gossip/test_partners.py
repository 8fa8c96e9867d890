"""Sync partners chosen among connected members first (gossip.partners).

The property tests pin the rule; the model below checks what it is for: periodic syncs
over connections that close after 30 s unused dial far less, and news that only syncs
carry still reaches every node about as fast as with uniformly random partners.
"""

from __future__ import annotations

import heapq
import random
import statistics
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import fake_hooks
from gossip.outputs import Sync
from gossip.partners import EXPLORE, RecentPartners, choose_partner, prefer_connected
from meshcloud.errors import ConfigError
from sim.swimmesh import sim_node_id

ids = st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=30, unique=True)


@settings(max_examples=200, deadline=None)
@given(candidates=ids, connected=ids, seed=st.integers(0, 2**32),
       explore=st.floats(0.0, 1.0))
def test_the_partner_is_always_a_candidate(candidates, connected, seed, explore):
    partner = choose_partner(sorted(candidates), connected, random.Random(seed), explore)
    assert partner in candidates


@settings(max_examples=200, deadline=None)
@given(candidates=ids, connected=ids, seed=st.integers(0, 2**32))
def test_without_exploring_a_connected_candidate_is_chosen_when_there_is_one(
        candidates, connected, seed):
    partner = choose_partner(sorted(candidates), connected, random.Random(seed), 0.0)
    if set(candidates) & set(connected):
        assert partner in connected
    else:
        assert partner in candidates


@settings(max_examples=100, deadline=None)
@given(connected=ids, seed=st.integers(0, 2**32))
def test_prefer_connected_returns_only_eligible_peers(connected, seed):
    allowed = set(connected[::2])
    held = prefer_connected(connected, allowed.__contains__, random.Random(seed), 0.0)
    assert held in allowed if allowed else held is None


def test_the_explored_share_is_uniform_over_all_candidates():
    rng = random.Random(7)
    candidates = [bytes([i]) for i in range(10)]
    connected = candidates[:2]
    picks = [choose_partner(candidates, connected, rng) for _ in range(20_000)]
    unconnected = sum(p not in connected for p in picks) / len(picks)
    assert unconnected == pytest.approx(EXPLORE * 0.8, abs=0.02)  # 8 of 10 when exploring


def test_the_choice_repeats_with_a_seed_whatever_the_order_of_connected():
    candidates = [bytes([i]) for i in range(20)]
    connected = [bytes([i]) for i in (3, 9, 14, 17)]
    a = [choose_partner(candidates, connected, r) for r in [random.Random(1)] for _ in range(50)]
    b = [choose_partner(candidates, connected[::-1], r) for r in [random.Random(1)]
         for _ in range(50)]
    assert a == b


def test_explore_out_of_range_is_refused():
    with pytest.raises(ValueError):
        choose_partner([b"a"], [b"a"], random.Random(0), 1.5)


# --- a model of periodic syncs over an idle-closing connection pool -------------------------

def run_syncs(n: int, rule: str, seed: int, *, intervals: tuple[float, ...] = (30.0, 30.0),
              idle: float = 30.0, horizon: float = 900.0, news_at: float = 300.0,
              explore: float = EXPLORE) -> tuple[float, list[float]]:
    """``n`` nodes run one periodic sync per service (membership's push-pull, the state
    store's anti-entropy), each every ``intervals[s]`` (±50 %) with one partner, over a
    connection both ends share and which closes after ``idle`` seconds unused; a sync
    to an unconnected partner dials first. At ``news_at`` node 0 learns one piece of news
    per service, which travels only by that service's syncs (both ways).

    ``rule``: "uniform" (the old rule), "fresh" (the agent's: a connected partner this
    service did not sync with within its period, :class:`RecentPartners`), "connected"
    (any connected partner). Returns (dials per node per second before the news, per
    service the seconds until every node had its news, -1 if some never did)."""
    rng = random.Random(seed)
    last_used: list[dict[int, float]] = [{} for _ in range(n)]  # per node: peer -> time
    recent = [[RecentPartners() for _ in range(n)] for _ in intervals]
    timers = [(period * rng.random(), node, s)
              for s, period in enumerate(intervals) for node in range(n)]
    heapq.heapify(timers)
    knows = [[False] * n for _ in intervals]
    everyone_at = [-1.0] * len(intervals)
    dials = 0
    while timers:
        now, node, s = heapq.heappop(timers)
        if now > horizon:
            break
        if now >= news_at:
            for k in knows:
                k[0] = True
        period = intervals[s]
        mine = recent[s][node]
        connected = [p for p, t in last_used[node].items() if now - t < idle]
        partner = None
        if rule == "fresh":
            partner = prefer_connected([bytes([p]) for p in connected],
                                       partial(mine.fresh, now=now, period=period), rng,
                                       explore)
        elif rule == "connected":
            partner = prefer_connected([bytes([p]) for p in connected], lambda p: True, rng,
                                       explore)
        other = partner[0] if partner is not None else rng.choice(
            [p for p in range(n) if p != node])
        if other not in connected and now < news_at:
            dials += 1
        last_used[node][other] = last_used[other][node] = now
        mine.note(bytes([other]), now)
        recent[s][other].note(bytes([node]), now)  # the partner served it
        k = knows[s]
        if k[node] or k[other]:
            k[node] = k[other] = True
            if everyone_at[s] < 0 and all(k):
                everyone_at[s] = now - news_at
        heapq.heappush(timers, (now + period * (0.5 + rng.random()), node, s))
    return dials / n / news_at, everyone_at


SIZES = [(10, (30.0, 30.0)), (60, (56.25, 30.0))]  # push-pull's period grows past 32
SEEDS = range(24)


def summary(n: int, intervals: tuple[float, ...], rule: str) -> tuple[float, list[float],
                                                                     list[float]]:
    runs = [run_syncs(n, rule, seed, intervals=intervals) for seed in SEEDS]
    for _, spread in runs:
        assert all(t >= 0 for t in spread)  # every node heard, every run, every service
    dials = statistics.fmean(d for d, _ in runs)
    medians = [statistics.median(t[s] for _, t in runs) for s in range(len(intervals))]
    worst = [max(t[s] for _, t in runs) for s in range(len(intervals))]
    return dials, medians, worst


@pytest.mark.parametrize(("n", "intervals"), SIZES)
def test_fresh_connected_partners_dial_less_and_spread_news_as_fast(n, intervals):
    dials_uniform, median_uniform, worst_uniform = summary(n, intervals, "uniform")
    dials, median, worst = summary(n, intervals, "fresh")
    print(f"n={n}: dials/node/s {dials_uniform:.4f} -> {dials:.4f}; news to all, median "
          f"{median_uniform} -> {median} s, worst {worst_uniform} -> {worst} s")
    assert dials < 0.7 * dials_uniform
    for s in range(len(intervals)):
        assert median[s] <= 1.15 * median_uniform[s]
        assert worst[s] <= 1.35 * worst_uniform[s]


@pytest.mark.parametrize(("n", "intervals"), SIZES)
def test_any_connected_partner_would_spread_news_slower(n, intervals):
    """Why syncs skip partners of their own recent syncs: without it they circle inside
    groups of connected nodes."""
    _, median_uniform, _ = summary(n, intervals, "uniform")
    _, median, _ = summary(n, intervals, "connected")
    assert max(m / u for m, u in zip(median, median_uniform, strict=True)) > 1.3


# --- the membership core's periodic push-pull ------------------------------------------------

def swim_mesh(n: int, connected: list[bytes], explore: float) -> list[SwimCore]:
    config = GossipConfig().replace(push_pull_explore=explore)
    cores = [SwimCore(sim_node_id(i), config, fake_hooks(sim_node_id(i)), random.Random(i),
                      now=0.0, addresses=(f"sim://{i}",),
                      connected=(lambda: connected) if i == 0 else None)
             for i in range(n)]
    alives = [c.table.members[c.node_id].alive for c in cores]
    for core in cores:
        core.preload(alives, 0.0)
    return cores


def periodic_partners(core: SwimCore, rounds: int) -> list[bytes]:
    partners = []
    for _ in range(rounds):
        when = core._next_push_pull
        assert when is not None
        partners += [o.to for o in core.on_timer(when) if type(o) is Sync]
    return partners


def test_push_pull_goes_to_a_connected_member_it_did_not_just_sync_with():
    cores = swim_mesh(20, [], 0.0)
    a = cores[0]
    held = [sim_node_id(5), sim_node_id(9)]
    a._connected = lambda: held
    assert set(periodic_partners(a, 10)) <= set(held)  # never a dial while one is held
    # 5 just synced with us (we served it): no fresh partner, so 9 it is
    due = a._next_push_pull
    assert due is not None
    a.on_sync_digest(sim_node_id(5), cores[5].sync_digest(), due - 1.0)
    assert periodic_partners(a, 1) == [sim_node_id(9)]
    # with only 5 connected, and 5 syncing with us before each of our syncs, ours draw
    # from all (5 only by chance, 1 in 19)
    a._connected = lambda: [sim_node_id(5)]
    partners = []
    for _ in range(100):
        a.on_sync_digest(sim_node_id(5), cores[5].sync_digest(),
                         (a._next_push_pull or 0.0) - 1.0)
        partners += periodic_partners(a, 1)
    assert partners.count(sim_node_id(5)) < 15 and len(set(partners)) >= 15


def test_push_pull_without_connections_or_when_exploring_draws_from_all():
    cores = swim_mesh(20, [], 0.25)
    partners = periodic_partners(cores[0], 200)  # nothing connected: the old uniform rule
    assert len(set(partners)) >= 17
    cores = swim_mesh(20, [sim_node_id(3)], 0.25)
    partners = periodic_partners(cores[0], 400)
    # 3 is fresh again each period (30 s, the same as the syncs' spacing here), so it is
    # chosen ~75 % of the time; the rest reaches everyone
    share = partners.count(sim_node_id(3)) / len(partners)
    assert 0.65 < share < 0.85
    assert len(set(partners)) >= 17


def test_push_pull_explore_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        GossipConfig().replace(push_pull_explore=-0.1)
