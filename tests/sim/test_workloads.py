"""The simulator's workloads: the production reconciler and planner on simulated nodes
(real SWIM membership, fake runtime), judged by the availability checker; and the checker
on crafted records."""

from __future__ import annotations

from apps.workloads.spec import replica_name
from sim.availability import WorkloadAvailability
from sim.runner import Run
from sim.scenario import Scenario, parse
from sim.trace import Trace
from sim.workloads import WorkloadSim, default_specs


def scenario(text: str = "", nodes: int = 10, duration: str = "90s") -> Scenario:
    return parse(f'[scenario]\nduration = "{duration}"\nnodes = {nodes}\nseed = 3\n'
                 'models = []\n' + text, "test.toml")


def simulate(sc: Scenario, model: WorkloadSim, actions=()) -> tuple[Run, object]:
    run = Run(sc, with_dht=False, models=[model])
    run.schedule()
    for at, action in actions:
        run.engine.at(at, action, run, model)
    run.engine.run_until(sc.scenario.duration)
    run.trace.end = sc.scenario.duration
    model.finish(run.engine.now)
    return run, WorkloadAvailability().check(run.trace, sc)


def final(trace: Trace) -> dict[str, tuple[int, int]]:
    out = {}
    for row in trace.records["workload_replicas"]:
        out[row["workload"]] = (row["running"], row["wanted"])
    return out


def holders(model: WorkloadSim) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for node, names in model.running_on().items():
        for name in names:
            out.setdefault(name, set()).add(node)
    return out


def crash_holder_of(workload: str):
    def act(run: Run, model: WorkloadSim) -> None:
        victim = sorted(holders(model)[workload])[0]
        run.trace.record("victim", node=victim)
        run.cluster.crash(victim)
    return act


def test_healthy_mesh_runs_every_replica_once_on_distinct_nodes():
    model = WorkloadSim(default_specs(8, 2))
    run, result = simulate(scenario(), model)
    assert result.passed, result.summary
    assert set(final(run.trace).values()) == {(2, 2)}
    assert result.figures["episodes"] == 0 and result.figures["availability"] == 1.0
    assert all(len(nodes) == 2 for nodes in holders(model).values())
    # every node's copy of the claims names the nodes that really run the replicas
    runs = holders(model)
    for table in model.claims.values():
        named: dict[str, set[bytes]] = {}
        for (workload, _), (_, claim) in table.items():
            if claim is not None:
                named.setdefault(workload, set()).add(claim.node)
        assert named == runs
    assert model.passes > 0 and model.plans_computed >= 1


def test_a_crashed_holder_is_replaced_within_detection_plus_start_with_a_higher_token():
    model = WorkloadSim(default_specs(8, 2))
    run, result = simulate(scenario(), model, [(30.0, crash_holder_of("w0"))])
    assert result.passed, result.summary
    assert result.figures["episodes"] >= 1
    assert 1.0 < result.figures["recovery_max_s"] < result.figures["bound_s"]
    assert set(final(run.trace).values()) == {(2, 2)}
    victim = run.trace.records["victim"][0]["node"]
    assert victim not in holders(model)["w0"]
    for node, agent in model.agents.items():  # the taker-over raised the fencing token
        status = agent.runtime.replicas.get(replica_name("w0", 0)) or \
            agent.runtime.replicas.get(replica_name("w0", 1))
        if agent.alive and status is not None and node != victim:
            assert status.fencing_token >= 1


def test_a_slow_start_breaks_the_bound_and_the_checker_says_so():
    model = WorkloadSim(default_specs(8, 2), start_delay=30.0)
    _, result = simulate(scenario(duration="120s"), model, [(70.0, crash_holder_of("w0"))])
    assert not result.passed
    assert result.figures["late_episodes"] >= 1 and "missing from" in result.examples[0]


def test_partition_over_replicates_then_hands_back_to_exactly_the_wanted_count():
    text = ('[[faults]]\nat = "20s"\naction = "partition"\ngroups = [0.5, 0.5]\n'
            '[[faults]]\nat = "50s"\naction = "heal"\n')
    model = WorkloadSim(default_specs(8, 2))
    run, result = simulate(scenario(text, duration="150s"), model)
    assert result.passed, result.summary
    assert result.figures["max_over_replication"] >= 1  # each side ran its own
    assert set(final(run.trace).values()) == {(2, 2)}
    assert all(len(nodes) == 2 for nodes in holders(model).values())


def test_nodes_on_battery_hold_work_only_when_others_cannot():
    text = "[population]\nphones = 0.4\nphone_awake = \"1h\"\n"
    model = WorkloadSim(default_specs(6, 2))
    run, result = simulate(scenario(text), model)
    phones = {h.node_id for h in run.cluster.by_index if h.phone}
    assert len(phones) == 4 and result.passed
    assert not set(model.running_on()) & phones


def test_same_seed_same_records():
    first = simulate(scenario(), WorkloadSim(default_specs(6, 2)),
                     [(30.0, crash_holder_of("w1"))])[0]
    again = simulate(scenario(), WorkloadSim(default_specs(6, 2)),
                     [(30.0, crash_holder_of("w1"))])[0]
    assert first.trace.records["workload_replicas"] == again.trace.records["workload_replicas"]


def test_only_workload_nodes_run_reconcilers():
    model = WorkloadSim(default_specs(4, 2), workload_nodes=5)
    run, result = simulate(scenario(nodes=20), model)
    assert 1 <= len(model.agents) < 20 and result.passed
    assert set(model.running_on()) <= set(model.agents)
    assert all(node in model.agents for node in model.offers)
    assert run.trace.records["workload_replicas"]


def test_checker_on_crafted_records_and_without_records():
    sc = scenario()
    trace = Trace(end=60.0)
    for t, running in ((1.0, 2), (10.0, 1), (30.0, 2)):
        trace.record("workload_replicas", t=t, workload="db", running=running, wanted=2)
    result = WorkloadAvailability(bound=15.0).check(trace, sc)
    assert not result.passed and result.examples == [
        "db: 1 replica(s) missing from 10.0s, back after 20.0s (bound 15s)"]
    assert result.figures["availability"] == round((2 * 9 + 1 * 20 + 2 * 30) / (2 * 59), 6)
    empty = WorkloadAvailability().check(Trace(end=10.0), sc)
    assert empty.passed and empty.figures["workloads"] == 0
    never = Trace(end=10.0)
    never.record("workload_replicas", t=0.0, workload="x", running=0, wanted=1)
    assert not WorkloadAvailability().check(never, sc).passed
