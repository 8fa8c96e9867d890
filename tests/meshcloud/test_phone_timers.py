"""An idle phone-profile node's own timers wake it rarely (issue 20: ``wakeups_per_s`` ≤ 5).

Two genuine ``Node``s of the phone profile (every service a phone runs, the API
included) on the in-memory transport under trio's autojump clock. Once they are
connected and settled, every distinct virtual instant at which some task of the process
runs is one wake-up of a real process (timers that expire together cost one), and the
first task to run names its source. The peer is a phone too, so what arrives from it
follows the phone's timing; real figures: ``python -m bench phone``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshcloud.clock import next_tick
from meshcloud.config import NodeConfig
from meshcloud.transport.memory import MemoryNetwork
from tests.meshcloud.two_nodes import two_joined_nodes

PHONE = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0",
                   profile="phone")
WINDOW = 600.0
"""Virtual seconds measured."""
BUDGET = 2.0
"""Wake-ups per second allowed for two idle phone nodes together (measured: about 1.3;
3.5 before the V-Net pass and the state flush poll waited for changes)."""
SERVICE_MAX = 0.4
"""Wake-ups per second one service's loop may cause on the two nodes (each node's at most
every 5 s); the gossip core and the transport (the failure detector) are not counted."""


class WakeInstants(trio.abc.Instrument):
    """Counts the virtual instants at which tasks ran, by the first task to run."""

    def __init__(self) -> None:
        self.sources: Counter[str] = Counter()
        self.last = -1.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = trio.current_time()
        if now != self.last:
            self.last = now
            self.sources[task.name] += 1


@given(st.floats(0, 1e9), st.sampled_from([0.25, 0.5, 1.0, 5.0, 10.0, 15.0, 30.0]))
def test_next_tick_is_the_next_multiple_of_the_period(now, period):
    tick = next_tick(now, period)
    assert now < tick <= now + period
    assert tick / period == round(tick / period)
    # loops whose periods are multiples of one another meet: a 30 s tick is a 5 s tick
    assert all(tick % p == 0.0 for p in (0.25, 5.0, 10.0, 15.0) if period % p == 0.0)


def test_next_tick_refuses_a_period_that_is_not_positive():
    with pytest.raises(ValueError, match="positive"):
        next_tick(1.0, 0.0)


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


async def test_two_idle_phone_nodes_wake_rarely(tmp_path, nursery, network, autojump_clock):
    a, b = await two_joined_nodes(tmp_path, nursery, network, PHONE)
    await trio.sleep(300)  # start-up work (first syncs, offers, DHT) is over

    wakes = WakeInstants()
    trio.lowlevel.add_instrument(wakes)
    await trio.sleep(WINDOW)
    trio.lowlevel.remove_instrument(wakes)

    assert b.node_id in a.alive_peer_ids() and a.node_id in b.alive_peer_ids()
    per_s = sum(wakes.sources.values()) / WINDOW
    top = ", ".join(f"{name} {n / WINDOW:.2f}/s" for name, n in wakes.sources.most_common(8))
    print(f"two idle phone nodes: {per_s:.2f} wake-ups/s ({top})")
    assert per_s <= BUDGET, top
    for name, n in wakes.sources.items():
        if not name.startswith(("gossip.", "meshcloud.transport.", "<")):
            assert n / WINDOW <= SERVICE_MAX, f"{name} wakes {n / WINDOW:.2f}/s"
