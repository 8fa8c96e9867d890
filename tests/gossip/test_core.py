"""SwimCore scripted by hand: probes, relays, suspicion, refutation, leave, sync, capacity."""

from __future__ import annotations

import dataclasses

import pytest

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.formulas import suspicion_timeout
from gossip.member import MemberState
from gossip.messages import Ack, Alive, Dead, Nack, Ping, PingReq, PushPull, Suspect
from gossip.outputs import (
    LeaveSpread,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    Refuted,
    Send,
    Sync,
)
from meshcloud.errors import LocalProtocolError
from tests.gossip.helpers import CONFIG, Wire, events, make_core, sent

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)


def meshed(n: int, config: GossipConfig = CONFIG) -> tuple[list[SwimCore], Wire]:
    cores = [make_core(i, config=config) for i in range(n)]
    alives = [c.table.members[c.node_id].alive for c in cores]
    for core in cores:
        assert core.preload(alives, 0.0) == n - 1
        core.queue.remove(core.node_id)
    return cores, Wire(cores)


def says_dead(peer: SwimCore, x: SwimCore) -> tuple:
    """``peer``'s push-pull state, but holding ``x`` DEAD (as after a partition)."""
    return tuple(dataclasses.replace(e, state=DEAD) if e.alive.node == x.node_id else e
                 for e in peer._local_state())


def first_probe(core: SwimCore, wire: Wire) -> tuple[bytes, list]:
    """Fire ``core``'s probe tick; return its target and the outputs."""
    when = core._next_probe
    assert when is not None
    wire.now = when
    outputs = core.on_timer(when)
    pings = [(out.to, p) for out in outputs if type(out) is Send
             for p in sent([out], Ping)]
    assert len(pings) == 1
    return pings[0][0], outputs


# --- basics ------------------------------------------------------------------------------


def test_new_core_is_alive_queues_its_alive_and_has_a_deadline():
    core = make_core(0)
    me = core.member(core.node_id)
    assert me is not None and me.state is ALIVE and me.incarnation == 0
    assert core.node_id in core.queue
    assert core.next_deadline() is not None
    assert core.statistics().alive == 1


def test_ping_is_answered_with_an_ack_of_the_same_seq():
    a, b = make_core(0), make_core(1)
    out = b.on_message(a.node_id, Ping(seq=77, target=b.node_id), 0.0)
    acks = sent(out, Ack, to=a.node_id)
    assert acks == [Ack(seq=77)]


def test_ping_for_another_node_is_dropped_and_counted():
    a, b = make_core(0), make_core(1)
    assert b.on_message(a.node_id, Ping(seq=1, target=a.node_id), 0.0) == []
    assert b.statistics().dropped_misaddressed == 1


def test_messages_from_self_are_ignored():
    a = make_core(0)
    assert a.on_message(a.node_id, Ping(seq=1, target=a.node_id), 0.0) == []


# --- probing -----------------------------------------------------------------------------


def test_answered_probe_keeps_everyone_alive_and_health_perfect():
    cores, wire = meshed(4)
    wire.advance(30.0)
    for core in cores:
        assert all(m.state is ALIVE for m in core.members())
        assert core.awareness.score == 0
        assert core.statistics().probes_failed == 0


def test_missed_ack_asks_relays_and_pings_again_then_suspects():
    cores, wire = meshed(5)
    a = cores[0]
    target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: dst == target or src == target
    wire.run(a.node_id, outputs)
    wire.log.clear()
    wire.now += CONFIG.probe_timeout
    out = a.on_timer(wire.now)
    reqs = sent(out, PingReq)
    assert len(reqs) == CONFIG.indirect_checks
    assert all(r.target == target and r.escalate for r in reqs)
    assert len(sent(out, Ping, to=target)) == 1  # the second direct chance
    wire.run(a.node_id, out)
    # Each relay pinged the target, heard nothing, and sent a Nack in time.
    wire.advance(wire.now + CONFIG.indirect_timeout)
    assert a.state_of(target) is SUSPECT
    assert a.statistics().probes_failed == 1
    assert a.awareness.score == 0  # every nack arrived: the fault is not ours
    suspects = sent(wire.outputs_of(a.node_id), Suspect, to=target)
    assert suspects and suspects[0].from_node == a.node_id  # told the accused directly


def test_missing_nacks_count_against_our_own_health():
    cores, wire = meshed(5)
    a = cores[0]
    _target, outputs = first_probe(a, wire)
    wire.drop = lambda src, dst, msg: src != a.node_id  # nobody can reach a
    wire.run(a.node_id, outputs)
    wire.advance(wire.now + CONFIG.probe_timeout + CONFIG.indirect_timeout + 0.01)
    assert a.awareness.score == CONFIG.indirect_checks
    # An unhealthy node probes more slowly (Lifeguard): the next period is stretched.
    tick = a._next_probe
    assert tick is not None
    a.on_timer(tick)
    assert a._next_probe - tick == pytest.approx(CONFIG.probe_interval * (1 + 3))


