"""The NAT protocols' messages (round trip, bounds, fuzz) and sans-IO cores: relay limits
and the reachability verdict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import CodecError
from meshcloud.transport.addresses import relay_address, relay_of
from meshcloud.transport.natmessages import (
    MAX_ADDRESSES,
    PunchAnswer,
    PunchGo,
    PunchOffer,
    ReachProbe,
    ReachReport,
    RelayConnect,
    RelayIncoming,
    RelayReply,
    RelayReserve,
)
from meshcloud.transport.reachability import (
    BEHIND_NAT,
    PUBLIC,
    PUNCHED,
    RELAYED,
    UNKNOWN,
    Reachability,
)
from meshcloud.transport.relaylimits import RelayConfig, RelayLimits, TokenBucket

ALL = (RelayReserve, RelayConnect, RelayIncoming, RelayReply, ReachProbe, ReachReport,
       PunchOffer, PunchAnswer, PunchGo)
node_ids = st.binary(min_size=32, max_size=32)
addresses = st.lists(st.text(min_size=1, max_size=40), max_size=MAX_ADDRESSES).map(tuple)
messages = st.one_of(
    st.just(RelayReserve()), st.just(PunchGo()),
    st.builds(RelayConnect, target=node_ids),
    st.builds(RelayIncoming, source=node_ids),
    st.builds(RelayReply, ok=st.booleans(), reason=st.text(max_size=100)),
    st.builds(ReachProbe, addresses=addresses),
    st.builds(ReachReport, observed=st.text(max_size=60), dialable=addresses),
    st.builds(PunchOffer, addresses=addresses),
    st.builds(PunchAnswer, addresses=addresses),
)


@given(messages)
def test_messages_round_trip(msg):
    assert decode_message(encode_message(msg), ALL) == msg


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_garbage_is_one_clear_error(data):
    try:
        decode_message(data, ALL)
    except CodecError:
        pass


def test_bounds_are_checked_on_decode():
    too_many = ReachProbe.__new__(ReachProbe)
    object.__setattr__(too_many, "addresses", tuple(f"h{i}:1" for i in range(MAX_ADDRESSES + 1)))
    with pytest.raises(CodecError, match="addresses"):
        decode_message(encode_message(too_many), ReachProbe)
    short = RelayConnect.__new__(RelayConnect)
    object.__setattr__(short, "target", b"abc")
    with pytest.raises(CodecError, match="node id"):
        decode_message(encode_message(short), RelayConnect)


@given(node_ids)
def test_relay_addresses_round_trip(node_id):
    assert relay_of(relay_address(node_id)) == node_id
    assert relay_of("10.0.0.1:7946") is None


# --- relay limits -------------------------------------------------------------------------

A, B, T = b"a" * 32, b"b" * 32, b"t" * 32


def test_circuits_need_a_reservation_and_respect_the_limits():
    limits = RelayLimits(RelayConfig(max_circuits_per_peer=2, max_circuits=3))
    assert "no reservation" in limits.open_circuit(A, T, 0.0)
    assert limits.reserve(T) is None
    assert limits.open_circuit(A, T, 0.0) is None
    assert limits.open_circuit(A, T, 0.0) is None
    assert "per peer" in limits.open_circuit(A, T, 0.0)
    assert limits.open_circuit(B, T, 0.0) is None
    assert "3 circuits" in limits.open_circuit(B, T, 0.0)
    assert limits.refused == 3 and limits.total_circuits == 3
    limits.close_circuit(A)
    assert limits.open_circuit(B, T, 0.0) is None


def test_reservations_are_bounded():
    limits = RelayLimits(RelayConfig(max_reservations=1))
    assert limits.reserve(A) is None and limits.reserve(A) is None
    assert limits.reserve(B) is not None
    limits.release(A)
    assert limits.reserve(B) is None


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 1)), max_size=60))
def test_a_token_bucket_never_lets_more_than_rate_times_time_plus_burst(steps):
    rate, burst = 1000.0, 500.0
    bucket = TokenBucket(rate, burst, burst, 0.0)
    now, sent, free_at = 0.0, 0, 0.0
    for size, dt in steps:
        now += dt
        wait = bucket.take(size, now)
        assert wait >= 0
        free_at = max(free_at, now + wait)
        sent += size
        # everything spent so far may go by free_at: never faster than the rate allows
        assert sent <= burst + rate * free_at + 1e-6


# --- reachability -------------------------------------------------------------------------


def test_verdicts():
    core = Reachability(window=2)
    assert core.verdict == UNKNOWN
    assert core.on_report(A, "203.0.113.5:40000", (), 1.0) == BEHIND_NAT
    assert core.observed_host == "203.0.113.5"
    assert core.punch_addresses(["0.0.0.0:7946"]) == ["203.0.113.5:7946"]
    assert core.mode(relays=0, punched=0) == BEHIND_NAT
    assert core.mode(relays=1, punched=0) == RELAYED
    assert core.mode(relays=1, punched=1) == PUNCHED
    assert core.on_report(B, "", ("10.0.0.2:7946",), 2.0) == PUBLIC
    assert core.mode(relays=1, punched=0) == PUBLIC
    # the window forgets the oldest reporter
    core.on_report(T, "203.0.113.5:4000", (), 3.0)
    assert set(core.reports) == {B, T}


@given(st.lists(st.tuples(st.sampled_from([A, B, T]), st.booleans()), max_size=30))
def test_the_verdict_follows_the_latest_report_of_each_member(reports):
    core = Reachability(window=3)
    latest: dict[bytes, bool] = {}
    for i, (who, dialable) in enumerate(reports):
        core.on_report(who, "198.51.100.1:1", ("x:1",) if dialable else (), float(i))
        latest[who] = dialable
    expected = UNKNOWN if not latest else PUBLIC if any(latest.values()) else BEHIND_NAT
    assert core.verdict == expected
