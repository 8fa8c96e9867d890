"""ReconcilerCore rules, driven with hand-made runtime reports (no I/O, time as numbers)."""

from __future__ import annotations

from dataclasses import replace

from apps.leases import HeldLease
from apps.runtimes.base import HealthState, ReplicaState, ReplicaStatus
from apps.workloads.config import ReconcilerConfig, backoff_delay
from apps.workloads.core import ClaimState, ReconcilerCore, WorkloadEntry
from apps.workloads.outputs import DeleteClaim, Report, StartReplica, StopReplica, WriteClaim
from apps.workloads.spec import parse_spec
from apps.workloads.tables import ReplicaClaim

ME, OTHER, THIRD = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
CFG = ReconcilerConfig(backoff_base=1.0, backoff_max=8.0, backoff_reset=30.0,
                       handoff_timeout=20.0)
WEB = parse_spec({"name": "web", "image": "localhost/meshcloud/web:1", "replicas": 2})
DB = parse_spec({"name": "db", "image": "localhost/meshcloud/busybox:1", "singleton": True,
                 "command": ["sleep", "1000"]})


def entry(spec=WEB, replicas=None, generation=1) -> WorkloadEntry:
    return WorkloadEntry(spec, spec.replicas if replicas is None else replicas, generation)


def status(spec, index, state=ReplicaState.RUNNING, *, fencing=1, rid="c1", restarts=0,
           health=HealthState.NONE, exit_code=None, message="") -> ReplicaStatus:
    cs = spec.container_spec(index, fencing)
    return ReplicaStatus(name=cs.name, runtime="podman", state=state, id=rid,
                         restarts=restarts, health=health, workload=spec.name, replica=index,
                         fencing_token=fencing, spec_hash=cs.spec_hash(), exit_code=exit_code,
                         message=message)


def claim(node=ME, fencing=1, state=ClaimState.RUNNING, generation=1, restarts=0,
          message="") -> ReplicaClaim:
    return ReplicaClaim(node=node, fencing=fencing, state=state, restarts=restarts,
                        updated_ms=1, generation=generation, message=message)


def step(core, now, *, workloads=None, assignment=None, claims=None, observed=(),
         leases=None, busy=(), hold_new=False):
    return core.step(now, 1000, workloads=workloads if workloads is not None
                     else {"web": entry()},
                     assignment=assignment if assignment is not None
                     else {"web": {0: ME, 1: OTHER}},
                     claims=claims or {}, observed=list(observed), leases=leases or {},
                     busy=busy, hold_new=hold_new)


def of(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def test_assigned_replica_is_claimed_then_started_with_fencing_above_the_last_claim():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, claims={("web", 0): claim(node=THIRD, fencing=4)})
    writes, starts = of(out, WriteClaim), of(out, StartReplica)
    assert [w.key for w in writes] == [("web", 0)]
    assert writes[0].claim.node == ME and writes[0].claim.fencing == 5
    assert writes[0].claim.state == ClaimState.STARTING
    assert len(starts) == 1 and starts[0].spec.name == "web-0"
    assert starts[0].spec.fencing_token == 5 and starts[0].runtime == "podman"
    reports = of(out, Report)
    assert reports[0].facts["took_over_from"] == THIRD.hex()


def test_running_replica_is_reported_once():
    core = ReconcilerCore(ME, CFG)
    running = status(WEB, 0, fencing=1)
    out = step(core, 0.0, claims={("web", 0): claim(state=ClaimState.STARTING)},
               observed=[running])
    assert of(out, StartReplica) == []
    assert [w.claim.state for w in of(out, WriteClaim)] == [ClaimState.RUNNING]
    assert step(core, 1.0, claims={("web", 0): claim()}, observed=[running]) == []


def test_health_check_pending_is_starting_not_running():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, observed=[status(WEB, 0, health=HealthState.STARTING)],
               claims={("web", 0): claim(state=ClaimState.STARTING)})
    assert of(out, WriteClaim) == []


