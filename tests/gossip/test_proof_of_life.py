"""A member that sends us something itself is alive, whatever its silence to probes says.

During a start-up burst, agents starved for a core (or whose datagrams are held up in
their transport) miss acks for seconds while they still gossip, probe and sync. A
suspicion of such a member that runs out after it spoke to us starts over instead of
killing it, and a death declared elsewhere is checked first by a node that heard from
the member lately. A crashed process sends nothing, so crashes are still declared.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.member import MemberState
from gossip.messages import Dead, Ping, Suspect
from tests.gossip.helpers import CONFIG, sent
from tests.gossip.test_core import meshed

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def accuse(a, accusers, x, now):
    """``accusers`` (cores) report ``x`` suspect to ``a``: the first accuses, the others
    confirm (all k of them: a calm node then declares at the minimum timeout)."""
    for accuser in accusers:
        a.on_message(accuser.node_id, Suspect(node=x.node_id, incarnation=0,
                                              from_node=accuser.node_id), now)
    return a._suspicions[x.node_id]


def speak(a, x, now):
    """``x`` sends ``a`` something of its own (here a probe of ``a``)."""
    return a.on_message(x.node_id, Ping(seq=1, target=a.node_id), now)


def test_a_confirmed_suspect_that_spoke_to_us_since_is_told_again_not_killed():
    cores, wire = meshed(6)
    a, x = cores[0], cores[1]
    wire.drop = lambda src, dst, msg: True  # x hears nothing: it cannot refute
    suspicion = accuse(a, cores[2:6], x, 0.0)
    assert suspicion.confirmed
    deadline = suspicion.deadline()
    speak(a, x, deadline / 2)
    wire.now = deadline
    out = a.on_timer(deadline)
    assert a.state_of(x.node_id) is SUSPECT
    assert a.statistics().suspicions_renewed == 1
    assert sent(out, Suspect, to=x.node_id), "x is told directly, so it can refute"
    renewed = a._suspicions[x.node_id]
    assert not renewed.confirmers and renewed.start == deadline
    # x stops sending (it crashed): the renewed suspicion ends with a failed last check
    wire.advance(deadline + renewed.max_timeout
                 + CONFIG.awareness_max_multiplier * CONFIG.probe_interval)
    assert a.state_of(x.node_id) is DEAD


def test_a_message_before_the_suspicion_began_is_no_proof():
    cores, wire = meshed(6)
    a, x = cores[0], cores[1]
    wire.drop = lambda src, dst, msg: True
    speak(a, x, 0.0)
    suspicion = accuse(a, cores[2:6], x, 0.5)
    wire.now = suspicion.deadline()
    a.on_timer(wire.now)
    assert a.state_of(x.node_id) is DEAD  # calm, confirmed: the fast path is kept
    assert a.statistics().suspicions_renewed == 0


def test_a_death_declared_elsewhere_is_checked_by_a_node_that_heard_the_member_lately():
    cores, wire = meshed(6)
    a, b, x = cores[0], cores[1], cores[2]
    speak(a, x, 0.0)
    wire.now = 0.1  # less than any suspicion's minimum timeout after x spoke
    out = a.on_message(b.node_id, Dead(node=x.node_id, incarnation=0,
                                       from_node=b.node_id), 0.1)
    assert a.state_of(x.node_id) is SUSPECT  # not DEAD: a checks first
    assert sent(out, Ping, to=x.node_id)
    assert a.statistics().deaths_checked == 1
    wire.run(a.node_id, out)  # x answers the check (and refutes the suspicion it carries)
    assert a.state_of(x.node_id) is ALIVE
    assert x.incarnation == 1


def test_a_death_is_agreed_after_one_failed_check_when_the_member_went_silent():
    cores, wire = meshed(6)
    a, b, x = cores[0], cores[1], cores[2]
    speak(a, x, 0.0)
    wire.drop = lambda src, dst, msg: dst == x.node_id or src == x.node_id  # x crashed
    wire.now = 0.1
    wire.run(b.node_id, a.on_message(b.node_id, Dead(node=x.node_id, incarnation=0,
                                                    from_node=b.node_id), 0.1))
    assert a.state_of(x.node_id) is SUSPECT
    wire.advance(0.1 + CONFIG.probe_timeout + CONFIG.indirect_timeout + 0.01)
    assert a.state_of(x.node_id) is DEAD


def test_a_death_of_a_member_not_heard_lately_is_applied_at_once():
    cores, _wire = meshed(6)
    a, b, x = cores[0], cores[1], cores[2]
    speak(a, x, 0.0)
    later = 0.3  # more than the minimum suspicion timeout (0.25 s here) after x spoke
    a.on_message(b.node_id, Dead(node=x.node_id, incarnation=0, from_node=b.node_id), later)
    assert a.state_of(x.node_id) is DEAD
    assert a.statistics().deaths_checked == 0


@settings(max_examples=40, deadline=None)
@given(talks=st.lists(st.floats(min_value=0.01, max_value=0.24), min_size=1, max_size=60),
       confirmers=st.integers(min_value=0, max_value=3))
def test_a_member_that_keeps_talking_is_never_declared_dead_and_is_once_it_stops(
        talks, confirmers):
    """Whatever the confirmations, a member that sends us something more often than a
    suspicion's minimum timeout (0.25 s here), while every ack of it is lost, stays
    SUSPECT at a calm node; once it falls silent it is DEAD within its suspicion's maximum
    timeout and a last check."""
    cores, wire = meshed(6)
    a, x = cores[0], cores[1]
    wire.drop = lambda src, dst, msg: True
    suspicion = accuse(a, cores[2:3 + confirmers], x, 0.0)
    now = 0.0
    for gap in talks:
        now += gap
        wire.advance(now)
        speak(a, x, now)
        assert a.state_of(x.node_id) is SUSPECT
    wire.advance(now + suspicion.max_timeout
                 + CONFIG.awareness_max_multiplier * CONFIG.probe_interval)
    assert a.state_of(x.node_id) is DEAD