def test_direct_ack_restores_health():
    cores, wire = meshed(3)
    a = cores[0]
    a.awareness.apply_delta(3)
    _target, outputs = first_probe(a, wire)
    wire.run(a.node_id, outputs)
    assert a.awareness.score == 2


def test_relay_forwards_the_targets_ack_with_the_requesters_seq():
    cores, _wire = meshed(3)
    a, c, t = cores
    out = c.on_message(a.node_id, PingReq(seq=500, target=t.node_id), 0.0)
    pings = sent(out, Ping, to=t.node_id)
    assert len(pings) == 1
    ack_out = c.on_message(t.node_id, Ack(seq=pings[0].seq), 0.1)
    assert sent(ack_out, Ack, to=a.node_id) == [Ack(seq=500)]
    assert c.next_deadline() is None or all(
        type(x) is not Nack for x in sent(c.on_timer(5.0), Nack))


def test_relay_nacks_when_the_target_is_silent():
    cores, _wire = meshed(3)
    a, c, t = cores
    c.on_message(a.node_id, PingReq(seq=501, target=t.node_id), 0.0)
    out = c.on_timer(0.8 * CONFIG.indirect_timeout)
    assert sent(out, Nack, to=a.node_id) == [Nack(seq=501)]


def relay_escalating_for_a_silent_target():
    """a asks relay c (escalate) to ping t, whose every datagram is lost."""
    cores, wire = meshed(5)
    a, c, t = cores[0], cores[1], cores[2]
    wire.drop = lambda src, dst, msg: dst == t.node_id or src == t.node_id
    wire.cores = {a.node_id: a, c.node_id: c, t.node_id: t}
    wire.run(c.node_id, c.on_message(a.node_id, PingReq(seq=9, target=t.node_id,
                                                        escalate=True), 0.0))
    return a, c, t, wire


def test_escalating_relay_runs_its_own_round_and_confirms_to_the_requester():
    a, c, t, wire = relay_escalating_for_a_silent_target()
    assert c._rounds[t.node_id].relay is not None
    wire.advance(CONFIG.probe_timeout + CONFIG.indirect_timeout + 0.01)
    assert c.state_of(t.node_id) is SUSPECT
    to_a = sent(wire.outputs_of(c.node_id), Suspect, to=a.node_id)
    assert to_a and to_a[0].from_node == c.node_id
    # The relay's round does not escalate further.
    reqs = [r for r in sent(wire.outputs_of(c.node_id), PingReq) if r.target == t.node_id]
    assert reqs and not any(r.escalate for r in reqs)


def test_peer_lost_hint_probes_at_once_but_does_not_declare():
    cores, _wire = meshed(3)
    a, b = cores[0], cores[1]
    out = a.on_peer_lost(b.node_id, 3.3)
    assert sent(out, Ping, to=b.node_id)
    assert a.state_of(b.node_id) is ALIVE
    assert a.statistics().probe_hints == 1
    assert a.on_peer_lost(b.node_id, 3.4) == []  # already probing it


def test_unreachable_hint_asks_the_relays_at_once_and_fails_the_round_sooner():
    cores, wire = meshed(5)
    a, b = cores[0], cores[1]
    wire.drop = lambda src, dst, msg: dst == b.node_id or src == b.node_id  # b is gone
    out = a.on_peer_unreachable(b.node_id, 3.0)
    assert len(sent(out, Ping, to=b.node_id)) == 1  # one ping, not two at once
    reqs = sent(out, PingReq)
    assert len(reqs) == CONFIG.indirect_checks
    assert all(r.target == b.node_id and r.escalate for r in reqs)
    assert a.statistics().probe_hints == 1 and a.statistics().probes_hastened == 1
    wire.now = 3.0
    wire.run(a.node_id, out)
    wire.advance(3.0 + CONFIG.indirect_timeout - 0.01)
    assert a.state_of(b.node_id) is ALIVE
    wire.advance(3.0 + CONFIG.indirect_timeout + 0.01)  # not probe + indirect timeout
    assert a.state_of(b.node_id) is SUSPECT


def test_unreachable_hint_ends_the_direct_wait_of_a_running_round():
    cores, wire = meshed(5)
    a = cores[0]
    target, _ = first_probe(a, wire)
    started = wire.now
    rnd = a._rounds[target]
    out = a.on_peer_unreachable(target, started + 0.01)
    assert len(sent(out, PingReq)) == CONFIG.indirect_checks
    assert len(sent(out, Ping, to=target)) == 1  # the second direct ping
    assert rnd.hinted and a._rounds[target] is rnd
    assert rnd.end == pytest.approx(started + 0.01 + CONFIG.indirect_timeout)
    # A round already asking its relays only takes the hint.
    assert a.on_peer_unreachable(target, started + 0.02) == []
    assert a.statistics().probes_hastened == 1


