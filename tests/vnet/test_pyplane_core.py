"""The Python plane's sans-IO core: replay window, handshake, sessions, rekeying, routing."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from vnet.plane import PeerConfig, PlaneError
from vnet.pyplane.core import PlaneCore
from vnet.pyplane.crypto import public_key
from vnet.pyplane.messages import DATA_HEADER, INIT_SIZE, RESPONSE_SIZE, PacketError
from vnet.pyplane.replay import ReplayWindow
from vnet.pyplane.session import SessionConfig

A_EP = ("192.0.2.1", 5000)
B_EP = ("192.0.2.2", 6000)
T0 = 1_767_225_600.0


def rng_bytes(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def ip_packet(src: str, dst: str, payload: bytes = b"") -> bytes:
    total = 20 + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return head + payload


class Pair:
    """Two cores, A (10.42.0.1) and B (10.42.0.2), and a wire between them."""

    def __init__(self, seed: int = 1, config: SessionConfig | None = None) -> None:
        rand = rng_bytes(seed)
        self.a_key, self.b_key = rand(32), rand(32)
        self.a = PlaneCore(self.a_key, rng_bytes(seed + 1), config)
        self.b = PlaneCore(self.b_key, rng_bytes(seed + 2), config)
        self.a.set_peers([PeerConfig(public_key(self.b_key), B_EP,
                                     (ipaddress.IPv4Network("10.42.0.2/32"),))])
        self.b.set_peers([PeerConfig(public_key(self.a_key), A_EP,
                                     (ipaddress.IPv4Network("10.42.0.1/32"),))])
        self.now = T0

    def deliver(self, datagrams, to_b: bool, lenient: bool = False) -> list[bytes]:
        """Deliver datagrams (and the answers, back and forth) until quiet; the IP packets
        written, in order. ``lenient``: refused packets are dropped, as the driver does."""
        written: list[bytes] = []
        queue = [(to_b, d) for _, d in datagrams]
        while queue:
            towards_b, data = queue.pop(0)
            core, source = (self.b, A_EP) if towards_b else (self.a, B_EP)
            try:
                packet, replies = core.inbound(data, source, self.now)
            except PacketError:
                if not lenient:
                    raise
                continue
            if packet is not None:
                written.append(packet)
            queue += [(not towards_b, d) for _, d in replies]
        return written

    def a_to_b(self, payload: bytes = b"x") -> list[bytes]:
        return self.deliver(self.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", payload),
                                            self.now), True)

    def b_to_a(self, payload: bytes = b"y") -> list[bytes]:
        return self.deliver(self.b.outbound(ip_packet("10.42.0.2", "10.42.0.1", payload),
                                            self.now), False)


# --- replay window ----------------------------------------------------------------------


@given(st.integers(1, 96), st.lists(st.integers(0, 400), max_size=300))
def test_replay_window_matches_a_model(size: int, counters: list[int]) -> None:
    window = ReplayWindow(size)
    seen: set[int] = set()
    greatest = -1
    for counter in counters:
        expected = counter not in seen and counter > greatest - size
        assert window.check(counter) == expected, (counter, greatest)
        assert window.accept(counter) == expected
        if expected:
            seen.add(counter)
            greatest = max(greatest, counter)
        assert window.greatest == greatest


def test_replay_window_refuses_negative_and_far_jumps_reset_the_bits() -> None:
    window = ReplayWindow(8)
    assert not window.check(-1)
    assert window.accept(3)
    assert window.accept(1000)  # a jump larger than the window
    assert not window.accept(1000)
    assert not window.accept(3)  # far too old now
    assert window.accept(999)


def test_check_does_not_move_the_window() -> None:
    window = ReplayWindow(4)
    assert window.check(50)
    assert window.greatest == -1
    assert window.accept(0)


# --- handshake and data -----------------------------------------------------------------


@given(st.lists(st.binary(max_size=1400), min_size=1, max_size=20), st.integers(0, 2**16))
def test_round_trip_both_ways(payloads: list[bytes], seed: int) -> None:
    pair = Pair(seed)
    for payload in payloads:
        assert pair.a_to_b(payload) == [ip_packet("10.42.0.1", "10.42.0.2", payload)]
        assert pair.b_to_a(payload) == [ip_packet("10.42.0.2", "10.42.0.1", payload)]
    a_stats, = pair.a.stats()
    assert a_stats.tx_bytes > 0 and a_stats.rx_bytes > 0
    assert a_stats.last_handshake == T0


def test_first_packet_waits_for_the_handshake_then_goes() -> None:
    pair = Pair()
    out = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", b"hello"), pair.now)
    assert [(ep, len(d)) for ep, d in out] == [(B_EP, INIT_SIZE)]
    packet, replies = pair.b.inbound(out[0][1], A_EP, pair.now)
    assert packet is None and [len(d) for _, d in replies] == [RESPONSE_SIZE]
    packet, data = pair.a.inbound(replies[0][1], B_EP, pair.now)
    assert packet is None and len(data) == 1  # the queued packet, now encrypted
    packet, _ = pair.b.inbound(data[0][1], A_EP, pair.now)
    assert packet == ip_packet("10.42.0.1", "10.42.0.2", b"hello")
    assert b"hello" not in data[0][1]


def test_each_handshake_gives_fresh_keys() -> None:
    pair = Pair()
    pair.a_to_b()
    first = pair.a.peer(public_key(pair.b_key)).current
    pair.now += 200  # past reject_after_time: the old keys are gone
    pair.deliver(pair.a.tick(pair.now), True)
    pair.deliver(pair.b.tick(pair.now), False)
    assert pair.a_to_b(b"again") != []
    second = pair.a.peer(public_key(pair.b_key)).current
    assert first is not None and second is not None
    assert first.send_key != second.send_key and first.receive_key != second.receive_key


@given(st.integers(0, DATA_HEADER + 40), st.integers(1, 255))
def test_tampered_data_is_refused(position: int, flip: int) -> None:
    pair = Pair()
    pair.a_to_b()
    (_, data), = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", b"z" * 20), pair.now)
    tampered = bytearray(data)
    tampered[position % len(data)] ^= flip
    with pytest.raises(PacketError) as info:
        pair.b.inbound(bytes(tampered), A_EP, pair.now)
    assert info.value.reason in {"auth", "index", "type", "replay"}
    assert isinstance(info.value, PlaneError)
    packet, _ = pair.b.inbound(data, A_EP, pair.now)  # the genuine one still passes
    assert packet is not None


@given(st.binary(max_size=200))
def test_garbage_is_a_typed_error(data: bytes) -> None:
    pair = Pair()
    pair.a_to_b()
    try:
        packet, _ = pair.b.inbound(data, A_EP, pair.now)
    except PacketError:
        return
    raise AssertionError(f"garbage accepted: {packet!r}")


def test_duplicates_are_refused_and_reordering_within_the_window_is_accepted() -> None:
    pair = Pair()
    pair.a_to_b()
    sent = [pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", bytes([i])), pair.now)[0][1]
            for i in range(50)]
    order = list(range(50))
    random.Random(7).shuffle(order)
    for i in order:
        packet, _ = pair.b.inbound(sent[i], A_EP, pair.now)
        assert packet is not None and packet[-1] == i
    for i in (0, 17, 49):
        with pytest.raises(PacketError) as info:
            pair.b.inbound(sent[i], A_EP, pair.now)
        assert info.value.reason == "replay"


@given(st.permutations(range(40)), st.integers(1, 64))
def test_reordering_model(order: list[int], window: int) -> None:
    pair = Pair(config=SessionConfig(replay_window=window))
    pair.a_to_b()  # counter 0 on A's key is the handshake-confirming packet
    sent = [pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", bytes([i])), pair.now)[0][1]
            for i in range(40)]
    greatest = 0
    for i in order:
        counter = i + 1
        ok = counter > greatest - window
        try:
            packet, _ = pair.b.inbound(sent[i], A_EP, pair.now)
        except PacketError as exc:
            assert not ok and exc.reason == "replay"
        else:
            assert ok and packet is not None and packet[-1] == i
            greatest = max(greatest, counter)


def test_a_replayed_init_is_refused() -> None:
    pair = Pair()
    init = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)[0][1]
    pair.b.inbound(init, A_EP, pair.now)
    with pytest.raises(PacketError) as info:
        pair.b.inbound(init, A_EP, pair.now)
    assert info.value.reason == "timestamp"


def test_a_stranger_cannot_handshake() -> None:
    pair = Pair()
    stranger = PlaneCore(b"\x07" * 32, rng_bytes(9))
    stranger.set_peers([PeerConfig(public_key(pair.b_key), B_EP,
                                   (ipaddress.IPv4Network("10.42.0.2/32"),))])
    init = stranger.outbound(ip_packet("10.42.0.1", "10.42.0.2"), T0)[0][1]
    with pytest.raises(PacketError) as info:
        pair.b.inbound(init, A_EP, T0)
    assert info.value.reason == "unknown_peer"


def test_a_peer_cannot_send_from_another_peers_address() -> None:
    pair = Pair()
    pair.a_to_b()
    (_, data), = pair.a.outbound(ip_packet("10.42.0.9", "10.42.0.2"), pair.now)
    with pytest.raises(PacketError) as info:
        pair.b.inbound(data, A_EP, pair.now)
    assert info.value.reason == "source"


def test_no_route_and_ipv6_are_refused() -> None:
    pair = Pair()
    with pytest.raises(PacketError) as info:
        pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.77"), pair.now)
    assert info.value.reason == "no_route"
    with pytest.raises(PacketError):
        pair.a.outbound(b"\x60" + bytes(39), pair.now)


def test_rekey_after_messages_keeps_old_key_for_packets_in_flight() -> None:
    pair = Pair(config=SessionConfig(rekey_after_messages=10))
    pair.a_to_b()
    in_flight = []
    for i in range(12):
        out = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", bytes([i])), pair.now)
        in_flight.append(out[0][1])
        if len(out) > 1:
            init = out[1][1]
    assert len(init) == INIT_SIZE
    old = pair.a.peer(public_key(pair.b_key)).current
    # the handshake completes before the old packets arrive
    assert pair.deliver([(B_EP, init)], True) == []
    session = pair.a.peer(public_key(pair.b_key))
    assert session.current is not old and session.previous is old
    for data in in_flight:
        packet, _ = pair.b.inbound(data, A_EP, pair.now)
        assert packet is not None
    assert pair.a_to_b(b"new key") != []
    late = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", b"late"), pair.now)[0][1]
    # after the grace period, once each side has seen the other use the new key, the old
    # key reads nothing
    pair.now += SessionConfig().previous_ttl + 1
    pair.a.tick(pair.now)
    pair.b.tick(pair.now)
    assert session.previous is old  # B has not used the new key yet: A keeps the old
    assert pair.b_to_a(b"reply") != []
    pair.a.tick(pair.now)
    assert session.previous is None
    assert pair.b.peer(public_key(pair.a_key)).previous is None
    stale = in_flight[0][:-1] + b"\x00"  # any packet for the old key's index
    with pytest.raises(PacketError) as info:
        pair.b.inbound(stale, A_EP, pair.now)
    assert info.value.reason == "index"
    assert pair.b.inbound(late, A_EP, pair.now)[0] is not None


def test_rekey_after_time_and_simultaneous_handshakes_converge() -> None:
    pair = Pair(config=SessionConfig(rekey_after_time=30))
    pair.a_to_b()
    pair.b_to_a()
    pair.now += 31
    a_out = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2", b"1"), pair.now)
    b_out = pair.b.outbound(ip_packet("10.42.0.2", "10.42.0.1", b"2"), pair.now)
    assert len(a_out) == 2 and len(b_out) == 2  # data on the old key + an INIT each
    pair.deliver(a_out, True)
    pair.deliver(b_out, False)
    for _ in range(3):
        assert pair.a_to_b(b"a") == [ip_packet("10.42.0.1", "10.42.0.2", b"a")]
        assert pair.b_to_a(b"b") == [ip_packet("10.42.0.2", "10.42.0.1", b"b")]


def test_lost_handshake_is_retried_and_abandoned() -> None:
    config = SessionConfig(rekey_timeout=5, rekey_attempt_time=20)
    pair = Pair(config=config)
    assert len(pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)) == 1
    assert pair.a.tick(pair.now + 1) == []
    retry = pair.a.tick(pair.now + 6)
    assert [len(d) for _, d in retry] == [INIT_SIZE]
    session = pair.a.peer(public_key(pair.b_key))
    assert len(session.queue) == 1
    pair.a.tick(pair.now + 25)
    assert session.queue == type(session.queue)() and session.pending is None


def test_expired_keys_refuse_data() -> None:
    pair = Pair()
    pair.a_to_b()
    (_, data), = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)
    with pytest.raises(PacketError) as info:
        pair.b.inbound(data, A_EP, pair.now + 181)
    assert info.value.reason == "expired"


def test_roaming_peer_endpoint_follows_authenticated_packets() -> None:
    pair = Pair()
    pair.a_to_b()
    (_, data), = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)
    pair.b.inbound(data, ("198.51.100.7", 4444), pair.now)
    assert pair.b.stats()[0].endpoint == ("198.51.100.7", 4444)
    with pytest.raises(PacketError):  # a forged packet moves nothing
        pair.b.inbound(data[:-1] + bytes([data[-1] ^ 1]), ("203.0.113.9", 1), pair.now)
    assert pair.b.stats()[0].endpoint == ("198.51.100.7", 4444)


def test_removed_peer_loses_its_sessions() -> None:
    pair = Pair()
    pair.a_to_b()
    (_, data), = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)
    pair.b.set_peers([])
    with pytest.raises(PacketError) as info:
        pair.b.inbound(data, A_EP, pair.now)
    assert info.value.reason == "index"
    assert pair.b.stats() == []


class SessionMachine(RuleBasedStateMachine):
    """Any interleaving of sends, losses, delays, duplicates and time: whatever arrives is
    the packet sent (or refused with a typed error), never a crash or a wrong packet."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(config=SessionConfig(rekey_after_messages=7, rekey_after_time=40,
                                              previous_ttl=10))
        self.wire: list[tuple[bool, bytes]] = []
        self.sent: set[bytes] = set()
        self.n = 0

    def _send(self, a_side: bool) -> None:
        self.n += 1
        payload = self.n.to_bytes(4, "big")
        src, dst = ("10.42.0.1", "10.42.0.2") if a_side else ("10.42.0.2", "10.42.0.1")
        packet = ip_packet(src, dst, payload)
        self.sent.add(packet)
        core = self.pair.a if a_side else self.pair.b
        self.wire += [(a_side, d) for _, d in core.outbound(packet, self.pair.now)]

    @rule(a_side=st.booleans())
    def send(self, a_side: bool) -> None:
        self._send(a_side)

    @rule(pick=st.integers(0, 1000), keep=st.booleans())
    def deliver_one(self, pick: int, keep: bool) -> None:
        if not self.wire:
            return
        from_a, data = self.wire[pick % len(self.wire)] if keep else \
            self.wire.pop(pick % len(self.wire))
        core, source = (self.pair.b, A_EP) if from_a else (self.pair.a, B_EP)
        try:
            packet, replies = core.inbound(data, source, self.pair.now)
        except PacketError:
            return
        assert packet is None or packet in self.sent
        self.wire += [(not from_a, d) for _, d in replies]

    @rule(pick=st.integers(0, 1000))
    def lose_one(self, pick: int) -> None:
        if self.wire:
            self.wire.pop(pick % len(self.wire))

    @rule(seconds=st.sampled_from([0.5, 3, 6, 20, 45]))
    def time_passes(self, seconds: float) -> None:
        self.pair.now += seconds
        self.wire += [(True, d) for _, d in self.pair.a.tick(self.pair.now)]
        self.wire += [(False, d) for _, d in self.pair.b.tick(self.pair.now)]

    def teardown(self) -> None:
        # then the wire turns quiet and lossless: a packet gets through within the time
        # it takes to notice a dead key (rekey after time) and handshake again
        self.wire.clear()
        final = ip_packet("10.42.0.1", "10.42.0.2", b"final")
        pair = self.pair
        for _ in range(12):
            sent = pair.a.outbound(final, pair.now)
            if final in pair.deliver(sent, True, lenient=True):
                return
            pair.now += 6
            pair.deliver(pair.a.tick(pair.now), True, lenient=True)
            pair.deliver(pair.b.tick(pair.now), False, lenient=True)
        raise AssertionError("no packet gets through on a clean wire")


