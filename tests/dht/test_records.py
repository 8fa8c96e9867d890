"""Signed peer and provider records: newest wins, expired and forged refused, bounded store."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.errors import RecordError
from dht.hooks import Ed25519Verifier, FakeSigner, FakeVerifier, KeySigner
from dht.records import (
    RecordLimits,
    RecordStore,
    check_peer_record,
    check_provider_record,
    make_peer_record,
    make_provider_record,
)
from meshcloud.identity.keys import SigningKey

NOW = 1_767_225_600_000
HOUR = 3_600_000
LIMITS = RecordLimits(max_addresses=4, max_address_length=50, max_ttl_ms=48 * HOUR)
ALICE = KeySigner(SigningKey(bytes(range(32))))
MALLORY = KeySigner(SigningKey(bytes(range(1, 33))))
VERIFY = Ed25519Verifier()


def peer_record(signer=ALICE, addresses=("tcp://10.0.0.2:7946",), seq=1, ttl=HOUR):
    return make_peer_record(signer, addresses, seq=seq, expires_ms=NOW + ttl)


def code_of(fn, *args) -> str:
    with pytest.raises(RecordError) as info:
        fn(*args)
    return info.value.code


def test_a_record_signed_by_its_node_is_accepted():
    record = peer_record()
    check_peer_record(record, VERIFY, NOW, LIMITS)
    assert record.node_id == ALICE.node_id


def test_a_record_for_a_node_signed_by_anyone_else_is_forged():
    mine = peer_record(MALLORY)
    # Mallory signs a record claiming to be Alice, with her own (valid) signature.
    claim = dataclasses.replace(mine, node_id=ALICE.node_id)
    claim = dataclasses.replace(claim, signature=MALLORY.sign(claim.payload()))
    assert code_of(check_peer_record, claim, VERIFY, NOW, LIMITS) == "forged"
    # Or Alice's key with a signature Mallory made up.
    fake = dataclasses.replace(peer_record(), addresses=("tcp://evil:1",))
    assert code_of(check_peer_record, fake, VERIFY, NOW, LIMITS) == "forged"
    stolen_key = dataclasses.replace(mine, public_key=ALICE.public_key)
    assert code_of(check_peer_record, stolen_key, VERIFY, NOW, LIMITS) == "forged"


def test_expired_too_far_and_too_large_records_are_refused():
    assert code_of(check_peer_record, peer_record(ttl=0), VERIFY, NOW, LIMITS) == "expired"
    assert code_of(check_peer_record, peer_record(), VERIFY, NOW + HOUR, LIMITS) == "expired"
    assert code_of(check_peer_record, peer_record(ttl=49 * HOUR), VERIFY, NOW,
                   LIMITS) == "too_far"
    many = peer_record(addresses=tuple(f"tcp://h{i}:1" for i in range(5)))
    assert code_of(check_peer_record, many, VERIFY, NOW, LIMITS) == "too_large"
    long = peer_record(addresses=("tcp://" + "x" * 60,))
    assert code_of(check_peer_record, long, VERIFY, NOW, LIMITS) == "too_large"


def test_provider_records_follow_the_same_rules():
    key = bytes(range(32))
    record = make_provider_record(ALICE, key, ("tcp://a:1",), seq=3, expires_ms=NOW + HOUR)
    check_provider_record(record, VERIFY, NOW, LIMITS)
    other_key = dataclasses.replace(record, key=bytes(32))
    assert code_of(check_provider_record, other_key, VERIFY, NOW, LIMITS) == "forged"
    not_mine = dataclasses.replace(record, provider=MALLORY.node_id)
    assert code_of(check_provider_record, not_mine, VERIFY, NOW, LIMITS) == "forged"
    short_key = dataclasses.replace(record, key=b"short")
    assert code_of(check_provider_record, short_key, VERIFY, NOW, LIMITS) == "too_large"
    assert code_of(check_provider_record, record, VERIFY, NOW + HOUR, LIMITS) == "expired"


def test_fake_crypto_for_simulations_checks_the_same_way():
    signer = FakeSigner(bytes(range(32)))
    record = make_peer_record(signer, ("sim://1",), seq=1, expires_ms=NOW + HOUR)
    check_peer_record(record, FakeVerifier(), NOW, LIMITS)
    tampered = dataclasses.replace(record, seq=2)
    assert code_of(check_peer_record, tampered, FakeVerifier(), NOW, LIMITS) == "forged"


def test_newest_record_wins_and_older_ones_change_nothing():
    store = RecordStore()
    first = peer_record(addresses=("tcp://home:1",), seq=5)
    assert store.put_peer(first, NOW) is True
    assert store.put_peer(first, NOW) is False  # the same record again: nothing new
    roamed = peer_record(addresses=("tcp://4g:1",), seq=9)
    assert store.put_peer(roamed, NOW) is True
    assert code_of(store.put_peer, first, NOW) == "stale"
    assert code_of(store.put_peer, peer_record(addresses=("tcp://x:1",), seq=9), NOW) == "stale"
    assert store.peer(ALICE.node_id, NOW) == roamed
    assert store.peer_count == 1


def test_expired_records_are_not_served_and_can_be_replaced():
    store = RecordStore()
    store.put_peer(peer_record(seq=9, ttl=HOUR), NOW)
    assert store.peer(ALICE.node_id, NOW + HOUR) is None
    # A node that restarted with a lower seq can publish again once the old one expired.
    fresh = make_peer_record(ALICE, ("tcp://new:1",), seq=2, expires_ms=NOW + 3 * HOUR)
    assert store.put_peer(fresh, NOW + HOUR) is True
    assert store.expire(NOW + 3 * HOUR) == 1 and store.peer_count == 0


def test_peer_store_is_bounded():
    store = RecordStore(max_peer_records=2)
    signers = [FakeSigner(bytes([i]) * 32) for i in range(3)]
    records = [make_peer_record(s, ("sim://x",), seq=1, expires_ms=NOW + (i + 1) * HOUR)
               for i, s in enumerate(signers)]
    store.put_peer(records[0], NOW)
    store.put_peer(records[1], NOW)
    assert code_of(store.put_peer, records[2], NOW) == "store_full"
    assert store.peer(signers[2].node_id, NOW) is None
    store.put_peer(records[2], NOW + HOUR)  # records[0] has expired: room again
    assert store.peer_count == 2


def test_providers_per_key_newest_wins_bounded_and_sorted():
    store = RecordStore(max_providers_per_key=2, max_provider_records=3)
    key, other = bytes([7]) * 32, bytes([8]) * 32
    signers = [FakeSigner(bytes([i]) * 32) for i in range(4)]

    def provider(i, seq=1, ttl=HOUR, on=key):
        return make_provider_record(signers[i], on, (f"sim://{i}",), seq=seq,
                                    expires_ms=NOW + ttl)

    assert store.add_provider(provider(0), NOW)
    assert store.add_provider(provider(1, ttl=2 * HOUR), NOW)
    assert code_of(store.add_provider, provider(2), NOW) == "store_full"  # per key
    assert store.add_provider(provider(0, seq=2, ttl=3 * HOUR), NOW)  # newer: replaces
    assert code_of(store.add_provider, provider(0, seq=1), NOW) == "stale"
    assert [r.provider for r in store.providers(key, NOW, 10)] == [
        signers[0].node_id, signers[1].node_id]
    assert len(store.providers(key, NOW, 1)) == 1
    assert store.add_provider(provider(3, on=other), NOW)
    assert code_of(store.add_provider, provider(2, on=bytes(32)), NOW) == "store_full"
    assert store.provider_count == 3
    assert store.expire(NOW + 2 * HOUR) == 2
    assert [r.provider for r in store.providers(key, NOW + 2 * HOUR, 10)] == [
        signers[0].node_id]
    assert store.providers(other, NOW + 2 * HOUR, 10) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=30))
def test_whatever_the_order_the_store_keeps_the_highest_sequence(seqs):
    store = RecordStore()
    signer = FakeSigner(bytes(range(32)))
    best = -1
    for seq in seqs:
        record = make_peer_record(signer, (f"sim://{seq}",), seq=seq, expires_ms=NOW + HOUR)
        if seq > best:
            assert store.put_peer(record, NOW) is True
            best = seq
        elif seq == best:
            assert store.put_peer(record, NOW) is False  # the very same record
        else:
            assert code_of(store.put_peer, record, NOW) == "stale"
        assert store.peer(signer.node_id, NOW).seq == best