def test_unreachable_hint_is_no_verdict_when_the_member_answers():
    cores, wire = meshed(5)
    a, b = cores[0], cores[1]
    wire.drop = lambda src, dst, msg: src == a.node_id and dst == b.node_id  # forged ICMP,
    wire.now = 3.0                                                            # a's path cut
    wire.run(a.node_id, a.on_peer_unreachable(b.node_id, 3.0))
    wire.advance(3.0 + CONFIG.probe_timeout + CONFIG.indirect_timeout + 0.1)
    assert b.node_id not in a._rounds  # a relay's ack ended the round
    assert a.state_of(b.node_id) is ALIVE
    assert not events(wire.all_outputs(), MemberSuspected)


def test_unreachable_hint_makes_an_escalated_relay_nack_and_confirm_sooner():
    a, c, t, wire = relay_escalating_for_a_silent_target()
    out = c.on_peer_unreachable(t.node_id, 0.01)  # its relayed ping bounced
    assert sent(out, Nack, to=a.node_id) == [Nack(seq=9)]
    assert sent(out, PingReq) and not any(r.escalate for r in sent(out, PingReq))
    wire.now = 0.01
    wire.run(c.node_id, out)
    wire.advance(0.01 + CONFIG.indirect_timeout + 0.01)
    assert c.state_of(t.node_id) is SUSPECT
    assert sent(wire.outputs_of(c.node_id), Suspect, to=a.node_id)


# --- suspicion, refutation, death --------------------------------------------------------


def test_suspicion_is_refuted_by_a_higher_incarnation():
    cores, wire = meshed(5)
    a, b = cores[0], cores[1]
    accusation = Suspect(node=b.node_id, incarnation=0, from_node=a.node_id)
    out = b.on_message(a.node_id, accusation, 1.0)
    refuted = events(out, Refuted)
    assert refuted and refuted[0].incarnation == 1 and b.incarnation == 1
    assert b.awareness.score == 1  # Lifeguard: being accused hints we are slow
    alive = sent(out, Alive, to=a.node_id)
    assert alive and alive[0].incarnation == 1
    # The accuser takes the refutation: the suspicion is gone for good.
    a_out = a.on_message(b.node_id, accusation, 1.0)
    assert events(a_out, MemberSuspected)
    a_out = a.on_message(b.node_id, alive[0], 1.1)
    updated = events(a_out, MemberUpdated)
    assert updated and updated[0].refuted
    assert a.state_of(b.node_id) is ALIVE
    wire.now = 1.1
    wire.advance(100.0)
    assert not [o for o in events(wire.all_outputs(), MemberFailed)
                if o.member.node_id == b.node_id]
    assert all(c.state_of(b.node_id) is ALIVE for c in cores)


def test_stale_accusation_gets_our_current_alive_back():
    a, b = make_core(0), make_core(1)
    b._announce(5, 0.0, [])
    out = b.on_message(a.node_id, Suspect(node=b.node_id, incarnation=2,
                                          from_node=a.node_id), 1.0)
    assert not events(out, Refuted)  # nothing to outbid
    # a is unknown to b here, so nothing is sent; once known, it gets the Alive:
    b.preload([a.table.members[a.node_id].alive], 1.0)
    out = b.on_message(a.node_id, Suspect(node=b.node_id, incarnation=2,
                                          from_node=a.node_id), 1.0)
    assert {x.incarnation for x in sent(out, Alive, to=a.node_id)} == {5}


def test_confirmations_from_distinct_nodes_shorten_the_suspicion():
    cores, _wire = meshed(6)
    a, x = cores[0], cores[1]
    others = cores[2:]
    n = 6
    lo = suspicion_timeout(CONFIG.suspicion_mult, n, CONFIG.probe_interval)
    hi = lo * CONFIG.suspicion_max_timeout_mult
    a.on_message(others[0].node_id, Suspect(node=x.node_id, incarnation=0,
                                            from_node=others[0].node_id), 0.0)
    assert a._suspicions[x.node_id].deadline() == pytest.approx(hi)
    # The accuser repeating itself is no confirmation.
    a.on_message(others[1].node_id, Suspect(node=x.node_id, incarnation=0,
                                            from_node=others[0].node_id), 0.1)
    assert a._suspicions[x.node_id].confirmations == 0
    for o in others[1:]:
        out = a.on_message(o.node_id, Suspect(node=x.node_id, incarnation=0,
                                               from_node=o.node_id), 0.2)
        assert not events(out, MemberSuspected)  # a confirmation, not a new suspicion
    assert a._suspicions[x.node_id].deadline() == pytest.approx(lo)
    out = a.on_timer(lo)
    assert events(out, MemberFailed) and a.state_of(x.node_id) is DEAD
    dead = [b.msg for b in a.queue.items() if b.key == x.node_id]
    assert dead == [Dead(node=x.node_id, incarnation=0, from_node=a.node_id)]
    assert a.statistics().deaths_declared == 1


