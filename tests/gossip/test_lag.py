"""Our own event-loop lag is no evidence against a peer (issue 12 §1).

Core tests drive SwimCores by hand (``on_loop_lag`` is the driver's measure, an input);
the driver test holds the loop under the autojump clock and checks that it is measured.
"""

from __future__ import annotations

import os
import random

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from gossip.lag import BUCKETS_MS, LagHistogram
from gossip.member import MemberState
from gossip.messages import Ack, Ping, PingReq, PushPull, Suspect
from tests.gossip.helpers import CONFIG, parts, sent
from tests.gossip.test_core import first_probe, meshed

SUSPECT = MemberState.SUSPECT
DEAD = MemberState.DEAD
ALIVE = MemberState.ALIVE
STALL = CONFIG.stall_threshold + 0.2


# --- the histogram -----------------------------------------------------------------------


@given(st.lists(st.floats(min_value=-1.0, max_value=20.0), max_size=50))
def test_histogram_counts_every_sample_once_and_keeps_the_max(lags):
    h = LagHistogram()
    stalls = sum(h.record(lag) for lag in lags)
    snap = h.snapshot()
    assert sum(snap["histogram_ms"].values()) == len(lags) == snap["samples"]
    assert snap["stalls"] == stalls == sum(1 for lag in lags if lag > 0.1)
    assert snap["max_ms"] == pytest.approx(max([0.0, *lags]) * 1000, abs=0.1)


def test_histogram_buckets():
    h = LagHistogram()
    for lag in (0.0005, 0.03, 0.15, 7.0):
        h.record(lag)
    counts = h.snapshot()["histogram_ms"]
    assert counts["<=1"] == 1 and counts["<=50"] == 1 and counts["<=200"] == 1
    assert counts[f">{BUCKETS_MS[-1]:g}"] == 1


# --- probe rounds ------------------------------------------------------------------------


def test_a_probe_whose_wait_saw_our_stall_is_extended_and_then_acked():
    cores, wire = meshed(5)
    a = cores[0]
    target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: src == target  # the ack sits "unread"
    wire.run(a.node_id, outputs)
    wire.now += CONFIG.probe_timeout
    a.on_loop_lag(STALL, wire.now)  # we were held while the ack waited for us
    out = a.on_timer(wire.now)
    assert not sent(out, PingReq)  # no relays asked: this wait proved nothing
    assert a.statistics().probes_stalled == 1 and a.statistics().loop_stalls == 1
    seq = sent(wire.outputs_of(a.node_id), Ping, to=target)[0].seq
    a.on_message(target, Ack(seq=seq), wire.now + 0.01)  # we read it at last
    wire.drop = lambda src, dst, msg: False
    wire.advance(wire.now + 2.0)
    assert a.state_of(target) is ALIVE
    assert a.statistics().probes_failed == 0 and a.statistics().suspicions_started == 0


def test_without_a_stall_the_same_wait_asks_relays():
    cores, wire = meshed(5)
    a = cores[0]
    target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: src == target
    wire.run(a.node_id, outputs)
    wire.now += CONFIG.probe_timeout
    a.on_loop_lag(CONFIG.stall_threshold / 2, wire.now)  # ordinary jitter
    assert len(sent(a.on_timer(wire.now), PingReq)) == CONFIG.indirect_checks
    assert a.statistics().probes_stalled == 0 and a.statistics().loop_stalls == 0


def test_stall_extensions_are_bounded_so_a_crash_is_still_found():
    cores, wire = meshed(5)
    a = cores[0]
    target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: dst == target or src == target  # it crashed
    wire.run(a.node_id, outputs)
    for _ in range(20):  # stalled before every deadline
        due = a.next_deadline()
        assert due is not None
        wire.now = due
        a.on_loop_lag(STALL, wire.now)
        wire.run(a.node_id, a.on_timer(wire.now))
        if a.state_of(target) is not ALIVE:
            break
    assert a.state_of(target) is SUSPECT
    assert a.statistics().probes_stalled <= 2 * CONFIG.stall_extensions


def test_lag_raises_the_health_score_at_most_to_its_cap_and_once_per_interval():
    cores, _wire = meshed(3)
    a = cores[0]
    for i in range(10):
        a.on_loop_lag(STALL, 0.01 * i)  # ten stalls within one interval
    assert a.awareness.score == 1
    for i in range(1, 10):
        a.on_loop_lag(STALL, i * CONFIG.probe_interval)
    assert a.awareness.score == CONFIG.lag_health_cap


