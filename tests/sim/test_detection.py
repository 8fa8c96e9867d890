"""Crash detection in the simulator: a datagram that bounces off a killed process (ICMP
port unreachable) ends its prober's wait for a direct ack."""

from __future__ import annotations

from typing import Any

from gossip.config import GossipConfig
from sim.cluster import Host
from sim.runner import Run
from sim.scenario import parse


def test_a_bounced_datagram_suspects_the_crashed_node_one_stage_sooner():
    scenario = parse('[scenario]\nduration = "30s"\nnodes = 40\nseed = 4\nmodels = []\n'
                     '[[faults]]\nat = "20s"\naction = "crash"\ncount = 3\n', "t.toml")
    run = Run(scenario, with_dht=False, models=[])
    cluster = run.cluster
    first_bounce: dict[bytes, float] = {}  # victim -> first datagram sent to it, dead
    send = cluster._send

    def watch(src: Host, dst_id: bytes, kind: int, msg: Any) -> None:
        dst = cluster.hosts.get(dst_id)
        if kind == 0 and dst is not None and not dst.up:
            first_bounce.setdefault(dst_id, run.engine.now)
        send(src, dst_id, kind, msg)

    cluster._send = watch  # type: ignore[method-assign]
    run.run()
    victims = [node for _, node, state in run.trace.truth if state == "crashed"]
    assert len(victims) == 3
    config = GossipConfig()
    for victim in victims:
        suspected = min(t for t, _, subject, state in run.trace.views
                        if subject == victim and state == "suspect")
        waited = suspected - first_bounce[victim]
        # the ICMP error comes back a round trip later; then only the relays' stage runs
        # (without the hint's shortcut: probe_timeout + indirect_timeout)
        assert config.indirect_timeout <= waited <= config.indirect_timeout + 0.05