def test_unconfirmed_suspicion_gets_a_last_check_before_death():
    cores, wire = meshed(6)
    a, x, accuser = cores[0], cores[1], cores[2]
    wire.cores = {a.node_id: a, x.node_id: x}  # only a and x talk; x answers pings
    a.on_message(accuser.node_id, Suspect(node=x.node_id, incarnation=0,
                                          from_node=accuser.node_id), 0.0)
    hi = a._suspicions[x.node_id].deadline()
    wire.drop = lambda src, dst, msg: src == x.node_id  # a hears nothing from x meanwhile
    wire.advance(hi - 0.001)
    wire.drop = lambda src, dst, msg: type(msg) is Alive or any(
        type(p) is Alive for p in getattr(msg, "parts", ()))  # the refutation never lands
    wire.advance(hi + 0.01)
    last = [o for o in sent(wire.outputs_of(a.node_id), Ping, to=x.node_id)]
    assert last, "a probed x itself when the suspicion ran out"
    assert a.state_of(x.node_id) is SUSPECT  # x answered: the suspicion starts over
    assert a._suspicions[x.node_id].deadline() > hi
    # Now x goes silent: the next expiry's last check fails, and x is declared dead.
    wire.drop = lambda src, dst, msg: True
    wire.advance(3 * hi + 5)
    assert a.state_of(x.node_id) is DEAD


def test_node_never_declares_itself_dead_and_refutes_death():
    a, b = make_core(0), make_core(1)
    out = b.on_message(a.node_id, Dead(node=b.node_id, incarnation=0, from_node=a.node_id),
                       0.0)
    assert events(out, Refuted) and b.state_of(b.node_id) is ALIVE and b.incarnation == 1
    with pytest.raises(LocalProtocolError):
        b.revoke(b.node_id, 0.0)


def test_dead_members_are_reaped_after_the_retention_period():
    cores, _wire = meshed(3)
    a, x = cores[0], cores[1]
    a.on_message(cores[2].node_id, Dead(node=x.node_id, incarnation=0,
                                        from_node=cores[2].node_id), 5.0)
    assert a.state_of(x.node_id) is DEAD
    out = a.on_timer(5.0 + CONFIG.dead_retention - 0.01)
    assert not events(out, MemberReaped)
    out = a.on_timer(5.0 + CONFIG.dead_retention)
    assert events(out, MemberReaped) and a.state_of(x.node_id) is None


def test_dead_node_returns_with_a_higher_incarnation():
    cores, _wire = meshed(3)
    a, x = cores[0], cores[1]
    a.on_message(cores[2].node_id, Dead(node=x.node_id, incarnation=0,
                                        from_node=cores[2].node_id), 0.0)
    old = x.table.members[x.node_id].alive
    assert a.on_message(x.node_id, old, 0.1) == []  # same incarnation: still dead
    assert a.state_of(x.node_id) is DEAD
    x._announce(1, 0.2, [])
    out = a.on_message(x.node_id, x.table.members[x.node_id].alive, 0.2)
    assert events(out, MemberJoined) and a.state_of(x.node_id) is ALIVE


# --- leave -------------------------------------------------------------------------------


def test_graceful_leave_is_signed_spreads_and_ends_as_left():
    cores, wire = meshed(4)
    leaver = cores[1]
    out = leaver.leave(0.0)
    assert leaver.state_of(leaver.node_id) is LEFT and leaver.left
    assert leaver._next_probe is None
    wire.run(leaver.node_id, out)
    wire.advance(10.0)
    assert events(wire.outputs_of(leaver.node_id), LeaveSpread)
    for core in cores:
        if core is not leaver:
            assert core.state_of(leaver.node_id) is LEFT
    lefts = [o for src, o in wire.log if type(o) is MemberLeft]
    assert len(lefts) == 3
    assert not [o for src, o in wire.log if type(o) is MemberFailed]
    assert leaver.leave(10.0) == []


def test_lone_node_leave_spreads_at_once_when_nobody_is_there():
    core = make_core(0)
    out = core.leave(0.0)
    out += core.on_timer(1.0)
    assert events(out, LeaveSpread)


def test_forged_leave_is_dropped_and_counted():
    cores, _wire = meshed(3)
    a, x, liar = cores
    forged = Dead(node=x.node_id, incarnation=0, from_node=x.node_id, signature=b"\0" * 16)
    assert a.on_message(liar.node_id, forged, 0.0) == []
    assert a.state_of(x.node_id) is ALIVE
    assert a.statistics().dropped_bad_signature == 1


# --- hostile input -----------------------------------------------------------------------