# --- suspicions --------------------------------------------------------------------------


def suspect_from(cores, wire, accuser, accused):
    a = cores[0]
    s = Suspect(node=accused.node_id, incarnation=0, from_node=accuser.node_id)
    wire.run(accuser.node_id, a.on_message(accuser.node_id, s, wire.now))
    return a._suspicions[accused.node_id]


def test_a_suspicion_running_out_during_our_stall_is_postponed():
    cores, wire = meshed(6)
    a, b, c = cores[0], cores[1], cores[2]
    wire.drop = lambda src, dst, msg: True  # nothing moves: only a's timers matter
    suspicion = suspect_from(cores, wire, b, c)
    for node in cores[3:6]:  # confirmed: it would die without a last check
        suspect_from(cores, wire, node, c)
    assert suspicion.confirmed
    deadline = suspicion.deadline()
    a.on_loop_lag(STALL, deadline - 0.01)
    wire.now = deadline
    a.on_timer(deadline)
    assert a.state_of(c.node_id) is SUSPECT  # not dead: the refutation may be unread
    assert a.statistics().suspicions_postponed == 1
    assert suspicion.deadline() == pytest.approx(deadline + a.awareness.scale(CONFIG.probe_timeout))
    # with no stall since, it ends; but our stall was recent, so even confirmed it ends
    # with a last probe round of our own (c is silent: dead after it)
    wire.now = suspicion.deadline()
    a.on_timer(wire.now)
    assert a.state_of(c.node_id) is SUSPECT and suspicion.checking
    wire.advance(wire.now + 10 * CONFIG.probe_interval)
    assert a.state_of(c.node_id) is DEAD


def test_a_suspicion_in_a_three_node_mesh_needs_the_other_nodes_word():
    # Before: nobody could reach k = 3, so k fell to 0 and one accuser's word killed the
    # member at the minimum timeout (0.25 s), before its refutation could come back.
    cores, wire = meshed(3)
    a, b, c = cores
    wire.drop = lambda src, dst, msg: True
    suspicion = suspect_from(cores, wire, b, c)
    assert suspicion.k == 1 and not suspicion.confirmed
    wire.now = suspicion.min_timeout + 0.01
    a.on_timer(wire.now)
    assert a.state_of(c.node_id) is SUSPECT
    wire.drop = lambda src, dst, msg: False  # c answers a's own last check
    wire.advance(suspicion.max_timeout + 2.0)
    assert a.state_of(c.node_id) is ALIVE or a.state_of(c.node_id) is SUSPECT
    assert a.statistics().deaths_declared == 0


# --- start-up ----------------------------------------------------------------------------


def test_no_accusation_during_the_grace_after_a_join():
    cores, wire = meshed(4)
    a = cores[0]
    b = cores[1]
    a.join([b.node_id], 0.0)
    a.on_push_pull_reply(b.node_id, PushPull(join=False, entries=b._local_state()), 0.0)
    assert not a.settled(CONFIG.startup_grace - 0.01) and a.settled(CONFIG.startup_grace)
    target, outputs = first_probe(a, wire)
    assert wire.now < CONFIG.startup_grace
    wire.drop = lambda src, dst, msg: dst == target or src == target
    wire.run(a.node_id, outputs)
    wire.advance(wire.now + CONFIG.probe_timeout + CONFIG.indirect_timeout + 0.01)
    assert a.state_of(target) is ALIVE  # our own failed round accused no one
    assert a.statistics().probes_unsettled == 1


# --- the driver ---------------------------------------------------------------------------


async def test_the_driver_measures_a_held_loop(autojump_clock):
    from gossip.driver import GossipDriver
    from gossip.hooks import cert_hooks
    from meshcloud.testing import TestMesh
    from meshcloud.transport.memory import MemoryNetwork

    mesh = TestMesh.with_members(1)
    member = mesh.members[0]
    network = MemoryNetwork()
    transport = network.add(member.key, member.authenticator)
    driver = GossipDriver(transport, CONFIG, cert_hooks(member.key, member.cert,
                                                        mesh.root.public, member.records),
                          rng=random.Random(1), watch_steps=True)
    assert driver.slow_steps is not None
    driver.slow_steps.clock = trio.current_time  # steps timed on the test's virtual clock
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await nursery.start(driver.run)
        await trio.sleep(1.0)
        assert driver.lag.max_s < CONFIG.stall_threshold
        autojump_clock.jump(0.4)  # this task holds the loop for 0.4 s without yielding
        await trio.sleep(0.2)
        status = driver.loop_status()
        assert 0.3 <= driver.lag.max_s <= 0.5 and status["stalls"] >= 1
        assert driver.statistics().core.loop_stalls >= 1
        assert status["health_score"] >= 1
        nursery.cancel_scope.cancel()


