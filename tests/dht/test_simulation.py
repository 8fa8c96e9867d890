"""The lookup simulation used by bench/ and sim/: correct, deterministic, and honest."""

from __future__ import annotations

import math

import pytest

from sim.dhtmesh import SimNetwork, median, percentile, simulate


def test_lookups_find_the_k_closest_in_a_healthy_network():
    result = simulate(300, lookups=100, seed=3)
    assert result.success_rate == 1.0
    assert result.rounds_median <= 3 and result.rounds_max <= 5
    assert 3 <= result.queries_mean < 40


def test_lookups_stay_exact_with_a_fifth_of_the_nodes_crashed():
    result = simulate(300, lookups=100, seed=4, crash_fraction=0.2)
    assert result.crashed == 60
    assert result.success_rate == 1.0
    assert result.duration_median > 0  # timeouts were waited for
    assert min(s.failures for s in result.samples) >= 0
    assert sum(s.failures for s in result.samples) > 0


def test_find_peer_lookups_reach_the_node():
    result = simulate(300, lookups=60, seed=5, kind="peer", crash_fraction=0.2)
    assert result.success_rate == 1.0


def test_uniform_tables_are_close_to_tables_built_by_real_joins():
    joined = simulate(300, lookups=100, seed=6, build="join")
    uniform = simulate(300, lookups=100, seed=6, build="uniform")
    assert joined.success_rate == uniform.success_rate == 1.0
    assert abs(joined.rounds_median - uniform.rounds_median) <= 1
    assert uniform.queries_mean <= joined.queries_mean * 1.1


def test_same_seed_same_figures_and_the_codec_changes_nothing():
    one = simulate(200, lookups=40, seed=7, crash_fraction=0.1)
    two = simulate(200, lookups=40, seed=7, crash_fraction=0.1, wire=True)
    assert one.samples == two.samples
    assert simulate(200, lookups=40, seed=8).samples != one.samples


def test_latency_turns_rounds_into_time():
    result = simulate(200, lookups=40, seed=9, latency=0.05)
    for sample in result.samples:
        assert sample.duration == pytest.approx(sample.rounds * 0.1)


def test_uniform_build_fills_buckets_as_kademlia_would():
    net = SimNetwork(500, seed=2)
    net.build_uniform()
    for core in net.cores[:20]:
        indices = core.table.bucket_indices()
        assert len(core.table.bucket(255)) == 20  # ~250 nodes in the far half
        assert all(len(core.table.bucket(i)) <= 20 for i in indices)
        nearest = net.true_closest(core.local_id, 5, net.index[core.local_id])
        assert nearest <= {c.node_id for c in core.table}  # neighbours all known


@pytest.mark.parametrize(("values", "fraction", "expected"), [
    ([1, 2, 3, 4], 0.5, 2), ([1, 2, 3, 4], 0.99, 4), (list(range(1, 1001)), 0.99, 990),
    ([5], 0.99, 5),
])
def test_percentile_is_nearest_rank(values, fraction, expected):
    assert percentile(values, fraction) == expected


def test_median():
    assert median([3, 1, 2]) == 2 and median([1, 2, 3, 4]) == 2.5 and math.isnan(median([]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        simulate(10, build="magic")
    with pytest.raises(ValueError):
        SimNetwork(1)