def test_unsigned_alive_is_dropped_and_counted():
    cores, _wire = meshed(3)
    a, x, liar = cores
    real = x.table.members[x.node_id].alive
    forged = dataclasses.replace(real, incarnation=7, signature=b"")
    assert a.on_message(liar.node_id, forged, 0.0) == []
    assert a.member(x.node_id).incarnation == 0
    assert a.statistics().dropped_bad_signature == 1


def test_alive_signed_by_another_node_is_dropped():
    cores, _wire = meshed(3)
    a, x, liar = cores
    forged = dataclasses.replace(x.table.members[x.node_id].alive, incarnation=3,
                                 capacity=Capacity(cpu_cores=64), signature=b"")
    forged = dataclasses.replace(forged,
                                 signature=liar.hooks.signer.sign(forged.signed_bytes()))
    assert a.on_message(liar.node_id, forged, 0.0) == []
    assert a.member(x.node_id).incarnation == 0
    assert a.statistics().hostile_dropped == 1


def test_forged_alive_about_ourselves_does_not_make_us_refute():
    a, liar = make_core(0), make_core(1)
    mine = a.table.members[a.node_id].alive
    forged = dataclasses.replace(mine, incarnation=9, addresses=("evil://",), signature=b"x")
    assert a.on_message(liar.node_id, forged, 0.0) == []
    assert a.incarnation == 0 and a.statistics().dropped_bad_signature == 1


def test_absurd_incarnation_jump_in_a_suspicion_is_refused():
    cores, _wire = meshed(3)
    a, x, liar = cores
    huge = Suspect(node=x.node_id, incarnation=1 << 40, from_node=liar.node_id)
    assert a.on_message(liar.node_id, huge, 0.0) == []
    assert a.state_of(x.node_id) is ALIVE
    assert x.on_message(liar.node_id, huge, 0.0) == [] and x.incarnation == 0
    assert a.statistics().dropped_implausible == 1 == x.statistics().dropped_implausible
    assert a.statistics().hostile_dropped == 1


def test_suspicion_about_an_unknown_node_is_ignored():
    a = make_core(0)
    out = a.on_message(b"q" * 32, Suspect(node=b"z" * 32, incarnation=0, from_node=b"q" * 32),
                       0.0)
    assert out == [] and a.statistics().ignored_unknown == 1


def test_revoked_member_is_expelled_and_stays_out():
    cores, _wire = meshed(3)
    a, x = cores[0], cores[1]
    out = a.revoke(x.node_id, 1.0)
    assert events(out, MemberFailed) and a.state_of(x.node_id) is DEAD
    x._announce(4, 1.0, [])
    assert a.on_message(x.node_id, x.table.members[x.node_id].alive, 1.1) == []
    assert a.state_of(x.node_id) is DEAD


# --- push-pull and joining ---------------------------------------------------------------


def test_join_by_push_pull_learns_the_mesh_both_ways():
    a, b, c = make_core(0), make_core(1), make_core(2)
    wire = Wire([a, b, c])
    wire.run(b.node_id, b.join([a.node_id], 0.0))
    wire.run(c.node_id, c.join([a.node_id], 0.1))
    assert c.state_of(b.node_id) is ALIVE  # from a's state
    assert a.state_of(b.node_id) is ALIVE and a.state_of(c.node_id) is ALIVE
    wire.advance(5.0)
    assert b.state_of(c.node_id) is ALIVE  # gossip carried c's Alive to b
    joined = [o.member.node_id for src, o in wire.log
              if src == b.node_id and type(o) is MemberJoined]
    assert sorted(joined) == sorted([a.node_id, c.node_id])


def test_push_pull_suspicion_is_no_confirmation():
    cores, _wire = meshed(6)
    a, x = cores[0], cores[1]
    a.on_message(cores[2].node_id, Suspect(node=x.node_id, incarnation=0,
                                           from_node=cores[2].node_id), 0.0)
    state = cores[3]._local_state()
    entries = tuple(dataclasses.replace(e, state=SUSPECT) if e.alive.node == x.node_id else e
                    for e in state)
    a.on_push_pull_reply(cores[3].node_id, PushPull(join=False, entries=entries), 0.1)
    assert a._suspicions[x.node_id].confirmations == 0


def test_restart_with_the_same_id_outbids_its_old_incarnation():
    cores, wire = meshed(3)
    a, x = cores[0], cores[1]
    x._announce(4, 0.0, [])
    a.on_message(x.node_id, x.table.members[x.node_id].alive, 0.0)
    a.on_message(cores[2].node_id, Dead(node=x.node_id, incarnation=4,
                                        from_node=cores[2].node_id), 0.1)
    reborn = make_core(1, now=10.0)  # same id, incarnation 0, new process
    wire.cores[x.node_id] = reborn
    wire.now = 10.0
    wire.run(reborn.node_id, reborn.join([a.node_id], 10.0))
    assert reborn.incarnation > 4
    assert a.state_of(reborn.node_id) is ALIVE
    assert a.member(reborn.node_id).incarnation == reborn.incarnation