def test_crash_backs_off_exponentially_and_resets_after_a_long_run():
    core = ReconcilerCore(ME, CFG)
    claims = {("web", 0): claim()}
    expected_delays = []
    now = 0.0
    for n in range(1, 6):
        crashed = status(WEB, 0, ReplicaState.FAILED, rid=f"c{n}", exit_code=1,
                         restarts=n - 1)
        out = step(core, now, claims=claims, observed=[crashed])
        assert of(out, StartReplica) == [], "restarted before its back-off"
        failed = [w.claim for w in of(out, WriteClaim)]
        assert failed and failed[0].state == ClaimState.FAILED
        assert "exited with code 1" in failed[0].message
        claims = {("web", 0): failed[0]}
        delay = core.next_deadline() - now
        expected_delays.append(backoff_delay(n, 1.0, 8.0))
        assert delay == expected_delays[-1]
        assert step(core, now + delay - 0.01, claims=claims, observed=[crashed]) == []
        out = step(core, now + delay, claims=claims, observed=[crashed])
        assert len(of(out, StartReplica)) == 1
        now += delay + 0.5
    assert expected_delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    # it runs for longer than backoff_reset: the next crash waits 1 s again
    running = status(WEB, 0, rid="c9", restarts=5)
    step(core, now, claims=claims, observed=[running])
    step(core, now + 31, claims=claims, observed=[running])
    step(core, now + 32, claims=claims,
         observed=[status(WEB, 0, ReplicaState.FAILED, rid="c9", exit_code=137)])
    assert core.next_deadline() == now + 33


def test_spec_change_restarts_without_counting_a_failure():
    core = ReconcilerCore(ME, CFG)
    old = status(WEB, 0)
    new_spec = replace(WEB, env={"V": "2"})
    workloads = {"web": entry(new_spec, generation=2)}
    out = step(core, 0.0, workloads=workloads, claims={("web", 0): claim()}, observed=[old])
    stops = of(out, StopReplica)
    assert len(stops) == 1 and stops[0].reason == "spec changed" and not stops[0].remove
    ended = replace(old, state=ReplicaState.EXITED, exit_code=143)
    out = step(core, 1.0, workloads=workloads, claims={("web", 0): claim()}, observed=[ended])
    starts = of(out, StartReplica)
    assert len(starts) == 1 and starts[0].spec.env == {"V": "2"}
    assert core.failures(("web", 0)) == 0


def test_unhealthy_replica_is_stopped_and_counts_as_a_failure():
    core = ReconcilerCore(ME, CFG)
    sick = status(WEB, 0, ReplicaState.UNHEALTHY, health=HealthState.UNHEALTHY)
    out = step(core, 0.0, claims={("web", 0): claim()}, observed=[sick])
    assert [s.reason for s in of(out, StopReplica)] == ["unhealthy"]
    assert core.failures(("web", 0)) == 1
    ended = replace(sick, state=ReplicaState.EXITED)
    assert of(step(core, 0.5, observed=[ended]), StartReplica) == []
    assert of(step(core, 1.0, observed=[ended]), StartReplica) != []
    assert core.failures(("web", 0)) == 1


def test_start_failure_for_missing_image_waits_the_longest_backoff():
    core = ReconcilerCore(ME, CFG)
    step(core, 0.0)
    core.on_start_failed(("web", 0), "image_not_found", "image x not found locally", 0.1)
    out = step(core, 0.2, claims={("web", 0): claim(state=ClaimState.STARTING)})
    assert of(out, StartReplica) == []
    assert of(out, WriteClaim)[0].claim.message.startswith("image_not_found")
    assert core.next_deadline() == 0.1 + CFG.backoff_max


def test_moved_replica_keeps_running_until_the_new_owner_runs_it():
    core = ReconcilerCore(ME, CFG)
    mine = status(WEB, 0)
    moved = {"web": {0: THIRD, 1: OTHER}}
    out = step(core, 0.0, assignment=moved, claims={("web", 0): claim()}, observed=[mine])
    assert of(out, StopReplica) == []
    assert core.next_deadline() == 20.0
    starting = {("web", 0): claim(node=THIRD, fencing=2, state=ClaimState.STARTING)}
    assert of(step(core, 1.0, assignment=moved, claims=starting, observed=[mine]),
              StopReplica) == []
    running = {("web", 0): claim(node=THIRD, fencing=2)}
    stops = of(step(core, 2.0, assignment=moved, claims=running, observed=[mine]), StopReplica)
    assert len(stops) == 1 and stops[0].remove and stops[0].reason.startswith("moved to")


def test_moved_replica_is_stopped_after_the_handoff_timeout():
    core = ReconcilerCore(ME, CFG)
    moved = {"web": {0: THIRD, 1: OTHER}}
    step(core, 0.0, assignment=moved, observed=[status(WEB, 0)])
    stops = of(step(core, 20.0, assignment=moved, observed=[status(WEB, 0)]), StopReplica)
    assert len(stops) == 1 and stops[0].remove


def test_removed_workload_stops_removes_and_deletes_the_claim():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, workloads={}, assignment={}, claims={("web", 0): claim()},
               observed=[status(WEB, 0)])
    stops = of(out, StopReplica)
    assert len(stops) == 1 and stops[0].remove and stops[0].reason == "workload removed"
    assert of(out, DeleteClaim) == []  # only once it is gone
    out = step(core, 1.0, workloads={}, assignment={}, claims={("web", 0): claim()})
    assert of(out, DeleteClaim) == [DeleteClaim(("web", 0), ME)]


