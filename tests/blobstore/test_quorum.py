from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.quorum import QuorumCall, QuorumFailed, QuorumState, QuorumSucceeded, ReadRepair
from meshcloud.errors import LocalProtocolError


def test_success_at_the_quorum_and_only_once():
    q = QuorumCall(["a", "b", "c"], need=2, deadline=10.0)
    assert q.on_reply("a", 1, now=0) == []
    assert q.on_reply("b", 1, now=0) == [QuorumSucceeded({"a": 1, "b": 1})]
    assert q.state is QuorumState.SUCCEEDED
    assert q.on_failure("c", "down", now=0) == []
    assert q.state is QuorumState.SUCCEEDED


def test_failure_as_soon_as_the_quorum_is_impossible():
    q = QuorumCall(["a", "b", "c"], need=2)
    assert q.on_failure("a", "refused", now=0) == []
    out = q.on_failure("b", "timeout", now=0)
    assert len(out) == 1 and isinstance(out[0], QuorumFailed)
    assert out[0].failures == {"a": "refused", "b": "timeout"}
    assert q.on_reply("c", 1, now=0) == []
    assert q.state is QuorumState.FAILED


def test_deadline_fails_a_pending_call():
    q = QuorumCall(["a", "b", "c"], need=2, deadline=5.0)
    q.on_reply("a", 1, now=1)
    assert q.next_deadline() == 5.0
    assert q.on_timer(4.9) == []
    out = q.on_timer(5.0)
    assert isinstance(out[0], QuorumFailed) and "deadline" in out[0].reason
    assert q.next_deadline() is None
    assert q.on_reply("b", 1, now=6) == []  # too late to count


def test_duplicate_and_unknown_targets_count_nothing():
    q = QuorumCall(["a", "b"], need=2)
    q.on_reply("a", 1, now=0)
    assert q.on_reply("a", 2, now=0) == []
    assert q.on_reply("zz", 2, now=0) == []
    assert q.replies == {"a": 1}


def test_impossible_quorum_is_a_local_error():
    with pytest.raises(LocalProtocolError):
        QuorumCall(["a"], need=2)


def test_read_repair_targets_stale_and_missing_replies():
    q = QuorumCall(["a", "b", "c"], need=2)
    q.on_reply("a", (5, "new"), now=0)
    q.on_reply("b", (3, "old"), now=0)
    assert q.read_repair(lambda v: v[0]) is None  # not complete yet
    q.on_reply("c", None, now=0)
    assert q.read_repair(lambda v: v[0]) == ReadRepair((5, "new"), ("b", "c"))


def test_no_read_repair_when_all_agree():
    q = QuorumCall(["a", "b"], need=1)
    q.on_reply("a", (1, "x"), now=0)
    q.on_reply("b", (1, "x"), now=0)
    assert q.read_repair(lambda v: v[0]) is None


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 7), data=st.data())
def test_decision_matches_counts(n, data):
    need = data.draw(st.integers(1, n))
    targets = list(range(n))
    q = QuorumCall(targets, need)
    answers = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    decisions = []
    for t, ok in zip(targets, answers, strict=True):
        decisions += q.on_reply(t, t, 0) if ok else q.on_failure(t, "x", 0)
    assert len(decisions) == 1
    succeeded = sum(answers) >= need
    assert isinstance(decisions[0], QuorumSucceeded) == succeeded