def test_non_member_sender_is_dropped_and_counted():
    from gossip.hooks import AllowListed, fake_hooks

    a_id = make_core(0).node_id
    a = make_core(0, hooks=fake_hooks(a_id, AllowListed([a_id])))
    stranger = make_core(9)
    assert a.on_message(stranger.node_id, Ping(seq=1, target=a.node_id), 0.0) == []
    assert a.statistics().dropped_non_member == 1
    reply, out = a.on_push_pull(stranger.node_id, PushPull(join=True, entries=()), 0.0)
    assert out == [] and a.statistics().dropped_non_member == 2
    assert reply.entries == ()  # a non-member learns nothing


def test_alive_about_a_non_member_is_dropped_and_counted():
    from gossip.hooks import AllowListed, fake_hooks

    members = [make_core(i).node_id for i in range(2)]
    a = make_core(0, hooks=fake_hooks(members[0], AllowListed(members)))
    outsider = make_core(7)
    alive = dataclasses.replace(outsider.table.members[outsider.node_id].alive, proof=b"p")
    assert a.on_message(members[1], alive, 0.0) == []
    assert a.state_of(outsider.node_id) is None
    assert a.statistics().dropped_non_member == 1


# --- gossip and capacity ------------------------------------------------------------------


def test_idle_node_sets_no_gossip_timer_and_news_wakes_it():
    cores, wire = meshed(3)
    a = cores[0]
    wire.advance(20.0)
    assert a._next_gossip is None and len(a.queue) == 0
    a.on_message(cores[2].node_id, Suspect(node=cores[1].node_id, incarnation=0,
                                           from_node=cores[2].node_id), 20.0)
    assert a._next_gossip is not None


def test_gossip_tick_sends_news_to_gossip_nodes_members():
    config = CONFIG.replace(gossip_nodes=2)
    cores, _wire = meshed(5, config)
    a = cores[0]
    a.on_message(cores[2].node_id, Suspect(node=cores[1].node_id, incarnation=0,
                                           from_node=cores[2].node_id), 0.0)
    out = a.on_timer(a._next_gossip)
    gossip = [o for o in out if type(o) is Send]
    assert len(gossip) == 2 and len({o.to for o in gossip}) == 2
    assert all(sent([o], Suspect) for o in gossip)


def test_significant_capacity_change_is_announced_with_a_higher_incarnation():
    config = CONFIG.replace(capacity_interval=10.0)
    core = make_core(0, config=config)
    core.queue.remove(core.node_id)
    out = core.update_capacity(Capacity(cpu_cores=4, load=0.1), 20.0)
    assert core.incarnation == 1
    queued = core.queue.get(core.node_id)
    assert queued is not None and queued.msg.capacity.cpu_cores == 4
    assert out == []
    # Insignificant: nothing. Significant but too soon: deferred to the interval.
    core.update_capacity(Capacity(cpu_cores=4, load=0.2), 21.0)
    assert core.incarnation == 1
    core.update_capacity(Capacity(cpu_cores=8, load=0.2), 22.0)
    assert core.incarnation == 1 and core.next_deadline() <= 30.0
    core.on_timer(30.0)
    assert core.incarnation == 2
    assert core.member(core.node_id).capacity.cpu_cores == 8


def test_moved_readings_are_announced_rarely_and_rarer_in_a_big_mesh():
    config = CONFIG.replace(capacity_interval=10.0, capacity_refresh_interval=600.0,
                            push_pull_scale_threshold=32)
    core = make_core(0, config=config)
    core.update_capacity(Capacity(cpu_cores=2, load=0.1), 20.0)  # what it is: announced
    assert core.incarnation == 1
    # the load moves by far more than its step: not before the refresh interval
    assert core.update_capacity(Capacity(cpu_cores=2, load=9.0), 30.0) == []
    assert core.incarnation == 1 and core._next_capacity == pytest.approx(620.0)
    # this node's own view shows the latest reading; the announced one is unchanged
    assert core.member(core.node_id).capacity.load == 9.0
    assert core.table.members[core.node_id].alive.capacity.load == 0.1
    core.on_timer(619.0)
    assert core.incarnation == 1
    core.on_timer(620.0)
    assert core.incarnation == 2
    assert core.member(core.node_id).capacity.load == 9.0
    # a reading back within its step of the announced value: never announced
    core.update_capacity(Capacity(cpu_cores=2, load=8.5), 2000.0)
    assert core.incarnation == 2 and core._next_capacity is None
    # long after the last announcement, a moved reading goes out at once
    core.update_capacity(Capacity(cpu_cores=2, load=1.0), 2001.0)
    assert core.incarnation == 3
    # a reading that moved and came back before its turn: the timer announces nothing
    core.update_capacity(Capacity(cpu_cores=2, load=9.2), 2002.0)
    assert core._next_capacity == pytest.approx(2601.0)
    core.update_capacity(Capacity(cpu_cores=2, load=1.5), 2100.0)
    core.on_timer(2601.0)
    assert core.incarnation == 3
    # 64 live members: the refresh interval doubles (the mesh-wide rate stays bounded)
    big, _wire = meshed(64, config)
    me = big[0]
    me.update_capacity(Capacity(cpu_cores=2, load=5.0), 10.0)  # cores: static
    assert me.incarnation == 1
    me.update_capacity(Capacity(cpu_cores=2, load=50.0), 20.0)
    assert me._next_capacity == pytest.approx(10.0 + 1200.0)


