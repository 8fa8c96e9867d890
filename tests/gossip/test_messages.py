"""Gossip wire messages: round trips, bounds, what is signed."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.capacity import Capacity
from gossip.member import MemberState
from gossip.messages import (
    MAX_PROOF,
    PACKET_TYPES,
    Ack,
    Alive,
    Compound,
    Dead,
    Nack,
    Ping,
    PingReq,
    PushPull,
    PushPullEntry,
    Suspect,
    leave_bytes,
)
from meshcloud.codec.messages import decode_message, encode_message, registered_tags
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import CodecError

ids = st.binary(min_size=1, max_size=64)
incs = st.integers(0, (1 << 63) - 1)
seqs = st.integers(0, (1 << 64) - 1)
alives = st.builds(
    Alive, node=ids, incarnation=incs,
    addresses=st.lists(st.text(max_size=40), max_size=4).map(tuple),
    capacity=st.builds(Capacity, cpu_cores=st.integers(0, 64), battery=st.integers(-1, 100),
                       on_ac=st.one_of(st.none(), st.booleans())),
    public_key=st.binary(max_size=32), signature=st.binary(max_size=64),
    proof=st.binary(max_size=100))
parts = st.one_of(
    st.builds(Ping, seq=seqs, target=ids),
    st.builds(PingReq, seq=seqs, target=ids, escalate=st.booleans()),
    st.builds(Ack, seq=seqs), st.builds(Nack, seq=seqs), alives,
    st.builds(Suspect, node=ids, incarnation=incs, from_node=ids),
    st.builds(Dead, node=ids, incarnation=incs, from_node=ids,
              signature=st.binary(max_size=64)))


@settings(max_examples=150, deadline=None)
@given(st.lists(parts, min_size=1, max_size=8))
def test_packets_round_trip(items):
    for item in items:
        assert decode_message(encode_message(item), PACKET_TYPES) == item
    compound = Compound(parts=tuple(items))
    assert decode_message(encode_message(compound), PACKET_TYPES) == compound


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(alives, st.sampled_from(MemberState), st.integers(0, 5)),
                max_size=5), st.booleans())
def test_push_pull_round_trips(rows, join):
    entries = tuple(PushPullEntry(alive=a, state=s, incarnation=a.incarnation + extra
                                  if a.incarnation + extra < (1 << 63) else a.incarnation)
                    for a, s, extra in rows)
    msg = PushPull(join=join, entries=entries)
    assert decode_message(encode_message(msg), PushPull) == msg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_codec_error(data):
    try:
        decode_message(data, PACKET_TYPES)
    except CodecError:
        pass


@pytest.mark.parametrize("build", [
    lambda: Ping(seq=-1, target=b"x"),
    lambda: Ping(seq=1, target=b""),
    lambda: Ping(seq=1, target=b"x" * 65),
    lambda: Ack(seq=1 << 64),
    lambda: Suspect(node=b"x", incarnation=1 << 63, from_node=b"y"),
    lambda: Alive(node=b"x", incarnation=0, addresses=("a",) * 9, capacity=Capacity(),
                  public_key=b"", signature=b""),
    lambda: Alive(node=b"x", incarnation=0, addresses=(), capacity=Capacity(),
                  public_key=b"", signature=b"", proof=b"p" * (MAX_PROOF + 1)),
    lambda: Compound(parts=()),
])
def test_out_of_bounds_messages_are_refused(build):
    with pytest.raises(ValueError):
        build()


def test_entry_incarnation_never_below_its_alive():
    alive = Alive(node=b"x", incarnation=5, addresses=(), capacity=Capacity(), public_key=b"",
                  signature=b"")
    with pytest.raises(ValueError):
        PushPullEntry(alive=alive, state=MemberState.SUSPECT, incarnation=4)


def test_alive_signature_covers_everything_but_signature_and_proof():
    alive = Alive(node=b"x" * 32, incarnation=3, addresses=("mem://a",),
                  capacity=Capacity(cpu_cores=2), public_key=b"k" * 32, signature=b"")
    signed = alive.signed_bytes()
    assert dataclasses.replace(alive, signature=b"s", proof=b"p").signed_bytes() == signed
    for change in ({"incarnation": 4}, {"addresses": ("mem://b",)},
                   {"capacity": Capacity(cpu_cores=3)}, {"public_key": b"j" * 32},
                   {"node": b"y" * 32}):
        assert dataclasses.replace(alive, **change).signed_bytes() != signed
    assert alive.same_statement(dataclasses.replace(alive, proof=b"p", signature=b"s"))


def test_leave_bytes_differ_from_alive_bytes_and_by_incarnation():
    dead = Dead(node=b"x", incarnation=1, from_node=b"x", signature=b"")
    assert dead.is_leave and dead.leave_bytes() == leave_bytes(b"x", 1)
    assert leave_bytes(b"x", 1) != leave_bytes(b"x", 2)
    assert not Dead(node=b"x", incarnation=1, from_node=b"y").is_leave


def test_tags_are_in_the_gossip_block():
    ours = {tag: cls for tag, cls in registered_tags().items()
            if cls.__module__.startswith("gossip.")}
    assert ours and all(TagBlock.GOSSIP <= tag < TagBlock.GOSSIP + 100 for tag in ours)
