"""A start-up burst in the simulator: newcomers (and the members serving them) whose
event loops stall again and again, as on a machine with one core per fifteen agents.

The stalls are the simulator's (:meth:`sim.swimmesh.SwimCluster.freeze`): what reaches a
stalled node waits, its timers fire late, and it hears of the stall (``on_loop_lag``)
when it comes back, as the driver tells the core.
"""

from __future__ import annotations

import random
import statistics

import pytest

from gossip.member import MemberState
from sim.swimmesh import SwimCluster

OLD, NEW = 10, 30
WINDOW = 40.0
"""Seconds of stalls after the burst starts."""


def stall_again_and_again(cluster: SwimCluster, node: bytes, rng: random.Random,
                          mean: float, long_share: float, until: float) -> None:
    """Stalls of ``mean`` seconds on average (a share of 1-2 s ones), 0.2-1.5 s apart."""
    def step() -> None:
        if cluster.now >= until or not cluster.nodes[node].up:
            return
        seconds = rng.expovariate(1 / mean)
        if rng.random() < long_share:
            seconds = rng.uniform(1.0, 2.0)
        cluster.freeze(node, seconds)
        cluster.engine.at(cluster.now + seconds + rng.uniform(0.2, 1.5), step)
    cluster.engine.at(cluster.now + rng.uniform(0.0, 1.0), step)


def burst(seed: int) -> tuple[SwimCluster, list[bytes]]:
    cluster = SwimCluster(seed=seed)
    old = cluster.populate(OLD)
    rng = random.Random(seed)
    cluster.run_for(5.0)
    until = cluster.now + WINDOW
    new = [cluster.add(seeds=[rng.choice(old)]) for _ in range(NEW)]
    for node in new:
        stall_again_and_again(cluster, node, rng, 0.15, 0.03, until)
    for node in old:
        stall_again_and_again(cluster, node, rng, 0.2, 0.03, until)
    return cluster, new


@pytest.mark.parametrize("seed", [0, 1])
def test_stalling_newcomers_and_their_hosts_declare_no_live_member_dead(seed):
    cluster, _new = burst(seed)
    cluster.run_for(WINDOW + 20.0)
    assert cluster.false_deaths == []
    assert cluster.converged()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_newcomer_that_crashes_during_the_burst_is_still_found(seed):
    cluster, new = burst(seed)
    victim = new[0]
    cluster.run_for(8.0)
    cluster.crash(victim)
    cluster.run_for(WINDOW)
    seen = cluster.failure_seen[victim]
    survivors = len(cluster.live_nodes())
    assert len(seen) == survivors  # every survivor, each one stalling itself
    delays = [t - cluster.crashed_at[victim] for t in seen.values()]
    assert statistics.median(delays) <= 10.0 and max(delays) <= 15.0
    assert cluster.false_deaths == []


def test_a_frozen_node_reads_late_fires_late_and_hears_of_its_stall():
    cluster = SwimCluster(seed=3)
    a, b = cluster.populate(2)
    cluster.run_for(2.0)
    node = cluster.nodes[a]
    stalls = node.core.statistics().loop_stalls
    received = node.core.statistics().messages_received
    cluster.freeze(a, 3.0)
    cluster.run_for(2.9)
    assert node.core.statistics().messages_received == received  # b's pings wait
    cluster.run_for(0.2)
    assert node.core.statistics().loop_stalls == stalls + 1
    assert node.core.statistics().messages_received > received
    cluster.run_for(5.0)
    assert cluster.state(b, a) is MemberState.ALIVE  # three seconds: suspected at most
