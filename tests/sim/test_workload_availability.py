"""The workload model over crafted traces, and the availability checker that judges it."""

from __future__ import annotations

import random
import time

from sim.availability import WorkloadAvailability
from sim.scenario import Scenario, parse
from sim.trace import Trace
from sim.workloadmodel import ModelWorkload, WorkloadModel, default_workloads

NODES = [bytes([i]) * 32 for i in range(1, 7)]


def scenario(text: str = "") -> Scenario:
    return parse('[scenario]\nduration = "100s"\nnodes = 6\n' + text, "test.toml")


def healthy(end: float = 100.0, nodes=NODES) -> Trace:
    trace = Trace(end=end)
    for node in nodes:
        trace.node_state(0.0, node, "alive")
    for observer in nodes:
        for subject in nodes:
            if observer != subject:
                trace.view(0.5, observer, subject, "alive")
    return trace


def crash(trace: Trace, node: bytes, at: float, seen_after: float | None,
          observers=NODES) -> None:
    trace.fault(at, "crash", node=node.hex())
    trace.node_state(at, node, "crashed")
    if seen_after is not None:
        for observer in observers:
            if observer != node:
                trace.view(at + seen_after, observer, node, "dead")


def model_and_check(trace: Trace, workloads=None, text: str = "", **kw):
    model = WorkloadModel(workloads or default_workloads(12, 2), **kw)
    model.replay(trace)
    return model, WorkloadAvailability().check(trace, scenario(text))


def final(trace: Trace) -> dict[str, tuple[int, int]]:
    out = {}
    for row in trace.records["workload_replicas"]:
        out[row["workload"]] = (row["running"], row["wanted"])
    return out


def test_healthy_mesh_runs_every_replica_once_views_are_in():
    trace = healthy()
    _, result = model_and_check(trace)
    assert result.passed, result.summary
    assert set(final(trace).values()) == {(2, 2)}
    assert result.figures["episodes"] == 0 and result.figures["availability"] == 1.0
    assert result.figures["warm_up_s"] == 1.5  # views at 0.5 s + 1 s to start
    assert trace.series["workload_missing"][-1][1] == 0.0


def test_crash_seen_quickly_recovers_within_detection_plus_start():
    trace = healthy()
    crash(trace, NODES[2], at=10.0, seen_after=2.0)
    _, result = model_and_check(trace)
    assert result.passed, result.summary
    assert result.figures["episodes"] >= 1
    assert result.figures["recovery_max_s"] == 3.0  # 2 s to notice + 1 s to start
    assert set(final(trace).values()) == {(2, 2)}
    assert result.figures["availability"] < 1.0


def test_crash_never_noticed_fails_with_an_example():
    trace = healthy()
    crash(trace, NODES[2], at=10.0, seen_after=None)
    _, result = model_and_check(trace)
    assert not result.passed
    assert "never back" in result.examples[0]
    assert result.figures["late_episodes"] >= 1


def test_slow_detection_fails_the_default_bound_of_detect_plus_five():
    trace = healthy()
    crash(trace, NODES[2], at=10.0, seen_after=20.0)
    _, result = model_and_check(trace, text='[checks]\ndetect_bound = "8s"\n')
    assert not result.passed and result.figures["bound_s"] == 13.0
    assert result.figures["recovery_max_s"] == 21.0
    _, lenient = model_and_check(healthy_with(crash_at=10.0, seen_after=20.0),
                                 text='[checks]\ndetect_bound = "20s"\n')
    assert lenient.passed


def healthy_with(crash_at: float, seen_after: float) -> Trace:
    trace = healthy()
    crash(trace, NODES[2], at=crash_at, seen_after=seen_after)
    return trace


