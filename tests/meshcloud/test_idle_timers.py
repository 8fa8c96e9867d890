"""An idle node's services do not poll what did not change (issue 12 §2: ``idle_cpu_pct``).

Two genuine ``Node``s of the default profile (every service the agent composes) on the
in-memory transport under trio's autojump clock, with no database, function, workload or
Spark cluster in the mesh. Once they are connected and settled, the task steps of each
service loop are counted: a loop with nothing to do sleeps until a row of its tables
changes (``StateDriver.watch``), so it runs rarely; before, the functions scheduler ran
four times a second, its housekeeping once, the database controller once, the revocation
check and the listeners' loops twice, the reconciler every 2 s.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from meshcloud.config import NodeConfig
from meshcloud.transport.memory import MemoryNetwork
from tests.meshcloud.two_nodes import two_joined_nodes

DEFAULT = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")
WINDOW = 300.0
"""Virtual seconds measured."""
QUIET = {
    "apps.functions.service.FunctionService._scheduler": 0.1,
    "apps.db.service.DbService._control_loop": 0.1,
    "apps.db.service.DbService._listen_loop": 0.1,
    "apps.spark.service.SparkService._listen_loop": 0.1,
    "apps.workloads.reconciler.Reconciler.run": 0.3,
    "meshcloud.revocation.RevocationEnforcer.run": 0.1,
    "gossip.driver.GossipDriver._timer_loop": 3.0,
    "apps.functions.service.FunctionService.run": 0.5,
}
"""Task steps per second allowed to each loop on the two nodes together, with nothing to
do (measured before: 8, 4, 4, 4, 3 and 4; a pass may take a few steps). The gossip
timer starts a probe round a second on each node (~2 steps a second for the two; an ack
moves its sleep's deadline instead of waking it); it stepped 16 times a second when every
ack, answered ping and loop-lag sample woke it."""


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


@pytest.fixture
def network() -> MemoryNetwork:
    return MemoryNetwork()


async def test_idle_services_sleep_until_a_row_changes(tmp_path, nursery, network,
                                                      autojump_clock):
    a, b = await two_joined_nodes(tmp_path, nursery, network, DEFAULT)
    await trio.sleep(120)  # start-up work (first syncs, offers, DHT) is over

    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    await trio.sleep(WINDOW)
    trio.lowlevel.remove_instrument(steps)

    assert b.node_id in a.alive_peer_ids() and a.node_id in b.alive_peer_ids()
    top = ", ".join(f"{name} {n / WINDOW:.2f}/s" for name, n in steps.steps.most_common(12))
    print(f"two idle default nodes: {top}")
    for name, limit in QUIET.items():
        assert steps.steps[name] / WINDOW <= limit, f"{name}: {top}"
    # the loops still run: their tasks exist and stepped at least once (the fallback)
    assert steps.steps["apps.functions.service.FunctionService.run"] > 0