def test_new_addresses_are_announced_at_once():
    core = make_core(0)
    core.update_addresses(["tcp://10.0.0.2:7946"], 1.0)
    assert core.incarnation == 1
    assert core.member(core.node_id).addresses == ("tcp://10.0.0.2:7946",)
    assert core.update_addresses(["tcp://10.0.0.2:7946"], 2.0) == []


def test_statistics_snapshot():
    cores, wire = meshed(3)
    wire.advance(5.0)
    st = cores[0].statistics()
    assert st.messages_sent > 0 and st.messages_received > 0 and st.alive == 3
    assert st.as_dict()["hostile_dropped"] == 0


def test_sync_output_is_produced_periodically():
    cores, _wire = meshed(3)
    a = cores[0]
    when = a._next_push_pull
    out = a.on_timer(when)
    assert any(type(o) is Sync for o in out)


def test_forged_leave_about_ourselves_is_dropped_but_our_old_signed_leave_is_outbid():
    a, b = make_core(0), make_core(1)
    forged = Dead(node=b.node_id, incarnation=0, from_node=b.node_id, signature=b"x" * 16)
    assert b.on_message(a.node_id, forged, 0.0) == [] and b.incarnation == 0
    assert b.statistics().dropped_bad_signature == 1
    old_life = make_core(1)  # the same node before a restart, which then left
    signed = old_life.leave(0.0)
    leave = next(x.msg for x in old_life.queue.items() if type(x.msg) is Dead)
    assert signed == [] and leave.is_leave
    b.on_message(a.node_id, leave, 1.0)
    assert b.incarnation == 1 and b.state_of(b.node_id) is ALIVE


def test_a_node_frozen_for_a_while_does_not_declare_deaths_when_it_wakes():
    cores, wire = meshed(6)
    phone, x = cores[0], cores[1]
    for accuser in cores[2:]:  # an accuser and 3 confirmations: the minimum timeout
        phone.on_message(accuser.node_id, Suspect(node=x.node_id, incarnation=0,
                                                  from_node=accuser.node_id), 0.0)
    assert phone._suspicions[x.node_id].confirmed
    # Frozen for two minutes: every timer is long overdue when it wakes.
    out = phone.on_timer(120.0)
    assert not events(out, MemberFailed)
    assert phone.state_of(x.node_id) is SUSPECT
    assert phone.statistics().resumes == 1
    suspicion = phone._suspicions[x.node_id]
    assert suspicion.start == 120.0 and suspicion.confirmations == 0
    # x answers the last check: the refutation has time to arrive, x is never declared.
    wire.now = 120.0
    wire.run(phone.node_id, out)
    wire.advance(140.0)
    assert phone.state_of(x.node_id) in (ALIVE, SUSPECT)
    assert not [o for o in events(wire.outputs_of(phone.node_id), MemberFailed)
                if o.member.node_id == x.node_id]


def test_a_joiner_learns_the_dead_silently_and_refuses_their_stale_alives():
    cores, _wire = meshed(4)
    a, dead, gone = cores[0], cores[1], cores[2]
    a.on_message(cores[3].node_id, Dead(node=dead.node_id, incarnation=0,
                                        from_node=cores[3].node_id), 0.0)
    gone.leave(0.0)
    a.on_message(gone.node_id, gone.queue.get(gone.node_id).msg, 0.0)
    assert a.state_of(gone.node_id) is LEFT
    joiner = make_core(9)
    out = a.on_push_pull(joiner.node_id, PushPull(join=True, entries=()), 1.0)[0]
    events_out = joiner.on_push_pull_reply(a.node_id, out, 1.0)
    assert joiner.state_of(dead.node_id) is DEAD and joiner.state_of(gone.node_id) is LEFT
    assert {type(e) for e in events_out} == {MemberJoined}  # nothing about the departed
    stale = dead.table.members[dead.node_id].alive
    assert joiner.on_message(a.node_id, stale, 2.0) == []
    assert joiner.state_of(dead.node_id) is DEAD
    forged = dataclasses.replace(state_entry := next(
        e for e in out.entries if e.alive.node == gone.node_id), leave_signature=b"x" * 16)
    fresh = make_core(10)
    fresh.on_push_pull_reply(a.node_id, PushPull(join=False, entries=(forged,)), 1.0)
    assert fresh.state_of(gone.node_id) is None and state_entry.state is LEFT
    assert fresh.statistics().dropped_bad_signature == 1