def test_a_lagging_node_gives_suspicions_more_time():
    cores, wire = meshed(6)
    a, b, c = cores[0], cores[1], cores[2]
    wire.drop = lambda src, dst, msg: True
    calm = suspect_from(cores, wire, b, c).min_timeout
    d = cores[3]
    for i in range(3):
        a.on_loop_lag(STALL, i * CONFIG.probe_interval)
    assert a.awareness.score == CONFIG.lag_health_cap
    busy = suspect_from(cores, wire, b, d)
    assert busy.min_timeout == pytest.approx(calm * (CONFIG.lag_health_cap + 1))
    assert busy.max_timeout == pytest.approx(calm * (CONFIG.lag_health_cap + 1)
                                             * CONFIG.suspicion_max_timeout_mult)


# --- a starved node's judgement ------------------------------------------------------------


def joined(cores, wire):
    a, b = cores[0], cores[1]
    a.join([b.node_id], wire.now)
    a.on_push_pull_reply(b.node_id, PushPull(join=False, entries=b._local_state()), wire.now)
    return a


def test_stalls_during_the_start_up_grace_push_its_end_back_up_to_a_bound():
    cores, wire = meshed(4)
    a = joined(cores, wire)
    grace = CONFIG.startup_grace
    a.on_loop_lag(STALL, grace - 0.5)  # still starting, and starved
    assert not a.settled(grace + 0.5) and a.settled(2 * grace - 0.5)
    t = grace - 0.5
    while t < CONFIG.startup_grace_max + 5:  # stalled for good
        t += 0.5
        a.on_loop_lag(STALL, t)
    assert a.settled(CONFIG.startup_grace_max)  # a node stalled for good still accuses
    settled_at = a._settle_at
    a.on_loop_lag(STALL, t + 1.0)  # after the grace, a stall does not reopen it
    assert a._settle_at == settled_at


def test_a_calm_node_does_not_stretch_its_grace():
    cores, wire = meshed(4)
    a = joined(cores, wire)
    a.on_loop_lag(CONFIG.stall_threshold / 2, 1.0)  # jitter, no stall
    assert a.settled(CONFIG.startup_grace)


def fail_one_round(a, wire):
    """``a`` probes a silent member; the relays' own accusations are not delivered (so
    what ``a`` makes of the member is its own judgement)."""
    target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: (dst == target or src == target
                                       or any(type(p) is Suspect for p in parts(msg)))
    wire.run(a.node_id, outputs)
    end = wire.now + a.awareness.scale(CONFIG.probe_timeout + CONFIG.indirect_timeout)
    wire.advance(end + 0.001)
    return target


def test_a_node_that_stalled_lately_probes_again_before_it_accuses():
    cores, wire = meshed(5)
    a = cores[0]
    when = a._next_probe
    a.on_loop_lag(STALL, when - 0.5)  # starved half a second before the round
    wire.now = when - 0.5
    target = fail_one_round(a, wire)
    assert a.state_of(target) is ALIVE  # not yet: one more round first
    assert a.statistics().probes_retried == 1 and target in a._rounds
    wire.advance(wire.now + a.awareness.scale(CONFIG.probe_timeout + CONFIG.indirect_timeout)
                 + 0.01)
    assert a.state_of(target) is SUSPECT  # two failed rounds: now it accuses
    assert a.statistics().suspicions_started == 1


def test_a_calm_node_accuses_after_one_failed_round():
    cores, wire = meshed(5)
    a = cores[0]
    target = fail_one_round(a, wire)
    assert a.state_of(target) is SUSPECT
    assert a.statistics().probes_retried == 0


def test_a_shaky_node_checks_a_confirmed_suspect_itself_before_declaring_it_dead():
    cores, wire = meshed(6)
    a, b, c = cores[0], cores[1], cores[2]
    wire.drop = lambda src, dst, msg: True
    suspicion = suspect_from(cores, wire, b, c)
    for node in cores[3:6]:
        suspect_from(cores, wire, node, c)
    assert suspicion.confirmed
    a.awareness.apply_delta(1)  # our own probes have been failing: weak judgement
    wire.now = suspicion.deadline()
    a.on_timer(wire.now)
    assert a.state_of(c.node_id) is SUSPECT and suspicion.checking  # a last check first
    wire.drop = lambda src, dst, msg: False  # and c answers it
    wire.advance(wire.now + 0.5)
    assert a.state_of(c.node_id) is not DEAD
    assert a.statistics().deaths_declared == 0


