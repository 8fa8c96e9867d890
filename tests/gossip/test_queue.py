"""TransmitQueue and Broadcast: invalidation, ordering, byte budget, retransmit limit."""

from __future__ import annotations

from gossip.broadcast import Broadcast
from gossip.messages import Suspect
from gossip.queue import MAX_SCAN, TransmitQueue

NODES = [bytes([i]) * 32 for i in range(1, 200)]


def news(i: int, inc: int = 1) -> Suspect:
    return Suspect(node=NODES[i], incarnation=inc, from_node=NODES[0])


def test_newer_news_about_a_node_replaces_older():
    q = TransmitQueue(retransmit_mult=4, max_items=100)
    q.queue(NODES[1], news(1, 1), 80)
    q.queue(NODES[1], news(1, 2), 80)
    assert len(q) == 1
    assert q.take(10, 1000) == [news(1, 2)]


def test_broadcast_invalidates_by_key():
    a = Broadcast(NODES[1], news(1), 80, 1)
    assert a.invalidates(Broadcast(NODES[1], news(1, 5), 80, 2))
    assert not a.invalidates(Broadcast(NODES[2], news(2), 80, 3))


def test_fewest_sends_first_then_newest_first():
    q = TransmitQueue(retransmit_mult=4, max_items=100)
    q.queue(NODES[1], news(1), 100)
    q.queue(NODES[2], news(2), 100)
    assert q.take(10, 100) == [news(2)]  # both unsent: the newer
    q.queue(NODES[3], news(3), 100)
    assert q.take(10, 100) == [news(3)]  # unsent beats sent once
    assert q.take(10, 100) == [news(1)]  # 1 was never sent: before 2 and 3 (sent once)
    assert q.take(10, 100) == [news(3)]  # sent once each now: newest first


def test_packet_filled_to_the_byte_budget_skipping_what_does_not_fit():
    q = TransmitQueue(retransmit_mult=4, max_items=100)
    q.queue(NODES[1], news(1), 300)
    q.queue(NODES[2], news(2), 900)
    q.queue(NODES[3], news(3), 200)
    taken = q.take(10, 1000)
    assert taken == [news(3), news(1)]  # 3 (newest, 200) + 2 (900) would not fit; 1 does
    assert q.take(10, 1000) == [news(2)]


def test_retransmit_limit_drops_after_enough_sends():
    q = TransmitQueue(retransmit_mult=2, max_items=100)
    q.queue(NODES[1], news(1), 50)
    sends = 0
    while q.take(5, 1000):  # limit = 2 * ceil(log10(6)) = 2
        sends += 1
    assert sends == 2 and len(q) == 0


def test_limit_follows_the_current_mesh_size():
    q = TransmitQueue(retransmit_mult=1, max_items=100)
    q.queue(NODES[1], news(1), 50)
    assert q.take(1000, 1000)  # limit 4: sent once
    assert q.take(5, 1000) == []  # mesh shrank to 5: limit 1, already reached
    assert len(q) == 0


def test_max_items_prunes_the_most_sent_then_oldest():
    q = TransmitQueue(retransmit_mult=4, max_items=20)
    for i in range(1, 21):
        q.queue(NODES[i], news(i), 50)
    q.take(10, 50)  # sends 20 (the newest) once
    q.queue(NODES[21], news(21), 50)
    assert len(q) == 18  # pruned to 90 %
    assert NODES[20] not in q and NODES[1] not in q and NODES[2] not in q
    assert NODES[3] in q and NODES[21] in q


def test_scan_is_bounded_when_nothing_fits():
    q = TransmitQueue(retransmit_mult=4, max_items=1000)
    for i in range(1, 150):
        q.queue(NODES[i], news(i), 900)
    q.queue(NODES[150], news(150), 10)  # newest: scanned first
    q.queue(NODES[151], news(151), 10)
    assert len(q.take(10, 500)) == 2
    # A small item buried past MAX_SCAN big ones is not found in one packet.
    q2 = TransmitQueue(retransmit_mult=4, max_items=1000)
    q2.queue(NODES[1], news(1), 10)
    for i in range(2, MAX_SCAN + 10):
        q2.queue(NODES[i], news(i), 900)
    taken = q2.take(10, 1000)
    assert len(taken) == 1 and news(1) not in taken


def test_remove_and_items():
    q = TransmitQueue(retransmit_mult=4, max_items=10)
    q.queue(NODES[1], news(1), 50)
    q.queue(NODES[2], news(2), 50)
    assert [b.key for b in q.items()] == [NODES[2], NODES[1]]
    assert q.remove(NODES[1]) is not None and q.remove(NODES[1]) is None
    assert len(q) == 1 and q.get(NODES[2]) is not None


def test_a_broadcast_bigger_than_any_packet_travels_alone():
    q = TransmitQueue(retransmit_mult=1, max_items=10)
    q.queue(NODES[1], news(1), 3000)
    q.queue(NODES[2], news(2), 100)
    assert q.take(5, 1400) == [news(2)]  # what fits goes first
    assert q.take(5, 1400) == [news(1)]  # then the big one, alone
    assert len(q) == 0
