"""Bucket events at least once: event ids and the mark's cursor (pure core)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apps.functions.bucketevents import FOLD_AT as EVENTS_FOLD_AT
from apps.functions.bucketevents import (
    SCAN_SLACK_MS,
    EventCursor,
    Tombstone,
    deleted_event_id,
    event_id,
    tombstones_since,
)
from blobstore.sortkeys import FOLD_AT, scan_start, sort_key
from meshcloud.clock import hlc_pack


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


# --- deleted events: tombstones read back from the index --------------------------------

def rows_of(bucket: dict[str, tuple[int, bool]], prefix: str
            ) -> list[tuple[bytes, int, bool]]:
    """The index rows a scan from the prefix's first possible key returns, in order."""
    start = scan_start(prefix)
    return sorted((sort_key(k), ts, dead) for k, (ts, dead) in bucket.items()
                  if sort_key(k) >= start)


def test_the_deleted_id_names_one_tombstone():
    one = deleted_event_id("inbox", "up/a.txt", hlc_pack(1_000, 3))
    assert one == deleted_event_id("inbox", "up/a.txt", hlc_pack(1_000, 3))
    others = {deleted_event_id("inbox", "up/a.txt", hlc_pack(1_000, 4)),
              deleted_event_id("inbox", "up/b.txt", hlc_pack(1_000, 3)),
              deleted_event_id("outbox", "up/a.txt", hlc_pack(1_000, 3))}
    assert one not in others and len(others) == 3
    assert EVENTS_FOLD_AT == FOLD_AT


def test_tombstones_under_the_prefix_since_the_mark_and_nothing_else():
    since = 50_000
    bucket = {"up/a": (hlc_pack(60_000, 0), True),  # deleted after: wanted
              "up/b": (hlc_pack(40_000, 0), True),  # deleted before the scan's start
              "up/c": (hlc_pack(70_000, 1), False),  # live
              "upx": (hlc_pack(70_000, 0), True),  # not under "up/"
              "zz": (hlc_pack(70_000, 0), True)}
    found, past = tombstones_since(rows_of(bucket, "up/"), "up/", since)
    assert found == [Tombstone("up/a", hlc_pack(60_000, 0))] and past
    assert found[0].time_ms == 60_000
    found, past = tombstones_since(rows_of(bucket, ""), "", since)
    assert [t.key for t in found] == ["up/a", "upx", "zz"] and not past
    folded = (b"a" * 384 + b"h" * 16, hlc_pack(60_000, 0), True)  # hash, not a key
    assert tombstones_since([folded], "", since) == ([], False)


keys = st.text(alphabet="ab/é", max_size=6) | st.builds(
    lambda head, tail: "a" * 380 + head + tail, st.text(alphabet="ab", max_size=8),
    st.text(alphabet="ab", max_size=3))


@given(bucket=st.dictionaries(keys, st.tuples(
           st.builds(hlc_pack, st.integers(0, 100), st.integers(0, 3)), st.booleans()),
           max_size=30),
       prefix=st.sampled_from(["", "a", "ab/", "b", "a" * 382, "/é"]),
       since=st.integers(0, 100))
def test_every_recent_tombstone_under_the_prefix_is_found(bucket, prefix, since):
    """The result is exactly the deletes under the prefix since the mark (keys short
    enough to be stored unfolded), even where the scan stops early."""
    rows = rows_of(bucket, prefix)
    found, past = tombstones_since(rows, prefix, since)
    want = sorted((k, ts) for k, (ts, dead) in bucket.items()
                  if dead and k.startswith(prefix) and len(k.encode()) <= FOLD_AT
                  and ts >> 16 >= since)
    assert sorted((t.key, t.ts) for t in found) == want
    assert all(t.time_ms >= since for t in found)
    if past:  # the scan stopped at a row past every key under the prefix
        assert any(not k.startswith(prefix) and sort_key(k) > prefix.encode()
                   for k in bucket)
