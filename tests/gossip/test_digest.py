"""Digest-first syncs: only differing entries move, and the result equals a full sync."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.digest import delta_for, make_digest
from gossip.member import MemberState
from gossip.messages import Alive, PushPull, Suspect, SyncDelta, SyncDigest
from meshcloud.codec.messages import decode_message, encode_message
from tests.gossip.helpers import CONFIG, make_core

from .test_core import meshed

STATES = [MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT]


def view(core) -> dict[bytes, tuple[MemberState, int]]:
    return {m.node_id: (m.state, m.incarnation) for m in core.members()}


def digest_sync(a, b, now: float):
    """Run a digest sync a -> b through the codec, as the driver does; returns the
    three messages' encoded sizes."""
    digest = decode_message(encode_message(a.sync_digest()), SyncDigest)
    delta = b.on_sync_digest(a.node_id, digest, now)
    data_delta = encode_message(delta)
    wanted, _ = a.on_sync_delta(b.node_id, decode_message(data_delta, SyncDelta), now)
    data_wanted = encode_message(wanted)
    b.on_sync_entries(a.node_id, decode_message(data_wanted, PushPull), now)
    return len(encode_message(digest)), len(data_delta), len(data_wanted)


def full_sync(a, b, now: float) -> None:
    msg = PushPull(join=False, entries=a._local_state())
    reply, _ = b.on_push_pull(a.node_id, msg, now)
    a.on_push_pull_reply(b.node_id, reply, now)


def test_agreeing_views_exchange_digests_only():
    cores, _wire = meshed(30)
    a, b = cores[0], cores[1]
    sizes = digest_sync(a, b, 1.0)
    full = len(encode_message(PushPull(join=False, entries=a._local_state())))
    digest, delta, wanted = sizes
    assert digest <= 45 * 30  # ~40 bytes a member
    assert delta < 16 and wanted < 16  # no entries either way
    assert sum(sizes) < full // 2
    assert b.statistics().syncs_received == 1


def test_differences_move_both_ways_with_proofs_only_for_unknown_nodes():
    cores, _wire = meshed(6)
    a, b = cores[0], cores[1]
    # b learns of a newcomer a does not know; a suspects member 3 at a higher incarnation
    newcomer = make_core(50)
    alive = newcomer.table.members[newcomer.node_id].alive
    b.on_message(cores[2].node_id, alive, 1.0)
    a.on_message(cores[4].node_id, Suspect(node=cores[3].node_id, incarnation=0,
                                           from_node=cores[4].node_id), 1.0)
    delta = b.on_sync_digest(a.node_id, a.sync_digest(), 2.0)
    assert {e.alive.node for e in delta.entries} == {newcomer.node_id, cores[3].node_id}
    assert delta.wants == (cores[3].node_id,) and delta.wants_new == ()
    proofs = {e.alive.node: e.alive.proof for e in delta.entries}
    assert proofs[cores[3].node_id] == b""  # a knows it: no certificate
    a.on_sync_delta(b.node_id, delta, 2.0)
    assert a.state_of(newcomer.node_id) is MemberState.ALIVE


entry_state = st.tuples(st.sampled_from(STATES), st.integers(0, 3))


@settings(max_examples=40, deadline=None)
@given(changes_a=st.dictionaries(st.integers(2, 7), entry_state, max_size=6),
       changes_b=st.dictionaries(st.integers(2, 7), entry_state, max_size=6),
       only_a=st.sets(st.integers(8, 10), max_size=3),
       only_b=st.sets(st.integers(8, 10), max_size=3))
def test_a_digest_sync_ends_where_a_full_sync_ends(changes_a, changes_b, only_a, only_b):
    cores, _wire = meshed(8)
    extra = {i: make_core(i).table.members[make_core(i).node_id].alive for i in (8, 9, 10)}
    a, b = cores[0], cores[1]
    for core, changes, only in ((a, changes_a, only_a), (b, changes_b, only_b)):
        for i in only:
            core.on_message(cores[7].node_id, extra[i], 0.5)
        for i, (state, inc) in changes.items():
            m = core.table.members[cores[i].node_id]
            if inc > m.incarnation or state is not m.state:
                core.table.set_state(m, state, max(inc, m.incarnation), 0.5)
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    digest_sync(a, b, 1.0)
    full_sync(a2, b2, 1.0)
    assert view(a) == view(a2)
    assert view(b) == view(b2)


@settings(max_examples=60, deadline=None)
@given(ours=st.dictionaries(st.integers(0, 12), entry_state, max_size=10),
       theirs=st.dictionaries(st.integers(0, 12), entry_state, max_size=10))
def test_delta_names_exactly_the_differences(ours, theirs):
    core = make_core(100, config=CONFIG)
    nodes = {i: make_core(i).table.members[make_core(i).node_id].alive for i in range(13)}
    for i, (state, inc) in ours.items():
        core.preload([nodes[i]], 0.0, verified=True)
        m = core.table.members[nodes[i].node]
        core.table.set_state(m, state, inc, 0.0)
    other = make_core(101, config=CONFIG)
    for i, (state, inc) in theirs.items():
        other.preload([nodes[i]], 0.0, verified=True)
        m = other.table.members[nodes[i].node]
        other.table.set_state(m, state, inc, 0.0)
    delta = delta_for(core.table, make_digest(other.table))
    mine = {m.node_id: (m.state, m.incarnation) for m in core.table.members.values()}
    yours = {m.node_id: (m.state, m.incarnation) for m in other.table.members.values()}
    differ = {n for n in mine.keys() & yours.keys() if mine[n] != yours[n]}
    assert {e.alive.node for e in delta.entries} == (mine.keys() - yours.keys()) | differ
    assert set(delta.wants) == differ
    assert set(delta.wants_new) == yours.keys() - mine.keys()
    assert all(isinstance(e.alive, Alive) for e in delta.entries)
