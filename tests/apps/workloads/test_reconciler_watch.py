"""A reconciler is poked by every change of the tables it plans from, also after a burst
of more rows than a change subscription holds (a new node's first sync of a big mesh):
it must not fall back to its idle resync for good."""

from __future__ import annotations

import trio

from apps.workloads.catalogue import IMAGES
from apps.workloads.offers import OFFERS
from apps.workloads.reconciler import Reconciler
from apps.workloads.tables import WorkloadRecord
from meshcloud.state.driver import SUBSCRIBER_BUFFER
from tests.meshcloud.state.test_driver import start_cluster

BURST = SUBSCRIBER_BUFFER + 500


async def next_pass(reconciler: Reconciler, within: float) -> float:
    """Seconds until the reconciler's next pass ends (AssertionError past ``within``)."""
    start = trio.current_time()
    with trio.move_on_after(within):
        await reconciler.pass_done.wait()
        return trio.current_time() - start
    raise AssertionError(f"no pass within {within} s")


async def test_a_burst_of_rows_does_not_stop_the_pokes(nursery, autojump_clock):
    _, ids, drivers = await start_cluster(nursery, 1)
    state = drivers[0]
    for schema in (OFFERS, IMAGES):
        state.open_table(schema)
    reconciler = Reconciler(ids[0], state, {}, lambda: [])
    await nursery.start(reconciler.run)
    idle = reconciler.config.idle_resync_interval
    assert idle > 10
    await next_pass(reconciler, idle + 5)  # the first pass; nothing to run: it idles now

    for i in range(BURST):  # in one step: the reconciler's tasks see none of it meanwhile
        state.put("workloads", f"w{i}", WorkloadRecord(kind="service"))
    await next_pass(reconciler, idle + 5)
    await next_pass(reconciler, idle + 5)  # anything the burst left to do is done
    for i in range(BURST):  # the rows go again; the tables are empty after this
        state.delete("workloads", f"w{i}")
    for _ in range(50):  # until it idles: a pass that no change called for
        if await next_pass(reconciler, idle + 5) >= idle - 1:
            break
    else:
        raise AssertionError("the reconciler never went idle after the burst")

    state.put("workloads", "late", WorkloadRecord(kind="service"))
    took = await next_pass(reconciler, idle + 5)
    assert took < 1.0, f"a change after the burst waited {took:.1f} s for a pass"
