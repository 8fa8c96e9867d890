"""Checkers judge crafted traces: the ones that must fail do fail, and say why."""

from __future__ import annotations

from sim.checkers import (
    DetectionTime,
    FalsePositives,
    MembershipConvergence,
    SplitBrain,
    detection_times,
)
from sim.scenario import Scenario, parse
from sim.trace import Trace

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))
NODES = [A, B, C, D]


def healthy_trace(end: float = 100.0) -> Trace:
    trace = Trace(end=end)
    for node in NODES:
        trace.node_state(0.0, node, "alive")
    for observer in NODES:
        for subject in NODES:
            if observer != subject:
                trace.view(0.5, observer, subject, "alive")
    return trace


def scenario(text: str = "") -> Scenario:
    return parse("[scenario]\nduration = \"100s\"\nnodes = 4\n" + text, "test.toml")


def crash_d(trace: Trace, at: float, seen_after: dict[bytes, float]) -> None:
    trace.fault(at, "crash", node=D.hex())
    trace.node_state(at, D, "crashed")
    for observer, delay in seen_after.items():
        trace.view(at + delay - 1.0, observer, D, "suspect")
        trace.view(at + delay, observer, D, "dead")


def test_quick_detection_passes_and_is_measured():
    trace = healthy_trace()
    crash_d(trace, 10.0, {A: 2.0, B: 3.0, C: 4.0})
    result = DetectionTime().check(trace, scenario("[checks]\ndetect_bound = \"5s\"\n"))
    assert result.passed
    assert result.figures["detect_median_s"] == 3.0  # declared dead
    assert result.figures["suspect_median_s"] == 2.0
    times, first = detection_times(trace)
    assert sorted(times) == [2.0, 3.0, 4.0] and first == [2.0]
    suspected, _ = detection_times(trace, ("suspect", "dead"))
    assert sorted(suspected) == [1.0, 2.0, 3.0]


def test_slow_detection_fails():
    trace = healthy_trace()
    crash_d(trace, 10.0, {A: 2.0, B: 3.0, C: 40.0})
    result = DetectionTime().check(trace, scenario("[checks]\ndetect_bound = \"5s\"\n"))
    assert not result.passed
    assert result.figures["detect_p99_s"] == 40.0


def test_never_detected_crash_fails_convergence():
    trace = healthy_trace()
    crash_d(trace, 10.0, {A: 2.0, B: 3.0})  # C never notices
    result = MembershipConvergence().check(trace, scenario())
    assert not result.passed
    assert "never converged" in result.examples[0]
    split = SplitBrain().check(trace, scenario())
    assert not split.passed and "believes" in split.examples[0]


def test_convergence_after_crash_is_the_slowest_observer():
    trace = healthy_trace()
    crash_d(trace, 10.0, {A: 2.0, B: 3.0, C: 4.0})
    result = MembershipConvergence().check(trace, scenario())
    assert result.passed
    assert result.figures["crash_max_s"] == 3.0  # C suspected it after 3 s


def test_false_death_of_a_live_node_fails():
    trace = healthy_trace()
    trace.view(50.0, A, B, "suspect")
    trace.view(52.0, A, B, "dead")
    trace.view(53.0, A, B, "alive")
    result = FalsePositives().check(trace, scenario())
    assert not result.passed
    assert result.figures["false_deaths"] == 1 and result.figures["false_suspicions"] == 1
    assert "declared" in result.examples[0]


def test_suspicion_alone_is_counted_not_failed():
    trace = healthy_trace()
    trace.view(50.0, A, B, "suspect")
    trace.view(51.0, A, B, "alive")
    result = FalsePositives().check(trace, scenario())
    assert result.passed and result.figures["false_suspicions"] == 1


def test_partition_then_heal_converges_and_split_brain_is_caught():
    trace = healthy_trace(end=200.0)
    halves = [frozenset({A, B}), frozenset({C, D})]
    trace.fault(20.0, "partition")
    trace.partition(20.0, halves)
    for observer, subject in [(A, C), (A, D), (B, C), (B, D), (C, A), (C, B), (D, A), (D, B)]:
        trace.view(25.0, observer, subject, "dead")
    trace.fault(60.0, "heal")
    trace.partition(60.0, None)
    for observer, subject in [(A, C), (A, D), (B, C), (B, D), (C, A), (C, B), (D, A)]:
        trace.view(70.0, observer, subject, "alive")
    # D never hears of B again: a split brain
    result = SplitBrain().check(trace, scenario("[checks]\nconvergence_bound = \"30s\"\n"))
    assert not result.passed
    assert any(f"{D.hex()[:8]} believes {B.hex()[:8]} not alive" in e for e in result.examples)
    trace.view(75.0, D, B, "alive")
    assert SplitBrain().check(trace, scenario("[checks]\nconvergence_bound = \"30s\"\n")).passed
    conv = MembershipConvergence().check(trace, scenario())
    assert conv.passed
    assert conv.figures["partition_max_s"] == 5.0 and conv.figures["heal_max_s"] == 15.0


def test_views_during_partition_are_not_false_deaths():
    trace = healthy_trace(end=200.0)
    trace.partition(20.0, [frozenset({A, B}), frozenset({C, D})])
    trace.view(25.0, A, C, "dead")
    assert FalsePositives().check(trace, scenario()).figures["false_deaths"] == 0


def test_a_restarted_node_forgets_what_its_old_process_believed():
    trace = healthy_trace()
    trace.node_state(10.0, A, "crashed")
    for observer in (B, C, D):
        trace.view(12.0, observer, A, "dead")
    trace.node_state(20.0, A, "alive")  # a new process: it knows nobody yet
    for observer in (B, C, D):
        trace.view(21.0, observer, A, "alive")
    result = SplitBrain().check(trace, scenario())
    assert not result.passed  # A has not learnt of B, C, D again
    assert any(f"{A.hex()[:8]} believes" in e and "not alive" in e for e in result.examples)
    for subject in (B, C, D):
        trace.view(22.0, A, subject, "alive")
    assert SplitBrain().check(trace, scenario()).passed


def test_a_change_undone_before_anyone_could_notice_is_not_late():
    trace = healthy_trace()
    trace.node_state(10.0, D, "crashed")
    trace.node_state(10.1, D, "alive")  # restarted at once: nobody noticed, nobody had to
    for subject in (A, B, C):
        trace.view(11.0, D, subject, "alive")
    result = MembershipConvergence().check(trace, scenario())
    assert result.passed and result.figures["superseded_episodes"] == 1


def test_declaring_a_just_woken_phone_dead_is_not_a_false_death():
    trace = healthy_trace()
    trace.node_state(30.0, B, "asleep")
    trace.node_state(55.0, B, "alive")
    trace.view(55.2, A, B, "dead")  # decided on what it saw while B slept
    assert FalsePositives().check(trace, scenario()).figures["false_deaths"] == 0
