"""DHT wire messages: every one round-trips through the codec; tags stay in the DHT block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dht.hooks import FakeSigner
from dht.messages import (
    REPLY_TO,
    FindNode,
    FindNodeReply,
    FindValue,
    FindValueReply,
    PeerInfo,
    Ping,
    Pong,
    Store,
    StoreReply,
    ValueKind,
    peer_info_problem,
)
from dht.records import PeerRecord, ProviderRecord, make_peer_record, make_provider_record
from meshcloud.codec.messages import decode_message, encode_message, registered_tags, tag_of
from meshcloud.codec.tags import TagBlock, block_of

ids = st.binary(min_size=32, max_size=32)
addresses = st.lists(st.text(max_size=30), max_size=3).map(tuple)
infos = st.builds(PeerInfo, node_id=ids, addresses=addresses)
rids = st.integers(0, 2**48)
peer_records = st.builds(
    lambda node, addrs, seq, exp: make_peer_record(FakeSigner(node), addrs, seq=seq,
                                                   expires_ms=exp),
    ids, addresses, st.integers(0, 2**62), st.integers(0, 2**62))
provider_records = st.builds(
    lambda node, key, addrs, seq, exp: make_provider_record(FakeSigner(node), key, addrs,
                                                            seq=seq, expires_ms=exp),
    ids, ids, addresses, st.integers(0, 2**62), st.integers(0, 2**62))
messages = st.one_of(
    st.builds(Ping, rid=rids, sender_addresses=addresses, serving=st.booleans()),
    st.builds(Pong, rid=rids, sender_addresses=addresses),
    st.builds(FindNode, rid=rids, target=ids, count=st.integers(0, 40),
              sender_addresses=addresses, serving=st.booleans()),
    st.builds(FindNodeReply, rid=rids, peers=st.lists(infos, max_size=5).map(tuple),
              sender_addresses=addresses),
    st.builds(FindValue, rid=rids, key=ids, kind=st.sampled_from(ValueKind),
              count=st.integers(0, 40), sender_addresses=addresses),
    st.builds(FindValueReply, rid=rids, peers=st.lists(infos, max_size=3).map(tuple),
              peer_record=st.none() | peer_records,
              providers=st.lists(provider_records, max_size=2).map(tuple)),
    st.builds(Store, rid=rids, peer_record=st.none() | peer_records,
              provider_record=st.none() | provider_records),
    st.builds(StoreReply, rid=rids, accepted=st.booleans(), reason=st.text(max_size=10)),
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_every_message_round_trips(msg):
    assert decode_message(encode_message(msg)) == msg


def test_tags_are_in_the_dht_block_and_every_request_has_its_reply():
    dht_types = [PeerInfo, PeerRecord, ProviderRecord, *REPLY_TO, *REPLY_TO.values()]
    assert len({tag_of(t) for t in dht_types}) == len(dht_types)
    for kind in dht_types:
        assert block_of(tag_of(kind)) is TagBlock.DHT
        assert registered_tags()[tag_of(kind)] is kind
    assert set(REPLY_TO) == {Ping, FindNode, FindValue, Store}


def test_peer_info_problems():
    good = PeerInfo(node_id=bytes(32), addresses=("tcp://a:1",))
    assert peer_info_problem(good, 8, 200) is None
    assert peer_info_problem(PeerInfo(node_id=b"short"), 8, 200) == "garbage_peer"
    assert peer_info_problem("not a peer", 8, 200) == "garbage_peer"  # type: ignore[arg-type]
    many = PeerInfo(node_id=bytes(32), addresses=("a",) * 9)
    assert peer_info_problem(many, 8, 200) == "too_many_addresses"
    assert peer_info_problem(PeerInfo(node_id=bytes(32), addresses=("x" * 201,)), 8,
                             200) == "address_too_long"