def test_a_sync_that_says_dead_is_checked_at_once():
    cores, wire = meshed(5)
    a, x, peer = cores[0], cores[1], cores[2]
    state = says_dead(peer, x)
    out = a.on_push_pull_reply(peer.node_id, PushPull(join=False, entries=state), 0.0)
    assert a.state_of(x.node_id) is SUSPECT  # not dead on hearsay
    assert sent(out, Ping, to=x.node_id)  # but checked at once
    wire.drop = lambda src, dst, msg: dst == x.node_id or src == x.node_id
    wire.run(a.node_id, out)
    one_round = CONFIG.probe_timeout + CONFIG.indirect_timeout
    wire.advance(one_round + 0.01)
    assert a.state_of(x.node_id) is SUSPECT  # one lost round is not enough on hearsay
    wire.advance(4 * one_round)  # the second round (stretched by Lifeguard's awareness)
    assert a.state_of(x.node_id) is DEAD


def test_a_sync_that_says_dead_of_a_node_that_answers_the_second_round_kills_nothing():
    cores, wire = meshed(5)
    a, x, peer = cores[0], cores[1], cores[2]
    state = says_dead(peer, x)
    out = a.on_push_pull_reply(peer.node_id, PushPull(join=False, entries=state), 0.0)
    wire.drop = lambda src, dst, msg: dst == x.node_id or src == x.node_id  # a lossy spell
    wire.run(a.node_id, out)
    one_round = CONFIG.probe_timeout + CONFIG.indirect_timeout
    wire.advance(one_round + 0.01)
    assert a.state_of(x.node_id) is SUSPECT
    wire.drop = lambda src, dst, msg: False  # the path is back for the second round
    wire.advance(4 * one_round)
    assert a.state_of(x.node_id) is not DEAD
    assert a.statistics().deaths_declared == 0


def test_a_member_held_dead_is_retried_every_reconnect_period_however_few_are_dead():
    cores, _wire = meshed(20)
    a, x = cores[0], cores[1]
    a.on_message(cores[2].node_id, Dead(node=x.node_id, incarnation=0,
                                        from_node=cores[2].node_id), 0.0)
    assert a.state_of(x.node_id) is DEAD and a.table.live_count == 19
    tried = []
    for _ in range(3):  # one dead of 20: Serf's dead/live odds would try it ~1 time in 19
        when = a._next_reconnect
        assert when is not None and when <= 3 * a.config.reconnect_interval
        tried += [o.to for o in a.on_timer(when) if type(o) is Sync and o.to == x.node_id]
    assert len(tried) == 3



def test_a_suspicion_learnt_from_a_sync_is_checked_here_but_not_gossiped():
    cores, _wire = meshed(6)
    a, x, peer = cores[0], cores[1], cores[2]
    state = says_dead(peer, x)
    out = a.on_push_pull_reply(peer.node_id, PushPull(join=False, entries=state), 0.0)
    assert a.state_of(x.node_id) is SUSPECT
    queued = [item.msg for item in a.queue.items()]
    assert not [m for m in queued if type(m) is Suspect and m.node == x.node_id]
    others = [o for o in out if type(o) is Send and o.to != x.node_id]
    assert not [m for m in sent(others, Suspect) if m.node == x.node_id]
    assert [m for m in sent(out, Suspect, to=x.node_id)]  # x itself hears it (buddy)
    # a probe of our own that fails is evidence, and that is gossiped as usual
    b = cores[3]
    b.on_message(cores[4].node_id, Suspect(node=x.node_id, incarnation=0,
                                           from_node=cores[4].node_id), 0.0)
    assert [m for m in (i.msg for i in b.queue.items()) if type(m) is Suspect]


def test_a_sync_suspicion_that_ran_out_also_needs_two_failed_rounds():
    cores, _wire = meshed(5)
    a, x, peer = cores[0], cores[1], cores[2]
    state = says_dead(peer, x)
    # a sync beyond the immediate checks: the suspicion waits out its timeout
    a.on_push_pull_reply(peer.node_id, PushPull(join=False, entries=state), 0.0)
    suspicion = a._suspicions[x.node_id]
    assert suspicion.hearsay
    suspicion.checking = False  # as if this sync's immediate checks had run out
    a._rounds.pop(x.node_id, None)
    out = a.on_timer(suspicion.deadline())
    assert sent(out, Ping, to=x.node_id)  # the last check starts
    assert a._suspicions[x.node_id].checks_left == 2