TestSessions = SessionMachine.TestCase


def test_packets_with_an_offload_header_route_and_check_past_it() -> None:
    rand = rng_bytes(5)
    a_key, b_key = rand(32), rand(32)
    a = PlaneCore(a_key, rng_bytes(6), ip_offset=10)
    b = PlaneCore(b_key, rng_bytes(7), ip_offset=10)
    a.set_peers([PeerConfig(public_key(b_key), B_EP, (ipaddress.IPv4Network("10.42.0.2/32"),))])
    b.set_peers([PeerConfig(public_key(a_key), A_EP, (ipaddress.IPv4Network("10.42.0.1/32"),))])
    header = bytes([1, 1]) + bytes(8)  # NEEDS_CSUM, TCPv4 segmentation: opaque to the core
    packet = header + ip_packet("10.42.0.1", "10.42.0.2", b"big" * 5000)
    (_, init), = a.outbound(packet, T0)
    _, (response,) = b.inbound(init, A_EP, T0)
    _, (data,) = a.inbound(response[1], B_EP, T0)
    written, _ = b.inbound(data[1], A_EP, T0)
    assert written == packet
    with pytest.raises(PacketError) as info:  # without the offset the header is no IPv4
        a.outbound(ip_packet("10.42.0.1", "10.42.0.2")[:25], T0)
    assert info.value.reason == "no_route"
    (_, forged), = a.outbound(header + ip_packet("10.42.0.7", "10.42.0.2"), T0)
    with pytest.raises(PacketError) as info:
        b.inbound(forged, A_EP, T0)
    assert info.value.reason == "source"
    with pytest.raises(PacketError) as info:
        a.outbound(header + ip_packet("10.42.0.1", "10.42.0.2", bytes(65500)), T0)
    assert info.value.reason == "too_big"


