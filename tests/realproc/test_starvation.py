"""Issue 12 §1: agents busy starting up must not declare each other dead.

Twelve agents, joined beforehand, start at once next to a 3-agent mesh on this machine's
cores: their start-up work and the syncs they ask of the mesh hold every event loop. On
the commit before the fix this test fails: 33 false deaths (and 158 with a burst of 20,
`docs/benchmarks.md`, starvation)."""

from __future__ import annotations

import time

import pytest

from bench.starvation import burst

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_a_burst_of_agents_starting_at_once_declares_no_live_agent_dead(cluster_factory):
    cluster = cluster_factory(3)
    live = {a.node_id: (time.time() * 1000, float("inf")) for a in cluster.agents}
    figures = burst(cluster, 12, live, quiet=0.0)
    assert figures["startup_converged_s"] is not None  # every agent lists all 15 alive
    assert figures["startup_false_deaths"] == 0, figures["startup_false_death_examples"]
    assert figures["startup_max_loop_lag_ms"] > 0  # the agents measured their loops
