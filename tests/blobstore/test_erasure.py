from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.erasure import (
    ReplicationCode,
    Scheme,
    ZfecCode,
    choose_code,
    code_for,
)
from blobstore.errors import IntegrityError, NotEnoughShards

CODES = [ZfecCode(4, 2), ZfecCode(3, 3), ZfecCode(1, 2), ZfecCode(5, 0), ReplicationCode(3)]


@settings(max_examples=60, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000)),
    which=st.integers(0, len(CODES) - 1),
    seed=st.integers(0, 2**32),
)
def test_decode_from_any_k_shards_is_bit_exact(data, which, seed):
    code = CODES[which]
    shards = code.encode(data)
    assert len(shards) == code.n
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == code.shard_size(len(data))
    chosen = random.Random(seed).sample(range(code.n), code.k)
    assert code.decode({i: shards[i] for i in chosen}, len(data)) == data


def test_every_k_subset_of_4_plus_2_decodes():
    code = ZfecCode(4, 2)
    data = bytes(random.Random(1).randbytes(4099))
    shards = code.encode(data)
    for subset in itertools.combinations(range(6), 4):
        assert code.decode({i: shards[i] for i in subset}, len(data)) == data


def test_data_shards_are_the_data_itself():
    data = bytes(range(200))
    shards = ZfecCode(4, 2).encode(data)
    assert b"".join(shards[:4])[:200] == data


def test_encoding_is_deterministic():
    data = random.Random(2).randbytes(1000)
    assert ZfecCode().encode(data) == ZfecCode().encode(data)


def test_fewer_than_k_shards_is_not_enough():
    code = ZfecCode(4, 2)
    shards = code.encode(b"x" * 100)
    with pytest.raises(NotEnoughShards):
        code.decode({0: shards[0], 5: shards[5], 2: shards[2]}, 100)


def test_wrong_sized_or_out_of_range_shards_are_integrity_errors():
    code = ZfecCode(4, 2)
    shards = code.encode(b"x" * 100)
    with pytest.raises(IntegrityError):
        code.decode({0: shards[0][:-1], 1: shards[1], 2: shards[2], 3: shards[3]}, 100)
    with pytest.raises(IntegrityError):
        code.decode({0: shards[0], 1: shards[1], 2: shards[2], 9: shards[3]}, 100)


def test_replication_copies():
    code = ReplicationCode(3)
    assert (code.k, code.m, code.n) == (1, 2, 3)
    assert code.encode(b"abc") == [b"abc"] * 3
    assert code.decode({2: b"abc"}, 3) == b"abc"


@pytest.mark.parametrize(
    ("nodes", "expect"),
    [(1, (Scheme.REPLICATION, 1, 0)), (2, (Scheme.REPLICATION, 1, 1)),
     (3, (Scheme.REPLICATION, 1, 2)), (5, (Scheme.REPLICATION, 1, 2)),
     (6, (Scheme.ZFEC, 4, 2)), (50, (Scheme.ZFEC, 4, 2))],
)
def test_choose_code_by_mesh_size(nodes, expect):
    code = choose_code(nodes)
    assert (code.scheme, code.k, code.m) == expect
    assert code.n <= nodes


def test_code_for_round_trips_parameters():
    assert isinstance(code_for(Scheme.ZFEC, 4, 2), ZfecCode)
    assert code_for(0, 1, 2).n == 3
    with pytest.raises(ValueError):
        code_for(Scheme.REPLICATION, 2, 1)