def test_a_calm_node_declares_a_confirmed_suspect_dead_at_once():
    cores, wire = meshed(6)
    a, b, c = cores[0], cores[1], cores[2]
    wire.drop = lambda src, dst, msg: True
    suspicion = suspect_from(cores, wire, b, c)
    for node in cores[3:6]:
        suspect_from(cores, wire, node, c)
    wire.now = suspicion.deadline()
    a.on_timer(wire.now)
    assert a.state_of(c.node_id) is DEAD


def test_a_shaky_node_whose_own_rounds_failed_too_needs_no_last_check():
    cores, wire = meshed(6)
    a = cores[0]
    when = a._next_probe
    a.on_loop_lag(STALL, when - 0.5)
    wire.now = when - 0.5
    target = fail_one_round(a, wire)
    wire.advance(wire.now + a.awareness.scale(CONFIG.probe_timeout + CONFIG.indirect_timeout)
                 + 0.01)  # the second round fails too: a accuses
    suspicion = a._suspicions[target]
    assert suspicion.witnessed and a.statistics().probes_retried == 1
    for core in cores[1:]:
        if core.node_id != target:  # the others' word
            a.on_message(core.node_id, Suspect(node=target, incarnation=0,
                                               from_node=core.node_id), wire.now)
    assert suspicion.confirmed
    a.awareness.apply_delta(1)  # still shaky
    assert a.shaky(wire.now)
    wire.now = suspicion.deadline()
    a.on_timer(wire.now)
    assert a.state_of(target) is DEAD  # two rounds of ours and k others: enough


def test_a_lost_connection_is_evidence_a_shaky_node_acts_on_at_once():
    """A killed agent's sockets close: the probe that hint starts accuses on its first
    failure even while our loop stalls (detection under load stays fast)."""
    cores, wire = meshed(5)
    a, t = cores[0], cores[1]
    a.on_loop_lag(STALL, 0.0)
    assert a.shaky(0.1)
    wire.drop = lambda src, dst, msg: (dst == t.node_id or src == t.node_id
                                       or any(type(p) is Suspect for p in parts(msg)))
    wire.now = 0.1
    wire.run(a.node_id, a.on_peer_lost(t.node_id, wire.now))
    wire.advance(wire.now + a.awareness.scale(CONFIG.probe_timeout + CONFIG.indirect_timeout)
                 + 0.01)
    assert a.state_of(t.node_id) is SUSPECT
    assert a.statistics().probes_retried == 0 and a._suspicions[t.node_id].witnessed


def test_a_newcomer_past_its_grace_still_probes_again_before_it_accuses():
    cores, wire = meshed(5)
    a = joined(cores, wire)
    wire.now = CONFIG.startup_grace + 0.5  # settled, calm, but new
    assert a.settled(wire.now) and a.shaky(wire.now)
    a._next_probe = wire.now
    target = fail_one_round(a, wire)
    assert a.state_of(target) is ALIVE and a.statistics().probes_retried == 1
    assert not a.shaky(CONFIG.startup_grace_max + 0.01)  # and then it is not new any more


def test_statistics_carry_every_counter():
    from gossip.stats import Counters

    cores, _ = meshed(2)
    assert set(Counters.__slots__) <= set(cores[0].statistics().as_dict())


# --- the step instrument -----------------------------------------------------------------


class _Task:
    name = "busy"


