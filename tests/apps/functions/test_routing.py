"""Routing of calls over a function's rendezvous top nodes (pure core)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from apps.functions.routing import choose, constraints, order, route, spread
from meshcloud.placement import NodeInfo

RUNTIMES = st.sampled_from([frozenset({"process"}), frozenset({"process", "podman"}),
                            frozenset({"podman"}), frozenset()])


@st.composite
def views(draw):
    n = draw(st.integers(0, 8))
    return [NodeInfo(bytes([i + 1]) * 16, runtimes=draw(RUNTIMES),
                     on_battery=draw(st.booleans()), metered=draw(st.booleans()),
                     draining=draw(st.booleans())) for i in range(n)]


def node(i: int, **kw) -> NodeInfo:
    return NodeInfo(bytes([i]) * 16, runtimes=frozenset({"process"}), **kw)


@given(views(), st.booleans(), st.integers(1, 16), st.integers(0, 200),
       st.dictionaries(st.integers(1, 8), st.integers(0, 50)), st.randoms())
def test_the_choice_is_an_eligible_node_and_mains_before_battery(
        view, image, concurrency, in_flight, load, rng):
    rules = constraints(image)
    r = route(view, "hot", rules)
    k = spread(concurrency, in_flight, len(r.candidates))
    outstanding = {bytes([i]) * 16: n for i, n in load.items()}
    chosen = choose(r.candidates, k, outstanding, rng.randrange)
    eligible = [m for m in view if not m.draining
                and ("podman" if image else "process") in m.runtimes]
    if not eligible:
        assert chosen is None and r.ranking == ()
        return
    by_id = {m.node_id: m for m in view}
    pick = by_id[chosen]
    assert pick in eligible  # the runtime it needs, never draining, a live member
    if any(not m.on_battery for m in eligible):
        assert not pick.on_battery
    if any(not m.on_battery and not m.metered for m in eligible):
        assert not pick.on_battery and not pick.metered
    assert chosen in r.candidates[:k]
    tried = order(chosen, r.ranking)
    assert tried[0] == chosen and sorted(tried) == sorted(r.ranking)


def test_one_node_at_rest_more_under_load():
    assert spread(8, 0, 3) == 1 and spread(8, 7, 3) == 1
    assert spread(8, 8, 3) == 2 and spread(8, 15, 3) == 2 and spread(8, 16, 3) == 3
    assert spread(8, 500, 3) == 3 and spread(8, 5, 0) == 0 and spread(0, 3, 2) == 2


def test_two_choices_take_the_less_loaded_and_ties_the_better_ranked():
    a, b, c = (bytes([i]) * 16 for i in (1, 2, 3))
    draws = iter([0, 0])  # the first two
    assert choose([a, b, c], 2, {a: 5, b: 1}, lambda n: next(draws)) == b
    draws = iter([1, 0])
    assert choose([a, b, c], 2, {}, lambda n: next(draws)) == a
    assert choose([a, b, c], 1, {a: 99}, random.Random(1).randrange) == a
    assert choose([], 3, {}, random.Random(1).randrange) is None


def test_load_spreads_over_the_top_k_only():
    view = [node(i) for i in range(1, 7)]
    r = route(view, "hot", constraints(False))
    rng = random.Random(7)
    outstanding: dict[bytes, int] = {}
    for _ in range(40):  # 40 calls held open: k grows to 3 with concurrency 16
        k = spread(16, sum(outstanding.values()), len(r.candidates))
        chosen = choose(r.candidates, k, outstanding, rng.randrange)
        outstanding[chosen] = outstanding.get(chosen, 0) + 1
    assert set(outstanding) == set(r.candidates[:3])
    top, second, third = r.candidates[:3]
    # 16 calls fit the top node; the next 16 share two nodes; the rest three
    assert outstanding[top] >= 16 and outstanding[second] >= 8 and outstanding[third] >= 1


def test_a_dead_node_moves_its_calls_to_the_next():
    view = [node(i) for i in range(1, 5)]
    r = route(view, "f", constraints(False))
    top = r.candidates[0]
    after = route([m for m in view if m.node_id != top], "f", constraints(False))
    assert after.candidates == r.candidates[1:]  # the rest keep their order
    assert choose(after.candidates, 1, {}, random.Random(0).randrange) == r.candidates[1]


def test_battery_and_draining_nodes_wait_their_turn():
    mains, battery, drained = node(1), node(2, on_battery=True), node(3, draining=True)
    r = route([mains, battery, drained], "f", constraints(False))
    assert r.candidates == (mains.node_id,) and r.ranking == (mains.node_id, battery.node_id)
    only = route([battery, drained], "f", constraints(False))
    assert only.candidates == (battery.node_id,)
    assert route([node(4)], "f", constraints(True)).ranking == ()  # no podman there
