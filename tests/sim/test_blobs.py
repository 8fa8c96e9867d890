"""The simulator's blobstore (production picker and repair planner over a fake shard store)
and the "no acknowledged object lost" checker: crafted traces that must fail do fail; a
run with crashes, a departure and repair passes."""

from __future__ import annotations

import random

from sim.blobchecks import NoAcknowledgedObjectLost
from sim.blobs import BlobModel
from sim.trace import Trace

NODES = [bytes([i]) * 32 for i in range(1, 9)]
H = [n.hex() for n in NODES]


def alive_all(trace: Trace) -> None:
    for node in NODES:
        trace.node_state(0.0, node, "alive")


def acked(trace: Trace, t: float, obj: str, holders: list[str]) -> None:
    trace.record("object_acked", t=t, object=obj, k=4, m=2, holders=holders)


def test_failed_read_with_two_holders_gone_is_a_violation():
    trace = Trace(end=100)
    alive_all(trace)
    acked(trace, 1.0, "aa", H[:6])
    trace.node_state(10.0, NODES[0], "crashed")
    trace.node_state(11.0, NODES[1], "gone")
    trace.record("object_read", t=20.0, object="aa", ok=False, readable_shards=3)
    result = NoAcknowledgedObjectLost().check(trace)
    assert not result.passed
    assert "only 2 of its holders gone" in result.examples[0]


def test_two_shards_on_one_node_is_caught_when_another_node_dies():
    trace = Trace(end=100)
    alive_all(trace)
    acked(trace, 1.0, "bb", [H[0], H[0], H[1], H[2], H[3], H[4]])  # a placement bug
    trace.node_state(5.0, NODES[0], "crashed")
    trace.node_state(6.0, NODES[1], "crashed")
    trace.record("object_read", t=7.0, object="bb", ok=False, readable_shards=3)
    assert not NoAcknowledgedObjectLost().check(trace).passed


def test_loss_beyond_m_is_counted_not_failed_and_unread_objects_fail():
    trace = Trace(end=100)
    alive_all(trace)
    acked(trace, 1.0, "cc", H[:6])
    for node in NODES[:3]:
        trace.node_state(5.0, node, "gone")
    trace.record("object_read", t=9.0, object="cc", ok=False, readable_shards=3)
    result = NoAcknowledgedObjectLost().check(trace)
    assert result.passed and result.figures["lost_beyond_m"] == 1
    acked(trace, 2.0, "dd", H[2:8])
    result = NoAcknowledgedObjectLost().check(trace)
    assert not result.passed and "never read" in result.examples[0]


def test_repair_moves_the_holders_the_checker_counts():
    trace = Trace(end=100)
    alive_all(trace)
    acked(trace, 1.0, "ee", H[:6])
    trace.node_state(5.0, NODES[0], "gone")
    trace.node_state(5.0, NODES[1], "gone")
    trace.record("object_repaired", t=8.0, object="ee", holders=H[6:8] + H[2:6])
    trace.node_state(9.0, NODES[2], "crashed")
    # after the repair only one holder is gone: a failed read now is a violation
    trace.record("object_read", t=10.0, object="ee", ok=False, readable_shards=3)
    assert not NoAcknowledgedObjectLost().check(trace).passed


class ForgetfulRepair(BlobModel):
    """A repair bug: the new holders are recorded, the shards never stored."""

    def _repair(self, t: float) -> None:
        saved = {node: set(keys) for node, keys in self.store.shards.items()}
        super()._repair(t)
        self.store.shards = saved


def run_model(seed: int, *, repair: bool, model_class: type[BlobModel] = BlobModel
              ) -> tuple[Trace, BlobModel]:
    trace = Trace(end=200)
    model = model_class(trace, random.Random(seed), writes_per_tick=1.0, repair_delay=3.0)
    alive_all(trace)
    model.start(0.0, NODES)
    schedule = {40: ("crash", 0), 45: ("restart", 0), 60: ("leave", 1), 90: ("leave", 2),
                120: ("join", 1), 150: ("crash", 3)}
    for second in range(1, 200):
        t = float(second)
        event = schedule.get(second)
        if event is not None:
            what, i = event
            node = NODES[i]
            if what == "crash":
                trace.node_state(t, node, "crashed")
                model.on_crash(t, node)
            elif what == "restart":
                trace.node_state(t, node, "alive")
                model.on_restart(t, node)
            elif what == "leave":
                trace.node_state(t, node, "left")
                model.on_leave(t, node)
            else:
                trace.node_state(t, node, "alive")
                model.on_join(t, node)
        if event is not None and repair:  # membership notices 2 s later
            what, i = event
            if what in ("crash", "leave"):
                model.on_member_failed(t, NODES[i])
            else:
                model.on_member_alive(t, NODES[i])
        model.on_tick(t)
    model.finish(200.0)
    return trace, model


