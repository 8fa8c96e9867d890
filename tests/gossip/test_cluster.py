"""Many SwimCores in the deterministic harness: convergence, detection, loss, load.

The default runs are small enough for the suite (a few seconds). The ``slow`` ones check
the tuned LAN targets at full size (``pytest -m slow tests/gossip``):

* 1,000 nodes: detection median <= 3 s and p99 <= 8 s;
* 10 % loss for a simulated hour: zero false deaths;
* messages per node per second flat (+-20 %) from 100 to 2,000 nodes.
"""

from __future__ import annotations

import random

import pytest

from gossip.config import GossipConfig
from gossip.member import MemberState
from sim.swimmesh import SwimCluster, detection_summary


def crash_several(cluster: SwimCluster, ids: list[bytes], count: int, *, seed: int = 3,
                  gap: tuple[float, float] = (3.0, 6.0)) -> list[bytes]:
    rng = random.Random(seed)
    victims = rng.sample(ids, count)
    for victim in victims:
        cluster.crash(victim)
        cluster.run_for(rng.uniform(*gap))
    return victims


def test_cold_join_through_one_seed_converges_with_real_encoding():
    cluster = SwimCluster(seed=1, encode=True)
    seed = cluster.add()
    for _ in range(19):
        cluster.add(seeds=[seed])
        cluster.run_for(0.3)
    cluster.run_for(10.0)
    assert cluster.converged()
    assert sum(n.sent_bytes for n in cluster.nodes.values()) > 0


def test_mass_join_at_once_converges():
    cluster = SwimCluster(seed=2)
    seed = cluster.add()
    for _ in range(49):
        cluster.add(seeds=[seed])
    cluster.run_for(10.0)
    known = sum(len(n.core.members()) for n in cluster.live_nodes())
    assert known >= 0.995 * 50 * 50  # gossip: all but the rare miss...
    cluster.run_for(30.0)
    assert cluster.converged()  # ...which the periodic push-pull repairs


def test_crash_is_detected_by_every_survivor_within_the_targets():
    cluster = SwimCluster(seed=5, record=False)
    ids = cluster.populate(100)
    cluster.run_for(3.0)
    victims = crash_several(cluster, ids, 10)
    cluster.run_for(15.0)
    assert all(cluster.all_marked_dead(v) for v in victims)
    summary = detection_summary(cluster)
    assert summary["all_median"] <= 3.0, summary
    assert summary["all_p99"] <= 8.0, summary
    assert cluster.false_deaths == []


def test_five_nodes_with_a_connection_hint_mark_a_crash_dead_within_six_seconds():
    cluster = SwimCluster(seed=9)
    ids = cluster.populate(5)
    cluster.run_for(2.0)
    cluster.crash(ids[2], hint=True)
    start = cluster.now
    cluster.run_for(6.0)
    seen = cluster.failure_seen[ids[2]]
    assert len(seen) == 4 and max(seen.values()) - start <= 6.0
    assert max(seen.values()) - start <= 3.0  # with the hint, well within


def test_five_nodes_without_a_hint_still_mark_a_crash_dead_within_six_seconds():
    worst = 0.0
    for seed in range(12):
        cluster = SwimCluster(seed=seed, record=False, latency=0.0005, jitter=0.0005)
        ids = cluster.populate(5)
        cluster.run_for(2.0 + seed / 4)
        victim = ids[seed % 5]
        cluster.crash(victim)
        start = cluster.now
        cluster.run_for(8.0)
        seen = cluster.failure_seen[victim]
        assert len(seen) == 4
        worst = max(worst, max(seen.values()) - start)
    assert worst <= 6.0


def test_no_false_deaths_at_ten_percent_loss():
    cluster = SwimCluster(seed=11, loss=0.10, record=False)
    cluster.populate(50)
    cluster.run_for(600.0)
    assert cluster.false_deaths == []
    suspicions = sum(n.core.counters.suspicions_started for n in cluster.nodes.values())
    assert suspicions > 0  # the loss did cause suspicions; all were refuted