def test_scale_down_stops_the_extra_index_and_ended_leftovers_are_removed():
    core = ReconcilerCore(ME, CFG)
    workloads = {"web": entry(replicas=1)}
    out = step(core, 0.0, workloads=workloads, assignment={"web": {0: OTHER}},
               observed=[status(WEB, 1)])
    assert [s.reason for s in of(out, StopReplica)] == ["scaled down"]
    out = step(core, 1.0, workloads=workloads, assignment={"web": {0: OTHER}},
               observed=[status(WEB, 1, ReplicaState.EXITED)],
               claims={("web", 1): claim()})
    assert [s.reason for s in of(out, StopReplica)] == ["cleanup"]
    assert of(out, DeleteClaim) == [DeleteClaim(("web", 1), ME)]


def test_busy_names_are_left_alone():
    core = ReconcilerCore(ME, CFG)
    assert step(core, 0.0, busy={"web-0"}) == []


def test_singleton_runs_only_under_a_lease_with_its_term_as_fencing():
    core = ReconcilerCore(ME, CFG)
    workloads = {"db": entry(DB)}
    assignment = {"db": {0: ME}}
    out = step(core, 0.0, workloads=workloads, assignment=assignment,
               claims={("db", 0): claim(node=OTHER, fencing=3)})
    assert out == [] and core.wanted_leases == {"db"}
    lease = HeldLease(term=4, valid_until=8.9)
    out = step(core, 0.1, workloads=workloads, assignment=assignment,
               claims={("db", 0): claim(node=OTHER, fencing=3)}, leases={"db": lease})
    starts = of(out, StartReplica)
    assert starts[0].spec.fencing_token == 4
    assert of(out, WriteClaim)[0].claim.fencing == 4
    # running; the deadline is the lease end minus the stop budget
    running = status(DB, 0, fencing=4)
    step(core, 1.0, workloads=workloads, assignment=assignment, leases={"db": lease},
         claims={("db", 0): claim(fencing=4)}, observed=[running])
    assert core.next_deadline() == 8.9 - CFG.singleton_stop_budget
    out = step(core, 6.95, workloads=workloads, assignment=assignment, leases={"db": lease},
               claims={("db", 0): claim(fencing=4)}, observed=[running])
    stops = of(out, StopReplica)
    assert stops and stops[0].timeout == CFG.singleton_stop_timeout
    assert stops[0].reason == "lease lost"


def test_singleton_with_too_little_lease_left_does_not_start():
    core = ReconcilerCore(ME, CFG)
    lease = HeldLease(term=2, valid_until=2.5)
    out = step(core, 0.0, workloads={"db": entry(DB)}, assignment={"db": {0: ME}},
               leases={"db": lease})
    assert of(out, StartReplica) == []


def test_singleton_placed_elsewhere_stops_at_once():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, workloads={"db": entry(DB)}, assignment={"db": {0: OTHER}},
               observed=[status(DB, 0)])
    stops = of(out, StopReplica)
    assert stops and stops[0].timeout == CFG.singleton_stop_timeout
    assert core.wanted_leases == set()


def test_adopted_replica_gets_its_fencing_raised_through_start():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, claims={("web", 0): claim(fencing=7)},
               observed=[status(WEB, 0, fencing=3)])
    starts = of(out, StartReplica)
    assert len(starts) == 1 and starts[0].spec.fencing_token == 7
    assert of(step(core, 1.0, claims={("web", 0): claim(fencing=7)},
                  observed=[status(WEB, 0, fencing=3)]), StartReplica) == []


def test_foreign_replicas_are_ignored():
    core = ReconcilerCore(ME, CFG)
    foreign = replace(status(WEB, 0), name="hand-made")
    out = step(core, 0.0, workloads={}, assignment={}, observed=[foreign])
    assert out == []


def test_a_booting_node_alone_starts_nothing_but_keeps_what_runs():
    core = ReconcilerCore(ME, CFG)
    out = step(core, 0.0, assignment={"web": {0: ME, 1: ME}},
               claims={("web", 0): claim()}, observed=[status(WEB, 0)], hold_new=True)
    assert of(out, StartReplica) == [] and of(out, StopReplica) == []
    out = step(core, 1.0, assignment={"web": {0: ME, 1: ME}},
               claims={("web", 0): claim()}, observed=[status(WEB, 0)])
    assert [s.spec.name for s in of(out, StartReplica)] == ["web-1"]
