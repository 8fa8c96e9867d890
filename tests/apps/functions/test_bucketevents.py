"""Bucket events at least once: event ids and the mark's cursor (pure core)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apps.functions.bucketevents import SCAN_SLACK_MS, EventCursor, event_id


def test_the_id_names_one_put_of_one_object():
    one = event_id("created", "inbox", "up/a.txt", "aa" * 16)
    assert one == event_id("created", "inbox", "up/a.txt", "aa" * 16)
    assert one.startswith("ev-") and len(one) == 27
    others = {event_id("created", "inbox", "up/a.txt", "bb" * 16),
              event_id("deleted", "inbox", "up/a.txt", "aa" * 16),
              event_id("created", "inbox", "up/b.txt", "aa" * 16),
              event_id("created", "outbox", "up/a.txt", "aa" * 16)}
    assert one not in others and len(others) == 4


def test_a_restart_with_a_mark_scans_back_from_it_and_holds_it():
    cursor = EventCursor()
    token = cursor.start(1_000_000, now_ms=1_005_000)
    assert token is not None and cursor.scans[token] == 1_000_000 - SCAN_SLACK_MS
    assert cursor.idle(2_000_000, latest_seq=0) is None
    cursor.received(1)
    cursor.handled(1_900_000)
    assert cursor.mark_ms == 1_000_000  # a crash now must scan again from there
    cursor.scanned(token)
    assert cursor.idle(2_000_000, latest_seq=1) is None
    assert cursor.mark_ms == 2_000_000
    fresh = EventCursor()
    assert fresh.start(None, now_ms=5) is None and fresh.mark_ms == 5


def test_a_gap_in_the_feed_scans_from_the_mark():
    cursor = EventCursor()
    cursor.start(None, now_ms=100_000)
    assert cursor.received(1) is None
    cursor.handled(100_500)
    assert cursor.received(2) is None
    cursor.handled(101_000)
    token = cursor.received(9)  # 3..8 were dropped by the feed
    assert token is not None and cursor.scans[token] == 101_000 - SCAN_SLACK_MS
    cursor.handled(109_000)
    assert cursor.mark_ms == 101_000
    cursor.scanned(token)
    # the feed dropped its latest events and nothing came after them
    late = cursor.idle(120_000, latest_seq=12)
    assert late is not None and cursor.scans[late] == 101_000 - SCAN_SLACK_MS
    assert cursor.mark_ms == 101_000 and cursor.idle(130_000, latest_seq=12) is None
    assert cursor.mark_ms == 101_000  # held until that scan is done
    cursor.scanned(late)
    cursor.idle(130_000, latest_seq=12)
    assert cursor.mark_ms == 130_000


OPS = st.lists(st.one_of(
    st.tuples(st.just("emit"), st.integers(0, 3)),    # 1+: the feed dropped that many first
    st.tuples(st.just("lose"), st.just(0)),           # dropped, nothing after it yet
    st.tuples(st.just("handle"), st.just(0)),
    st.tuples(st.just("idle"), st.just(0)),
    st.tuples(st.just("scan_done"), st.just(0)),
    st.tuples(st.just("tick"), st.integers(1, 5000))), max_size=60)


@given(st.one_of(st.none(), st.integers(0, 10**6)), OPS)
def test_the_mark_never_passes_an_unhandled_event(stored, ops):
    """Whatever the order of events, drops, idles and scans: every event emitted before
    the mark was handled, or a pending scan covers it."""
    now = 2 * 10**6
    cursor = EventCursor()
    token = cursor.start(stored, now)
    feed: list[tuple[int, int]] = []  # (seq, at) delivered, not yet taken off the feed
    in_hand: list[tuple[int, int]] = []
    seq = 0
    unhandled: dict[int, int] = {}  # seq -> at of events emitted, not handled or scanned
    for op, arg in ops:
        if op in ("emit", "lose"):
            for _ in range(arg if op == "emit" else 1):
                seq += 1
                unhandled[seq] = now
            if op == "emit":
                seq += 1
                unhandled[seq] = now
                feed.append((seq, now))
        elif op == "handle" and (feed or in_hand):
            if not in_hand:
                s, at = feed.pop(0)
                cursor.received(s)
                in_hand.append((s, at))
            s, at = in_hand.pop()
            cursor.handled(at)
            unhandled.pop(s, None)
        elif op == "idle" and not feed and not in_hand:
            cursor.idle(now, seq)
        elif op == "scan_done" and cursor.scans:
            done = min(cursor.scans)
            since = cursor.scans[done]
            unhandled = {s: at for s, at in unhandled.items() if at < since}
            cursor.scanned(done)
        elif op == "tick":
            now += arg
        covered = min(cursor.scans.values(), default=None)
        for at in unhandled.values():
            assert at >= cursor.mark_ms or (covered is not None and at >= covered), (
                at, cursor.mark_ms, cursor.scans)
    del token