def test_a_peer_that_lost_its_keys_gets_a_new_handshake() -> None:
    pair = Pair()
    pair.a_to_b()
    pair.b = PlaneCore(pair.b_key, rng_bytes(99))  # B restarts: no sessions
    pair.b.set_peers([PeerConfig(public_key(pair.a_key), A_EP,
                                 (ipaddress.IPv4Network("10.42.0.1/32"),))])
    (_, data), = pair.a.outbound(ip_packet("10.42.0.1", "10.42.0.2"), pair.now)
    with pytest.raises(PacketError):
        pair.b.inbound(data, A_EP, pair.now)
    assert pair.a.tick(pair.now + 14) == []
    retry = pair.a.tick(pair.now + 15)
    assert [len(d) for _, d in retry] == [INIT_SIZE]
    pair.now += 15
    pair.deliver(retry, True)
    assert pair.a_to_b(b"again") == [ip_packet("10.42.0.1", "10.42.0.2", b"again")]


def test_one_way_traffic_is_answered_by_keepalives_not_handshakes() -> None:
    pair = Pair()
    for step in range(40):  # A sends every second, B never has anything to say
        pair.now = T0 + step
        assert pair.a_to_b(bytes([step])) != []
        for _, data in pair.a.tick(pair.now):
            assert len(data) != INIT_SIZE, f"a needless handshake at {step} s"
        keepalives = pair.b.tick(pair.now)
        assert all(len(d) == DATA_HEADER + 16 for _, d in keepalives)
        assert pair.deliver(keepalives, False) == []