def test_model_with_repair_keeps_every_acknowledged_object():
    trace, model = run_model(3, repair=True)
    result = NoAcknowledgedObjectLost().check(trace)
    assert result.passed, result.examples
    assert result.figures["objects_acked"] > 100
    assert trace.records["object_repaired"]
    assert all(len(set(o.holders)) == model.n for o in model.objects)


def test_model_without_repair_loses_only_beyond_m():
    trace, _ = run_model(3, repair=False)
    result = NoAcknowledgedObjectLost().check(trace)
    assert result.passed, result.examples  # losses need three holders gone
    assert not trace.records.get("object_repaired")
    assert result.figures["lost_beyond_m"] > 0


def test_checker_catches_a_repair_that_records_shards_it_did_not_store():
    trace, _ = run_model(3, repair=True, model_class=ForgetfulRepair)
    result = NoAcknowledgedObjectLost().check(trace)
    assert not result.passed
    assert "unreadable with only 1 of its holders gone" in result.examples[0]


class FakeHost:
    def __init__(self, node_id: bytes) -> None:
        self.node_id = node_id
        self.up = True
        self.left = False


class FakeRun:
    """The parts of sim.runner.Run the adapter uses."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.trace = Trace(end=100)
        self.cluster = SimpleNamespace(by_index=[FakeHost(n) for n in NODES], listeners=[])
        self.engine = SimpleNamespace(now=0.0, derive_random=lambda name: random.Random(5))


class MemberFailed:
    def __init__(self, node: bytes) -> None:
        from types import SimpleNamespace

        self.member = SimpleNamespace(node_id=node, state="dead")


def test_runner_adapter_follows_hosts_and_membership_events():
    from sim.blobs import BlobSimModel

    run = FakeRun()
    adapter = BlobSimModel(writes_per_tick=2.0, repair_delay=2.0)
    adapter.attach(run)
    for node in NODES:
        run.trace.node_state(0.0, node, "alive")
    assert run.cluster.listeners == [adapter.on_membership]
    for second in range(1, 60):
        t = float(second)
        if second == 20:
            host = run.cluster.by_index[0]
            host.up, host.left = False, True
            run.trace.node_state(t, host.node_id, "left")
        if second == 22:
            for listener in run.cluster.listeners:
                listener(t, NODES[1], MemberFailed(NODES[0]))
        adapter.sample(t)
    adapter.finish(60.0)
    assert adapter.model is not None and not adapter.model.stored[NODES[0]]
    assert run.trace.records["object_repaired"]
    result = NoAcknowledgedObjectLost().check(run.trace)
    assert result.passed and result.figures["objects_acked"] > 50


def test_writes_follow_the_production_picker_spares_and_battery_rule():
    trace = Trace(end=50)
    model = BlobModel(trace, random.Random(1), writes_per_tick=3.0)
    alive_all(trace)
    model.start(0.0, NODES)
    phone = NODES[7]
    model.capacity = {n: {"disk_free": 100 << 30, "on_ac": n != phone} for n in NODES}
    model.on_crash(0.0, NODES[0])  # believed alive, really down: its put fails
    for second in range(1, 11):
        model.on_tick(float(second))
    assert len(model.objects) == 30
    for obj in model.objects:
        assert NODES[0] not in obj.holders and phone not in obj.holders
        assert len(set(obj.holders)) == model.n  # the spare took the refused shard


def test_too_few_nodes_refuses_the_write():
    trace = Trace(end=10)
    model = BlobModel(trace, random.Random(1), writes_per_tick=1.0)
    model.start(0.0, NODES[:5])
    model.on_tick(1.0)
    assert not model.objects
    assert "need 6 distinct holders" in trace.records["object_write_failed"][0]["why"]
