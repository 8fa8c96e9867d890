"""Real agent processes on 127.0.0.1 (see sim/agents.py)."""

from __future__ import annotations

import pytest

from sim.agents import LocalCluster

pytest.importorskip("meshcloud.transport.tcp", reason="the TCP transport is not built yet")


@pytest.fixture
def cluster_factory(tmp_path):
    clusters: list[LocalCluster] = []

    def make(n: int, **kwargs) -> LocalCluster:
        cluster = LocalCluster.create(tmp_path / f"c{len(clusters)}", n, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
