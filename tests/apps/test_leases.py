"""Leases: a majority of granters makes a holder; two holders never overlap in time."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.leases import LEASE_DURATION, GranterCore, HolderCore, LeaseRequest

GRANTER_IDS = tuple(bytes([i]) * 32 for i in range(1, 6))
HOLDER_IDS = tuple(bytes([i]) * 32 for i in range(10, 13))


def test_majority_grants_and_renewal_keeps_the_term():
    granters = {g: GranterCore(g) for g in GRANTER_IDS}
    holder = HolderCore(HOLDER_IDS[0])
    sends = holder.request("db", GRANTER_IDS, now=0.0)
    lease = None
    for granter_id, request in sends[:3]:
        reply = granters[granter_id].on_request(request, GRANTER_IDS, now=0.1)
        lease = holder.on_reply(granter_id, reply, now=0.1)
    assert lease is not None and lease.term == 1
    assert lease.valid_until < LEASE_DURATION
    for granter_id, request in holder.request("db", GRANTER_IDS, now=3.0)[:3]:
        lease = holder.on_reply(granter_id, granters[granter_id].on_request(
            request, GRANTER_IDS, now=3.0), now=3.0)
    assert lease is not None and lease.term == 1 and lease.valid_until > 10


def test_second_holder_is_refused_until_the_grants_expire():
    granters = {g: GranterCore(g) for g in GRANTER_IDS}
    first, second = HolderCore(HOLDER_IDS[0]), HolderCore(HOLDER_IDS[1])
    for granter_id, request in first.request("db", GRANTER_IDS, now=0.0):
        first.on_reply(granter_id, granters[granter_id].on_request(request, GRANTER_IDS, 0.0),
                       0.0)
    replies = [(g, granters[g].on_request(r, GRANTER_IDS, 1.0))
               for g, r in second.request("db", GRANTER_IDS, now=1.0)]
    assert all(not reply.granted and reply.holder == HOLDER_IDS[0] for _, reply in replies)
    assert second.holds("db", 1.0) is None
    later = LEASE_DURATION + 0.5
    for g, r in second.request("db", GRANTER_IDS, now=later):
        second.on_reply(g, granters[g].on_request(r, GRANTER_IDS, later), later)
    lease = second.holds("db", later)
    assert lease is not None and lease.term == 2  # learned the highest term from refusals


def test_granter_refuses_a_different_granter_set_and_stale_terms():
    granter = GranterCore(GRANTER_IDS[0])
    other_set = (*GRANTER_IDS[:4], bytes([99]) * 32)
    request = LeaseRequest(workload="db", holder=HOLDER_IDS[0], term=3, duration_ms=10_000,
                           granters=other_set, request_id=1)
    assert "differ" in granter.on_request(request, GRANTER_IDS, 0.0).reason
    ok = LeaseRequest(workload="db", holder=HOLDER_IDS[0], term=3, duration_ms=10_000,
                      granters=GRANTER_IDS, request_id=2)
    assert granter.on_request(ok, GRANTER_IDS, 0.0).granted
    stale = LeaseRequest(workload="db", holder=HOLDER_IDS[1], term=2, duration_ms=10_000,
                         granters=GRANTER_IDS, request_id=3)
    assert "stale" in granter.on_request(stale, GRANTER_IDS, 20.0).reason


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_two_holders_ever_overlap(data):
    """Random requests, delays, losses and renewals from three would-be holders: at no
    instant do two holders believe they hold the lease."""
    granters = {g: GranterCore(g) for g in GRANTER_IDS}
    holders = {h: HolderCore(h) for h in HOLDER_IDS}
    queue: list[tuple[float, int, tuple]] = []
    seq = 0

    def push(at: float, item: tuple) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (at, seq, item))

    for _ in range(data.draw(st.integers(5, 40))):
        push(data.draw(st.floats(0, 60)), ("want", data.draw(st.sampled_from(HOLDER_IDS))))
    while queue:
        now, _, item = heapq.heappop(queue)
        if item[0] == "want":
            for granter_id, request in holders[item[1]].request("db", GRANTER_IDS, now):
                if data.draw(st.booleans(), label="delivered"):
                    push(now + data.draw(st.floats(0, 3)), ("req", granter_id, request))
        elif item[0] == "req":
            _, granter_id, request = item
            reply = granters[granter_id].on_request(request, GRANTER_IDS, now)
            if data.draw(st.booleans(), label="reply delivered"):
                push(now + data.draw(st.floats(0, 3)), ("reply", request.holder, granter_id,
                                                        reply))
        else:
            _, holder_id, granter_id, reply = item
            holders[holder_id].on_reply(granter_id, reply, now)
        holding = [h for h, core in holders.items() if core.holds("db", now)]
        assert len(holding) <= 1, f"two holders at {now}: {holding}"


def test_holder_moves_to_a_higher_term_when_granters_know_one():
    """After a partition heals, granters that saw a higher term from the other side refuse
    renewals at the old term; the holder then renews at a higher term and keeps its lease."""
    granters = {g: GranterCore(g) for g in GRANTER_IDS}
    holder, rival = HolderCore(HOLDER_IDS[0]), HolderCore(HOLDER_IDS[1])

    def renew(now, reach):
        lease = None
        replies = []
        for g, r in holder.request("db", GRANTER_IDS, now=now):
            if g in reach:
                reply = granters[g].on_request(r, GRANTER_IDS, now)
                replies.append(reply)
                lease = holder.on_reply(g, reply, now) or lease
        return lease, replies

    side = GRANTER_IDS[:3]
    for now in (0.0, 3.0, 6.0, 9.0):
        lease, _ = renew(now, side)
        assert lease is not None and lease.term == 1
    for _ in range(5):  # the rival, cut off with the two other granters, bumps its term
        for g, r in rival.request("db", GRANTER_IDS, now=1.0)[3:]:
            rival.on_reply(g, granters[g].on_request(r, GRANTER_IDS, 1.0), 1.0)
    assert granters[GRANTER_IDS[4]].highest_term["db"] == 5
    lease, replies = renew(12.0, GRANTER_IDS)  # healed; the rival's grants have expired
    assert [r.reason for r in replies[3:]] == ["term is stale"] * 2
    assert lease is not None and lease.term == 1  # the three on its side still renew
    lease, replies = renew(13.0, GRANTER_IDS)
    assert all(r.granted for r in replies)
    assert lease is not None and lease.term == 6 and lease.valid_until > 20
