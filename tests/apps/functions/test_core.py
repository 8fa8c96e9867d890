"""The functions core: deploy parsing, version history (property tests), record codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.functions.core import (
    KEEP_VERSIONS,
    FunctionError,
    build_version,
    current,
    deploy,
    next_version,
    parse_duration_ms,
    parse_size,
    rollback,
    unused_bundles,
)
from apps.functions.messages import FunctionRecord, InvokeReply, InvokeRequest
from apps.functions.tables import FUNCTIONS
from meshcloud.codec.messages import decode_message, encode_message

SHA = "ab" * 32


def spec(**kw):
    return {"sha256": SHA, **kw}


def test_durations_and_sizes():
    assert parse_duration_ms("30s") == 30_000
    assert parse_duration_ms("500ms") == 500
    assert parse_duration_ms("5m") == 300_000
    assert parse_duration_ms(2) == 2000
    assert parse_size("128M") == 128 << 20
    assert parse_size("1Gi") == 1 << 30
    assert parse_size("4096") == 4096
    for bad in ("", "-1s", "1x", "0s", None, True, "1.5.2s"):
        with pytest.raises(FunctionError):
            parse_duration_ms(bad)
    for bad in ("", "12T", "-5M", None, 1.5):
        with pytest.raises(FunctionError):
            parse_size(bad)


@given(st.integers(1, 10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_units(n, unit):
    assert parse_duration_ms(f"{n}{unit}") == n * {"ms": 1, "s": 1000, "m": 60_000,
                                                   "h": 3_600_000}[unit]


def test_build_version_fields_and_refusals():
    v = build_version(spec(handler="app.entry:run", env=["A=1", "B=x=y"], timeout="2s",
                           memory="64M", concurrency=3, idle="10s"),
                      version=4, size=100, now_ms=7)
    assert (v.version, v.handler, v.env, v.timeout_ms, v.memory_bytes, v.concurrency,
            v.idle_ms, v.created_ms) == (4, "app.entry:run", ("A=1", "B=x=y"), 2000,
                                         64 << 20, 3, 10_000, 7)
    assert v.bundle_key == f"bundles/{SHA}.tar"
    bad = [spec(sha256="x"), spec(runtime="ruby"), spec(handler="main"),
           spec(handler="../x:y"), spec(env=["NOEQUALS"]), spec(env=["1A=2"]),
           spec(env="A=1"), spec(timeout="1h"), spec(memory="1M"), spec(concurrency=0),
           spec(concurrency=True), spec(concurrency=10_000), "not a dict"]
    for s in bad:
        with pytest.raises(FunctionError):
            build_version(s, version=1, size=100, now_ms=0)
    with pytest.raises(FunctionError):
        build_version(spec(), version=1, size=0, now_ms=0)


ops = st.lists(st.one_of(st.tuples(st.just("deploy"), st.integers(0, 3)),
                         st.tuples(st.just("rollback"), st.none() | st.integers(0, 12))),
               max_size=30)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_version_history_invariants(steps):
    record = None
    for op, arg in steps:
        if op == "deploy":
            n = next_version(record)
            v = build_version(spec(sha256=f"{arg:x}" * 64, ), version=n, size=1, now_ms=n)
            new = deploy(record, "f", v)
            assert new.current == n and current(new) == v
            assert [x.version for x in new.versions][-1] == n
            if record is not None:
                assert n > max(x.version for x in record.versions)
            record = new
        elif record is not None:
            before = record
            try:
                record = rollback(record, arg)
            except FunctionError:
                assert record is before
                continue
            assert record.versions == before.versions
            if arg is None:
                assert record.current < before.current
            else:
                assert record.current == arg
        if record is not None:
            numbers = [x.version for x in record.versions]
            assert numbers == sorted(set(numbers))
            assert 1 <= len(numbers) <= KEEP_VERSIONS
            assert record.current in numbers
            assert decode_message(encode_message(record), FunctionRecord) == record
            assert FUNCTIONS.decode(FUNCTIONS.encode(record)) == record


def test_unused_bundles_keeps_shared_ones():
    a = deploy(None, "a", build_version(spec(sha256="1" * 64), version=1, size=1, now_ms=0))
    a = deploy(a, "a", build_version(spec(sha256="2" * 64), version=2, size=1, now_ms=0))
    b = deploy(None, "b", build_version(spec(sha256="2" * 64), version=1, size=1, now_ms=0))
    assert unused_bundles([a, b], a) == [f"bundles/{'1' * 64}.tar"]


@given(st.binary(max_size=2000), st.text(max_size=50), st.booleans())
def test_invoke_messages_round_trip(payload, text, ok):
    req = InvokeRequest(name="f", version=3, request_id=text, payload=payload)
    assert decode_message(encode_message(req), InvokeRequest) == req
    rep = InvokeReply(ok=ok, body=payload, code=text, message=text, cold=ok, node=b"n" * 32)
    assert decode_message(encode_message(rep), InvokeReply) == rep


def test_image_versions_need_no_bundle_and_refuse_bad_references():
    from apps.functions.core import build_version, unused_bundles, version_json

    v = build_version({"image": "localhost/meshcloud/fn-echo:1", "env": ["A=1"]},
                      version=1, size=0, now_ms=5)
    assert (v.image, v.runtime, v.bundle_key, v.sha256, v.handler) == (
        "localhost/meshcloud/fn-echo:1", "image", "", "", "")
    assert version_json(v)["image"] == "localhost/meshcloud/fn-echo:1"
    assert decode_message(encode_message(v), type(v)) == v
    record = FunctionRecord(name="f", current=1, versions=(v,))
    assert unused_bundles([], record) == []
    for bad in ("", " x", "-x", "a b", "x" * 300, "../etc", "a;rm -rf /", 7):
        if bad == "":
            continue  # no image: a bundle deploy (and then the sha256 is missing)
        with pytest.raises(FunctionError, match="bad image"):
            build_version({"image": bad}, version=1, size=0, now_ms=0)
    with pytest.raises(FunctionError, match="bad bundle digest"):
        build_version({"image": ""}, version=1, size=0, now_ms=0)


def _fn(public: bool = False, keys: tuple[str, ...] = ()) -> FunctionRecord:
    from apps.functions.core import build_version

    v = build_version({"sha256": "a" * 64}, version=1, size=10, now_ms=0)
    return FunctionRecord(name="f", current=1, versions=(v,), public=public, keys=keys)


def test_trigger_keys_open_only_their_function():
    from apps.functions.core import MAX_KEYS, function_json, trigger_denied, with_new_key

    record = _fn()
    assert trigger_denied(record, [])[0] == 401
    assert trigger_denied(_fn(public=True), []) is None
    record = with_new_key(record, "fk_one", replace_all=False)
    assert trigger_denied(record, [(b"x-fn-key", b"fk_one")]) is None
    assert trigger_denied(record, [(b"authorization", b"Bearer fk_one")]) is None
    assert trigger_denied(record, [(b"X-Fn-Key", b" fk_one ")]) is None
    status, why = trigger_denied(record, [(b"x-fn-key", b"fk_two")])
    assert status == 403 and "fk_two" not in why
    assert trigger_denied(record, [(b"authorization", b"Basic fk_one")])[0] == 401
    for i in range(MAX_KEYS):
        record = with_new_key(record, f"fk_{i}", replace_all=False)
    assert len(record.keys) == MAX_KEYS
    assert trigger_denied(record, [(b"x-fn-key", b"fk_one")])[0] == 403  # retired
    record = with_new_key(record, "fk_only", replace_all=True)
    assert trigger_denied(record, [(b"x-fn-key", b"fk_0")])[0] == 403
    assert trigger_denied(record, [(b"x-fn-key", b"fk_only")]) is None
    assert "fk_only" not in repr(function_json(record))


@given(st.lists(st.tuples(st.sampled_from([b"x-fn-key", b"authorization", b"X-FN-KEY",
                                           b"host", b"x-fn-key "]),
                          st.binary(max_size=300)), max_size=8))
def test_no_header_soup_opens_a_private_function(headers):
    from apps.functions.core import trigger_denied, with_new_key

    record = with_new_key(_fn(), "fk_the-real-key", replace_all=False)
    result = trigger_denied(record, headers)
    assert result is not None and result[0] in (401, 403)
