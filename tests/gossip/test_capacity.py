"""Capacity: field limits, encoded size cap, significant changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.capacity import (
    MAX_CAPACITY_BYTES,
    MAX_LABEL_KEY,
    MAX_LABEL_TOTAL,
    MAX_LABELS,
    MAX_RUNTIMES,
    Capacity,
    dynamic_change,
    significant_change,
    static_change,
)
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import CodecError

GIB = 1 << 30


def test_the_largest_allowed_capacity_fits_the_cap():
    per = MAX_LABEL_TOTAL // MAX_LABELS
    labels = tuple((f"k{i:02d}" + "x" * (per // 2 - 3), "v" * (per - per // 2))
                   for i in range(MAX_LABELS))
    cap = Capacity(cpu_cores=1 << 62, load=999999.9, ram_total=1 << 62, ram_free=1 << 62,
                   disk_free=1 << 62, battery=100, on_ac=True, metered=True, arch="a" * 32,
                   runtimes=tuple("r" * 31 + str(i) for i in range(MAX_RUNTIMES)),
                   labels=labels)
    assert len(encode_message(cap)) <= MAX_CAPACITY_BYTES


@pytest.mark.parametrize("bad", [
    {"cpu_cores": -1}, {"battery": 101}, {"battery": -2}, {"load": float("nan")},
    {"load": -1.0}, {"arch": "x" * 33}, {"runtimes": ("",)},
    {"runtimes": tuple(f"r{i}" for i in range(MAX_RUNTIMES + 1))},
    {"labels": (("k" * (MAX_LABEL_KEY + 1), "v"),)},
    {"labels": (("a", "1"), ("a", "2"))},
    {"labels": tuple((f"k{i}", "v" * 200) for i in range(4))},  # over the total
    {"labels": tuple((f"k{i}", "") for i in range(MAX_LABELS + 1))},
])
def test_out_of_limit_capacity_is_refused(bad):
    with pytest.raises(ValueError):
        Capacity(**bad)


def test_decoding_checks_the_limits_too():
    wire = encode_message(Capacity(battery=50))
    forged = wire.replace(b"\x18\x32", b"\x18\xc8")  # battery 50 -> 200
    with pytest.raises(CodecError):
        decode_message(forged, Capacity)


def test_build_sorts_labels():
    cap = Capacity.build(labels={"zone": "attic", "disk": "ssd"}, cpu_cores=4)
    assert cap.labels == (("disk", "ssd"), ("zone", "attic"))
    assert cap.label_map() == {"disk": "ssd", "zone": "attic"}


BASE = Capacity(cpu_cores=4, load=1.0, ram_total=8 * GIB, ram_free=4 * GIB,
                disk_free=100 * GIB, battery=80, on_ac=True, arch="x86_64",
                runtimes=("podman", "process"))


@pytest.mark.parametrize(("change", "expected", "static"), [
    ({}, False, False),
    # 4 cores: the load step is 2 (half the cores), not 1
    ({"load": 2.9}, False, False), ({"load": 3.0}, True, False), ({"load": 0.1}, False, False),
    ({"ram_free": 4 * GIB + GIB // 2}, False, False), ({"ram_free": 5 * GIB}, True, False),
    ({"disk_free": 99 * GIB}, False, False), ({"disk_free": 94 * GIB}, True, False),
    ({"battery": 71}, False, False), ({"battery": 70}, True, False),
    ({"battery": -1}, True, False),
    ({"on_ac": False}, True, True), ({"metered": True}, True, True),
    ({"cpu_cores": 2}, True, True), ({"machine": "ab"}, True, True),
    ({"runtimes": ("process",)}, True, True), ({"labels": (("a", "b"),)}, True, True),
    ({"arch": "aarch64"}, True, True), ({"ram_total": 16 * GIB}, True, True),
])
def test_significant_change(change, expected, static):
    new = Capacity(**{**{f: getattr(BASE, f) for f in BASE.__dataclass_fields__}, **change})
    assert significant_change(BASE, new) is expected
    assert static_change(BASE, new) is static
    assert dynamic_change(BASE, new) is (expected and not static)


def test_load_step_on_a_small_machine_is_one_core():
    one = Capacity(cpu_cores=1, load=0.25)
    assert not dynamic_change(one, Capacity(cpu_cores=1, load=1.125))
    assert dynamic_change(one, Capacity(cpu_cores=1, load=1.25))


@settings(max_examples=60, deadline=None)
@given(cores=st.integers(0, 256), load=st.floats(0, 1000, allow_nan=False),
       ram=st.integers(0, 1 << 40), battery=st.integers(-1, 100),
       on_ac=st.one_of(st.none(), st.booleans()),
       labels=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8),
                              max_size=5))
def test_capacity_round_trips(cores, load, ram, battery, on_ac, labels):
    cap = Capacity.build(cpu_cores=cores, load=load, ram_total=ram, ram_free=ram // 2,
                         battery=battery, on_ac=on_ac, labels=labels)
    assert decode_message(encode_message(cap), Capacity) == cap
