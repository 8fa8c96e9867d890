from __future__ import annotations

import random

import pytest

from blobstore.scrub import (
    PassFinished,
    ScrubConfig,
    ScrubCore,
    ScrubResult,
    ScrubState,
    ShardCorrupt,
    VerifyBatch,
)

MiB = 1024 * 1024


def core(**kw) -> ScrubCore:
    config = ScrubConfig(**{"batch": 2, "max_rate": 1 * MiB, "pass_interval": 1000.0,
                            "jitter": 0.1, **kw})
    return ScrubCore(config, random.Random(1))


def res(i: int, ok: bool = True, size: int = MiB) -> ScrubResult:
    return ScrubResult(bytes([i]) * 32, ok, size)


def test_a_pass_walks_batches_throttled_and_reports_corruption():
    c = core()
    assert c.next_deadline() == 0.0
    assert c.on_timer(0.0) == [VerifyBatch(b"", 2)]
    assert c.state is ScrubState.BUSY and c.next_deadline() is None
    assert c.on_timer(0.0) == []  # nothing more while busy
    out = c.on_batch([res(1), res(2, ok=False)], now=1.0, exhausted=False)
    assert out == [ShardCorrupt(bytes([2]) * 32)]
    assert c.state is ScrubState.THROTTLED
    assert c.next_deadline() == pytest.approx(3.0)  # 2 MiB at 1 MiB/s
    assert c.on_timer(2.0) == []
    assert c.on_timer(3.0) == [VerifyBatch(bytes([2]) * 32, 2)]
    out = c.on_batch([res(3)], now=4.0, exhausted=True)
    assert out == [PassFinished(checked=3, corrupt=1, bytes=3 * MiB)]
    assert c.state is ScrubState.IDLE and c.cursor == b"" and c.passes == 1
    assert 4.0 + 900 <= c.next_deadline() <= 4.0 + 1100


def test_next_pass_starts_from_the_beginning_with_fresh_counts():
    c = core()
    c.on_timer(0.0)
    c.on_batch([res(1, ok=False)], now=0.0, exhausted=True)
    t = c.next_deadline()
    assert c.on_timer(t) == [VerifyBatch(b"", 2)]
    assert c.on_batch([], now=t, exhausted=True) == [PassFinished(0, 0, 0)]


def test_jitter_comes_from_the_injected_rng():
    a, b = core(), core()
    for c in (a, b):
        c.on_timer(0.0)
        c.on_batch([], now=0.0, exhausted=True)
    assert a.next_deadline() == b.next_deadline()


def test_stray_batch_results_are_ignored():
    c = core()
    assert c.on_batch([res(1)], now=0.0, exhausted=False) == []
    assert c.checked == 0


@pytest.mark.parametrize("kw", [{"batch": 0}, {"max_rate": 0}, {"jitter": 1.0}])
def test_config_is_checked(kw):
    with pytest.raises(ValueError):
        ScrubConfig(**kw)
