"""Asynchronous invocations: ids, attempts and back-off (pure core)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.functions.core import FunctionError
from apps.functions.messages import QueuedInvocation
from apps.functions.queue import (
    MAX_ASYNC_PAYLOAD,
    MAX_ATTEMPTS,
    MAX_BACKOFF_MS,
    after_attempt,
    backoff_ms,
    enqueue,
    invocation_id,
    is_due,
)
from apps.functions.tables import QUEUE


def test_ids_are_checked_or_fresh():
    assert invocation_id("order-17.a_b") == "order-17.a_b"
    assert len(invocation_id(None)) == 24 and invocation_id("") != invocation_id("")
    for bad in ("a b", "x" * 65, "é", "a/b"):
        with pytest.raises(FunctionError):
            invocation_id(bad)


def test_payload_limit():
    enqueue(b"x" * MAX_ASYNC_PAYLOAD, 1)
    with pytest.raises(FunctionError, match="KiB"):
        enqueue(b"x" * (MAX_ASYNC_PAYLOAD + 1), 1)


def test_success_is_done_and_drops_the_payload():
    row = enqueue(b"{}", 1000)
    assert is_due(row, 1000) and not is_due(row, 999)
    done = after_attempt(row, True, "", 2000)
    assert (done.state, done.attempts, done.payload) == ("done", 1, b"")
    assert not is_due(done, 10**12)


@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_retries_back_off_until_done_or_failed(outcomes):
    row, now = enqueue(b"p", 0), 0
    for ok in outcomes:
        if row.state != "queued":
            break
        before = row
        row = after_attempt(row, ok, "error: boom", now)
        assert row.attempts == before.attempts + 1
        if ok:
            assert row.state == "done"
        elif row.attempts >= MAX_ATTEMPTS:
            assert row.state == "failed" and row.message == "error: boom"
        else:
            assert row.state == "queued" and row.payload == b"p"
            assert row.next_ms == now + backoff_ms(row.attempts) > now
            assert not is_due(row, now) and is_due(row, row.next_ms)
        now = max(now, row.next_ms)
    assert row.attempts <= MAX_ATTEMPTS


def test_backoff_doubles_and_is_capped():
    assert [backoff_ms(n) for n in (1, 2, 3, 4)] == [1000, 2000, 4000, 8000]
    assert backoff_ms(40) == MAX_BACKOFF_MS


def test_row_round_trips_the_table_codec():
    row = QueuedInvocation(payload=b"\x00\xff", attempts=2, next_ms=5, message="m")
    assert QUEUE.decode(QUEUE.encode(row)) == row


def test_bucket_triggers_checked_and_matched():
    from apps.functions.core import check_triggers, trigger_matches

    t = check_triggers(["created:inbox/up/", "deleted:inbox", "created:inbox/up/"])
    assert t == ("created:inbox/up/", "deleted:inbox")
    assert trigger_matches(t, "created", "inbox", "up/a.txt")
    assert not trigger_matches(t, "created", "inbox", "down/a.txt")
    assert not trigger_matches(t, "created", "inboxes", "up/a.txt")
    assert trigger_matches(t, "deleted", "inbox", "anything")
    assert not trigger_matches(t, "deleted", "other", "anything")
    for bad in (["made:inbox/x"], ["created:"], ["created:UPPER/x"], "created:inbox", [5],
                ["created:x/" + "a"] * 17):
        with pytest.raises(FunctionError):
            check_triggers(bad)