def test_partition_over_replicates_but_loses_nothing():
    trace = healthy()
    left, right = NODES[:3], NODES[3:]
    trace.partition(20.0, [frozenset(left), frozenset(right)])
    for a in left:
        for b in right:
            trace.view(22.0, a, b, "dead")
            trace.view(22.0, b, a, "dead")
    trace.partition(50.0, None)
    for a in left:
        for b in right:
            trace.view(52.0, a, b, "alive")
            trace.view(52.0, b, a, "alive")
    _, result = model_and_check(trace)
    assert result.passed and result.figures["episodes"] == 0
    assert result.figures["max_over_replication"] == 2  # each side ran its own two
    assert set(final(trace).values()) == {(2, 2)}


def test_restarted_node_waits_for_its_view_or_the_grace():
    trace = healthy()
    node = NODES[0]
    crash(trace, node, at=10.0, seen_after=1.0)
    trace.node_state(30.0, node, "alive")  # back, knowing no one
    model = WorkloadModel([ModelWorkload("solo", 6)], startup_grace=10.0)
    model.replay(trace)
    rows = [r for r in trace.records["workload_replicas"] if r["t"] >= 30.0]
    assert rows[0]["running"] == 5 and rows[0]["wanted"] == 6
    assert [r["t"] for r in rows if r["running"] == 6] == [41.0]  # grace, then start


def test_suspects_still_hold_their_work():
    trace = healthy()
    for observer in NODES[1:]:
        trace.view(10.0, observer, NODES[0], "suspect")
    _, result = model_and_check(trace)
    assert result.figures["max_over_replication"] == 0 and result.passed


def test_checker_on_crafted_records_and_without_records():
    trace = Trace(end=60.0)
    for t, running in ((1.0, 2), (10.0, 1), (30.0, 2)):
        trace.record("workload_replicas", t=t, workload="db", running=running, wanted=2)
    result = WorkloadAvailability(bound=15.0).check(trace, scenario())
    assert not result.passed and result.examples == [
        "db: 1 replica(s) missing from 10.0s, back after 20.0s (bound 15s)"]
    assert result.figures["availability"] == round((2 * 9 + 1 * 20 + 2 * 30) / (2 * 59), 6)
    empty = WorkloadAvailability().check(Trace(end=10.0), scenario())
    assert empty.passed and empty.figures["workloads"] == 0
    never = Trace(end=10.0)
    never.record("workload_replicas", t=0.0, workload="x", running=0, wanted=1)
    assert not WorkloadAvailability().check(never, scenario()).passed


def test_a_thousand_nodes_with_churn_replays_fast_and_deterministically():
    rnd = random.Random(11)
    nodes = [rnd.randbytes(32) for _ in range(1000)]
    trace = Trace(end=300.0)
    for node in nodes:
        trace.node_state(0.0, node, "alive")
    observers = nodes
    for observer in observers:
        for subject in rnd.sample(nodes, 40):
            if subject != observer:
                trace.view(0.5, observer, subject, "alive")
    for i, victim in enumerate(rnd.sample(nodes, 20)):
        at = 20.0 + 10 * i
        trace.node_state(at, victim, "crashed")
        for observer in observers:
            if observer != victim:
                trace.view(at + rnd.uniform(1, 5), observer, victim, "dead")
    begun = time.process_time()
    first = WorkloadModel(default_workloads(20, 2))
    first.replay(trace)
    took = time.process_time() - begun
    again = WorkloadModel(default_workloads(20, 2))
    again.replay(Trace(truth=list(trace.truth), views=list(trace.views), end=trace.end))
    assert first.records == again.records
    assert took < 20, f"replay took {took:.1f}s of CPU"


def test_nodes_ranked_last_hold_work_only_when_others_cannot():
    trace = healthy()
    phones = NODES[:4]
    model = WorkloadModel(default_workloads(10, 2), last=phones)
    model.replay(trace)
    counting = {node for node, flags in model._counting.items() if any(flags)}
    assert counting <= set(NODES[4:])
    trace2 = healthy()
    crash(trace2, NODES[4], at=10.0, seen_after=1.0)
    crash(trace2, NODES[5], at=10.0, seen_after=1.0)
    model = WorkloadModel(default_workloads(10, 2), last=phones)
    model.replay(trace2)
    assert set(final(trace2).values()) == {(2, 2)}  # the phones took over
