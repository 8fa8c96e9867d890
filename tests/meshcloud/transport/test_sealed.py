"""Sealed datagrams (meshcloud.transport.sealed): keys per pair and direction, tampering,
replay window, restarts, unknown senders; hypothesis for round trips and the window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.identity.keys import SigningKey
from meshcloud.transport.sealed import (
    OVERHEAD,
    WELL_KNOWN,
    WINDOW,
    ForgedDatagram,
    MalformedDatagram,
    ReplayedDatagram,
    ReplayWindow,
    SealCore,
    UnknownSender,
)

KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]


def core(key: SigningKey, boot: int = 1000) -> SealCore:
    return SealCore(key.id, key.to_curve25519_private(), boot)


def pair(boot_a: int = 1000, boot_b: int = 1000) -> tuple[SealCore, SealCore]:
    a, b = core(KEYS[0], boot_a), core(KEYS[1], boot_b)
    a.add_peer(KEYS[1].id, KEYS[1].public)
    b.add_peer(KEYS[0].id, KEYS[0].public)
    return a, b


@settings(max_examples=60, deadline=None)
@given(protocol=st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255),
       data=st.binary(max_size=2000))
def test_round_trip_any_protocol_and_data(protocol: str, data: bytes) -> None:
    a, b = pair()
    packet = a.seal(KEYS[1].id, protocol, data)
    name = 1 if protocol in WELL_KNOWN else len(protocol.encode())
    assert len(packet) == OVERHEAD + name + len(data)
    opened = b.open(packet)
    assert (opened.sender, opened.protocol, opened.data) == (KEYS[0].id, protocol, data)
    assert data not in packet[OVERHEAD:] or len(data) < 8  # encrypted, not just signed


def test_each_direction_and_pair_has_its_own_key() -> None:
    a, b = pair()
    c = core(KEYS[2])
    c.add_peer(KEYS[0].id, KEYS[0].public)
    packet = a.seal(KEYS[1].id, "/p", b"ping")
    with pytest.raises(ForgedDatagram):  # addressed to b: c shares another key with a
        c.open(packet)
    with pytest.raises(UnknownSender):  # reflected back to its sender
        a.open(packet)
    forged = b.seal(KEYS[0].id, "/p", b"x")  # b's key towards a is not a's towards b
    with pytest.raises(ForgedDatagram):
        b.open(forged[:1] + KEYS[0].id[:8] + forged[9:])
    assert b.open(packet).data == b"ping"


def test_unknown_sender_is_named_and_changes_nothing() -> None:
    a, _ = pair()
    c = core(KEYS[2])
    with pytest.raises(UnknownSender) as refused:
        c.open(a.seal(KEYS[1].id, "/p", b"x"))
    assert refused.value.sender == KEYS[0].id[:8]
    assert len(c) == 0


@pytest.mark.parametrize("position", [0, 5, 12, 20, 30, -1])
def test_any_flipped_bit_is_refused_and_the_window_does_not_move(position: int) -> None:
    a, b = pair()
    packet = bytearray(a.seal(KEYS[1].id, "/p", b"hello"))
    packet[position] ^= 0x04
    with pytest.raises((ForgedDatagram, MalformedDatagram, UnknownSender, ReplayedDatagram)):
        b.open(bytes(packet))
    packet[position] ^= 0x04
    assert b.open(bytes(packet)).data == b"hello"  # the real one still opens, once
    with pytest.raises(ReplayedDatagram):
        b.open(bytes(packet))


@pytest.mark.parametrize("packet", [b"", b"\x01", b"\x02" + bytes(80), bytes(50)])
def test_garbage_is_malformed(packet: bytes) -> None:
    _, b = pair()
    with pytest.raises(MalformedDatagram):
        b.open(packet)


def test_a_restarted_sender_is_accepted_and_its_old_boot_refused() -> None:
    a, b = pair(boot_a=1000)
    old = a.seal(KEYS[1].id, "/p", b"old")
    a_again = core(KEYS[0], boot=2000)
    a_again.add_peer(KEYS[1].id, KEYS[1].public)
    assert b.open(a_again.seal(KEYS[1].id, "/p", b"new")).data == b"new"
    with pytest.raises(ReplayedDatagram):
        b.open(old)


def test_well_known_protocols_travel_as_one_byte() -> None:
    a, b = pair()
    packet = a.seal(KEYS[1].id, WELL_KNOWN[0], b"probe")
    assert len(packet) == OVERHEAD + 1 + 5
    assert b.open(packet).protocol == WELL_KNOWN[0]


def test_a_peer_whose_tag_collides_is_refused() -> None:
    a = core(KEYS[0])
    a.add_peer(KEYS[1].id, KEYS[1].public)
    with pytest.raises(ValueError, match="collides"):
        a.add_peer(KEYS[1].id[:8] + bytes(24), KEYS[2].public)
    assert a.knows(KEYS[1].id) and len(a) == 1


def test_bad_peer_keys_are_refused() -> None:
    a = core(KEYS[0])
    for public in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(ValueError):
            a.add_peer(KEYS[1].id, public)
    with pytest.raises(ValueError):
        a.add_peer(KEYS[0].id, KEYS[0].public)
    assert not a.knows(KEYS[1].id)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 600)), max_size=80))
def test_the_window_accepts_each_boot_and_counter_at_most_once(events) -> None:
    """Against a model: newest boot wins; a counter is accepted once, if within WINDOW of
    the highest accepted counter of that boot."""
    window = ReplayWindow()
    accepted: set[tuple[int, int]] = set()
    boot_now, top = -1, -1
    for boot, counter in events:
        fresh = (boot > boot_now
                 or (boot == boot_now and (boot, counter) not in accepted
                     and top - counter < WINDOW))
        try:
            window.check(boot, counter)
        except ReplayedDatagram:
            assert not fresh, (boot, counter)
            continue
        assert fresh, (boot, counter)
        window.accept(boot, counter)
        accepted.add((boot, counter))
        if boot > boot_now:
            boot_now, top = boot, counter
        else:
            top = max(top, counter)