def test_leave_ends_as_left_everywhere_without_failures():
    cluster = SwimCluster(seed=4)
    ids = cluster.populate(30)
    cluster.run_for(2.0)
    cluster.leave(ids[7])
    cluster.run_for(5.0)
    others = [n for n in cluster.live_nodes() if n.node_id != ids[7]]
    assert all(n.core.state_of(ids[7]) is MemberState.LEFT for n in others)
    assert not [o for o in cluster.observations
                if o.kind == "MemberFailed" and o.subject == ids[7]]


def test_restart_with_the_same_id_comes_back_alive_with_a_higher_incarnation():
    cluster = SwimCluster(seed=6)
    ids = cluster.populate(20)
    cluster.run_for(2.0)
    cluster.crash(ids[3])
    cluster.run_for(10.0)
    assert cluster.all_marked_dead(ids[3])
    cluster.restart(ids[3], [ids[0]])
    cluster.run_for(10.0)
    assert cluster.converged()
    incarnation = cluster.nodes[ids[3]].core.incarnation
    assert incarnation > 0
    assert all(n.core.member(ids[3]).incarnation == incarnation
               for n in cluster.live_nodes())


def test_partition_heals_within_the_gossip_to_the_dead_window():
    cluster = SwimCluster(seed=8)
    ids = cluster.populate(20)
    cluster.run_for(2.0)
    cluster.partition(ids[:10], ids[10:])
    cluster.run_for(12.0)
    assert cluster.nodes[ids[0]].core.state_of(ids[15]) is MemberState.DEAD
    cluster.heal()
    cluster.run_for(40.0)
    assert cluster.converged()


def test_same_seed_same_run():
    def run() -> list[tuple[float, bytes, str, bytes]]:
        cluster = SwimCluster(seed=21, loss=0.05)
        ids = cluster.populate(15)
        cluster.run_for(3.0)
        cluster.crash(ids[4])
        cluster.run_for(20.0)
        return [(o.time, o.observer, o.kind, o.subject) for o in cluster.observations]

    assert run() == run()


def test_steady_state_message_rate_does_not_grow_with_n():
    rates = []
    for n in (50, 400):
        cluster = SwimCluster(seed=12, record=False)
        cluster.populate(n)
        cluster.run_for(5.0)
        counts = cluster.sent_counts()
        cluster.run_for(20.0)
        rates.append(cluster.messages_per_node_second(counts, 20.0))
    assert max(rates) <= 1.2 * min(rates), rates


# --- full-size checks of the tuned defaults ----------------------------------------------


@pytest.mark.slow
def test_thousand_nodes_detection_median_and_p99():
    cluster = SwimCluster(seed=7, record=False)
    ids = cluster.populate(1000)
    cluster.run_for(5.0)
    victims = crash_several(cluster, ids, 30)
    cluster.run_for(20.0)
    assert all(cluster.all_marked_dead(v) for v in victims)
    summary = detection_summary(cluster)
    assert summary["all_median"] <= 3.0 and summary["all_p99"] <= 8.0, summary
    assert cluster.false_deaths == []


@pytest.mark.slow
def test_an_hour_at_ten_percent_loss_has_no_false_death():
    cluster = SwimCluster(seed=13, loss=0.10, record=False)
    cluster.populate(100)
    cluster.run_for(3600.0)
    assert cluster.false_deaths == []


@pytest.mark.slow
def test_message_rate_flat_from_100_to_2000_nodes():
    rates = []
    for n in (100, 1000, 2000):
        cluster = SwimCluster(seed=14, record=False)
        cluster.populate(n)
        cluster.run_for(5.0)
        counts = cluster.sent_counts()
        cluster.run_for(30.0)
        rates.append(cluster.messages_per_node_second(counts, 30.0))
    assert max(rates) <= 1.2 * min(rates), rates


def test_wan_and_local_presets_also_detect_and_converge():
    for config in (GossipConfig.local(), GossipConfig.wan(), GossipConfig.phone()):
        cluster = SwimCluster(config=config, seed=3, latency=0.01)
        ids = cluster.populate(10)
        cluster.run_for(5.0)
        cluster.crash(ids[1])
        cluster.run_for(60.0)
        assert cluster.all_marked_dead(ids[1]), config
        assert cluster.false_deaths == []
