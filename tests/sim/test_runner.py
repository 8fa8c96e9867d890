"""The simulated mode end to end: deterministic, and the checkers see real behaviour."""

from __future__ import annotations

from sim.__main__ import main
from sim.runner import run, with_overrides
from sim.scenario import load


def test_same_seed_gives_byte_identical_metrics(tmp_path):
    scenario = with_overrides(load("churn"), nodes=60, duration=120.0, seed=11)
    first = run(scenario, out=tmp_path / "a", progress=False)
    second = run(scenario, out=tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "metrics.json").read_bytes()
    assert a == (tmp_path / "b" / "metrics.json").read_bytes()
    assert first.document == second.document
    other = run(with_overrides(scenario, seed=12), out=tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "metrics.json").read_bytes() != a
    assert other.passed and first.passed
    for name in ("summary.md", "alive.png", "messages.png", "faults.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0


def test_partition_both_halves_declare_the_other_dead_then_converge(tmp_path):
    scenario = with_overrides(load("partition"), nodes=40, duration=240.0, seed=3)
    result = run(scenario, out=tmp_path, progress=False)
    assert result.passed, [r.summary for r in result.results if not r.passed]
    (t_split, groups), (t_heal, healed) = result.trace.partitions
    assert healed is None and len(groups) == 2
    left, right = groups
    dead_across = {(o, s) for t, o, s, state in result.trace.views
                   if t_split < t < t_heal and state == "dead"}
    assert all((o, s) in dead_across for o in left for s in right)
    assert all((o, s) in dead_across for o in right for s in left)
    conv = next(r for r in result.results if r.name == "membership_convergence")
    assert conv.figures["heal_max_s"] < scenario.checks.convergence_bound
    assert (tmp_path / "alive.png").exists()


def test_command_line_runs_a_scenario_file_and_reports_a_typo(tmp_path, capsys):
    scenario = tmp_path / "mine.toml"
    scenario.write_text('[scenario]\nnodes = 20\nduration = "60s"\n[[faults]]\nat = "20s"\n'
                        'action = "crash"\ncount = 2\n')
    assert main(["run", str(scenario), "--quiet", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "metrics.json").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nnodes = 20\ndurtion = "60s"\n')
    assert main(["run", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: unknown key 'durtion'" in err and err.count("\n") == 1
