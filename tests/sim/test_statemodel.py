"""The replicated-state model in the simulator, and the checker that judges it."""

from __future__ import annotations

from sim.runner import run, with_overrides
from sim.scenario import load, parse
from sim.statemodel import StateConvergence
from sim.trace import Trace


def scenario(bound: str = "60s"):
    return parse(f'[scenario]\nduration = "300s"\nnodes = 10\n[checks]\n'
                 f'state_convergence_bound = "{bound}"\n', "test.toml")


def trace_with_roots(distinct_by_time: dict[float, int], fault_at: float = 50.0,
                     writes_stop: float = 0.0, end: float = 300.0) -> Trace:
    trace = Trace(end=end)
    trace.fault(fault_at, "heal")
    trace.record("state_model", table="workloads", writes_stop=writes_stop)
    for t, distinct in sorted(distinct_by_time.items()):
        trace.record("state_roots", t=t, distinct=distinct, writes=int(t))
    return trace


def test_roots_that_agree_soon_after_the_last_fault_pass_with_the_time_measured():
    trace = trace_with_roots({10.0: 3, 50.0: 4, 60.0: 2, 70.0: 1, 80.0: 1})
    result = StateConvergence().check(trace, scenario())
    assert result.passed, result.summary
    assert result.figures["converged_after_last_fault_s"] == 20.0
    assert result.figures["max_distinct_roots"] == 4


def test_roots_that_agree_only_after_the_bound_fail():
    trace = trace_with_roots({50.0: 4, 100.0: 2, 130.0: 1})
    result = StateConvergence().check(trace, scenario("60s"))
    assert not result.passed
    assert result.figures["converged_after_last_fault_s"] == 80.0


def test_roots_that_never_agree_fail_with_the_last_samples_as_examples():
    trace = trace_with_roots({50.0: 4, 150.0: 2, 290.0: 2})
    result = StateConvergence().check(trace, scenario())
    assert not result.passed
    assert "2 different roots" in result.summary
    assert result.examples[-1] == "at 290s: 2 roots"


def test_agreement_before_the_last_fault_does_not_count():
    trace = trace_with_roots({10.0: 1, 50.0: 3, 290.0: 3})
    result = StateConvergence().check(trace, scenario())
    assert not result.passed


def test_writes_are_judged_from_when_they_stop():
    trace = trace_with_roots({50.0: 1, 100.0: 2, 200.0: 2, 230.0: 1}, writes_stop=200.0)
    result = StateConvergence().check(trace, scenario())
    assert result.passed and result.figures["converged_after_last_fault_s"] == 30.0


def test_a_run_too_short_to_judge_is_not_failed():
    trace = trace_with_roots({50.0: 3, 80.0: 3}, end=90.0)
    result = StateConvergence().check(trace, scenario("60s"))
    assert result.passed and "not judged" in result.summary


def test_partitioned_writers_diverge_then_reach_one_root_after_heal(tmp_path):
    base = with_overrides(load("state-partition"), nodes=40, duration=300.0, seed=5)
    assert [f.action for f in base.faults] == ["partition", "heal"]
    result = run(base, out=tmp_path, progress=False)
    state = next(r for r in result.results if r.name == "state_convergence")
    assert state.passed, state.summary
    assert "reached one Merkle root" in state.summary
    assert state.figures["writes"] > 20
    assert state.figures["max_distinct_roots"] > 1  # the halves really did diverge
    assert state.figures["converged_after_last_fault_s"] is not None
    assert state.figures["converged_after_last_fault_s"] <= base.checks.state_convergence_bound