class _Clocks:
    """A wall clock the test moves and a CPU clock that counts its reads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.cpu_reads = 0

    def wall(self) -> float:
        return self.now

    def thread(self) -> float:
        self.cpu_reads += 1
        return self.cpu


def _step(steps, clocks: _Clocks, took: float, cpu: float | None = None) -> None:
    steps.before_task_step(_Task())
    clocks.now += took
    clocks.cpu += took if cpu is None else cpu
    steps.after_task_step(_Task())


def test_fast_steps_read_the_cpu_clock_at_most_once_per_mark_interval():
    from gossip.driver import SlowSteps

    clocks = _Clocks()
    steps = SlowSteps(0.05, cpu_mark_every=0.01, clock=clocks.wall, cpu_clock=clocks.thread)
    for _ in range(1000):  # 1,000 steps of 0.1 ms: 0.1 s of busy loop
        _step(steps, clocks, 0.0001)
    assert clocks.cpu_reads <= 11
    assert steps.slow == {} and steps.take_longest() == 0.0


def test_a_slow_step_is_counted_with_its_cpu_time_bounded_by_the_mark():
    from gossip.driver import SlowSteps

    clocks = _Clocks()
    steps = SlowSteps(0.05, cpu_mark_every=0.01, clock=clocks.wall, cpu_clock=clocks.thread)
    _step(steps, clocks, 0.005)  # sets a mark, then 5 ms of CPU before the slow step
    _step(steps, clocks, 0.2, cpu=0.03)  # held the loop 200 ms, 30 ms of it our CPU
    (top,) = steps.top()
    assert top["task"] == "busy" and top["count"] == 1 and top["max_ms"] == 200.0
    assert 30.0 <= top["cpu_ms"] <= 30.0 + 10.0  # at most one mark interval too much
    assert steps.take_longest() == pytest.approx(0.2) and steps.take_longest() == 0.0
    _step(steps, clocks, 0.3, cpu=0.5)  # CPU clock ahead of the wall: capped at the wall
    assert steps.top()[0]["cpu_ms"] <= 30.0 + 10.0 + 300.0


async def test_a_slow_step_between_two_samples_is_lag(autojump_clock):
    from gossip.driver import GossipDriver
    from gossip.hooks import cert_hooks
    from meshcloud.testing import TestMesh
    from meshcloud.transport.memory import MemoryNetwork

    mesh = TestMesh.with_members(1)
    member = mesh.members[0]
    network = MemoryNetwork()
    transport = network.add(member.key, member.authenticator)
    driver = GossipDriver(transport, CONFIG, cert_hooks(member.key, member.cert,
                                                        mesh.root.public, member.records),
                          rng=random.Random(1), watch_steps=True)
    assert driver.slow_steps is not None
    wall = [0.0]
    driver.slow_steps.clock = lambda: wall[0]  # steps take no time unless we say so
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        await nursery.start(driver.run)
        await trio.sleep(1.0)
        assert driver.lag.max_s == 0.0
        wall[0] += 0.15  # this step held the loop 150 ms; trio's clock did not move
        await trio.sleep(1.0)
        status = driver.loop_status()
        assert driver.lag.max_s == pytest.approx(0.15) and status["stalls"] == 1
        assert driver.statistics().core.loop_stalls >= 1
        assert status["slow_steps"][0]["max_ms"] == 150.0
        nursery.cancel_scope.cancel()


def test_a_slow_steps_wall_time_splits_into_cpu_run_queue_and_the_rest():
    """Wall ≫ CPU has two causes the status must tell apart: the kernel running other
    threads (run queue) and the loop blocked while ready (the GIL held by a worker)."""
    from gossip.driver import SlowSteps

    clocks = _Clocks()
    runq = [0.0]
    steps = SlowSteps(0.05, cpu_mark_every=0.01, clock=clocks.wall, cpu_clock=clocks.thread,
                      runq_clock=lambda: runq[0])
    _step(steps, clocks, 0.005)  # a mark
    steps.before_task_step(_Task())
    clocks.now += 0.2
    clocks.cpu += 0.03
    runq[0] += 0.12  # 120 ms waiting for a CPU; 50 ms neither running nor queued
    steps.after_task_step(_Task())
    (top,) = steps.top()
    assert top["max_ms"] == 200.0 and top["runq_ms"] == 120.0
    assert 30.0 <= top["cpu_ms"] <= 40.0
    name, took, _cpu, queued = steps.last or ("", 0.0, 0.0, 0.0)
    assert name == "busy" and took == pytest.approx(0.2) and queued == pytest.approx(0.12)
    runq[0] += 5.0  # a run-queue clock that ran ahead: capped at wall minus CPU
    _step(steps, clocks, 0.1, cpu=0.01)
    assert steps.last is not None and steps.last[3] == pytest.approx(0.09)


def test_the_run_queue_clock_reads_this_threads_schedstat():
    from gossip.driver import thread_runqueue_clock

    clock = thread_runqueue_clock()
    first = clock()
    assert isinstance(first, float) and first >= 0.0
    assert clock() >= first  # a counter: never goes back
    if os.path.exists("/proc/thread-self/schedstat"):  # Linux: a real reading
        with open("/proc/thread-self/schedstat") as fh:
            assert abs(int(fh.read().split()[1]) / 1e9 - clock()) < 1.0
